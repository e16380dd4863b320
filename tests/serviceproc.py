"""`blockfold serve` as a subprocess, for the service tests: started, read until it listens, and
stopped (SIGTERM: it must drain and exit 0) or killed (-9)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import ROOT


class Served:
    """`blockfold -p POOL serve` (or -c CLUSTER) with `extra` arguments."""

    def __init__(self, where: list[str], *extra: str, env: dict | None = None, **popen):
        self.proc = subprocess.Popen([sys.executable, "-m", "console", *where, "serve", *extra],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, **{"stdin": subprocess.DEVNULL, **popen})
        self.lines = {}
        wanted = {"admin"} | {flag[2:] for flag in extra if flag in ("--nbd", "--metrics")}
        out: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [*map(out.put, self.proc.stdout), out.put("")],
                         daemon=True).start()
        while not wanted <= set(self.lines):
            try:
                line = out.get(timeout=60)
            except queue.Empty:
                line = ""
            if not line:
                self.proc.kill()
                raise AssertionError(f"blockfold serve did not start: {self.proc.communicate()}")
            what, _, value = line.strip().partition(" ")
            self.lines[what] = value
        self.socket = Path(self.lines["admin"])

    @property
    def nbd(self) -> str:
        return self.lines["nbd"]

    def uri(self, vm: str) -> str:
        return f"nbd://{self.nbd}/{vm}"

    @property
    def metrics(self) -> str:
        return f"http://{self.lines['metrics']}/metrics"

    def stop(self) -> str:
        """SIGTERM: drains, flushes, marks the pool clean and exits 0. Returns its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)
