"""5 Nodes: each node's health (glyph, word, colour), latency, capacity, blocks and
under-replicated count; fail and restore a node, with confirmation."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import HorizontalScroll
from textual.widgets import DataTable

from widgets.figures import UNKNOWN, count, size
from widgets.node_card import NodeCard, health_text

from ..messages import PoolView
from .base import PoolScreen
from .confirm import ConfirmDialog


class NodesScreen(PoolScreen):
    MODE = "nodes"
    TITLE = "Blockfold · Nodes"
    DEFAULT_CSS = """
    NodesScreen #cards { height: auto; }
    NodesScreen DataTable { height: 1fr; }
    """

    def body(self) -> ComposeResult:
        # Not focusable, so that the arrow keys move through the table's nodes from the start.
        yield HorizontalScroll(id="cards", can_focus=False)
        table = DataTable(cursor_type="row", id="nodes", classes="framed")
        for column, width in (("NODE", 12), ("HEALTH", 11), ("ADDRESS", 24), ("LATENCY", 10),
                              ("CAPACITY", 10), ("BLOCKS", 12), ("UNDER-REPL", 10)):
            table.add_column(column, key=column.lower(), width=width)
        yield table

    def show_view(self, view: PoolView) -> None:
        cards = self.query_one("#cards", HorizontalScroll)
        existing = {card.name: card for card in cards.query(NodeCard)}
        for node in view.nodes:
            if node.name in existing:
                existing.pop(node.name).show(node)
            else:
                cards.mount(NodeCard(node, name=node.name))
        for card in existing.values():
            card.remove()
        table = self.query_one("#nodes", DataTable)
        selected = self.selected()
        table.clear()
        for n in view.nodes:
            latency = UNKNOWN if n.latency_ms is None else f"{n.latency_ms:.1f} ms"
            table.add_row(n.name, health_text(n.state), self.app.clock.volatile(n.address),
                          latency, size(n.capacity_bytes), count(n.blocks),
                          count(n.under_replicated), key=n.name)
        down = sum(n.state != "up" for n in view.nodes)
        table.border_title = f"{len(view.nodes)} nodes" + (f" · {down} not up" if down else "")
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)

    def selected(self) -> str | None:
        table = self.query_one("#nodes", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _confirm_then(self, verb: str, question: str, call) -> None:
        name = self.selected()
        if name is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.engine(f"{verb} node {name}", lambda: call(name),
                                lambda _: self.notify(f"{verb}: node {name}"))

        self.app.push_screen(ConfirmDialog(f"{verb.capitalize()} node",
                                           question.format(name=name), verb.capitalize()),
                             answered)

    def action_fail_node(self) -> None:
        self._confirm_then("fail", "Fail node {name}? Its blocks are served from their other "
                           "replicas and healed onto the remaining nodes.",
                           self.app.admin.fail_node)

    def action_restore_node(self) -> None:
        self._confirm_then("restore", "Restore node {name}? It rejoins the pool and catches up.",
                           self.app.admin.restore_node)
