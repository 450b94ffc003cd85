"""The DICOM tag browser: the shown image's whole dataset as a tree, with a search box.

The rows come from :mod:`cxr_viewer.io.tags` (sequences nested, private tags with their creator,
values cut, pixel data not read); this dialog only draws and filters them. Nothing is sent anywhere.
"""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from cxr_viewer.io.tags import TagRow, count_rows, filter_rows, read_rows


class TagBrowser(QDialog):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("DICOM tags")
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Filter by keyword, tag number (0010,0020 or 00100020) or value")
        self.search.setClearButtonEnabled(True)
        self.tree = QTreeWidget(self)
        self.tree.setHeaderLabels(["Tag", "Name", "VR", "Value"])
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.info = QLabel("", self)
        layout = QVBoxLayout(self)
        layout.addWidget(self.search)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.info)
        self.rows: tuple[TagRow, ...] = ()
        self.path = ""
        self.search.textChanged.connect(self._fill)
        self.resize(900, 640)

    def show_file(self, path: str) -> None:
        self.path = path
        self.setWindowTitle(f"DICOM tags - {os.path.basename(path)}")
        try:
            self.rows = read_rows(path)
        except Exception as exc:  # noqa: BLE001 (a file that indexed but whose header reads badly now)
            self.rows = ()
            self.info.setText(f"Cannot read the tags: {type(exc).__name__}")
            self.tree.clear()
            return
        self._fill(self.search.text())

    def _fill(self, needle: str = "") -> None:
        shown = filter_rows(self.rows, needle)
        self.tree.setUpdatesEnabled(False)
        self.tree.clear()
        self._add(self.tree.invisibleRootItem(), shown)
        if needle.strip():
            self.tree.expandAll()
        else:
            self.tree.expandToDepth(0)
        self.tree.setUpdatesEnabled(True)
        for col, width in ((0, 110), (1, 260), (2, 40)):
            self.tree.setColumnWidth(col, width)
        total, n = count_rows(self.rows), count_rows(shown)
        self.info.setText(f"{n} of {total} rows" if needle.strip() else f"{total} rows (pixel data not read)")

    def _add(self, parent: QTreeWidgetItem, rows: tuple[TagRow, ...]) -> None:
        for row in rows:
            item = QTreeWidgetItem(parent, [row.tag, row.name, row.vr, row.value])
            item.setToolTip(3, row.value)
            if row.tag.startswith("(") and int(row.tag[1:5], 16) % 2:  # a private group
                item.setForeground(1, Qt.GlobalColor.darkMagenta)
            self._add(item, row.children)

    def shown_rows(self) -> list[tuple[str, str, str]]:
        """(tag, name, value) of every row in the tree, depth first (for tests)."""
        out = []

        def walk(item: QTreeWidgetItem) -> None:
            for i in range(item.childCount()):
                child = item.child(i)
                out.append((child.text(0), child.text(1), child.text(3)))
                walk(child)

        walk(self.tree.invisibleRootItem())
        return out
