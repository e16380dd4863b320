"""Whether a lease holder's process is gone, and what a holder says it is
(engine/cluster/holder.py), on real processes and files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from engine.cluster import holder


def _child():
    """A process that prints its holder identity and waits."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from engine.cluster import"
                             " holder; print(holder.process(), flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_running_process_is_not_gone_and_a_killed_one_is():
    proc, identity = _child()
    try:
        assert not holder.gone(identity)
        assert not holder.gone(holder.process())
        os.kill(proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)      # dead, not yet reaped
        assert holder.gone(identity)                                 # a zombie holds nothing
    finally:
        proc.kill()
        proc.wait()
    assert holder.gone(identity)


def test_a_reused_pid_is_another_process():
    boot, namespace, pid, start = holder.process().split()
    assert holder.gone(f"{boot} {namespace} {pid} {int(start) - 1}")


def test_a_process_of_another_host_or_namespace_cannot_be_judged():
    boot, namespace, pid, start = holder.process().split()
    assert not holder.gone(f"00000000-0000-0000-0000-000000000000 {namespace} 999999999 1")
    assert not holder.gone(f"{boot} 1 999999999 1")
    for garbage in ("", "x", f"{boot} {namespace} x 1", f"{boot} {namespace} -1 1"):
        assert not holder.gone(garbage)


def test_the_name_tells_two_opens_in_one_process_apart():
    assert holder.name() != holder.name()
    assert f" pid {os.getpid()} (" in holder.name()


def test_a_holders_note_names_it_only_while_the_lease_is_its_own(tmp_path):
    holder.note(tmp_path, "vm pid 7 (abcdef)", "a console", "blockfold console -c C", "quit it")
    said = f"cluster {tmp_path} is held by a console (pid {os.getpid()}, `blockfold console -c C`):"
    assert holder.said(tmp_path, {"vm pid 7 (abcdef)"}) == ("a console", f"{said} quit it")
    # A newer writer took the lease since (the console was fenced): the note names nobody.
    assert holder.said(tmp_path, {"vm pid 8 (123456)"}) is None
    holder.unnote(tmp_path, "vm pid 8 (123456)")           # not its note: kept
    assert holder.said(tmp_path, {"vm pid 7 (abcdef)"}) is not None
    holder.unnote(tmp_path, "vm pid 7 (abcdef)")
    assert holder.said(tmp_path, {"vm pid 7 (abcdef)"}) is None
    assert list(tmp_path.iterdir()) == []
