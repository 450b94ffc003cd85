"""Study browser: Patient -> Study -> Series -> Image tree with thumbnails, and the open errors."""

from __future__ import annotations

import os

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.io.study import ImageRef, StudyIndex
from cxr_viewer.io.thumbnails import THUMB_SIZE

REF_ROLE = Qt.ItemDataRole.UserRole + 1
UNREADABLE_ROLE = Qt.ItemDataRole.UserRole + 2


def grey_pixmap(pixels: np.ndarray) -> QPixmap:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = pixels.shape
    qimage = QImage(pixels.data, w, h, w, QImage.Format.Format_Grayscale8)
    return QPixmap.fromImage(qimage.copy())  # copy: the numpy buffer may go away


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


class StudyBrowser(QWidget):
    image_selected = Signal(object)  # ImageRef

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.tree = QTreeWidget(self)
        self.tree.setHeaderLabels(["Studies"])
        self.tree.setIconSize(QSize(THUMB_SIZE // 2, THUMB_SIZE // 2))
        self.tree.currentItemChanged.connect(self._on_current_changed)
        self.errors_label = QLabel("", self)
        self.errors = QListWidget(self)
        self.errors.setWordWrap(True)
        bottom = QWidget(self)
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.errors_label)
        bl.addWidget(self.errors)
        split = QSplitter(Qt.Orientation.Vertical, self)
        split.addWidget(self.tree)
        split.addWidget(bottom)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split)
        self._items: dict[str, QTreeWidgetItem] = {}
        self._refs: list[ImageRef] = []
        self.set_index(StudyIndex())

    def set_index(self, index: StudyIndex) -> None:
        self.tree.blockSignals(True)
        self.tree.clear()
        self._items.clear()
        self._refs = []
        placeholder = QPixmap(THUMB_SIZE // 2, THUMB_SIZE // 2)
        placeholder.fill(Qt.GlobalColor.black)
        placeholder_icon = QIcon(placeholder)
        for patient in index.patients:
            if patient.key.startswith("raster:"):
                label = "Image files (no patient data)"
            else:
                label = f"{patient.name or '(no name)'}  [{patient.patient_id or 'no ID'}]"
            p_item = QTreeWidgetItem(self.tree, [label])
            for study in patient.studies:
                s_label = " ".join(x for x in (_date(study.date), study.description) if x) or "(study)"
                s_item = QTreeWidgetItem(p_item, [s_label])
                for series in study.series:
                    se_label = " ".join(x for x in (series.modality, series.description) if x) or "(series)"
                    se_item = QTreeWidgetItem(s_item, [f"{se_label} ({len(series.images)})"])
                    for ref in series.images:
                        frames = f" [{ref.frames} frames]" if ref.frames > 1 else ""
                        item = QTreeWidgetItem(se_item, [os.path.basename(ref.path) + frames])
                        item.setData(0, REF_ROLE, ref)
                        item.setToolTip(0, ref.path)
                        item.setIcon(0, placeholder_icon)
                        self._items[ref.path] = item
                        self._refs.append(ref)
        self.tree.expandAll()
        self.tree.blockSignals(False)
        self.errors.clear()
        for err in index.errors:
            self._add_error_row(err.path, err.reason)
        self._update_errors_label()

    def _add_error_row(self, path: str, reason: str) -> None:
        item = QListWidgetItem(f"{os.path.basename(path) or path}: {reason}")
        item.setToolTip(path)
        self.errors.addItem(item)

    def _update_errors_label(self) -> None:
        n = self.errors.count()
        self.errors_label.setText(f"Could not open ({n})" if n else "All files opened")
        self.errors.setVisible(bool(n))

    def refs(self) -> list[ImageRef]:
        return list(self._refs)

    def set_thumbnail(self, path: str, pixels: np.ndarray | None, error: str = "") -> None:
        item = self._items.get(path)
        if item is None:
            return
        if pixels is not None:
            item.setIcon(0, QIcon(grey_pixmap(pixels)))
        elif error:
            self.mark_unreadable(path, error)

    def mark_unreadable(self, path: str, reason: str) -> None:
        """A file whose header indexed but whose pixels do not decode (a truncated JPEG): a warning
        instead of a black thumbnail, and a line under "Could not open"."""
        item = self._items.get(path)
        if item is None or item.data(0, UNREADABLE_ROLE):
            return
        item.setData(0, UNREADABLE_ROLE, reason)
        item.setIcon(0, self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning))
        item.setText(0, f"{item.text(0)} (cannot be decoded)")
        item.setToolTip(0, f"{path}\n{reason}")
        self._add_error_row(path, reason)
        self._update_errors_label()

    def select(self, ref: ImageRef, quiet: bool = False) -> None:
        """Make ``ref`` the current row; ``quiet``: without loading it (it is already shown)."""
        item = self._items.get(ref.path)
        if item is not None:
            self.tree.blockSignals(quiet)
            self.tree.setCurrentItem(item)
            self.tree.blockSignals(False)

    def current(self) -> ImageRef | None:
        item = self.tree.currentItem()
        return item.data(0, REF_ROLE) if item is not None else None

    def step(self, delta: int) -> None:
        """Select the next (+1) or previous (-1) image."""
        if not self._refs:
            return
        cur = self.current()
        paths = [r.path for r in self._refs]
        i = paths.index(cur.path) if cur is not None and cur.path in paths else -1
        j = min(max(i + delta, 0), len(self._refs) - 1) if i >= 0 else 0
        self.select(self._refs[j])

    def _on_current_changed(self, current: QTreeWidgetItem | None, _previous) -> None:
        if current is None:
            return
        ref = current.data(0, REF_ROLE)
        if ref is None:  # a patient/study/series row: go to its first image
            child = current
            while child is not None and child.data(0, REF_ROLE) is None and child.childCount():
                child = child.child(0)
            ref = child.data(0, REF_ROLE) if child is not None else None
        if ref is not None:
            self.image_selected.emit(ref)
