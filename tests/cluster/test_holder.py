"""A lease holder's name, and what a holder says it is (engine/cluster/holder.py), on real
files."""

from __future__ import annotations

import os

from engine.cluster import holder


def test_the_name_tells_two_opens_in_one_process_apart():
    assert holder.name() != holder.name()
    assert f" pid {os.getpid()} (" in holder.name()


def test_a_holders_note_names_it_only_while_the_lease_is_its_own(tmp_path):
    holder.note(tmp_path, "vm pid 7 (abcdef)", "a console", "blockfold console -c C", "quit it")
    said = f"cluster {tmp_path} is held by a console (pid {os.getpid()}, `blockfold console -c C`):"
    assert holder.said(tmp_path, {"vm pid 7 (abcdef)"}) == ("a console", f"{said} quit it")
    # A newer writer took the lease since (the console was fenced): the note names nobody.
    assert holder.said(tmp_path, {"vm pid 8 (123456)"}) is None
    holder.unnote(tmp_path, "vm pid 8 (123456)")           # not its note: kept
    assert holder.said(tmp_path, {"vm pid 7 (abcdef)"}) is not None
    holder.unnote(tmp_path, "vm pid 7 (abcdef)")
    assert holder.said(tmp_path, {"vm pid 7 (abcdef)"}) is None
    assert list(tmp_path.iterdir()) == []
