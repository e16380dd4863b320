"""Local node processes: start one detached, wait for its `ready` line, find, stop or kill it.

A node is found by its data dir: the process holding DATA/lock (engine.node.server takes it
before it opens its store), not by the pid cluster.json records, which a file restored from a backup
or copied makes stale. The recorded pid is used only while a node starts (before it holds the
lock), and only if /proc says it still runs a node on that data dir, so a reused pid is never
signalled.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from .. import lock
from ..errors import BlockfoldError
from . import ports
from .config import EtcdEntry, NodeEntry

NODE_MODULE = "engine.node"     # started as `python -m engine.node`; how is_running knows it
READY_TIMEOUT = 30.0        # a loaded machine can take long to start Python and asyncssh
STOP_TIMEOUT = 5.0
LOG_FILE = "node.log"
TAKEN = "address already in use"    # how a node says its port is taken (engine.node.server)
MOVES = 3                   # a free port can be taken again before the node binds it


def start(entries: list[NodeEntry], etcd: EtcdEntry | None = None,
          started=None) -> list[tuple[int, str]]:
    """Starts local nodes, each in its own session, and waits for every `ready` line; with
    `etcd`, each keeps its liveness key there (engine.etcd). `started(entry, pid, address)` is
    called as each process starts (address None: not known yet) and again once it is ready
    (the address it listens on), so its caller can record it at once.

    A node whose port another process has taken moves to a free one (ports.free; entry.address
    changed, said in one line on stderr): its host key, not its address, is what the cluster
    pins. Returns (pid, the address it listens on) for each. A node that fails to start for
    another reason is an error naming it, raised once the others are up: they keep running (a
    node down is what the cluster is made to survive; stopping them all made one node's fault
    the whole cluster's). Interrupted (KeyboardInterrupt: Ctrl-C, or SIGTERM under
    console.commands' terminated_as_interrupted), it stops every node it started.
    """
    # A node whose data dir is gone is one of the errors: the others start.
    errors = [f"node {entry.name} cannot start: its data directory {entry.data} is gone"
              for entry in entries if not Path(entry.data).is_dir()]
    entries = [entry for entry in entries if Path(entry.data).is_dir()]
    procs: list[subprocess.Popen] = []

    def spawn(entry: NodeEntry) -> subprocess.Popen:
        with interrupts_held():     # kept before an interrupt that came meanwhile is raised
            procs.append(_spawn(entry, etcd))
        if started is not None:
            started(entry, procs[-1].pid, None)
        return procs[-1]

    try:
        running = [spawn(entry) for entry in entries]
        results = []
        for entry, proc in zip(entries, running):
            text = _ready_line(proc)
            for _ in range(MOVES):
                if text.startswith("ready ") or not _port_taken(entry, proc):
                    break
                _move(entry)
                proc = spawn(entry)
                text = _ready_line(proc)
            if not text.startswith("ready "):
                _stop_started([proc])       # exited, or hung before `ready`
                errors.append(f"node {entry.name} did not start: {_last_said(entry)}")
                continue
            results.append((proc.pid, text.split(" ", 1)[-1]))
            if started is not None:
                started(entry, *results[-1])
    except BaseException:
        _stop_started(procs)
        raise
    for proc in procs:
        # The node outlives us: forget the Popen quietly; init (or is_running) reaps it.
        proc.returncode = 0
    if errors:
        raise BlockfoldError("; ".join(errors))
    return results


def _spawn(entry: NodeEntry, etcd: EtcdEntry | None) -> subprocess.Popen:
    """The node's process, started on its data dir and address, its stderr to its log."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    # -P: the current directory is not put first on sys.path (an engine/ there, a checkout
    # of another version, took the place of this one: every node failed to import).
    cmd = [sys.executable, "-P", "-m", NODE_MODULE, "--data", entry.data, "--listen",
           entry.address]
    if entry.memory:
        cmd += ["--memory", str(entry.memory)]
    if etcd:
        cmd += ["--etcd", ",".join(etcd.endpoints), "--etcd-prefix", etcd.prefix]
    with open(Path(entry.data) / LOG_FILE, "ab") as log:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def _port_taken(entry: NodeEntry, proc: subprocess.Popen) -> bool:
    """Whether the node exited (it closed its stdout: it is on its way out) saying its port is
    taken (as its log's last line: an earlier run's is no answer while this one runs)."""
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    return TAKEN in _last_said(entry)


def _last_said(entry: NodeEntry) -> str:
    """The last line of the node's log (its error, if it exited), without our prefix."""
    log = (Path(entry.data) / LOG_FILE).read_text(errors="replace").strip()
    last = log.splitlines()[-1] if log else "no output"
    return last.removeprefix("blockfold: error: ")     # the caller's message adds its own


def _move(entry: NodeEntry) -> None:
    """Gives the node a free port for the one another process took; says so on stderr."""
    host = entry.address.rsplit(":", 1)[0]
    moved = f"{host}:{ports.free(host.strip('[]'))}"
    print(f"blockfold: node {entry.name}'s port was taken by another process: moved"
          f" {entry.address} -> {moved} (in cluster.json)", file=sys.stderr, flush=True)
    entry.address = moved


@contextmanager
def interrupts_held():
    """Holds Ctrl-C (and the signals taken as it: console.commands' terminated_as_interrupted)
    back while a child is spawned and kept, and raises KeyboardInterrupt after if one came: one
    raised inside Popen, once the child was forked, left it running with its pid known to
    nobody. Only in the main thread (signal handlers are set there alone); the child gets the
    default handlers back at exec, as for any handled signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    held = [sig for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            if signal.getsignal(sig) is signal.default_int_handler]
    before = {sig: signal.signal(sig, lambda sig, frame: came.append(sig)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if came:
        raise KeyboardInterrupt


def _stop_started(procs: list[subprocess.Popen]) -> None:
    """Stops the nodes of a start that failed or was interrupted, every one, and waits."""
    # SIGTERM: a node that started ends its liveness lease on the way out (kill -9 left it
    # "registered" in etcd for a TTL more). All signalled first, so they end side by side;
    # each is given STOP_TIMEOUT of its own to end its lease (a shared one ran out under load).
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready_line(proc) -> str:
    line = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                break
            line += chunk
    proc.stdout.close()
    return line.decode(errors="replace").strip()


def is_running(entry: NodeEntry) -> bool:
    """Whether a node serves entry's data dir here; entry.pid is set to its process's pid when
    one does (save the config to keep it)."""
    pid = lock.holder(Path(entry.data)) if entry.data else None
    if pid is None and runs(entry.pid, NODE_MODULE, entry.data):
        pid = entry.pid             # started, not holding its lock yet
    if pid is not None:
        entry.pid = pid
    return pid is not None


def runs(pid: int | None, *words: str) -> bool:
    """True if process `pid` runs (not a zombie) with every one of `words` in its command
    line: a recorded pid is only acted on while it is still the process we started."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)      # reaps it if it is our own child and has exited
    except ChildProcessError:
        pass
    return _has(pid, words)


def find(*words: str) -> int | None:
    """The pid of a process here whose command line has every one of `words` (see runs), the
    lowest if several; None if none. Reaps nothing: a caller's own children are its own."""
    pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    return next((pid for pid in pids if _has(pid, words)), None)


def _has(pid: int, words: tuple[str, ...]) -> bool:
    """Whether process `pid` runs (not a zombie) with every one of `words` in its command line."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return all(word.encode() in cmdline for word in words)


def stop(entry: NodeEntry, sig: int = signal.SIGTERM) -> None:
    """Signals the node and waits until it is gone (SIGKILL if SIGTERM is not enough)."""
    if is_running(entry):       # its pid, found
        stop_pid(entry.pid, lambda: is_running(entry), sig)


def stop_all(entries: list[NodeEntry], sig: int = signal.SIGTERM) -> None:
    """stop() of every node in `entries`, signalled all at once and then waited for: their
    shutdowns overlap instead of queueing (a cluster's `down`)."""
    running = [entry for entry in entries if is_running(entry)]
    for entry in running:
        os.kill(entry.pid, sig)
    for entry in running:
        _wait_gone(entry.pid, partial(is_running, entry))


def stop_pid(pid: int | None, running, sig: int = signal.SIGTERM) -> None:
    """Signals `pid` while running() says it is ours, and waits until it is gone (SIGKILL if
    `sig` is not enough)."""
    if not running():
        return
    os.kill(pid, sig)
    _wait_gone(pid, running)


def _wait_gone(pid: int, running) -> None:
    """Until running() is false; SIGKILL each STOP_TIMEOUT s it is not."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while running():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(0.01)
