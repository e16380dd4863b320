"""2 VMs: the VM table, and clone ×N, delete (with confirmation) and import (with progress)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Label, ProgressBar

from engine.api import ImportResult, Progress, VMStats, human_bytes
from widgets.figures import count, ratio, size

from ..messages import PoolView, TaskProgress
from .base import PoolScreen
from .confirm import ConfirmDialog
from .error import ErrorDialog
from .prompt import PromptDialog


class VMsScreen(PoolScreen):
    MODE = "vms"
    TITLE = "Blockfold · VMs"
    DEFAULT_CSS = """
    VMsScreen DataTable { height: 1fr; }
    VMsScreen #import { height: auto; display: none; padding: 0 1; }
    VMsScreen #import.running { display: block; }
    VMsScreen #import ProgressBar Bar { width: 1fr; }
    VMsScreen #import ProgressBar { width: 1fr; }
    """

    def body(self) -> ComposeResult:
        table = DataTable(cursor_type="row", zebra_stripes=True, id="vms", classes="framed")
        # Fixed widths: the layout does not shift as rows come and go.
        for column, width in (("NAME", 24), ("SIZE", 10), ("LOGICAL", 10), ("UNIQUE", 10),
                              ("SHARED", 10), ("DEPTH", 5)):
            table.add_column(column, key=column.lower(), width=width)
        yield table
        with Vertical(id="import"):
            yield Label("", id="import-label")
            yield ProgressBar(total=1, id="import-bar", show_eta=False)

    shown_vms: list[VMStats] | None = None

    def show_view(self, view: PoolView) -> None:
        table = self.query_one("#vms", DataTable)
        selected = self.selected()
        if view.vms != self.shown_vms:      # rebuilding a big table at every poll costs frames
            self.shown_vms = view.vms
            table.clear()
            for vm in view.vms:
                name = vm.name + (f" · {vm.snapshots} snap" if vm.snapshots else "")
                table.add_row(name, human_bytes(vm.size), human_bytes(vm.logical_bytes),
                              count(vm.unique_blocks), count(vm.shared_blocks), str(vm.depth),
                              key=vm.name)
        s = view.stats
        table.border_title = (f"{len(view.vms)} VMs · {human_bytes(s.logical_bytes)} logical in "
                              f"{size(s.physical_bytes)} stored · "
                              f"dedup {ratio(s.dedup_ratio)}"
                              + (f" · {s.snapshots} snapshots holding {count(s.snapshot_blocks)}"
                                 " blocks alone" if s.snapshots else ""))
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)

    def selected(self) -> str | None:
        table = self.query_one("#vms", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _need_vm(self) -> str | None:
        name = self.selected()
        if name is None:
            self.app.push_screen(ErrorDialog("no VM", "there is no VM yet: import an image"))
        return name

    # -- clone --------------------------------------------------------------------------------

    def action_clone(self) -> None:
        source = self._need_vm()
        if source is None:
            return

        def submitted(answer: dict | None) -> None:
            if answer is None:
                return
            try:
                count = int(answer["count"])
                if count < 1:
                    raise ValueError
            except ValueError:
                self.app.push_screen(ErrorDialog("clone", f"bad count {answer['count']!r}: "
                                                 "use a whole number of at least 1"))
                return
            new = answer["name"]
            self.app.engine(f"clone {source}", lambda: self.app.admin.clone(source, new, count),
                            lambda names: self.notify(f"cloned {source} to {len(names)} VMs"))

        self.app.push_screen(PromptDialog(f"Clone {source}", [
            ("name", "Name of the clone (NAME-1 … NAME-N when N > 1)", f"{source}-clone"),
            ("count", "How many clones", "1")], ok="Clone"), submitted)

    # -- delete -------------------------------------------------------------------------------

    def action_delete(self) -> None:
        name = self._need_vm()
        if name is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.engine(f"delete {name}", lambda: self.app.admin.delete(name),
                                lambda _: self.notify(f"deleted {name}"))

        self.app.push_screen(ConfirmDialog(
            "Delete VM", f"Delete VM {name}? The blocks only it references are freed.",
            "Delete"), answered)

    # -- import -------------------------------------------------------------------------------

    def action_import_image(self) -> None:
        def submitted(answer: dict | None) -> None:
            if answer is None:
                return
            path, name = answer["path"], answer["name"]
            box = self.query_one("#import")
            box.add_class("running")
            self.query_one("#import-label", Label).update(f"importing {name}")
            self.query_one("#import-bar", ProgressBar).update(total=1, progress=0)

            def progress(p: Progress) -> None:
                self.post_message(TaskProgress("import", p))

            def finished(vm: ImportResult) -> None:
                box.remove_class("running")
                self.notify(f"imported {vm.name} ({human_bytes(vm.size)})")

            self.app.engine(f"import {name}",
                            lambda: self.app.admin.import_image(name, path, progress), finished,
                            failed=lambda: box.remove_class("running"))

        self.app.push_screen(PromptDialog("Import image", [
            ("path", "Raw image file", ""), ("name", "New VM name", "")], ok="Import"),
            submitted)

    def on_task_progress(self, message: TaskProgress) -> None:
        p = message.progress
        self.query_one("#import-bar", ProgressBar).update(total=max(p.total, 1), progress=p.done)
