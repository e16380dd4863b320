"""A real terminal for tests: a tmux server of its own (private socket) running one command."""

from __future__ import annotations

import os
import subprocess
import time


class Terminal:
    def __init__(self, tmp_path, command: str, name: str = "main", env: dict | None = None):
        self.socket = str(tmp_path / f"tmux-{name}.sock")
        self.done = tmp_path / f"exit-{name}"
        # Without COLUMNS/LINES the program sees the pane's own size; without TMUX, no nesting.
        env = {k: v for k, v in (env or os.environ).items()
               if k not in ("COLUMNS", "LINES", "TMUX")}
        # The pane lingers after the command ends, so its last screen can still be read.
        subprocess.run(["tmux", "-S", self.socket, "new-session", "-d", "-x", "120", "-y", "34",
                        f"{command}; echo $? > {self.done}; sleep 30"], check=True, env=env)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-S", self.socket, "capture-pane", "-p"],
                              capture_output=True, text=True).stdout

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.1)
        code = self.done.read_text() if self.done.exists() else "none yet"
        raise AssertionError(f"{text!r} never appeared (exit code {code}); the screen shows:\n"
                             f"{self.screen()}")

    def wait_until(self, check, what: str, timeout: float = 20) -> str:
        """The first screen check(screen) accepts, polled: a capture may fall mid-redraw, so
        what a test asserts of a screen is asserted of one capture that shows it whole."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if check(shown):
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{what} never appeared; the screen shows:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-S", self.socket, "send-keys", *keys], check=True)

    def resize(self, columns: int, rows: int) -> None:
        subprocess.run(["tmux", "-S", self.socket, "resize-window", "-x", str(columns), "-y",
                        str(rows)], check=True)

    def exit_code(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.done.exists() and self.done.read_text().strip():
                return int(self.done.read_text())
            time.sleep(0.1)
        raise AssertionError(f"the command did not exit; the screen shows:\n{self.screen()}")

    def client_pid(self) -> int:
        """The command's process: the child of the pane's shell."""
        shell = subprocess.run(["tmux", "-S", self.socket, "display", "-p", "#{pane_pid}"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return int(subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True,
                                  check=True).stdout.split()[0])

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)
