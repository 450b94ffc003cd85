"""PACS dialog: configure nodes, query (C-FIND / QIDO-RS), retrieve (C-GET / C-MOVE / WADO-RS) and open.

All network work runs in a TaskRunner (one task at a time, cancel, progress through queued
signals); the dialog only shows what comes back. Passwords go to the OS keyring when there is
one, otherwise they are kept in memory for this session only; they are never written to settings
or logs.
"""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.clinical.pacs import (
    CredentialStoreUnavailable,
    PacsNode,
    QueryFilter,
    StudyMatch,
    get_password,
    query_task,
    retrieve_task,
    set_password,
)
from cxr_viewer.common.tasks import Progress
from cxr_viewer.gui.settings import Settings
from cxr_viewer.gui.workers import TaskRunner

RESULT_COLUMNS = ("Patient ID", "Patient name", "Study date", "Description", "Modalities", "Accession",
                  "Series", "Images")


def echo_task(node: PacsNode, password: str | None, cancel=None):
    """C-ECHO / a DICOMweb probe as a one-step task (the runner needs a generator)."""
    from cxr_viewer.clinical.pacs import echo

    yield Progress("echo", 0, 1, node.describe())
    return echo(node, password)


class PasswordBook:
    """Passwords by node: the OS keyring when there is one, else this session's memory only."""

    def __init__(self) -> None:
        self._memory: dict[tuple[str, str], str] = {}

    def get(self, node: PacsNode) -> str | None:
        if node.kind != "dicomweb" or not node.username:
            return None
        key = (node.name, node.username)
        if key in self._memory:
            return self._memory[key]
        return get_password(node)  # None where there is no keyring

    def ask(self, parent: QWidget, node: PacsNode) -> tuple[bool, str | None]:
        """(go on?, password): the stored one, or asked once per session (GUI thread only)."""
        if node.kind != "dicomweb" or not node.username:
            return True, None
        pw = self.get(node)
        if pw is not None:
            return True, pw
        pw, ok = QInputDialog.getText(parent, "DICOMweb password",
                                      f"Password for {node.username} at {node.describe()}:",
                                      QLineEdit.EchoMode.Password)
        if not ok:
            return False, None
        self.put(node, pw)
        return True, pw

    def put(self, node: PacsNode, password: str) -> str:
        """Store; returns where it went ("keyring" or "memory")."""
        self._memory[(node.name, node.username)] = password
        try:
            set_password(node, password)
            return "keyring"
        except CredentialStoreUnavailable:
            return "memory"


