"""The console over SSH: an interactive session runs `blockfold console` in its own child process
on a pseudo-terminal, and the node copies bytes between the SSH channel and the pty master.

A child per session keeps sessions apart: one console's crash ends only its own channel, and the
node (an asyncio server in front of the block store) never runs Textual or opens the pool itself.
Bytes pass through raw, so every key (Escape included) reaches the console as the client typed it;
a window change is set on the pty and the kernel sends the child SIGWINCH.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import signal
import struct
import sys
import termios
from pathlib import Path

import asyncssh

from .keys import ADMIN_KEYS, READONLY_KEYS, Login

ACTOR_ENV = "BLOCKFOLD_ACTOR"    # the console logs its events under this actor
PROJECT_ROOT = Path(__file__).resolve().parents[2]
GRACE_SECONDS = 5.0              # a console left by its client gets this long to close the pool


def set_window(fd: int, columns: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 24, columns or 80, 0, 0))


def _controlling_terminal() -> None:
    """In the child, before exec: a session of its own with the pty (its stdin) as controlling
    terminal, so window changes reach it as SIGWINCH."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ConsoleChild:
    """One console process on a pty; its output goes to `write`, `done(status)` once it ends."""

    def __init__(self, write, done):
        self.write = write
        self.done = done
        self.master: int | None = None
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, cluster: str, read_only: bool, actor: str, term: str,
                    size: tuple[int, int]) -> None:
        master, slave = pty.openpty()
        set_window(master, *size)
        # The node's own COLUMNS/LINES would override the client's window size.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(TERM=term or "xterm-256color", PYTHONUTF8="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                           os.environ.get("PYTHONPATH")])))
        env[ACTOR_ENV] = actor
        # -P: not the node's current directory first on sys.path (a console/ there).
        command = [sys.executable, "-P", "-m", "console", "console", "-c", cluster]
        if read_only:
            command.append("--read-only")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *command, stdin=slave, stdout=slave, stderr=slave, env=env,
                preexec_fn=_controlling_terminal, close_fds=True)
        finally:
            os.close(slave)
        self.master = master
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._readable)
        asyncio.get_running_loop().create_task(self._wait())

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:             # EIO: every process on the slave side has gone
            data = b""
        if data:
            self.write(data)
        else:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.master is not None:
            asyncio.get_running_loop().remove_reader(self.master)

    async def _wait(self) -> None:
        status = await self.proc.wait()
        # What the console wrote last (restoring the screen) may still sit in the pty.
        while self.master is not None:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            self.write(data)
        self._close()
        self.done(status if status >= 0 else 128 - status)

    def input(self, data: bytes) -> None:
        if self.master is not None:
            try:
                os.write(self.master, data)
            except OSError:
                pass

    def resize(self, columns: int, rows: int) -> None:
        if self.master is not None:
            set_window(self.master, columns, rows)

    def hang_up(self) -> None:
        """The client went away: end the console (SIGHUP as a terminal would), then make sure."""
        if self.proc is None or self.proc.returncode is not None:
            return
        proc = self.proc
        for sig in (signal.SIGHUP, signal.SIGTERM):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return

        def kill():
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        asyncio.get_running_loop().call_later(GRACE_SECONDS, kill)

    def _close(self) -> None:
        if self.master is not None:
            self._stop_reading()
            os.close(self.master)
            self.master = None


class ConsoleSession:
    """The interactive half of a node session: decides whether this key may have a console,
    and runs it."""

    def __init__(self, chan, cluster: str | None, login: Login):
        self.chan = chan
        self.cluster = cluster
        self.login = login
        self.child: ConsoleChild | None = None

    def start(self, term: str | None, size: tuple[int, int]) -> None:
        """Refusals are written at once, before the client's EOF could close the channel."""
        if self.login.console_role is None:
            what = "a node key" if self.login.rpc_allowed else "the cluster's peer key"
            return self._refuse(f"this key may not open the console: it is {what},"
                                f" not in {ADMIN_KEYS} or {READONLY_KEYS}")
        if not self.login.pty:
            return self._refuse(f"this key may have no terminal ({self.login.console_from}:"
                                " no-pty, or restrict without pty), and the console needs one")
        if self.cluster is None:
            return self._refuse("this node serves no console: start it with"
                                " `blockfold node serve --cluster DIR`")
        if term is None:
            return self._refuse("the console needs a terminal: connect with `ssh -t`")
        self.child = ConsoleChild(self._write, self._exit)
        asyncio.get_running_loop().create_task(self._spawn(term, size))

    async def _spawn(self, term: str, size: tuple[int, int]) -> None:
        try:
            await self.child.start(self.cluster, self.login.console_role == "readonly",
                                   self.login.actor, term, size)
        except OSError as e:
            self.child = None
            self._refuse(f"cannot start the console: {e.strerror or e}")

    def _refuse(self, message: str) -> None:
        self._write(f"blockfold: error: {message}\r\n".encode())
        self._exit(1)

    def _write(self, data: bytes) -> None:
        try:
            self.chan.write(data)
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass

    def _exit(self, status: int) -> None:
        try:
            self.chan.exit(status)
        except (asyncssh.Error, OSError):
            pass

    def input(self, data: bytes) -> None:
        if self.child is not None:
            self.child.input(data)

    def resize(self, columns: int, rows: int) -> None:
        if self.child is not None:
            self.child.resize(columns, rows)

    def closed(self) -> None:
        if self.child is not None:
            self.child.hang_up()
