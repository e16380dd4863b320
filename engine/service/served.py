"""ServedAdmin: the Admin a service serves to its clients (and to a console in its own process).

It is the pool's (or cluster's) Admin with what only a service knows:
- which VMs NBD clients have attached: deleting or overwriting one is refused with a message
  naming its clients, unless forced, which detaches them first;
- its jobs: every long call (import, export, rebuild, fsck, heal, scrub) is listed with its actor
  and progress while it runs, and may be cancelled by any client; a scrub may run in the
  background, outliving the client that started it.
Everything else is the inner Admin's, unchanged.
"""

from __future__ import annotations

from typing import Protocol

from ..admin import Admin
from ..errors import AttachedError
from .jobs import Jobs


class Attachments(Protocol):
    """Who has a VM attached (the NBD server of the service)."""

    def clients(self, name: str) -> list[str]:
        """The clients attached to VM `name` (HOST:PORT of each NBD connection)."""

    def detach(self, name: str) -> None:
        """Drops every client of VM `name` at once, as if its connection broke."""


class NoAttachments:
    """A service without NBD: nothing is ever attached."""

    def clients(self, name: str) -> list[str]:
        return []

    def detach(self, name: str) -> None:
        pass


class ServedAdmin(Admin):
    served = True

    def __init__(self, inner: Admin, default_actor: str):
        self.inner = inner
        self.kind, self.name = inner.kind, inner.name
        self.attachments: Attachments = NoAttachments()
        self.job_list = Jobs(default_actor)

    @property
    def block_size(self) -> int:
        return self.inner.block_size

    @property
    def rebuild_phases(self) -> tuple[str, ...]:
        return self.inner.rebuild_phases

    def _unless_attached(self, name: str, force: bool, doing: str) -> None:
        clients = self.attachments.clients(name)
        if not clients:
            return
        if not force:
            raise AttachedError(f"VM {name} is attached over NBD by {', '.join(clients)}:"
                               f" {doing} it would pull the disk from under them (--force"
                               " detaches them first)")
        self.attachments.detach(name)

    # -- volumes ------------------------------------------------------------------------------

    def vm_names(self): return self.inner.vm_names()
    def vm_size(self, name): return self.inner.vm_size(name)
    def read(self, name, offset, length): return self.inner.read(name, offset, length)

    def write(self, name, offset, data, force=False):
        self.inner.vm_size(name)        # an unknown VM is told as such, not as unattached
        self._unless_attached(name, force, "overwriting")
        self.inner.write(name, offset, data)

    def trim(self, name, offset, length): self.inner.trim(name, offset, length)
    def flush(self): self.inner.flush()

    # -- VMs ----------------------------------------------------------------------------------

    def vms(self): return self.inner.vms()

    def import_image(self, name, source, progress=None, cancel=None):
        return self.job_list.run("import_image", lambda p, c: self.inner.import_image(
            name, source, p, c), progress, cancel)

    def export(self, name, dest, progress=None, cancel=None):
        return self.job_list.run("export", lambda p, c: self.inner.export(name, dest, p, c),
                                 progress, cancel)

    def clone(self, source, new, count=1): return self.inner.clone(source, new, count)

    def delete(self, name, force=False):
        self.inner.vm_size(name)
        self._unless_attached(name, force, "deleting")
        self.inner.delete(name)

    # -- the pool -----------------------------------------------------------------------------

    def stats(self): return self.inner.stats()
    def snapshot(self, events=100): return self.inner.snapshot(events)

    def blocks(self, vm=None, min_refs=None, max_refs=None, prefix=None, offset=0, limit=100):
        return self.inner.blocks(vm, min_refs, max_refs, prefix, offset, limit)

    def rebuild(self, full=False, progress=None, cancel=None):
        return self.job_list.run("rebuild", lambda p, c: self.inner.rebuild(full, p, c),
                                 progress, cancel)

    def last_rebuild(self): return self.inner.last_rebuild()

    def fsck(self, progress=None, cancel=None):
        return self.job_list.run("fsck", lambda p, c: self.inner.fsck(p, c), progress, cancel)

    def scrub(self, rate=None, progress=None, cancel=None):
        return self.job_list.run("scrub", lambda p, c: self.inner.scrub(rate, p, c), progress,
                                 cancel)

    def events(self, limit=100): return self.inner.events(limit)

    # -- jobs ---------------------------------------------------------------------------------

    def jobs(self): return self.job_list.list()

    def start_scrub(self, rate=None):
        return self.job_list.start("scrub", lambda p, c: self.inner.scrub(rate, p, c))

    def cancel_job(self, job): return self.job_list.cancel(job)

    # -- nodes --------------------------------------------------------------------------------

    def nodes(self): return self.inner.nodes()
    def fail_node(self, name): self.inner.fail_node(name)
    def restore_node(self, name): self.inner.restore_node(name)

    def heal(self, wait=True, progress=None, cancel=None):
        return self.job_list.run("heal", lambda p, c: self.inner.heal(wait, p, c), progress,
                                 cancel)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """The service closes the inner Admin itself, once it has drained."""
