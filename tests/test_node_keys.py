"""Which line of a node's key files lets a key in, and what its options leave it
(engine/node/keys.py), on real files; the same over real OpenSSH is in tests/cluster."""

from __future__ import annotations

import logging
import time

import asyncssh
import pytest

from engine.node import keys

HERE = "127.0.0.1"


@pytest.fixture(scope="module")
def alice():
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.convert_to_public(), key.export_public_key().decode().strip()


def login(tmp_path, alice, admin: str = "", readonly: str = "", node: str = "",
          address: str = HERE):
    """Writes the three files ({key} stands for alice's key) and logs alice in from `address`."""
    key, text = alice
    for name, lines in ((keys.ADMIN_KEYS, admin), (keys.READONLY_KEYS, readonly),
                        (keys.AUTHORIZED_KEYS, node)):
        (tmp_path / name).write_text(lines.format(key=text))
    return keys.login_for(tmp_path, key, address)


def test_a_plain_line_gives_the_file_its_role_and_the_comment_names_the_actor(tmp_path, alice):
    got = login(tmp_path, alice, admin="# admins\n\n{key} alice smith\n", node="{key}")
    assert got == keys.Login(rpc_allowed=True, console_role="admin", actor="alice smith",
                             pty=True, console_from="admin_keys line 3")
    assert login(tmp_path, alice, readonly="{key}").console_role == "readonly"
    assert login(tmp_path, alice, readonly="{key}").actor.startswith("ssh:SHA256:")
    assert login(tmp_path, alice) is None


@pytest.mark.parametrize("options, address, allowed", [
    ('from="127.0.0.1"', HERE, True),
    ('from="10.0.0.0/8,127.0.0.0/8"', HERE, True),
    ('from="127.0.0.*"', HERE, True),
    ('from="10.9.9.9"', HERE, False),
    ('from="127.0.0.0/8,!127.0.0.1"', HERE, False),
    ('from="127.0.0.0/8,!127.0.0.1"', "127.0.0.2", True),
    ('from="::1"', "::1", True),
    ('from="127.0.0.1",from="10.0.0.1"', HERE, False),     # every from= must allow it
])
def test_from_allows_only_the_addresses_it_names(tmp_path, alice, options, address, allowed):
    got = login(tmp_path, alice, admin=f"{options} {{key}} alice", address=address)
    assert (got is not None) == allowed


@pytest.mark.parametrize("expiry, allowed", [
    ("20200101", False), ("202001011200", False), ("20200101120000Z", False),
    ("20991231", True), ("209912312359", True), ("20991231235959Z", True),
])
def test_expiry_time_in_each_form(tmp_path, alice, expiry, allowed):
    got = login(tmp_path, alice, admin=f'expiry-time="{expiry}" {{key}} alice')
    assert (got is not None) == allowed


def test_expiry_time_is_local_time_unless_it_ends_in_z(tmp_path, alice, monkeypatch):
    monkeypatch.setenv("TZ", "Etc/GMT-14")      # 14 hours ahead of UTC, whatever the machine's
    time.tzset()
    try:
        soon = time.strftime("%Y%m%d%H%M", time.gmtime(time.time() + 3600))   # UTC, an hour on
        assert login(tmp_path, alice, admin=f'expiry-time="{soon}Z" {{key}}') is not None
        assert login(tmp_path, alice, admin=f'expiry-time="{soon}" {{key}}') is None
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("options, pty", [
    ("no-pty", False), ("restrict", False), ("restrict,pty", True), ("no-pty,pty", False),
    ("no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc", True),
])
def test_terminal_options(tmp_path, alice, options, pty):
    assert login(tmp_path, alice, admin=f"{options} {{key}}").pty is pty


@pytest.mark.parametrize("options, logged", [
    ('command="/bin/false"', "option 'command' is not enforced"),
    ('environment="A=b"', "option 'environment' is not enforced"),
    ('permitopen="h:1"', "option 'permitopen' is not enforced"),
    ("cert-authority", "option 'cert-authority' is not enforced"),
    ("port-forwarding", "option 'port-forwarding' is not enforced"),
    ("NO-PTY", "option 'NO-PTY' is not enforced"),
    ('expiry-time="2099"', "bad expiry-time '2099'"),
    ('expiry-time="2099010x"', "bad expiry-time '2099010x'"),
    ('a="b', "not a key line (Unbalanced quote in options)"),
    ('from="10.9.9.9"', "a login from 127.0.0.1, which its from= does not allow"),
])
def test_a_refused_line_is_logged_with_file_line_and_why(tmp_path, alice, caplog, options,
                                                         logged):
    with caplog.at_level(logging.WARNING, logger="engine.node.keys"):
        got = login(tmp_path, alice, admin=f"# admins\n{options} {{key}} alice")
    assert got is None
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"blockfold: {tmp_path / 'admin_keys'} line 2: refused: {logged}")


def test_the_first_line_that_lets_the_key_in_counts(tmp_path, alice, caplog):
    got = login(tmp_path, alice, admin='from="10.9.9.9" {key} far\n'
                                       "environment=\"A=b\" {key} env\n"
                                       "no-pty {key} second\n"
                                       "{key} third\n")
    assert (got.actor, got.pty, got.console_from) == ("second", False, "admin_keys line 3")
    assert len(caplog.records) == 2


def test_other_keys_lines_are_not_judged(tmp_path, alice, caplog):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    got = login(tmp_path, alice, admin=f'environment="A=b" {other}\n{{key}} alice')
    assert got.actor == "alice" and caplog.records == []
