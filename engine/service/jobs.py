"""The long calls a service runs (imports, exports, rebuilds, fsck, heals, scrubs): each is a job
with its actor and its last progress report, for every client to see and to cancel.

A job runs either for the client that asked (in that client's call: it ends, or is cancelled,
with the call) or in the background (its own thread: it outlives the client that started it).
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..actor import current as current_actor, requested
from ..errors import CancelledError, RefusedError
from ..progress import Progress, ProgressCallback
from ..results import Job

ENDED_KEPT = 20         # jobs that ended, still listed (newest)

T = TypeVar("T")
Work = Callable[[ProgressCallback, threading.Event], T]
"""work(progress, cancel): the call a job runs."""


# One at a time, as `zpool scrub`: a second would double the I/O the first one's rate limits.
ALONE = {"scrub"}


@dataclass
class _Running:
    id: int
    kind: str
    actor: str
    started: float
    cancel: threading.Event
    client: bool                # asked for by a client of the service (not its opener)
    vm: str = ""                # the VM it works on (Job.vm)
    progress: Progress | None = None
    state: str = "running"
    message: str = ""
    ended: threading.Event = field(default_factory=threading.Event)

    def result(self) -> Job:
        p = self.progress
        return Job(id=self.id, kind=self.kind, actor=self.actor, started=self.started,
                   state=self.state, phase=p.phase if p else "", done=p.done if p else 0,
                   total=(p.total or 0) if p else 0, bytes_per_s=p.bytes_per_s if p else 0.0,
                   message=self.message, vm=self.vm)


class Jobs:
    def __init__(self, default_actor: str):
        self.default_actor = default_actor
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._running: dict[int, _Running] = {}
        self._ended: deque[_Running] = deque(maxlen=ENDED_KEPT)
        self._threads: set[threading.Thread] = set()

    def run(self, kind: str, work: Work[T], progress: ProgressCallback | None = None,
            cancel: threading.Event | None = None, vm: str = "") -> T:
        """Runs work(progress, cancel) here as job `kind` on VM `vm` ("": the whole pool) and
        returns what it returns; its progress reports go to `progress` too. `cancel` (the
        caller's) and cancel() both stop it."""
        job = self._begin(kind, cancel or threading.Event(), vm)
        return self._run(job, work, progress)

    def start(self, kind: str, work: Work) -> Job:
        """Runs work(progress, cancel) in the background as job `kind`; returns the job."""
        job = self._begin(kind, threading.Event())
        context = contextvars.copy_context()        # the actor of the call that started it
        thread = threading.Thread(target=context.run, args=(self._background, job, work),
                                  name=f"blockfold-job-{job.id}", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return job.result()

    def _background(self, job: _Running, work: Work) -> None:
        try:
            self._run(job, work, None)
        except BaseException:   # noqa: BLE001 - told as the job's state and message
            pass
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _begin(self, kind: str, cancel: threading.Event, vm: str = "") -> _Running:
        """Raises RefusedError if `kind` runs alone and one such job runs already."""
        with self._lock:
            if kind in ALONE:
                for other in self._running.values():
                    if other.kind == kind:
                        raise RefusedError(
                            f"a {kind} runs already (job {other.id}, started by {other.actor}):"
                            f" `blockfold job cancel {other.id}` stops it")
            job = _Running(next(self._ids), kind, current_actor(self.default_actor), time.time(),
                           cancel, requested() is not None, vm)
            self._running[job.id] = job
        return job

    def _run(self, job: _Running, work: Work[T], progress: ProgressCallback | None) -> T:
        def report(p: Progress) -> None:
            job.progress = p
            if progress is not None:
                progress(p)
        try:
            result = work(report, job.cancel)
        except CancelledError as e:
            job.state = "cancelled"
            if job.message:     # stop_all's why: the client is told it too
                raise CancelledError(f"{e}: {job.message}") from None
            raise
        except BaseException as e:
            # Stopped by its cancel, saying what it did first (a clone's batches kept): cancelled.
            job.state = "cancelled" if job.cancel.is_set() else "failed"
            job.message = job.message or str(e) or type(e).__name__
            raise
        else:
            job.state = "cancelled" if job.cancel.is_set() else "done"
        finally:
            with self._lock:
                self._running.pop(job.id, None)
                self._ended.append(job)
            job.ended.set()
        return result

    def list(self) -> list[Job]:
        with self._lock:
            jobs = sorted([*self._running.values(), *self._ended], key=lambda j: j.id)
        return [j.result() for j in jobs]

    def from_clients(self) -> list[Job]:
        """The running jobs that clients of the service asked for (not its opener: a console
        serving its own pool), oldest first."""
        with self._lock:
            jobs = sorted((j for j in self._running.values() if j.client), key=lambda j: j.id)
        return [j.result() for j in jobs]

    def cancel(self, job_id: int) -> Job:
        """Asks a running job to stop; returns it. Raises RefusedError (no such job running)."""
        with self._lock:
            job = self._running.get(job_id)
        if job is None:
            raise RefusedError(f"no job {job_id} is running")
        job.cancel.set()
        return job.result()

    def stop_all(self, timeout: float, why: str = "") -> int:
        """Cancels every running job (`why`, if given, is what each then says, and what its
        client is told after "… cancelled: ": a reason, "the service was fenced", never
        "cancelled because …", which would say it twice) and waits up to
        `timeout` seconds in all for them to end (a background job's thread too); returns how
        many were running."""
        with self._lock:
            jobs = list(self._running.values())
            for job in jobs:
                job.message = why
                job.cancel.set()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for job in jobs:
            job.ended.wait(max(0.0, deadline - time.monotonic()))
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return len(jobs)
