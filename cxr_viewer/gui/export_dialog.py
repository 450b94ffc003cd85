"""Export the shown image's results (SR, Secondary Capture, PDF, image copy), or send them to a PACS.

The dialog only collects choices; the work is :func:`export_task` / :func:`send_results_task`,
generators run by the main window's export runner off the GUI thread.
"""

from __future__ import annotations

import os
import time
from typing import Generator

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import RESEARCH_NOTICE
from ..core.export import ExportRequest, export_dicom_task, outbox_name, remove_files, report_page
from ..core.image import LoadedImage
from ..core.inference import ScoreResult
from ..core.model import ModelMeta
from ..core.tasks import NEVER_CANCELLED, CancelToken, Progress
from .pdf_report import write_pdf_task


def export_task(image: LoadedImage, result: ScoreResult, meta: ModelMeta | None, folder: str, *, sr: bool,
                sc: bool, pdf: bool, image_copy: bool, deidentify: bool, voi=None,
                cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[str, ...]]:
    """All the chosen files, or none: what was written is removed again on an error or cancel."""
    deidentifier = None
    if deidentify:
        from ..core.deid import Deidentifier

        deidentifier = Deidentifier()
    os.makedirs(folder, exist_ok=True)
    path = lambda kind: os.path.join(folder, outbox_name(image, kind, deidentifier))  # noqa: E731
    request = ExportRequest(path("sr") if sr else None, path("sc") if sc else None,
                            path("image") if image_copy else None, deidentify)
    page = report_page(image, result, meta, deidentify, deidentifier, voi=voi) if pdf else None
    written = list((yield from export_dicom_task(image, result, request, deidentifier, cancel=cancel)))
    if page is not None:
        try:
            written.append((yield from write_pdf_task([page], path("report")[:-4] + ".pdf", cancel=cancel)))
        except BaseException:
            remove_files(written)
            raise
    return tuple(written)


def send_results_task(node, password: str | None, image: LoadedImage, result: ScoreResult, outbox: str,
                      cancel: CancelToken = NEVER_CANCELLED):
    """Write the SR and Secondary Capture into a fresh outbox folder, C-STORE / STOW-RS them, then
    delete them (they hold patient data; the PACS has them now, or the user sends again)."""
    import shutil
    import tempfile

    from ..core.pacs import send_task

    os.makedirs(outbox, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=outbox)
    try:
        request = ExportRequest(os.path.join(folder, outbox_name(image, "sr")),
                                os.path.join(folder, outbox_name(image, "sc")))
        paths = yield from export_dicom_task(image, result, request, cancel=cancel)
        return (yield from send_task(node, list(paths), password, cancel=cancel))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ExportDialog(QDialog):
    """Which objects, where, and whether to de-identify them."""

    def __init__(self, image: LoadedImage, folder: str, deidentify: bool, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Export results")
        is_dicom = image.ref.kind == "dicom"
        self.sr = QCheckBox("DICOM Structured Report (Comprehensive SR, TID 1500 style): scores and model", self)
        self.sc = QCheckBox("DICOM Secondary Capture: the image with heatmap and scores burnt in", self)
        self.pdf = QCheckBox("PDF report (one page)", self)
        self.copy = QCheckBox("A copy of the source DICOM image", self)
        self.deidentify = QCheckBox("De-identify every output (DICOM PS3.15 basic profile: names, IDs, dates, "
                                    "UIDs replaced or removed)", self)
        for box in (self.sr, self.sc, self.copy):
            box.setChecked(is_dicom)
            box.setEnabled(is_dicom)
        self.pdf.setChecked(True)
        self.deidentify.setChecked(deidentify)
        note = QLabel("" if is_dicom else "DICOM objects need a DICOM source: this image is a PNG/JPEG, "
                      "so only the PDF report is available.", self)
        note.setWordWrap(True)
        self.folder = QLineEdit(folder, self)
        browse = QPushButton("Browse...", self)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(QLabel("Folder:", self))
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Export")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        notice = QLabel(f"<b style='color:#b00000'>{RESEARCH_NOTICE}</b>", self)
        lay = QVBoxLayout(self)
        for w in (self.sr, self.sc, self.pdf, self.copy, note, self.deidentify):
            lay.addWidget(w)
        lay.addLayout(row)
        lay.addWidget(notice)
        lay.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def choices(self) -> dict:
        return {"sr": self.sr.isChecked(), "sc": self.sc.isChecked(), "pdf": self.pdf.isChecked(),
                "image_copy": self.copy.isChecked(), "deidentify": self.deidentify.isChecked()}
