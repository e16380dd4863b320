"""kill -9 a writer at random moments; every time, reopen and rebuild: every flushed byte reads
back and fsck is clean. 3 tests × 8 kills = 24 kill points."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import xxhash

from engine.pool import Pool
from tests.conftest import ROOT, cli_json, run_cli

KILLS = 8


def run_and_kill(path, seed: int, rng: random.Random) -> list[dict]:
    """Starts the writer, lets it run a random while, kills it; returns what it reported."""
    proc = subprocess.Popen([sys.executable, "tests/crash_writer.py", str(path), str(seed)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in proc.stdout))
    reader.start()
    deadline = time.monotonic() + 20
    while not lines and time.monotonic() < deadline:     # wait until it has opened the pool
        time.sleep(0.01)
    time.sleep(rng.uniform(0.05, 0.8))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    return lines


def acceptable_states(lines: list[dict]) -> list[dict]:
    """The last durable state, or a later one whose commit may have landed."""
    last = max(i for i, line in enumerate(lines) if "durable" in line)
    return [lines[last]["durable"]] + [line["maybe"] for line in lines[last + 1:]]


def recovered_state(pool: Pool) -> dict:
    return {name: xxhash.xxh64_hexdigest(pool.read(name, 0, pool.vm_size(name)))
            for name in pool.vm_names()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_loses_nothing_flushed(tmp_path, seed):
    path = Pool.create(tmp_path / "pool")
    rng = random.Random(seed)
    for kill in range(KILLS):
        lines = run_and_kill(path, seed * 100 + kill, rng)
        allowed = acceptable_states(lines)
        if kill % 4 == 3:
            # The operator's way: the CLI, a full rebuild, then fsck.
            figures = cli_json("-p", path, "rebuild", "--full")
            assert figures["reason"] == "crash" and figures["corrupt_blocks"] == []
            assert run_cli("-p", path, "fsck").returncode == 0
        with Pool.open(path) as pool:
            assert pool.last_rebuild["reason"] in ("crash", "open")
            assert recovered_state(pool) in allowed, f"kill {kill}: state lost"
            assert pool.fsck() == []
    # After all that churn, nothing leaked: every used slot is referenced by some VM.
    with Pool.open(path, rebuild="full") as pool:
        assert pool.fsck() == []
        assert pool.last_rebuild["orphans_reclaimed"] == 0


FORKING_WRITER = """
import os, sys, time
from engine.pool import Pool
pool = Pool.open(sys.argv[1])
child = os.fork()
if child == 0:          # a child between fork and exec (qemu-img being spawned), drawn out
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def test_a_killed_writers_child_does_not_keep_the_pool(tmp_path):
    """A writer killed while a child it forked has not exec'd yet: the pool opens at once (a
    flock, shared with the child, kept it locked in the dead writer's name: the flake)."""
    path = Pool.create(tmp_path / "pool")
    proc = subprocess.Popen([sys.executable, "-c", FORKING_WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child = None
    try:
        child = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Pool.open(path) as pool:
            assert pool.last_rebuild["reason"] == "crash"
    finally:
        if child is not None:       # first: it holds the pipes communicate() reads to the end
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