class NodeEditor(QWidget):
    """The list of nodes and a form for the selected one."""

    nodes_changed = Signal()

    def __init__(self, settings: Settings, passwords: PasswordBook, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings, self.passwords = settings, passwords
        self.list = QListWidget(self)
        self.name = QLineEdit(self)
        self.kind = QComboBox(self)
        self.kind.addItem("DIMSE (C-FIND, C-GET/C-MOVE, C-STORE)", "dimse")
        self.kind.addItem("DICOMweb (QIDO-RS, WADO-RS, STOW-RS)", "dicomweb")
        self.host = QLineEdit(self)
        self.port = QSpinBox(self)
        self.port.setRange(1, 65535)
        self.port.setValue(104)
        self.called_ae = QLineEdit(self)
        self.calling_ae = QLineEdit("CXR_VIEWER", self)
        self.retrieve = QComboBox(self)
        self.retrieve.addItem("C-GET", "get")
        self.retrieve.addItem("C-MOVE (to our storage SCP)", "move")
        self.move_port = QSpinBox(self)
        self.move_port.setRange(0, 65535)
        self.move_port.setSpecialValueText("any free port")
        self.url = QLineEdit(self)
        self.url.setPlaceholderText("http://pacs.example:8042/dicom-web")
        self.username = QLineEdit(self)
        self.password = QLineEdit(self)
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setPlaceholderText("unchanged")
        self.timeout = QDoubleSpinBox(self)
        self.timeout.setRange(1, 600)
        self.timeout.setValue(10)
        self.timeout.setSuffix(" s")
        self.message = QLabel("", self)
        self.message.setWordWrap(True)
        form = QFormLayout()
        for label, w in (("Name", self.name), ("Protocol", self.kind), ("Host", self.host), ("Port", self.port),
                         ("PACS AE title", self.called_ae), ("Our AE title", self.calling_ae),
                         ("Retrieve with", self.retrieve), ("C-MOVE port", self.move_port), ("DICOMweb URL", self.url),
                         ("User", self.username), ("Password", self.password), ("Timeout", self.timeout)):
            form.addRow(label, w)
        self.btn_new = QPushButton("New", self)
        self.btn_save = QPushButton("Save Node", self)
        self.btn_remove = QPushButton("Remove", self)
        left = QVBoxLayout()
        left.addWidget(self.list)
        row = QHBoxLayout()
        for b in (self.btn_new, self.btn_remove):
            row.addWidget(b)
        left.addLayout(row)
        right = QVBoxLayout()
        right.addLayout(form)
        right.addWidget(self.btn_save)
        right.addWidget(self.message)
        right.addStretch(1)
        lay = QHBoxLayout(self)
        lay.addLayout(left, 1)
        lay.addLayout(right, 2)
        self.list.currentRowChanged.connect(self._show_row)
        self.kind.currentIndexChanged.connect(self._update_enabled)
        self.btn_new.clicked.connect(self.new_node)
        self.btn_save.clicked.connect(self.save_current)
        self.btn_remove.clicked.connect(self.remove_current)
        self.nodes: list[PacsNode] = []
        self.reload()

    def reload(self) -> None:
        try:
            self.nodes = self.settings.pacs_store().load()
        except ValueError as exc:
            self.nodes = []
            self._say(str(exc), error=True)
        self.list.clear()
        for n in self.nodes:
            self.list.addItem(f"{n.name}  ({n.describe()})")
        if self.nodes:
            self.list.setCurrentRow(0)
        else:
            self.new_node()

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setStyleSheet("color: #b00000;" if error else "")
        self.message.setText(text)

    def _update_enabled(self) -> None:
        dimse = self.kind.currentData() == "dimse"
        for w in (self.host, self.port, self.called_ae, self.calling_ae, self.retrieve, self.move_port):
            w.setEnabled(dimse)
        for w in (self.url, self.username, self.password):
            w.setEnabled(not dimse)

    def _show_row(self, row: int) -> None:
        if not 0 <= row < len(self.nodes):
            return
        n = self.nodes[row]
        self.name.setText(n.name)
        self.kind.setCurrentIndex(self.kind.findData(n.kind))
        self.host.setText(n.host)
        self.port.setValue(n.port)
        self.called_ae.setText(n.called_ae)
        self.calling_ae.setText(n.calling_ae)
        self.retrieve.setCurrentIndex(self.retrieve.findData(n.retrieve_method))
        self.move_port.setValue(n.move_port)
        self.url.setText(n.url)
        self.username.setText(n.username)
        self.password.clear()
        self.timeout.setValue(n.timeout_s)
        self._update_enabled()
        self._say("")

    def new_node(self) -> None:
        self.list.clearSelection()
        self.list.setCurrentRow(-1)
        self.name.setText(f"PACS {len(self.nodes) + 1}")
        for w in (self.host, self.called_ae, self.url, self.username, self.password):
            w.clear()
        self.port.setValue(104)
        self.kind.setCurrentIndex(0)
        self._update_enabled()

    def form_node(self) -> PacsNode:
        return PacsNode.from_dict({
            "name": self.name.text().strip(), "kind": self.kind.currentData(), "host": self.host.text().strip(),
            "port": self.port.value(), "called_ae": self.called_ae.text().strip(),
            "calling_ae": self.calling_ae.text().strip(), "retrieve_method": self.retrieve.currentData(),
            "move_port": self.move_port.value(), "url": self.url.text().strip(),
            "username": self.username.text().strip(), "timeout_s": self.timeout.value()})

    def save_current(self) -> bool:
        try:
            node = self.form_node()
        except ValueError as exc:
            self._say(str(exc), error=True)
            return False
        row = self.list.currentRow()
        nodes = list(self.nodes)
        if 0 <= row < len(nodes):
            nodes[row] = node
        else:
            nodes.append(node)
        try:
            self.settings.pacs_store().save(nodes)
        except (ValueError, OSError) as exc:
            self._say(f"not saved: {exc}", error=True)
            return False
        where = ""
        if self.password.text() and node.kind == "dicomweb" and node.username:
            where = self.passwords.put(node, self.password.text())
            self.password.clear()
        self.reload()
        self.list.setCurrentRow(next(i for i, n in enumerate(self.nodes) if n.name == node.name))
        note = {"keyring": " Password saved in the OS keyring.",
                "memory": " No OS keyring here: the password is kept for this session only."}.get(where, "")
        self._say(f"Saved {node.name}.{note}")
        self.nodes_changed.emit()
        return True

    def remove_current(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.nodes):
            return
        nodes = [n for i, n in enumerate(self.nodes) if i != row]
        self.settings.pacs_store().save(nodes)
        self.reload()
        self.nodes_changed.emit()


class PacsDialog(QDialog):
    """Query/retrieve (first tab) and node configuration (second tab)."""

    open_requested = Signal(list)  # paths to open in the viewer

    def __init__(self, settings: Settings, parent: QWidget | None = None, passwords: PasswordBook | None = None):
        super().__init__(parent)
        self.setWindowTitle("PACS: query and retrieve")
        self.resize(980, 560)
        self.settings = settings
        self.passwords = passwords or PasswordBook()
        self.runner = TaskRunner(self, "pacs", threads=2)
        self.matches: list[StudyMatch] = []

        self.tabs = QTabWidget(self)
        query_tab = QWidget(self)
        self.node = QComboBox(query_tab)
        self.btn_echo = QPushButton("Test Connection", query_tab)
        self.patient_id = QLineEdit(query_tab)
        self.patient_name = QLineEdit(query_tab)
        self.patient_name.setPlaceholderText("wildcards * and ?")
        self.date_from = QLineEdit(query_tab)
        self.date_to = QLineEdit(query_tab)
        for w in (self.date_from, self.date_to):
            w.setPlaceholderText("YYYYMMDD")
            w.setMaxLength(8)
        self.modality = QLineEdit(query_tab)
        self.modality.setPlaceholderText("CR, DX, ...")
        self.accession = QLineEdit(query_tab)
        self.btn_search = QPushButton("Search", query_tab)
        self.btn_search.setDefault(True)
        self.table = QTableWidget(0, len(RESULT_COLUMNS), query_tab)
        self.table.setHorizontalHeaderLabels(RESULT_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.btn_retrieve = QPushButton("Retrieve and Open", query_tab)
        self.btn_retrieve.setEnabled(False)
        self.btn_clear_cache = QPushButton("Clear Cache...", query_tab)
        self.btn_clear_cache.setToolTip("Delete the studies retrieved to this computer (patient data)")
        self.btn_cancel = QPushButton("Cancel", query_tab)
        self.btn_cancel.setEnabled(False)
        self.progress = QProgressBar(query_tab)
        self.progress.setVisible(False)
        self.status = QLabel("", query_tab)
        self.status.setWordWrap(True)

        top = QHBoxLayout()
        top.addWidget(QLabel("PACS node:", query_tab))
        top.addWidget(self.node, 1)
        top.addWidget(self.btn_echo)
        box = QGroupBox("Find studies", query_tab)
        grid = QGridLayout(box)
        for i, (label, w) in enumerate((("Patient ID", self.patient_id), ("Patient name", self.patient_name),
                                        ("Accession", self.accession), ("Study date from", self.date_from),
                                        ("to", self.date_to), ("Modality", self.modality))):
            grid.addWidget(QLabel(label, box), i // 3, (i % 3) * 2)
            grid.addWidget(w, i // 3, (i % 3) * 2 + 1)
        grid.addWidget(self.btn_search, 0, 6, 2, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.progress)
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.btn_clear_cache)
        bottom.addWidget(self.btn_cancel)
        bottom.addWidget(self.btn_retrieve)
        lay = QVBoxLayout(query_tab)
        lay.addLayout(top)
        lay.addWidget(box)
        lay.addWidget(self.table, 1)
        lay.addLayout(bottom)
        self.editor = NodeEditor(settings, self.passwords, self)
        self.tabs.addTab(query_tab, "Query / Retrieve")
        self.tabs.addTab(self.editor, "Nodes")
        outer = QVBoxLayout(self)
        outer.addWidget(self.tabs)

        self.btn_search.clicked.connect(self.search)
        self.btn_echo.clicked.connect(self.test_connection)
        self.btn_retrieve.clicked.connect(self.retrieve_selected)
        self.btn_cancel.clicked.connect(self.runner.cancel)
        self.btn_clear_cache.clicked.connect(self.clear_cache)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _: self.retrieve_selected())
        self.editor.nodes_changed.connect(self.fill_nodes)
        self.node.currentTextChanged.connect(lambda t: t and self.settings.set_last_pacs_node(t))
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(lambda: self._done("Cancelled."))
        self.runner.busy_changed.connect(self._on_busy)
        self.fill_nodes()

    # --- nodes ---------------------------------------------------------------------------
    def fill_nodes(self) -> None:
        current = self.node.currentText() or self.settings.last_pacs_node()
        self.node.blockSignals(True)
        self.node.clear()
        for n in self.editor.nodes:
            self.node.addItem(n.name)
        i = self.node.findText(current)
        self.node.setCurrentIndex(max(i, 0))
        self.node.blockSignals(False)
        if not self.editor.nodes:
            self._say("No PACS configured yet: add one on the Nodes tab.")

    def current_node(self) -> PacsNode | None:
        name = self.node.currentText()
        return next((n for n in self.editor.nodes if n.name == name), None)

    def _start(self, task, *args) -> bool:
        node = self.current_node()
        if node is None:
            self._say("Choose a PACS node first (Nodes tab).", error=True)
            return False
        go, pw = self.passwords.ask(self, node)
        if not go:
            return False
        self.runner.submit(task, node, *args, pw)
        return True

    # --- actions -------------------------------------------------------------------------
    def query_filter(self) -> QueryFilter:
        return QueryFilter(self.patient_id.text().strip(), self.patient_name.text().strip(),
                           self.date_from.text().strip(), self.date_to.text().strip(),
                           self.modality.text().strip().upper(), self.accession.text().strip())

    def search(self) -> None:
        flt = self.query_filter()
        bad = [d for d in (flt.date_from, flt.date_to) if d and not (len(d) == 8 and d.isdigit())]
        if bad:
            self._say(f"Dates are YYYYMMDD, not {bad[0]!r}.", error=True)
            return
        self._mode = "query"
        if self._start(query_task, flt):
            self._say(f"Searching {self.node.currentText()}...")

    def test_connection(self) -> None:
        self._mode = "echo"
        if self._start(echo_task):
            self._say(f"Contacting {self.node.currentText()}...")

    def selected_match(self) -> StudyMatch | None:
        rows = self.table.selectionModel().selectedRows()
        return self.matches[rows[0].row()] if rows else None

    def retrieve_selected(self) -> None:
        match = self.selected_match()
        if match is None:
            return
        self._mode = "retrieve"
        cache = self.settings.pacs_cache_dir()
        os.makedirs(cache, exist_ok=True)
        if self._start(retrieve_task, match.study_uid, cache):
            self._say(f"Retrieving study of {match.study_date or 'unknown date'} into the local cache...")

    def clear_cache(self, confirm: bool = True) -> int:
        """Delete the retrieved studies after saying how much patient data that is."""
        from PySide6.QtWidgets import QMessageBox

        from cxr_viewer.clinical.pacs_config import cache_usage, clear_cache

        if self.runner.busy:
            self._say("Wait for the current transfer to finish (or cancel it) first.", error=True)
            return 0
        folder = self.settings.pacs_cache_dir()
        files, size = cache_usage(folder)
        if not files:
            self._say("The PACS cache is empty.")
            return 0
        if confirm and QMessageBox.question(
                self, "Clear PACS cache",
                f"Delete {files} retrieved file(s), {size / 1e6:.1f} MB, from {folder}?\n"
                "Images open in the viewer stay on screen until closed.") != QMessageBox.StandardButton.Yes:
            return 0
        removed = clear_cache(folder)
        self._say(f"Deleted {removed} file(s) from the PACS cache.")
        return removed

    # --- results -------------------------------------------------------------------------
    def _say(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #b00000;" if error else "")
        self.status.setText(text)

    def _on_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.btn_cancel.setEnabled(busy)
        for b in (self.btn_search, self.btn_echo):
            b.setEnabled(not busy)
        self._update_buttons()
        if busy:
            self.progress.setRange(0, 0)

    def _update_buttons(self) -> None:
        self.btn_retrieve.setEnabled(not self.runner.busy and self.selected_match() is not None)

    def _on_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
        if p.stage == "retrieve":
            self._say(f"Retrieving: {p.done}" + (f" of {p.total}" if p.total else "") + " image(s)")

    def _done(self, text: str, error: bool = False) -> None:
        self._say(text, error)
        self._update_buttons()

    def _on_failed(self, message: str) -> None:
        self._done(message, error=True)

    def _on_finished(self, value) -> None:
        mode = getattr(self, "_mode", "")
        if mode == "echo":
            self._done(f"{self.node.currentText()} answered in {value * 1000:.0f} ms.")
        elif mode == "query":
            self.show_matches(value)
        elif mode == "retrieve":
            paths = list(value)
            if not paths:
                self._done("The PACS sent no images for this study.", error=True)
                return
            self._done(f"Retrieved {len(paths)} image(s); opening them.")
            self.open_requested.emit([os.path.dirname(paths[0])] if len({os.path.dirname(p) for p in paths}) == 1
                                     else paths)

    def show_matches(self, matches: list[StudyMatch]) -> None:
        self.matches = list(matches)
        self.table.setRowCount(len(self.matches))
        for r, m in enumerate(self.matches):
            values = (m.patient_id, m.patient_name.replace("^", " "), m.study_date, m.description, m.modalities,
                      m.accession, "" if m.n_series is None else str(m.n_series),
                      "" if m.n_instances is None else str(m.n_instances))
            for c, v in enumerate(values):
                item = QTableWidgetItem(v)
                item.setData(Qt.ItemDataRole.UserRole, m.study_uid)
                self.table.setItem(r, c, item)
        if self.matches:
            self.table.selectRow(0)
        self._done(f"{len(self.matches)} stud{'y' if len(self.matches) == 1 else 'ies'} found."
                   + (" Double-click or 'Retrieve and Open'." if self.matches else ""))

    def shutdown(self) -> None:
        self.runner.shutdown()

    def closeEvent(self, event):  # noqa: N802
        self.runner.cancel()
        super().closeEvent(event)
