"""fsck beside a writer (issue 13.2): random 4 KiB FUA writes over NBD while `blockfold fsck`
runs through the service, again and again: it never reports a problem that is not there; and on
a pool with one flipped byte it reports exactly that block."""

from __future__ import annotations

import json
import os
import random
import threading
import time

from tests.conftest import run_cli
from tests.nbdclient import CMD_FLAG_FUA, MiB, RawClient, servers

BS = 4096
WRITE_SECONDS = 6


def test_fsck_beside_fua_writes_finds_nothing_false_then_exactly_a_flipped_byte(pool_dir,
                                                                               tmp_path):
    image = tmp_path / "golden.raw"
    image.write_bytes(os.urandom(256 * BS))
    run_cli("-p", pool_dir, "vm", "import", "golden", image, check=True)
    run_cli("-p", pool_dir, "vm", "clone", "golden", "desk", check=True)
    stop = threading.Event()
    written = []
    errors = []

    def writer(port: int, seed: int) -> None:
        rng = random.Random(seed)
        c = RawClient(port)
        c.connect("desk")
        try:
            while not stop.is_set():
                offset = rng.randrange(0, MiB // BS) * BS
                # Some writes repeat golden's blocks (shared), some are new, some are zeros.
                kind = rng.random()
                data = (image.read_bytes()[offset:offset + BS] if kind < 0.3 else
                        bytes(BS) if kind < 0.4 else rng.randbytes(BS))
                error = c.write(offset, data, flags=CMD_FLAG_FUA)
                if error:
                    errors.append(error)
                written.append(offset)
        finally:
            c.close()

    with servers(pool_dir) as start:
        s = start()
        assert (pool_dir / "admin.sock").exists()     # so fsck goes through the service
        threads = [threading.Thread(target=writer, args=(s.port, n)) for n in range(2)]
        for t in threads:
            t.start()
        runs = []
        deadline = time.monotonic() + WRITE_SECONDS
        try:
            while time.monotonic() < deadline or len(runs) < 3:
                proc = run_cli("-p", pool_dir, "fsck", "--json")
                runs.append(proc)
                assert proc.returncode == 0, proc.stdout_text + proc.stderr_text
                assert json.loads(proc.stdout)["clean"]
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == [] and len(written) > 100
        s.stop()

    slot = 5                          # one of golden's blocks: live, never overwritten
    with open(pool_dir / "blocks.dat", "r+b") as f:
        f.seek(slot * BS + 100)
        byte = f.read(1)
        f.seek(slot * BS + 100)
        f.write(bytes([byte[0] ^ 0x01]))
    proc = run_cli("-p", pool_dir, "fsck", "--json")
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["kind"], p["pbn"]) for p in problems] == [("corrupt", slot)], problems
