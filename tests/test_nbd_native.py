"""The transmission phase runs in the native core without the GIL: a connection's requests are
served while Python in the server's own process holds the GIL and will not let go of it."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import zlib

from engine.api import LocalAdmin
from engine.service.service import Service
from tests.nbdclient import MiB

READS = 200

# A desktop in another process: connects, says so, waits for "go", then reads the first MiB in
# 4 KiB requests and prints when it had every reply (time.time()) and the bytes' checksum.
CLIENT = f"""
import sys, time, zlib
from tests.nbdclient import RawClient
c = RawClient(int(sys.argv[1]))
c.connect("golden")
print("ready", flush=True)
sys.stdin.readline()
data = b"".join(c.read(i * 4096 % {MiB}, 4096)[1] for i in range({READS}))
print(time.time(), zlib.crc32(data), flush=True)
"""


def test_requests_are_served_while_python_holds_the_gil(pool_dir, tmp_path):
    golden = random.Random(3).randbytes(MiB)
    (tmp_path / "golden.raw").write_bytes(golden)
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        service = Service(admin, pool_dir, actor="test", nbd=("127.0.0.1", 0))
        _, port = service.start_in_thread()["nbd"]
        try:
            client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert client.stdout.readline() == "ready\n"     # negotiated: in transmission
            interval = sys.getswitchinterval()
            sys.setswitchinterval(30.0)     # no other thread gets the GIL from this one
            try:
                client.stdin.write("go\n")
                client.stdin.flush()
                held_until = time.time() + 3.0
                while time.time() < held_until:     # pure Python: keeps the GIL
                    pass
            finally:
                sys.setswitchinterval(interval)
            done, crc = client.stdout.readline().split()
            assert client.wait(30) == 0
        finally:
            service.stop()
    expected = b"".join(golden[i * 4096 % MiB:][:4096] for i in range(READS))
    assert int(crc) == zlib.crc32(expected)
    assert float(done) < held_until    # every reply came while this process held the GIL
