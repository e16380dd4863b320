"""Whether a process named by its identity still runs (engine/processid.py), on real
processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from engine import processid


def _child():
    """A process that prints its identity and waits."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; from engine import processid;"
                             " print(processid.this(), flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_running_process_is_not_gone_and_a_killed_one_is():
    proc, identity = _child()
    try:
        assert not processid.gone(identity) and processid.running(identity)
        assert not processid.gone(processid.this()) and processid.running(processid.this())
        os.kill(proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)      # dead, not yet reaped
        assert processid.gone(identity) and not processid.running(identity)    # a zombie
    finally:
        proc.kill()
        proc.wait()
    assert processid.gone(identity)


def test_a_reused_pid_is_another_process():
    boot, namespace, pid, start = processid.this().split()
    assert processid.gone(f"{boot} {namespace} {pid} {int(start) - 1}")
    assert not processid.running(f"{boot} {namespace} {pid} {int(start) - 1}")


def test_a_process_of_another_host_or_namespace_cannot_be_judged():
    boot, namespace, pid, start = processid.this().split()
    assert not processid.gone(f"00000000-0000-0000-0000-000000000000 {namespace} 999999999 1")
    assert not processid.gone(f"{boot} 1 999999999 1")
    assert not processid.running(f"{boot} 1 {pid} {start}")
    for garbage in ("", "x", f"{boot} {namespace} x 1", f"{boot} {namespace} -1 1"):
        assert not processid.gone(garbage) and not processid.running(garbage)
