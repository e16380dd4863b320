"""5 Nodes: each node's health (glyph, word, colour), latency, capacity, blocks and
under-replicated count, the cluster's etcd (where, healthy or not, its members), the selected
node in detail (whether etcd has it registered); fail, restore and remove a node, with
confirmation."""

from __future__ import annotations

from textual.app import ComposeResult

from engine.api import EtcdStatus, NodeStatus, WriteQuorum, formats
from widgets.node_card import NodeCard, health_text
from widgets.row_table import Col, RowTable

from ..messages import PoolView
from ..wording import removal_question
from .base import PoolPane
from .confirm import ConfirmDialog

COLUMNS = (Col("NODE", 10), Col("HEALTH", 11), Col("LATENCY", 8, numeric=True),
           Col("CAPACITY", 9, numeric=True), Col("BLOCKS", 9, numeric=True),
           Col("UNDER-REPL", 10, numeric=True))

# What the toast says once a fail, a restore or a removal is done.
DONE = {"fail": "{name} failed: its process was killed",
        "restore": "{name} restored: its process restarted",
        "remove": "{name} removed: every block has its copies on the other nodes"}


class NodesPane(PoolPane):
    MODE = "nodes"
    TITLE = "Blockfold · Nodes"
    DEFAULT_CSS = """
    NodesPane #nodes { height: auto; max-height: 60%; }
    """

    def body(self) -> ComposeResult:
        yield RowTable(COLUMNS, id="nodes", classes="framed")
        yield NodeCard(blank_node(), when=self.app.clock.when, id="card")

    def show_view(self, view: PoolView) -> None:
        table = self.query_one("#nodes", RowTable)
        table.show_rows([(n.name, (n.name, health_text(n.state), formats.latency(n.latency_ms),
                                   formats.size(n.capacity_bytes), formats.count(n.blocks),
                                   formats.count(n.under_replicated)))
                         for n in view.nodes])
        down = sum(n.state != "up" for n in view.nodes)
        table.border_title = (formats.counted(len(view.nodes), "node")
                              + (f" · {down} not up" if down else "")
                              + _etcd(view.stats.etcd))
        self._show_selected()

    def on_data_table_row_highlighted(self) -> None:
        self._show_selected()

    def _show_selected(self) -> None:
        if self._shown is None:
            return
        name = self.selected()
        for node in self._shown.nodes:
            if node.name == name:
                self.query_one(NodeCard).show(node)

    def selected(self) -> str | None:
        return self.query_one("#nodes", RowTable).selected()

    def _confirm_then(self, verb: str, question: str, call, name: str | None = None) -> None:
        name = name or self.selected()
        if name is None:
            return

        def done(result) -> None:
            self.notify(DONE[verb].format(name=name))
            if verb == "fail" and result:       # fail_node: why its event was not committed
                self.notify(f"The event was not recorded: {result}", severity="warning")

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.engine(f"{verb} node {name}", lambda: call(name), done)

        self.app.push_screen(ConfirmDialog(f"{verb.capitalize()} node",
                                           question.format(name=name), verb.capitalize()),
                             answered)

    def action_fail_node(self) -> None:
        admin, name = self.app.admin, self.selected()
        question = ("Fail node {name}? Its process is killed: its blocks are served from their"
                    " other replicas, and healed onto the remaining nodes after the repair delay.")
        if name is None or admin.kind != "cluster":     # a pool's fail_node says it has none
            return self._confirm_then("fail", question, admin.fail_node)

        def counted(costs: tuple[int, WriteQuorum]) -> None:
            alone, quorum = costs
            said = question if not alone else (
                "Fail node {name}? Its process is killed. "
                f"{formats.no_copy_left(alone, admin.block_size)}: reads of them fail until it"
                " is restored.")
            if quorum.refused:
                refused = formats.writes_refused(quorum.left, quorum.nodes, quorum.need)
                said += f" {refused[0].upper()}{refused[1:]} until a node is restored."
            self._confirm_then("fail", said, admin.fail_node, name)

        self.app.engine(f"count the blocks only node {name} holds",
                        lambda: (admin.only_copies(name), admin.writes_without(name)), counted,
                        changes=False)

    def action_remove_node(self) -> None:
        admin, name = self.app.admin, self.selected()
        if name is None:
            return

        def counted(plan) -> None:
            # Braces in a path would be read as the question's {name}.
            said = removal_question(admin.name, plan).replace("{", "{{").replace("}", "}}")
            self._confirm_then("remove", said, admin.remove_node, name)

        self.app.engine(f"count what removing node {name} copies",
                        lambda: admin.removal(name), counted, changes=False)

    def action_restore_node(self) -> None:
        self._confirm_then("restore", "Restore node {name}? It restarts, rejoins the pool and "
                           "catches up.", self.app.admin.restore_node)


def _etcd(etcd: EtcdStatus | None) -> str:
    """The cluster's etcd, for the table's title; nothing for a pool or a cluster without."""
    if etcd is None:
        return ""
    if not etcd.healthy:
        return f" · etcd {', '.join(etcd.endpoints)} ✖ not healthy"
    return (f" · etcd {', '.join(etcd.endpoints)} ● healthy, {etcd.members}"
            f" member{'' if etcd.members == 1 else 's'}")


def blank_node() -> NodeStatus:
    """What the card shows before the first poll: nothing known."""
    return NodeStatus(name="", address=formats.UNKNOWN, state="unknown", latency_ms=None,
                      capacity_bytes=None, blocks=None, live_blocks=None, under_replicated=0,
                      weight=None, catalog_version=None, last_seen=None, error="")
