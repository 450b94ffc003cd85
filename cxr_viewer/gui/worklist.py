"""Worklist: score every opened image and list them by pneumonia score, highest first."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.ai.inference import WorklistRow, probability_text
from cxr_viewer.ai.model import HEAD_TITLES, HEADS
from cxr_viewer.common.tasks import remaining_text
from cxr_viewer.io.hanging import natural_key

PATH_ROLE = Qt.ItemDataRole.UserRole + 2
#: the image column's first width (px): a file name stays readable; the user may drag it wider
IMAGE_COLUMN_WIDTH = 170


#: scores at or above the head's threshold: red and bold, with a marker for colour-blind readers
ABOVE_COLOUR = QColor("#b00000")


class _ScoreItem(QTableWidgetItem):
    """Sorts by number; images without a score sort last. Outside the head's intended use: "not
    scored" (or the number marked with an asterisk when scored anyway), the reason as tooltip.
    At or above the threshold: "▲" before the number, red and bold."""

    def __init__(self, value: float | None, status: str = "", reason: str = "", positive: bool | None = None):
        if status == "outside_intended_use":
            text = "not scored"
        elif value is None:
            text = "n/a"
        else:
            text = (("\u25b2 " if positive else "") + probability_text(value)
                    + (" *" if status == "scored_outside_intended_use" else ""))
        super().__init__(text)
        tips = [reason] if reason else []
        if value is not None and positive is not None:
            tips.insert(0, "above the threshold" if positive else "below the threshold")
        if positive and value is not None:
            self.setForeground(QBrush(ABOVE_COLOUR))
            font = self.font()
            font.setBold(True)
            self.setFont(font)
        if tips:
            self.setToolTip("; ".join(tips))
        self.positive = positive
        self.value = -1.0 if value is None else value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other):  # noqa: D105
        return self.value < getattr(other, "value", -1.0)


class _NameItem(QTableWidgetItem):
    """A file name sorting naturally: person99 before person998."""

    def __init__(self, text: str):
        super().__init__(text)
        self.key = natural_key(text)

    def __lt__(self, other):
        return self.key < getattr(other, "key", natural_key(other.text()))


class Worklist(QWidget):
    start_requested = Signal()
    cancel_requested = Signal()
    image_requested = Signal(str)  # path

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.start = QPushButton("Score all", self)
        self.start.setToolTip("Score all opened images and list them by pneumonia score (Ctrl+Shift+S)")
        self.cancel = QPushButton("Cancel", self)
        self.cancel.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setMinimumWidth(40)
        self.info = QLabel("", self)
        self.info.setWordWrap(True)
        self.table = QTableWidget(0, 2 + len(HEADS), self)
        self.table.setHorizontalHeaderLabels(["Image", *[HEAD_TITLES[h].split(" (")[0] for h in HEADS], "Note"])
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)  # the user may widen it
        for col in range(1, 1 + len(HEADS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setColumnWidth(0, IMAGE_COLUMN_WIDTH)
        self._image_width_auto = True  # until the user drags the column: narrowed to keep the score in view
        self._sizing = False
        header.sectionResized.connect(self._on_section_resized)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # both ends of a long file name
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.start)
        row.addWidget(self.cancel)
        row.addWidget(self.progress, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(row)
        layout.addWidget(self.info)
        layout.addWidget(self.table, 1)
        self.start.clicked.connect(self.start_requested)
        self.cancel.clicked.connect(self.cancel_requested)
        self.table.cellClicked.connect(self._on_clicked)
        self._total = 0
        self._started = time.monotonic()
        self.set_aside = 0

    def begin(self, total: int) -> None:
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self._total = total
        self.set_aside = 0  # rows with no number for any trained head: outside its intended use
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.start.setEnabled(False)
        self.cancel.setEnabled(True)
        self.info.setText(f"Scoring {total} image(s)...")
        self._started = time.monotonic()

    def add_row(self, row: WorklistRow) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        name = _NameItem(os.path.basename(row.path))
        name.setData(PATH_ROLE, row.path)
        name.setToolTip(row.path)
        self.table.setItem(r, 0, name)
        for i, head in enumerate(HEADS):
            self.table.setItem(r, 1 + i, _ScoreItem(row.probabilities.get(head), row.statuses.get(head, ""),
                                                    row.reasons.get(head, ""), row.positives.get(head)))
        outside = [f"{HEAD_TITLES[h].split(' (')[0]}: {row.reasons[h].split(': ', 1)[-1]}" for h in HEADS
                   if row.statuses.get(h) in ("outside_intended_use", "scored_outside_intended_use")]
        statuses = set(row.statuses.values()) - {"not_available"}
        self.set_aside += bool(statuses) and statuses <= {"outside_intended_use"}
        note = QTableWidgetItem(row.error or "; ".join(outside))
        note.setToolTip(note.text())
        self.table.setItem(r, 1 + len(HEADS), note)
        done = self.table.rowCount()
        self.progress.setValue(done)
        eta = remaining_text(done, self._total, time.monotonic() - self._started)
        self.info.setText(f"Scoring {done} of {self._total} image(s)" + (f": {eta}" if eta else "..."))

    def clear(self, text: str = "") -> None:
        """No rows (they belonged to another model or another folder); ``text`` says why."""
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self.progress.setValue(0)
        self.info.setText(text)

    def finish(self, text: str, cancelled: bool = False) -> None:
        """Scoring ended; ``cancelled``: the progress bar goes back to empty (the rows stay)."""
        if cancelled:
            self.progress.setValue(0)
        self.start.setEnabled(True)
        self.cancel.setEnabled(False)
        self.info.setText(text)
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.SortOrder.DescendingOrder)
        self.fit_image_column()  # the score column sized to its contents now

    def _on_section_resized(self, index: int, _old: int, _new: int) -> None:
        if index == 0 and not self._sizing:
            self._image_width_auto = False  # the user chose this width

    def fit_image_column(self) -> None:
        """In a narrow dock (a 1280x720 screen), narrow the image column so the pneumonia score
        beside it stays in view (names are elided in the middle); never wider than its first width."""
        if not self._image_width_auto or self.visibleRegion().isEmpty():  # a hidden tab has no width to go by
            return
        score = self.table.horizontalHeader().sectionSize(1)
        width = max(100, min(IMAGE_COLUMN_WIDTH, self.table.viewport().width() - score - 4))
        self._sizing = True
        try:
            self.table.setColumnWidth(0, width)
        finally:
            self._sizing = False

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        self.fit_image_column()

    def showEvent(self, event):  # noqa: N802
        super().showEvent(event)
        self.fit_image_column()

    def paths_in_order(self) -> list[str]:
        return [self.table.item(r, 0).data(PATH_ROLE) for r in range(self.table.rowCount())]

    def _on_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.image_requested.emit(item.data(PATH_ROLE))
