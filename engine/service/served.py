"""ServedAdmin: the Admin a service serves to its clients (and to a console in its own process).

It is the pool's (or cluster's) Admin with what only a service knows:
- which VMs NBD clients have attached: deleting or overwriting one is refused with a message
  naming its clients, unless forced, which detaches them first;
- its jobs: every long call (import, export, write_file, clone, rebuild, fsck, heal, scrub) is
  listed with its actor and progress while it runs, and may be cancelled by any client; a scrub may
  run in the background, outliving the client that started it;
- every change to the pool: all of them go through the service (its clients' calls, and NBD's
  writes, which the service counts), so a pool's figures (stats, vms) are computed once per
  change and shared by every client that asks meanwhile: consoles polling an idle pool of
  millions of blocks cost nothing. A cluster's figures also move with its nodes' heartbeats, so
  they are computed for every call;
- whether it is fenced (a cluster's): every call but its reporting is refused then
  (methods.WHILE_FENCED), through the socket or from a console in its own process alike.
Everything else is the inner Admin's, unchanged.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from ..admin import Admin
from ..errors import AttachedError
from .jobs import Jobs
from .methods import METHODS, WHILE_FENCED, unless_fenced


class Attachments(Protocol):
    """Who has a VM attached (the NBD server of the service)."""

    def clients(self, name: str) -> list[str]:
        """The clients attached to VM `name` (HOST:PORT of each NBD connection)."""

    def detach(self, name: str) -> None:
        """Drops every client of VM `name` at once, as if its connection broke; returns once
        nothing they sent can still land."""

    def changes(self) -> int:
        """How many changes (writes, trims, rotten blocks found) its clients have made."""


class NoAttachments:
    """A service without NBD: nothing is ever attached."""

    def clients(self, name: str) -> list[str]:
        return []

    def detach(self, name: str) -> None:
        pass

    def changes(self) -> int:
        return 0


def _changes(method: Callable) -> Callable:
    """A ServedAdmin method that may change what the figures count: they are computed again
    after it (whether it succeeded or not: a failure may have found a rotten block)."""
    def changing(self: ServedAdmin, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self.changed()
    changing.__name__, changing.__doc__ = method.__name__, method.__doc__
    return changing


class ServedAdmin(Admin):
    served = True

    def __init__(self, inner: Admin, default_actor: str):
        self.inner = inner
        self.kind, self.name = inner.kind, inner.name
        self.attachments: Attachments = NoAttachments()
        self.job_list = Jobs(default_actor)
        self._epochs = itertools.count(1)
        self._epoch = 0                 # bumped after every change the service's clients make
        self._figures: dict[str, tuple[tuple[int, int], object]] = {}
        self._figures_lock = threading.Lock()
        self._fenced = ""               # the service's fenced line (fence), until reopened

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def rebuild_phases(self) -> tuple[str, ...]:
        return self.inner.rebuild_phases

    def fenced(self) -> str:
        """The inner Admin's fenced line, or the one the service was told at the fencing
        (fence()) until it takes its cluster back."""
        return self.inner.fenced() or self._fenced

    def fence(self, line: str) -> None:
        """The service was fenced (`line` says so): fenced() says it until reopened()."""
        self._fenced = line

    def reopened(self, inner: Admin, timeout: float) -> int:
        """`inner` answers from now on (a fenced cluster writer's Admin reopened: Service).
        Every job still running works from the old one, whose state is released next: each is
        cancelled, and waited for up to `timeout` seconds in all. Returns how many were."""
        self.inner = inner
        self._fenced = ""
        self.changed()
        return self.job_list.stop_all(timeout, "the service took its cluster back: it worked"
                                               " from the fenced state; run it again")

    def changed(self) -> None:
        """Something the figures count may have changed: the next stats() or vms() computes
        them again. Called after the change (a view computed meanwhile is not kept)."""
        self._epoch = next(self._epochs)

    def _shared(self, what: str, compute: Callable, known: Callable[[object], bool]):
        """compute(), or what it gave since the last change; a result with figures not known
        yet (the RAM metadata being rebuilt) is not kept."""
        if self.kind != "pool":
            return compute()
        epoch = (self._epoch, self.attachments.changes())   # NBD's changes are counted apart
        with self._figures_lock:
            kept = self._figures.get(what)
        if kept is not None and kept[0] == epoch:
            return kept[1]
        value = compute()
        if known(value):
            with self._figures_lock:
                self._figures[what] = (epoch, value)
        return value

    def _unless_attached(self, name: str, force: bool, doing: str) -> None:
        """Refuses (AttachedError) to change VM `name` while NBD clients have it, unless `force`:
        then it detaches them. doing: what the change is, said of the VM ("rolling it back")."""
        clients = self.attachments.clients(name)
        if not clients:
            return
        if not force:
            raise AttachedError(f"VM {name} is attached over NBD by {', '.join(clients)}:"
                                f" {doing} would pull the disk from under them (--force"
                                " detaches them first)")
        self.attachments.detach(name)

    # -- volumes ------------------------------------------------------------------------------

    def vm_names(self): return self.inner.vm_names()
    def vm_size(self, name): return self.inner.vm_size(name)

    @_changes       # a rotten block found is remembered
    def read(self, name, offset, length): return self.inner.read(name, offset, length)

    @_changes
    def write(self, name, offset, data, force=False):
        self.inner.vm_size(name)        # an unknown VM is told as such, not as unattached
        self._unless_attached(name, force, "overwriting it")
        self.inner.write(name, offset, data)

    @_changes
    def write_file(self, name, offset, source, force=False, progress=None, cancel=None):
        self.inner.vm_size(name)
        self._unless_attached(name, force, "overwriting it")
        return self.job_list.run("write", lambda p, c: self.inner.write_file(
            name, offset, source, progress=p, cancel=c), progress, cancel, name)

    @_changes
    def trim(self, name, offset, length): self.inner.trim(name, offset, length)

    def extents(self, name, offset, length): return self.inner.extents(name, offset, length)

    @_changes
    def flush(self): self.inner.flush()

    # -- VMs ----------------------------------------------------------------------------------

    def vms(self):
        return self._shared("vms", self.inner.vms,
                            lambda vms: all(v.unique_blocks is not None for v in vms))

    @_changes
    def import_image(self, name, source, progress=None, cancel=None):
        return self.job_list.run("import_image", lambda p, c: self.inner.import_image(
            name, source, p, c), progress, cancel, name)

    @_changes
    def export(self, name, dest, progress=None, cancel=None, snapshot=None):
        return self.job_list.run("export", lambda p, c: self.inner.export(name, dest, p, c,
                                                                         snapshot),
                                 progress, cancel, name)

    @_changes
    def clone(self, source, new, count=1, progress=None, cancel=None):
        return self.job_list.run("clone", lambda p, c: self.inner.clone(source, new, count, p,
                                                                        c), progress, cancel,
                                 source)

    @_changes
    def delete(self, name, force=False):
        self.inner.vm_size(name)
        self._unless_attached(name, force, "deleting it")
        self.inner.delete(name)

    def clones_of(self, name): return self.inner.clones_of(name)

    def vm_info(self, name):
        info = self.inner.vm_info(name)
        return replace(info, attached=self.attachments.clients(name))

    @_changes
    def refresh(self, name, force=False):
        self.inner.vm_size(name)
        self._unless_attached(name, force, "refreshing it")
        self.inner.refresh(name)

    @_changes
    def rebase(self, names, golden, keep_writes=False, force=False, shrink=False):
        self.inner.vm_size(golden)
        for name in names:
            self.inner.vm_size(name)
        for name in names:
            self._unless_attached(name, force, "rebasing it")
        self.inner.rebase(names, golden, keep_writes, shrink=shrink)

    @_changes
    def rename(self, old, new, force=False):
        self.inner.vm_size(old)
        self._unless_attached(old, force, "renaming it")
        self.inner.rename(old, new)

    @_changes
    def resize(self, name, size, shrink=False, force=False):
        self.inner.vm_size(name)
        self._unless_attached(name, force, "resizing it")
        self.inner.resize(name, size, shrink)

    @_changes
    def take_snapshot(self, name, snap): self.inner.take_snapshot(name, snap)

    def snapshots(self, name): return self.inner.snapshots(name)

    @_changes
    def rollback(self, name, snap, force=False):
        self.inner.snapshots(name)
        self._unless_attached(name, force, "rolling it back")
        self.inner.rollback(name, snap)

    @_changes
    def remove_snapshot(self, name, snap): self.inner.remove_snapshot(name, snap)

    # -- the pool -----------------------------------------------------------------------------

    def stats(self):
        stats = self._shared("stats", self.inner.stats, lambda s: s.state == "ready")
        fenced = self.fenced()
        # Fenced, the VMs are as they were before the newer writer's commits: none is listed.
        return replace(stats, vms=[], fenced=fenced) if fenced else stats

    def known_blocks(self, fingerprints): return self.inner.known_blocks(fingerprints)

    def blocks(self, vm=None, min_refs=None, max_refs=None, prefix=None, offset=0, limit=100):
        return self.inner.blocks(vm, min_refs, max_refs, prefix, offset, limit)

    @_changes
    def rebuild(self, full=False, progress=None, cancel=None):
        return self.job_list.run("rebuild", lambda p, c: self.inner.rebuild(full, p, c),
                                 progress, cancel)

    def last_rebuild(self): return self.inner.last_rebuild()

    @_changes
    def fsck(self, progress=None, cancel=None):
        return self.job_list.run("fsck", lambda p, c: self.inner.fsck(p, c), progress, cancel)

    def scrub(self, rate=None, progress=None, cancel=None):
        return self.job_list.run("scrub", lambda p, c: self._scrub(rate, p, c), progress,
                                 cancel)

    def _scrub(self, rate, progress, cancel):
        """The inner scrub; the rotten blocks it finds count in the figures at each of its
        progress reports."""
        def report(p):
            self.changed()
            progress(p)
        try:
            return self.inner.scrub(rate, report, cancel)
        finally:
            self.changed()

    def events(self, limit=100, since=None): return self.inner.events(limit, since)

    # -- jobs ---------------------------------------------------------------------------------

    def jobs(self): return self.job_list.list()
    def jobs_from_clients(self): return self.job_list.from_clients()

    def start_scrub(self, rate=None):
        return self.job_list.start("scrub", lambda p, c: self._scrub(rate, p, c))

    def cancel_job(self, job): return self.job_list.cancel(job)

    # -- nodes --------------------------------------------------------------------------------

    def nodes(self): return self.inner.nodes()

    def only_copies(self, name): return self.inner.only_copies(name)

    def writes_without(self, name): return self.inner.writes_without(name)

    @_changes
    def fail_node(self, name): return self.inner.fail_node(name)

    @_changes
    def restore_node(self, name): self.inner.restore_node(name)

    def removal(self, name, force=False): return self.inner.removal(name, force)

    @_changes
    def remove_node(self, name, force=False, delete_data=False, progress=None, cancel=None):
        return self.job_list.run("remove", lambda p, c: self.inner.remove_node(
            name, force, delete_data, p, c), progress, cancel)

    @_changes
    def heal(self, wait=True, progress=None, cancel=None):
        return self.job_list.run("heal", lambda p, c: self.inner.heal(wait, p, c), progress,
                                 cancel)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """The service closes the inner Admin itself, once it has drained."""


def _refused_while_fenced(method: Callable) -> Callable:
    """A ServedAdmin method refused while the service is fenced (methods.unless_fenced)."""
    def checked(self: ServedAdmin, *args, **kwargs):
        unless_fenced(self, method.__name__)
        return method(self, *args, **kwargs)
    checked.__name__, checked.__doc__ = method.__name__, method.__doc__
    return checked


# Every method a service serves but its reporting is refused while it is fenced, the same for a
# call through its socket and for one made in its own process (a console that serves what it
# opened holds this Admin): either would read a state older than the newer writer's commits.
for _method in METHODS - WHILE_FENCED:
    setattr(ServedAdmin, _method, _refused_while_fenced(getattr(ServedAdmin, _method)))
