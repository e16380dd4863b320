"""kill -9 a writer at random moments; every time, reopen and rebuild: every flushed byte reads
back and fsck is clean. 3 tests × 8 kills = 24 kill points."""

from __future__ import annotations

import json
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
