"""A local cluster's own etcd member: Debian's `etcd` binary, one member, its data in DIR/etcd,
its client and peer URLs on 127.0.0.1 (free ports chosen when it is made, below the ephemeral
range (ports.py), kept across restarts, as a node keeps its address, moved if another process
has taken one), its log in DIR/etcd.log.
`cluster up` starts it before the nodes, `cluster down` stops it after them. A data dir it
cannot start from is set aside as DIR/etcd.damaged-N and a new member started (start() says
why that loses nothing).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import BlockfoldError
from . import ports, processes
from .config import EtcdEntry

BINARY = "etcd"
DATA = "etcd"
LOG_FILE = "etcd.log"
READY_TIMEOUT = 20.0        # it answers in 0.7 s here; a loaded machine takes longer
TAKEN = "address already in use"
TRIES = 3                   # starts: a free port taken before etcd bound it, a damaged data dir


def binary() -> str:
    """The path of the etcd binary. Raises BlockfoldError naming the package if there is none."""
    found = shutil.which(BINARY)
    if found is None:
        raise BlockfoldError("no `etcd` binary on PATH: install Debian's etcd-server (or use"
                             " `cluster up --etcd URL` for an etcd running elsewhere, or"
                             " `--etcd none`); nothing made")
    return found


def prefix(path: Path) -> str:
    """A new cluster's key prefix: its directory's name and a random tag, unique per cluster."""
    return f"/blockfold/{path.name or 'cluster'}-{secrets.token_hex(4)}/"


def create(path: Path) -> EtcdEntry:
    """A new local member's entry (not started yet): data dir, free ports, prefix."""
    client = ports.free()
    peer = ports.free(chosen=frozenset([client]))
    return EtcdEntry(endpoints=[f"http://127.0.0.1:{client}"], prefix=prefix(path),
                     data=str((path / DATA).resolve()), peer=f"http://127.0.0.1:{peer}")


def is_running(entry: EtcdEntry) -> bool:
    """Whether the member runs on its data dir; entry.pid is set to its pid when it does. Found
    by its command line when the pid recorded is not its (cluster.json restored from a backup
    or copied): taken for another process, it had its ports moved and a second member
    started on its data dir."""
    if not entry.data:
        return False
    if not processes.runs(entry.pid, "--data-dir", entry.data):
        pid = processes.find("--data-dir", entry.data)
        if pid is None:
            return False
        entry.pid = pid
    return True


def start(path: Path, entry: EtcdEntry, fresh: bool) -> None:
    """Starts the member and waits until it answers; entry.pid is set (save the entry after:
    its ports may move). Each of these is said in one line on stderr:
    - a port of its own that another process has taken moves to a free one;
    - a data dir it has but exits at once from (a damaged write-ahead log or database) is set
      aside as DIR/etcd.damaged-N and it starts as a new member. Nothing is lost: its only keys
      are leased liveness and session keys that their holders put again (engine.etcd.KeptKey).
    Raises BlockfoldError with the last error of its log if it does not start (it is killed);
    a wait interrupted (KeyboardInterrupt) kills it too."""
    etcd = binary()
    tries = 1
    while True:
        proc = None
        try:
            with processes.interrupts_held():
                proc = _spawn(etcd, path, entry)
            why = _wait_ready(proc, entry)
        except BaseException:       # interrupted: its pid is nowhere yet, nothing could stop it
            if proc is not None:
                proc.kill()
                proc.wait()
            raise
        if why is None:
            entry.pid = proc.pid
            proc.returncode = 0     # it outlives us: forget the Popen quietly (init reaps it)
            return
        exited = proc.poll() is not None
        proc.kill()
        proc.wait()
        if tries >= TRIES:
            raise BlockfoldError(f"etcd did not start: {why} (see {path / LOG_FILE})")
        tries += 1
        if TAKEN in why:
            if fresh:       # what it made of its first start names the old peer URL
                shutil.rmtree(entry.data, ignore_errors=True)
            _tell(_move_ports(entry, why))
        elif exited and not fresh:
            aside = _set_aside(Path(entry.data))
            _tell(f"etcd did not start from {entry.data} ({why}): set it aside as {aside} and"
                  " started a new member (nodes and writers register again)")
            fresh = True
        else:
            raise BlockfoldError(f"etcd did not start: {why} (see {path / LOG_FILE})")


def _move_ports(entry: EtcdEntry, why: str) -> str:
    """Gives the member a free port for the one its start found taken (both if `why` does not
    name one of them); the line that says so."""
    taken = re.search(r"listen tcp (\S+): bind", why)
    ours = {"client": entry.endpoints[0], "peer": entry.peer}
    which = [kind for kind, url in ours.items()
             if taken and urlsplit(url).netloc == taken.group(1)] or list(ours)
    new = {kind: f"http://127.0.0.1:{ports.free()}" for kind in which}
    entry.endpoints = [new.get("client", entry.endpoints[0])]
    entry.peer = new.get("peer", entry.peer)
    moved = ", ".join(f"{kind} {ours[kind]} -> {new[kind]}" for kind in which)
    return f"etcd's port was taken by another process: moved {moved} (in cluster.json)"


def _set_aside(data: Path) -> Path:
    """Moves a damaged data dir to DATA.damaged-N, the first N free; where it went."""
    n = 1
    while (aside := data.with_name(f"{data.name}.damaged-{n}")).exists():
        n += 1
    data.rename(aside)
    return aside


def _tell(line: str) -> None:
    print(f"blockfold: {line}", file=sys.stderr, flush=True)


def _spawn(etcd: str, path: Path, entry: EtcdEntry) -> subprocess.Popen:
    client = entry.endpoints[0]
    cmd = [etcd, "--name", "blockfold", "--data-dir", entry.data,
           "--listen-client-urls", client, "--advertise-client-urls", client,
           "--listen-peer-urls", entry.peer, "--initial-advertise-peer-urls", entry.peer,
           "--initial-cluster", f"blockfold={entry.peer}",
           "--logger", "zap", "--log-outputs", "stderr"]
    with open(path / LOG_FILE, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def _wait_ready(proc: subprocess.Popen, entry: EtcdEntry) -> str | None:
    """None once the member answers; why not, if it exits or the time runs out."""
    from ..etcd import Etcd, EtcdError     # on use, as lifecycle.etcd_of says why
    etcd = Etcd(entry.endpoints, entry.prefix, timeout=1.0)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return _last_error(Path(entry.data).parent / LOG_FILE)
            try:
                etcd.check()
                return None
            except EtcdError:
                time.sleep(0.05)
        return f"it did not answer within {READY_TIMEOUT:g} s"
    finally:
        etcd.close()


def _last_error(log: Path) -> str:
    """The message of the last error line of its log (zap writes JSON lines)."""
    lines = log.read_text(errors="replace").strip().splitlines()
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") in ("error", "fatal", "panic"):
            return f"{record.get('msg', '')}: {record.get('error', '')}".strip(": ")
    return lines[-1] if lines else "it exited at once"


def stop(entry: EtcdEntry) -> None:
    """Stops the member (SIGTERM; SIGKILL if that is not enough) and waits until it is gone."""
    if is_running(entry):       # its pid, found
        processes.stop_pid(entry.pid, lambda: is_running(entry))
