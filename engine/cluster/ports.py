"""Ports for what a local cluster runs on this machine (its nodes, its etcd member): free ones
below the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), where the kernel
never puts the local end of an outgoing connection. A port in that range (what binding port 0
gives) could be taken by any process's connection while its node was stopped (the
coordinator's own SSH to another node), and the node could not start again there.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000      # above the ports services are commonly set to (2379, 5432, 8080, …)
TRIES = 100


def free(host: str = "127.0.0.1", chosen: frozenset[int] = frozenset()) -> int:
    """A port nothing listens on at `host` now, below the ephemeral range and not in `chosen`
    (ports given out already, not listened on yet); one in that range (the kernel's choice)
    if it leaves too few below it, or none of TRIES is free."""
    below = _ephemeral_start()
    if below - LOWEST >= 1000:
        for _ in range(TRIES):
            port = random.randrange(LOWEST, below)
            if port not in chosen and bindable(host, port):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now: SO_REUSEADDR, as a node's listener
    (asyncio) and etcd set it, so a port left in TIME_WAIT by an earlier run counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
