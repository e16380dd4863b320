"""The console's view of the real world: what time it is, and what the world measured.

`SystemClock` is the real one: the time now, stamps in local time, and every figure as the engine
gives it. `FixedClock` is for snapshots and `make screenshots`: it starts at a fixed instant (in
UTC) and moves a fixed step at each reading, and it *restates* what only the real world decides,
so that every run shows the same screens with real-looking figures instead of masked ones:

- when things happened (events, rebuilds, VMs made): the same order, on its own timeline, a few
  seconds to minutes apart, the newest just before its now; a node's last answer is just now
  (up) or just before (down);
- how long they took: a rebuild goes at a fixed rate over the blocks it really found, so its
  seconds and rate follow from the data;
- a node's round trip (a fixed latency for each node) and where it listens (the port it was
  given at random becomes a fixed one, in its address and in the message saying why it is
  down), where the cluster's etcd listens (etcd's own port, 2379), and the directory the pool
  lives in;
- the free space of the filesystem an embedded pool's slot files may grow on (DISK_FREE), so its
  capacity is its free slots plus what that space holds.

Everything the engine computes from the data (blocks, sizes, ratios, states, capacities of nodes
with a fixed memory, and None for what is not known) is shown exactly as it comes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, tzinfo

from engine.api import RebuildFigures, Snapshot, formats


class SystemClock:
    tz: tzinfo | None = None
    """Stamps in local time."""

    def now(self) -> float:
        """Seconds since the epoch (a FixedClock moves on at every reading)."""
        return time.time()

    def monotonic(self) -> float:
        """For rates the console works out itself."""
        return time.monotonic()

    def when(self, ts: float | None) -> str:
        """A moment for people (formats.when), next to the time now."""
        return formats.when(ts, time.time(), self.tz)

    def place(self, path: str) -> str:
        """Where the pool or cluster lives."""
        return path

    def steady(self, result):
        """A Snapshot or RebuildFigures as the screens show it: as it is."""
        return result


class FixedClock(SystemClock):
    tz = UTC
    RATE = 2.5 * (1 << 30)
    """Bytes per second a rebuild goes at, on this clock."""
    DISK_FREE = 200 << 30
    """Bytes free on the filesystem of an embedded pool, on this clock."""
    GAPS = (4, 17, 42, 9, 63, 28, 131, 11, 76, 240)
    """Seconds between one moment and the one before, in turn: an irregular, working day's pace."""

    def __init__(self, start: float = 1_795_000_000.0, step: float = 5.0,
                 where: str = "/srv/blockfold/demo"):
        """start: the first reading (1_795_000_000 is 2026-11-18 08:26:40 UTC)."""
        self.t = start - step
        self.step = step
        self.where = where
        self._ticks = 0

    def now(self) -> float:
        self.t += self.step
        return self.t

    def monotonic(self) -> float:
        self._ticks += 1
        return self._ticks * 0.25

    def when(self, ts: float | None) -> str:
        return formats.when(ts, self.t, self.tz)

    def place(self, path: str) -> str:
        return self.where

    def steady(self, result):
        if isinstance(result, Snapshot):
            return self._snapshot(result)
        if isinstance(result, RebuildFigures):
            return replace(result, seconds=result.bytes / self.RATE,
                           bytes_per_s=int(self.RATE) if result.bytes else 0)
        return result

    def _snapshot(self, snap: Snapshot) -> Snapshot:
        s = snap.stats
        moments = {e.ts for e in snap.events} | {r.ts for r in s.rebuilds}
        moments |= {v.created for v in s.vms}
        retimed = self._timeline(moments)
        nodes = [replace(n, address=(self.where if n.address == s.path
                                     else self._address(n.address, i)),
                         error=self._port_in(n.error, n.address, i),
                         latency_ms=None if n.latency_ms is None else 0.31 + 0.07 * (i % 4),
                         # Heartbeats race the events: a node's last answer is restated
                         # alone, as just now, or just before now for a node that is down.
                         last_seen=None if n.last_seen is None else
                         self.t - (2 if n.state == "down" else 0) if n.last_seen else 0.0)
                 for i, n in enumerate(s.nodes)]
        capacity = {}
        if s.free_slots is not None and s.capacity_bytes is not None:     # an embedded pool
            room = (s.free_slots + self.DISK_FREE // (s.block_size + 16)) * s.block_size
            capacity = {"capacity_bytes": room, "usable_bytes": room}
            nodes = [replace(n, capacity_bytes=room) for n in nodes]
        etcd = s.etcd and replace(s.etcd, endpoints=[
            f"{url.rpartition(':')[0]}:{2379 + i}" for i, url in enumerate(s.etcd.endpoints)])
        stats = replace(
            s, path=self.where, nodes=nodes, etcd=etcd, **capacity,
            vms=[replace(v, created=retimed[v.created]) for v in s.vms],
            rebuilds=[replace(r, ts=retimed[r.ts], seconds=r.bytes / self.RATE)
                      for r in s.rebuilds])
        return Snapshot(stats, [replace(e, ts=retimed[e.ts]) for e in snap.events])

    def _timeline(self, moments: set[float]) -> dict[float, float]:
        """Each moment -> its place on this clock: the same order, the newest 3 s before now."""
        out, t = {}, self.t - 3
        for k, ts in enumerate(sorted(moments, reverse=True)):
            out[ts] = t
            t -= self.GAPS[k % len(self.GAPS)]
        return out

    @staticmethod
    def _address(address: str, i: int) -> str:
        host, sep, port = address.rpartition(":")
        return f"{host}:{7001 + i}" if sep and port.isdigit() else address

    @staticmethod
    def _port_in(text: str, address: str, i: int) -> str:
        """The node's port where a message names it (why it is down), restated too."""
        port = address.rpartition(":")[2]
        return text.replace(port, str(7001 + i)) if port.isdigit() and len(port) > 3 else text
