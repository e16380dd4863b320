"""The errors the engine raises. Each carries one line a user can act on.

Callers branch on two kinds (LevelDB's Status is the model):
- RefusedError: the request was refused before anything changed (bad input, an unknown or existing
  name, no space to reserve, a read-only pool, a VM attached ...).
- AbortedError: a commit failed (the disk or the catalog is full, an I/O error, too few cluster
  nodes) and was rolled back to the last commit. Nothing of the failed change remains; writes that
  were acknowledged before it stay in RAM and the next commit tries them again.
"""


class BlockfoldError(Exception):
    """Base of every error meant for a user: the message is shown as is, without a traceback."""


class RefusedError(BlockfoldError):
    """Nothing changed."""


class AbortedError(BlockfoldError):
    """A commit failed and was rolled back to the last commit."""


class NotAPoolError(RefusedError):
    pass


class PoolFormatError(RefusedError):
    pass


class PoolLockedError(RefusedError):
    """Another writer holds the pool or the cluster's write lease. `held_by`: what that writer
    said it is ("a console", "a service"; "" if it said nothing: ClusterAdmin.held_by); the
    message then says so, with its pid, command line and what to do. `holder`: that writer as
    the message names it, "a service (pid N, `blockfold -p P serve`)" (a pool's; else "")."""

    def __init__(self, message: str = "", held_by: str = "", holder: str = ""):
        super().__init__(message)
        self.held_by = held_by
        self.holder = holder


class VMNotFoundError(RefusedError):
    pass


class VMExistsError(RefusedError):
    pass


class BadNameError(RefusedError):
    pass


class OutOfRangeError(RefusedError):
    pass


class BadImageError(RefusedError):
    pass


class NoSpaceError(RefusedError):
    pass


class ReadOnlyError(RefusedError):
    pass


class CancelledError(RefusedError):
    pass


class AttachedError(RefusedError):
    """A served VM that NBD clients have attached would be deleted or overwritten under them."""


class CorruptBlockError(BlockfoldError):
    """A block's bytes no longer match its fingerprint: it is never returned as data.

    `offset` is the byte offset in the VM where the bad block starts (when a VM was read), and
    `address` the block's address (a slot, or a cluster block id)."""

    def __init__(self, message: str, *, address: int, offset: int | None = None):
        super().__init__(message)
        self.address = address
        self.offset = offset


class NoMajorityError(RefusedError):
    """Too few of a cluster's nodes answer for a writable open: writes need a majority."""


class ReplicationError(RefusedError):
    """The cluster cannot keep a change safe (too few nodes, a node refusing blocks): the
    change is refused. (Raised by a commit, the pool turns it into an AbortedError.)"""


class LostWritesError(ReplicationError):
    """Nodes restarted before a flush and lost acknowledged writes that no other node held
    (raised by a cluster's sync once every node is synced). The commit that found it logs it
    and goes on: the VMs whose change references a lost block are left out of it, and every
    flush of theirs fails, while their change does (NotDurableError)."""


class NotDurableError(ReplicationError):
    """A change references blocks with no durable copy: no node holds them (nodes restarted
    before they were durable), or only nodes that went down before syncing them. A VM whose
    own writes do is left out of every commit, and its flushes fail, until they are written
    again or trimmed (engine.pool.Pool._refuse_lost); a commit that cannot leave them out (an
    edit of that VM) is refused."""
