"""One operator's heal is one heal in the event log: the writable coordinator's own healer
(repair delay 0) runs no pass beside it, so its copies are made and counted once."""

from __future__ import annotations

import getpass
import re

from tests.conftest import run_cli

from .conftest import image


def _heals(admin) -> list[tuple[str, str]]:
    """The heal events (actor, message), oldest first."""
    return [(e.actor, e.message) for e in reversed(admin.events(200)) if e.kind == "heal"]


def _copies(message: str) -> int:
    return int(re.search(r"heal ended: ([\d,]+) copies made", message)[1].replace(",", ""))


def test_a_cli_heal_wait_is_one_heal_and_its_copies_are_counted_once(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)       # repair delay 0: the healer heals at once
    image(tmp_path / "a.raw", 16, seed=8)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
    run_cli("-c", cluster.path, "node", "fail", "node1", "-y", check=True)
    with cluster.open(readonly=True) as admin:
        short = admin.stats().under_replicated_blocks
        held = sum(n.blocks for n in admin.nodes() if n.name != "node1")
    assert short
    healed = run_cli("-c", cluster.path, "heal", "--wait", check=True)
    assert "0 under-replicated" in healed.stdout_text
    with cluster.open(readonly=True) as admin:
        heals = _heals(admin)
        now = sum(n.blocks for n in admin.nodes() if n.name != "node1")
        assert admin.stats().under_replicated_blocks == 0
    mine = [m.split(":")[0] for actor, m in heals if actor == getpass.getuser()]
    assert mine == ["heal started", "heal ended"], heals
    # With R=2 and one node of three down, each short block lacked one copy: the copies the
    # heal events claim are the copies the two nodes gained, and what was short.
    claimed = sum(_copies(m) for _, m in heals if m.startswith("heal ended"))
    assert claimed == now - held == short, heals
    # Whatever the engine's healer did (before the operator's heal, or after it, nothing), its
    # passes are whole: a start and an end each.
    engine = [m.split(":")[0] for actor, m in heals if actor == "engine"]
    assert engine == ["heal started", "heal ended"] * (len(engine) // 2), heals
