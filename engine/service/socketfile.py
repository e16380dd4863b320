"""DIR/admin.sock: the Unix socket a service listens on. Its file mode is the permission check:
0600 (the service's user only), or 0660 with a group (its members too). The mode is set before
the socket takes its first connection, so no client ever finds it more open than that.

Two services of one cluster may take turns as its writer (a standby took over, the first took
the cluster back: engine/service/service.py): each knows its socket by its file's identity, so
the one writing again binds the path anew, and the other, stopping, does not remove it. A service
whose socket was removed under it (a tmp cleaner, a user taking it for a killed service's) makes
it again, unless another service answers at the path (`answers`).
"""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

from ..errors import BlockfoldError
from ..net.adminwire import server_pid, socket_address

BACKLOG = 64


def bind(path: Path, group: str | None = None) -> socket.socket:
    """A listening Unix stream socket at `path`, mode 0600, or 0660 owned by `group`. A socket
    left there by a service that was killed is replaced (the caller holds the pool: it is the
    one service). Raises BlockfoldError (an unknown group, a path that cannot be bound)."""
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise BlockfoldError(f"no group named {group!r}") from None
    try:
        path.unlink(missing_ok=True)
    except OSError as e:        # a directory put there, say
        raise BlockfoldError(f"cannot make the admin socket {path}: {e.strerror or e}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file as the umask allows: this one leaves the owner alone in. The umask
    # is the process's, so other threads' files made in this instant get the same mode.
    previous = os.umask(0o177)
    try:
        with socket_address(path) as address:
            sock.bind(address)
    except OSError as e:
        sock.close()
        raise BlockfoldError(f"cannot make the admin socket {path}: {e.strerror or e}") from None
    finally:
        os.umask(previous)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    sock.listen(BACKLOG)
    return sock


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path` now, or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove(path: Path, bound: tuple[int, int] | None) -> None:
    """Removes the socket at `path` if it is still the one bound as `bound` (identity): another
    service may have made the path its own since."""
    if bound is not None and identity(path) == bound:
        path.unlink(missing_ok=True)


def answers(path: Path) -> bool:
    """Whether a service listens on the socket at `path`: one whose mode keeps this user out,
    or whose backlog stays full, counts (it is not ours to replace)."""
    try:
        return server_pid(path) is not None
    except (PermissionError, BlockfoldError):
        return True
    except OSError:         # not a socket
        return False
