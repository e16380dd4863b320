"""The one command registry: it feeds the key bindings, the key bar, `?` help and the palette.

A command belongs to the whole app or to one screen (by its mode name). Commands that change the
pool are marked `writes`, and `--read-only` hides them everywhere at once; those on a cluster's
nodes are marked `nodes`, and a pool (which has none) hides them the same way.
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
    bar: str = ""       # the key bar's shorter word, where the title would not fit 80 columns
    nodes: bool = False  # acts on a cluster's node: a pool has none to offer it for


@dataclass(frozen=True)
class Offer:
    """Which commands the console offers: no writes when read-only, no node commands on a
    pool (it asked "Fail node local? … served from their other replicas" and then failed)."""
    read_only: bool = False
    cluster: bool = True

    def offers(self, command: Command) -> bool:
        return not (self.read_only and command.writes) and (self.cluster or not command.nodes)


SCREENS = [  # (mode, key, title)
    ("overview", "1", "Overview"),
    ("vms", "2", "VMs"),
    ("blocks", "3", "Blocks"),
    ("rebuild", "4", "Rebuild"),
    ("nodes", "5", "Nodes"),
    ("events", "6", "Events"),
]

COMMANDS: list[Command] = [
    *(Command(key, f"show('{mode}')", title, f"show the {title} screen", footer=False)
      for mode, key, title in SCREENS),
    Command("question_mark", "help", "Help", "the keys of this screen"),
    Command("t", "toggle_theme", "Theme", "switch between the dark and the light theme"),
    Command("r", "refresh", "Refresh", "poll the pool's figures now", footer=False),
    Command("q", "quit", "Quit", "leave the console"),
    Command("c", "clone", "Clone VM", "make N linked clones of the selected VM", "vms",
            writes=True),
    Command("d", "delete", "Delete VM", "delete the selected VM, after confirmation", "vms",
            writes=True),
    Command("i", "import_image", "Import image", "import a raw, qcow2, vmdk, vhdx or vdi image",
            "vms", writes=True),
    # Off the key bar, which has no room left at 80 columns: `?` and the palette list them.
    Command("s", "take_snapshot", "Snapshot VM", "name the selected VM's state now, to roll "
            "back to", "vms", writes=True, footer=False),
    Command("R", "refresh_vm", "Refresh VM", "back to its golden image, after confirmation",
            "vms", writes=True, footer=False),
    Command("slash", "filter", "Filter", "filter blocks: vm NAME, refs>=2, refs 2-5, fp PREFIX",
            "blocks"),
    # A rebuild writes: it reclaims orphans and drops corrupt blocks (a read-only login is refused).
    Command("f", "rebuild(False)", "Fast rebuild", "rebuild the RAM metadata from stored "
            "fingerprints", "rebuild", writes=True, bar="Fast"),
    Command("F", "rebuild(True)", "Full rebuild", "rebuild by re-reading and re-hashing every "
            "block", "rebuild", writes=True, bar="Full"),
    Command("escape", "cancel", "Cancel", "cancel the running rebuild", "rebuild"),
    Command("x", "fail_node", "Fail node", "kill the selected node's process, after "
            "confirmation", "nodes", writes=True, nodes=True),
    Command("u", "restore_node", "Restore node", "restart the selected node's process, after "
            "confirmation", "nodes", writes=True, nodes=True),
    Command("X", "remove_node", "Remove node", "move its blocks away, then drop it,"
            " after confirmation", "nodes", writes=True, footer=False, nodes=True),
]


NAVIGATION = ("up", "down", "pageup", "pagedown", "home", "end")
"""Keys that move through the table of the screen in front (widgets/row_table.py)."""


def commands_for(scope: str, offer: Offer = Offer()) -> list[Command]:
    return [c for c in COMMANDS if c.scope == scope and offer.offers(c)]


def app_bindings() -> list[Binding]:
    """Every key, bound on the app: the console's screens are panes of one Textual screen that
    never takes the focus (console/screens/base.py), so a screen's commands run as
    pane(ACTION) on the screen in front, and the arrows and paging keys as navigate(KEY) on its
    table. The app's check_action enables only the screen in front's."""
    # The screens' commands first: the key bar shows them before the app's.
    ordered = sorted(COMMANDS, key=lambda c: c.scope == "app")
    return [*(Binding(c.key, c.action if c.scope == "app" else f"pane({c.action!r})",
                      c.bar or c.title,
                      show=c.footer) for c in ordered),
            *(Binding(key, f"navigate({key!r})", key, show=False) for key in NAVIGATION)]


def find(scope: str, action: str) -> Command | None:
    """The command of `scope` whose action (without its arguments) is `action`."""
    return next((c for c in COMMANDS
                 if c.scope == scope and c.action.split("(")[0] == action), None)


def allowed(scope: str, action: str, offer: Offer) -> bool:
    """False for a command not offered (Offer): Textual then hides and disables its binding."""
    command = find(scope, action)
    return command is None or offer.offers(command)


def key_label(key: str) -> str:
    return {"question_mark": "?", "slash": "/", "escape": "esc"}.get(key, key)
