"""The one command registry: it feeds the key bindings, the footer, `?` help and the palette.

A command belongs to the whole app or to one screen (by its mode name). Commands that change the
pool are marked `writes`, and `--read-only` hides them everywhere at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Command:
    key: str            # the binding, in Textual's key names
    action: str         # the action run on the app ("app") or on the screen of `scope`
    title: str          # in the footer, the palette and help
    help: str
    scope: str = "app"  # "app", or the mode name of a screen
    writes: bool = False
    footer: bool = True


SCREENS = [  # (mode, key, title)
    ("overview", "1", "Overview"),
    ("vms", "2", "VMs"),
    ("blocks", "3", "Blocks"),
    ("rebuild", "4", "Rebuild"),
    ("nodes", "5", "Nodes"),
    ("events", "6", "Events"),
]

COMMANDS: list[Command] = [
    *(Command(key, f"switch_mode('{mode}')", title, f"show the {title} screen", footer=False)
      for mode, key, title in SCREENS),
    Command("question_mark", "help", "Help", "the keys of this screen"),
    Command("t", "toggle_theme", "Theme", "switch between the dark and the light theme"),
    Command("r", "refresh", "Refresh", "poll the pool's figures now", footer=False),
    Command("q", "quit", "Quit", "leave the console"),
    Command("c", "clone", "Clone VM", "make N linked clones of the selected VM", "vms",
            writes=True),
    Command("d", "delete", "Delete VM", "delete the selected VM, after confirmation", "vms",
            writes=True),
    Command("i", "import_image", "Import image", "import a raw disk image file as a new VM",
            "vms", writes=True),
    Command("slash", "filter", "Filter", "filter blocks: vm NAME, refs>=2, refs 2-5, fp PREFIX",
            "blocks"),
    Command("f", "rebuild(False)", "Fast rebuild", "rebuild the RAM metadata from stored "
            "fingerprints", "rebuild"),
    Command("F", "rebuild(True)", "Full rebuild", "rebuild by re-reading and re-hashing every "
            "block", "rebuild"),
    Command("escape", "cancel", "Cancel", "cancel the running rebuild", "rebuild"),
    Command("x", "fail_node", "Fail node", "simulate the loss of the selected node, after "
            "confirmation", "nodes", writes=True),
    Command("u", "restore_node", "Restore node", "bring the selected node back, after "
            "confirmation", "nodes", writes=True),
]


def commands_for(scope: str, read_only: bool = False) -> list[Command]:
    return [c for c in COMMANDS if c.scope == scope and not (read_only and c.writes)]


def bindings_for(scope: str) -> list[Binding]:
    return [Binding(c.key, c.action, c.title, show=c.footer) for c in COMMANDS
            if c.scope == scope]


def allowed(scope: str, action: str, read_only: bool) -> bool:
    """False for a write command when read-only: Textual then hides and disables its binding."""
    for c in COMMANDS:
        if c.scope == scope and c.action.split("(")[0] == action:
            return not (read_only and c.writes)
    return True


def key_label(key: str) -> str:
    return {"question_mark": "?", "slash": "/", "escape": "esc"}.get(key, key)
