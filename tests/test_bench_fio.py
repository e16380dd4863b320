"""The NBD benchmark's write jobs carry the data they claim: fresh means never seen before, and
"80 % duplicates" means 80 % of the blocks repeat. fio's default (randrepeat=1) writes the same
"random" bytes on every run, which would turn a repeat of the fresh-data job into all duplicates.

The benchmarks themselves are not run by `make test`; `python -m tests.bench.run_all --quick`
checks that they all run.
"""

import shutil
import subprocess

import pytest
import xxhash

from tests.bench import nbd

pytestmark = pytest.mark.skipif(not shutil.which("fio"), reason="needs fio")


def written(path, job: str) -> list[bytes]:
    """The 4 KiB blocks a benchmark job writes into an 8 MiB file, each block once, in order."""
    args = [a for a in nbd.JOBS[job][1] if not a.startswith(("--rw=", "--iodepth="))]
    subprocess.run(["fio", "--name=t", f"--filename={path}", "--size=8M", "--ioengine=psync",
                    "--rw=write", *args], check=True, capture_output=True)
    data = memoryview(path.read_bytes())
    return [xxhash.xxh3_128_digest(data[i:i + 4096]) for i in range(0, len(data), 4096)]


def test_fresh_writes_are_new_on_every_run_and_the_dedup_job_repeats_80_percent(tmp_path):
    first = written(tmp_path / "a", "randwrite_4k")
    again = written(tmp_path / "b", "randwrite_4k")
    assert len(set(first)) == len(first) and not set(first) & set(again)

    dedup = written(tmp_path / "c", "randwrite_4k_dedup80")
    repeated = 1 - len(set(dedup)) / len(dedup)
    assert 0.75 <= repeated <= 0.85
    assert not set(dedup) & set(first)
