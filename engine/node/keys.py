"""Key files in a node's data directory, and who a login is.

    host_key, host_key.pub   the node's ed25519 host key, made on first start; clients pin it
    authorized_keys          node keys: the coordinator's, for the `blockfold-rpc` subsystem
    peer_keys                the cluster's peer key: other nodes copying blocks here (heal),
                             for the `blockfold-rpc` subsystem, HELLO and PUT only
    peer_key                 the cluster's peer private key: this node's own, to copy to others
    admin_keys               keys that get the console over SSH
    admin_keys_readonly      keys that get the console read-only

The key files are OpenSSH authorized_keys files, read on every login; a key's comment names the
actor in events. asyncssh parses each line (`import_authorized_keys`, which also matches from=);
this module decides what the options allow, as sshd(8) ("AUTHORIZED_KEYS FILE FORMAT") documents
them, so far as a node offers what they govern:

    from="pattern-list"        the client's address must match (wildcards, CIDR, ! negation);
                               else the line counts for nothing, as if the key were not there
    expiry-time="YYYYMMDD[HHMM[SS]][Z]"   the line counts for nothing after that time (the
                               node's local time; UTC with Z)
    no-pty                     no terminal, so no console: the console needs one
    restrict                   every restriction: no terminal (so no console) unless `pty`
    pty                        a terminal again, after restrict
    no-port-forwarding, no-agent-forwarding, no-X11-forwarding, no-user-rc
                               accepted as they are: a node refuses every kind of forwarding to
                               every key and runs no rc file

Any other option refuses the line: the key gets nothing from it, and the node logs one line on
stderr naming the file, the line number and the option. That includes command=: a node runs no
commands, so it cannot honour a forced one, and a line meant to force one grants nothing rather
than more than it says. The first line of a file that lets the key in is the one that counts.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncssh

HOST_KEY = "host_key"
AUTHORIZED_KEYS = "authorized_keys"
ADMIN_KEYS = "admin_keys"
READONLY_KEYS = "admin_keys_readonly"
PEER_KEYS = "peer_keys"
PEER_KEY = "peer_key"
# How a node authorises the peer key: no terminal, no forwarding of any kind.
PEER_OPTIONS = "restrict"

# Options the node enforces (or that hold for every key), and the restrictions `restrict` sets.
ENFORCED = {"from", "expiry-time", "no-pty", "pty", "restrict", "no-port-forwarding",
            "no-agent-forwarding", "no-X11-forwarding", "no-user-rc"}
EXPIRY_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}

log = logging.getLogger(__name__)


def ensure_host_key(directory: Path) -> None:
    """An ed25519 host key, made on first start and kept for good: clients pin it."""
    path = directory / HOST_KEY
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
        os.chmod(path, 0o600)
        key.write_public_key(str(path) + ".pub")


def host_public_key(directory: Path) -> str:
    """The node's host public key in OpenSSH one-line form (the node has started once)."""
    return (directory / (HOST_KEY + ".pub")).read_text().strip()


def host_key_id(public_key: str) -> str:
    """A node's id in etcd: 16 hex digits of the SHA-256 of its host key's blob (`public_key`
    in OpenSSH one-line form, as cluster.json pins it; its comment does not count). Names will
    not do: a node that runs elsewhere names itself (node.json), and `cluster add --name` gives
    it another. Raises ValueError for a line that is not a key."""
    return hashlib.sha256(base64.b64decode(public_key.split()[1], validate=True)).hexdigest()[:16]


@dataclass(frozen=True)
class Grant:
    """The line of a key file that lets a key in, and what its options leave it."""

    where: str          # "admin_keys line 3", for messages
    comment: str        # the key's comment on that line ("" if none)
    pty: bool           # may have a terminal (no no-pty; restrict only with pty)


@dataclass(frozen=True)
class Login:
    """Who a connection authenticated as."""

    rpc_allowed: bool           # a node key: may open the `blockfold-rpc` subsystem
    console_role: str | None    # "admin", "readonly", or None (no console)
    actor: str                  # the key's comment, or its fingerprint
    pty: bool                   # the line giving the console allows a terminal
    console_from: str           # that line ("admin_keys line 3"), or "" (no console)
    peer: bool = False          # the peer key: `blockfold-rpc` with rpc.PEER_REQUESTS only


def login_for(directory: Path, key: asyncssh.SSHKey, address: str) -> Login | None:
    """What `key`, connecting from IP `address`, may do on this node, or None if no line of any
    key file lets it in. The files are read on every login, so a key added, removed or expired
    counts at once."""
    grants = {name: grant(directory / name, key, address)
              for name in (AUTHORIZED_KEYS, ADMIN_KEYS, READONLY_KEYS, PEER_KEYS)}
    if not any(grants.values()):
        return None
    console = grants[ADMIN_KEYS] or grants[READONLY_KEYS]
    role = "admin" if grants[ADMIN_KEYS] else "readonly" if grants[READONLY_KEYS] else None
    named = console or grants[AUTHORIZED_KEYS] or grants[PEER_KEYS]
    actor = named.comment or f"ssh:{key.get_fingerprint()}"
    return Login(grants[AUTHORIZED_KEYS] is not None, role, actor,
                 pty=console.pty if console else False,
                 console_from=console.where if console else "",
                 peer=grants[PEER_KEYS] is not None)


def grant(path: Path, key: asyncssh.SSHKey, address: str) -> Grant | None:
    """The first line of the authorized_keys-style file `path` that lets `key` in from
    `address`, or None (also if the file is absent). Lines refused for their options are
    logged; see the module's docstring."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    blob = key.export_public_key("openssh").split()[1].decode()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name} line {number}"
        try:
            entry = asyncssh.import_authorized_keys(line)
        except ValueError as e:         # not a key line, or options asyncssh cannot read
            log.warning("blockfold: %s line %d: refused: not a key line (%s)", path, number, e)
            continue
        options = entry.validate(key, address, address)
        if options is None:
            if blob in line:
                _refused_other(path, number, entry, key, address)
            continue
        refusal = _refusal(options)
        if refusal:
            log.warning("blockfold: %s line %d: refused: %s", path, number, refusal)
            continue
        pty = not options.get("no-pty") and (not options.get("restrict") or "pty" in options)
        return Grant(where, line.partition(blob)[2].strip(), pty)
    return None


def _refused_other(path: Path, number: int, entry, key, address: str) -> None:
    """The line holds the key but lets it in from nowhere here: logs why."""
    if entry.validate(key, address, address, ca=True) is not None:
        why = "option 'cert-authority' is not enforced (a node takes no certificates)"
    else:
        why = f"a login from {address}, which its from= does not allow"
    log.warning("blockfold: %s line %d: refused: %s", path, number, why)


def _refusal(options) -> str | None:
    """Why a line with these (asyncssh-parsed) options grants nothing, or None."""
    for name in options:
        if name == "command":
            return ("option 'command' is not enforced: a node runs no commands, so it"
                    " cannot force one")
        if name not in ENFORCED:
            return f"option {name!r} is not enforced by Blockfold"
    expires = options.get("expiry-time")
    if expires:
        try:
            end = min(map(_expiry, expires))
        except ValueError as e:
            return str(e)
        if end < time.time():
            stamp = datetime.fromtimestamp(end).astimezone().isoformat(" ", "seconds")
            return f"the key expired at {stamp} (expiry-time)"
    return None


def _expiry(text: str) -> float:
    """An expiry-time value as a Unix time: YYYYMMDD[HHMM[SS]], local time unless it ends in Z
    (sshd(8))."""
    digits = text.removesuffix("Z")
    form = EXPIRY_FORMATS.get(len(digits))
    try:
        if form is None or not digits.isdigit():
            raise ValueError
        moment = datetime.strptime(digits, form)
    except ValueError:
        raise ValueError(f"bad expiry-time {text!r}: use YYYYMMDD[HHMM[SS]][Z]") from None
    return (moment.replace(tzinfo=UTC) if text.endswith("Z") else moment).timestamp()
