"""2 VMs: the VM table, and clone ×N, delete (with confirmation) and import (with progress)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar

from engine.api import AttachedError, ImportResult, Progress, VMInfo, formats
from widgets.row_table import Col, RowTable

from ..messages import PoolView, TaskProgress
from ..wording import attached_refusal, delete_question, refresh_question
from .base import PoolPane
from .confirm import ConfirmDialog
from .error import ErrorDialog
from .prompt import PromptDialog

COLUMNS = (Col("NAME", 20, least=14), Col("SIZE", 8, numeric=True),
           Col("LOGICAL", 8, numeric=True), Col("UNIQUE", 9, numeric=True),
           Col("SHARED", 9, numeric=True), Col("DEPTH", 5, numeric=True),
           Col("ORIGIN", 8, flex=True))


class VMsPane(PoolPane):
    MODE = "vms"
    TITLE = "Blockfold · VMs"
    DEFAULT_CSS = """
    VMsPane RowTable { height: 1fr; }
    VMsPane #import { height: auto; display: none; padding: 0 1; }
    VMsPane #import.running { display: block; }
    VMsPane #import ProgressBar Bar { width: 1fr; }
    VMsPane #import ProgressBar { width: 1fr; }
    """

    def body(self) -> ComposeResult:
        yield RowTable(COLUMNS, zebra_stripes=True, id="vms", classes="framed")
        with Vertical(id="import"):
            yield Label("", id="import-label")
            yield ProgressBar(total=1, id="import-bar", show_eta=False)

    def show_view(self, view: PoolView) -> None:
        table = self.query_one("#vms", RowTable)
        vms = sorted(view.vms, key=lambda v: formats.natural_key(v.name))
        table.show_rows([(vm.name, (vm.name + (f" · {vm.snapshots} snap" if vm.snapshots else ""),
                                    formats.size(vm.size), formats.size(vm.logical_bytes),
                                    formats.count(vm.unique_blocks),
                                    formats.count(vm.shared_blocks), str(vm.depth),
                                    vm.origin or ""))
                         for vm in vms])
        s = view.stats
        table.border_title = (f"{formats.counted(len(vms), 'VM')} · "
                              f"{formats.size(s.logical_bytes)} logical in "
                              f"{formats.size(s.physical_bytes)} stored · "
                              f"dedup {formats.ratio(s.dedup_ratio)}"
                              + (f" · {formats.counted(s.snapshots, 'snapshot')} holding "
                                 f"{formats.counted(s.snapshot_blocks, 'block')} alone"
                                 if s.snapshots else ""))

    def selected(self) -> str | None:
        return self.query_one("#vms", RowTable).selected()

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
        """Asks with what the CLI asks (its clones, if a golden image) and who has it attached;
        an attached VM is deleted only by "Detach and delete", which cuts its clients off."""
        name = self._need_vm()
        if name is None:
            return
        admin = self.app.admin

        def delete(force: bool) -> None:
            try:
                admin.delete(name, force=force)
            except AttachedError:      # attached after the question: said for the console
                raise AttachedError(attached_refusal(name, admin.vm_info(name).attached)) from None

        def ask(info: VMInfo) -> None:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.app.engine(f"delete {name}", lambda: delete(bool(info.attached)),
                                    lambda _: self.notify(f"deleted {name}"))

            self.app.push_screen(ConfirmDialog(
                "Delete VM", delete_question(name, info.clones, info.attached),
                "Detach and delete" if info.attached else "Delete"), answered)

        self.app.engine(f"delete {name}", lambda: admin.vm_info(name), ask, changes=False)

    # -- snapshot and refresh -------------------------------------------------------------------

    def action_take_snapshot(self) -> None:
        name = self._need_vm()
        if name is None:
            return

        def submitted(answer: dict | None) -> None:
            if answer is None:
                return
            snap = answer["snap"]
            self.app.engine(f"snapshot {name}",
                            lambda: self.app.admin.take_snapshot(name, snap),
                            lambda _: self.notify(f"took snapshot {snap} of {name}"))

        self.app.push_screen(PromptDialog(f"Snapshot {name}", [
            ("snap", "Snapshot name", "snap-1")], ok="Snapshot"), submitted)

    def action_refresh_vm(self) -> None:
        """Asks with what the CLI asks: what is dropped, and the size it comes back at."""
        name = self._need_vm()
        if name is None:
            return
        admin = self.app.admin

        def ask(info: VMInfo) -> None:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.app.engine(f"refresh {name}", lambda: admin.refresh(name),
                                    lambda _: self.notify(f"refreshed {name}"))

            if not info.refreshable:        # not asked about: its refusal is shown
                answered(True)
                return
            self.app.push_screen(ConfirmDialog("Refresh VM", refresh_question(
                name, info.stats.origin, info.stats.size, info.base_size), "Refresh"), answered)

        self.app.engine(f"refresh {name}", lambda: admin.vm_info(name), ask, changes=False)

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
                self.notify(f"imported {vm.name} ({formats.size(vm.size)})")

            self.app.engine(f"import {name}",
                            lambda: self.app.admin.import_image(name, path, progress), finished,
                            failed=lambda: box.remove_class("running"))

        self.app.push_screen(PromptDialog("Import image", [
            ("path", "Disk image file", ""), ("name", "New VM name", "")], ok="Import"),
            submitted)

    def on_task_progress(self, message: TaskProgress) -> None:
        p = message.progress
        self.query_one("#import-bar", ProgressBar).update(total=max(p.total, 1), progress=p.done)
