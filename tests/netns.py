"""A test network of Linux network namespaces (root and iproute2 only): hosts on their own
addresses behind veth pairs to one bridge, and the link between any two hosts cut and healed.

    NAME-sw     the switch: bridge br0, and one veth end per host, named after the host
    NAME-HOST   a host: lo, and eth0 (the veth's other end) with 10.77.0.N/24

A cut between hosts a and b points each side's neighbour entry for the other's address at a MAC
no host has (nud permanent): packets leave and vanish, as over a pulled cable, and neither side
gets an error, only silence. Heal deletes the two entries; ARP finds the real ones again. Hosts
can be cut from any set of others, and every cut heals on its own.

The addresses exist only inside this network's namespaces, so they clash with nothing on the
machine, nor with another run's. Namespace names carry the pid and a counter. `close()` kills
every process left in the namespaces and deletes them (which deletes the veths and the bridge).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time

SUBNET = "10.77.0"
NOWHERE = "02:00:00:00:00:00"       # a locally administered MAC that no host has
_made = itertools.count(1)


def unavailable() -> str | None:
    """Why this machine cannot make test networks (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    probe = f"bfprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, ns: str | None = None) -> str:
    """Runs `ip [-n NS] ARGS`; its stdout. Raises CalledProcessError naming the command."""
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return done.stdout


class Network:
    def __init__(self):
        self.name = f"bf{os.getpid()}n{next(_made)}"
        self.switch = f"{self.name}-sw"
        self.hosts: dict[str, str] = {}         # host -> its address
        self._cuts: set[frozenset[str]] = set()
        self._namespaces = [self.switch]
        ip("netns", "add", self.switch)
        ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        ip("link", "set", "dev", "br0", "up", ns=self.switch)

    def ns(self, host: str) -> str:
        return f"{self.name}-{host}"

    def add(self, host: str) -> str:
        """A new host (a short name: it also names its veth end); its address."""
        ns, address = self.ns(host), f"{SUBNET}.{len(self.hosts) + 1}"
        ip("netns", "add", ns)
        self._namespaces.append(ns)
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", host,
           "netns", self.switch)
        ip("link", "set", "dev", host, "master", "br0", "up", ns=self.switch)
        ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        ip("link", "set", "dev", "eth0", "up", ns=ns)
        ip("link", "set", "dev", "lo", "up", ns=ns)
        self.hosts[host] = address
        return address

    def command(self, host: str, *argv) -> list[str]:
        """argv run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.ns(host), *map(str, argv)]

    def cut(self, a: str, b: str) -> None:
        """Silence between a and b, both ways; a link already cut stays cut."""
        for here, there in ((a, b), (b, a)):
            ip("neigh", "replace", self.hosts[there], "lladdr", NOWHERE, "dev", "eth0",
               "nud", "permanent", ns=self.ns(here))
        self._cuts.add(frozenset((a, b)))

    def heal(self, a: str, b: str) -> None:
        if frozenset((a, b)) not in self._cuts:
            return
        for here, there in ((a, b), (b, a)):
            ip("neigh", "del", self.hosts[there], "dev", "eth0", ns=self.ns(here))
        self._cuts.discard(frozenset((a, b)))

    def heal_all(self) -> None:
        for a, b in [tuple(pair) for pair in self._cuts]:
            self.heal(a, b)

    def close(self) -> None:
        """Kills every process still in the hosts' namespaces, then deletes the namespaces."""
        for ns in self._namespaces:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                               text=True).stdout.strip() for ns in self._namespaces):
            time.sleep(0.05)
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces = []
