"""Key files in a node's data directory, and who a login is.

    host_key, host_key.pub   the node's ed25519 host key, made on first start; clients pin it
    authorized_keys          node keys: the coordinator's, for the `blockfold-rpc` subsystem
    admin_keys               keys that get the console over SSH
    admin_keys_readonly      keys that get the console read-only

The key files are OpenSSH authorized_keys files (options before a key are allowed); a key's
comment names the actor in events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

HOST_KEY = "host_key"
AUTHORIZED_KEYS = "authorized_keys"
ADMIN_KEYS = "admin_keys"
READONLY_KEYS = "admin_keys_readonly"


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


@dataclass(frozen=True)
class Login:
    """Who a connection authenticated as."""

    rpc_allowed: bool           # a node key: may open the `blockfold-rpc` subsystem
    console_role: str | None    # "admin", "readonly", or None (no console)
    actor: str                  # the key's comment, or its fingerprint


def read_keys(path: Path) -> list[asyncssh.SSHKey]:
    """The public keys in an authorized_keys-style file (comments kept); none if it is absent."""
    if not path.is_file():
        return []
    keys = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # A line may start with options; the key is what follows them.
        for start in (line, line.partition(" ")[2]):
            try:
                keys.append(asyncssh.import_public_key(start))
                break
            except (asyncssh.KeyImportError, ValueError):
                continue
    return keys


def login_for(directory: Path, key: asyncssh.SSHKey) -> Login | None:
    """What `key` may do on this node, or None if it is in no key file. The files are read on
    every login, so a key added or removed counts at once."""
    found = {name: next((k for k in read_keys(directory / name) if k == key), None)
             for name in (AUTHORIZED_KEYS, ADMIN_KEYS, READONLY_KEYS)}
    if not any(found.values()):
        return None
    role = "admin" if found[ADMIN_KEYS] else "readonly" if found[READONLY_KEYS] else None
    named = found[ADMIN_KEYS] or found[READONLY_KEYS] or found[AUTHORIZED_KEYS]
    actor = named.get_comment() or f"ssh:{key.get_fingerprint()}"
    return Login(found[AUTHORIZED_KEYS] is not None, role, actor)
