"""Export the shown image's results (SR, Secondary Capture, PDF, image copy), or send them to a PACS.

The dialog only collects choices; the work is :func:`export_task` / :func:`send_results_task`,
generators run by the main window's export runner off the GUI thread.
"""

from __future__ import annotations

import os
import time
from typing import Generator, Mapping, Sequence

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

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.inference import ScoreResult
from cxr_viewer.ai.model import ModelMeta
from cxr_viewer.clinical.export import (
    ExportRequest,
    OutputSet,
    export_dicom_task,
    outbox_name,
    report_page,
    unique_path,
)
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.gui.pdf_report import write_pdf_task
from cxr_viewer.io.image import LoadedImage


def export_task(image: LoadedImage, result: ScoreResult, meta: ModelMeta | None, folder: str, *, sr: bool,
                sc: bool, pdf: bool, image_copy: bool, deidentify: bool, voi=None, others: Sequence = (),
                model_path: str = "", device: str = "auto", annotations: Mapping | None = None,
                cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[str, ...]]:
    """The shown image and, when ``others`` (ImageRefs) are given, those images too: DICOM objects
    for each DICOM image and one PDF with a page per image. All the files, or none: what was
    written is removed again on an error or cancel. ``others`` are scored with a model loaded here
    from ``model_path`` (a Scorer is used by one thread at a time; the viewer's own keeps scoring).
    ``annotations``: the user's annotations by (path, frame), drawn into the Secondary Captures and
    PDF pages of their images."""
    from cxr_viewer.io.image import load_image

    deidentifier = None
    if deidentify:
        from cxr_viewer.clinical.deid import Deidentifier

        deidentifier = Deidentifier()
    os.makedirs(folder, exist_ok=True)
    todo = [None, *others]
    scorer = None
    outputs, used = OutputSet(), set()
    pages = []
    try:
        for i, ref in enumerate(todo):
            yield Progress("export", i, len(todo), "" if ref is None else os.path.basename(ref.path))
            cancel.raise_if_cancelled()
            if ref is None:
                img, res, img_voi = image, result, voi
            else:
                if scorer is None:
                    from cxr_viewer.ai.inference import Scorer

                    scorer = Scorer.from_file(model_path, device)
                img = load_image(ref)
                res, img_voi = scorer.score(img), None
            path = lambda kind, im=img: unique_path(os.path.join(folder, outbox_name(im, kind, deidentifier)),  # noqa: E731
                                                    used)
            dicom = img.ref.kind == "dicom"  # PNG/JPEG images of a multi-image export get their PDF page only
            request = ExportRequest(path("sr") if sr and dicom else None, path("sc") if sc and dicom else None,
                                    path("image") if image_copy and dicom else None, deidentify)
            anns = (annotations or {}).get((img.ref.path, img.frame), ())
            if pdf:
                pages.append(report_page(img, res, meta, deidentify, deidentifier, voi=img_voi, annotations=anns))
            yield from export_dicom_task(img, res, request, deidentifier, outputs, annotations=anns, cancel=cancel)
        if pages:
            name = outbox_name(image, "report", deidentifier)[:-4]
            name += f"_{len(pages)}_images.pdf" if len(pages) > 1 else ".pdf"
            pdf_path = os.path.join(folder, name)
            outputs.before_write(pdf_path)
            outputs.wrote((yield from write_pdf_task(pages, pdf_path, cancel=cancel)))
    except BaseException:
        outputs.rollback()
        raise
    outputs.commit()
    return tuple(outputs.written)


def send_results_task(node, password: str | None, image: LoadedImage, result: ScoreResult, outbox: str,
                      annotations=(), gsps=None, cancel: CancelToken = NEVER_CANCELLED):
    """Write the SR and Secondary Capture (with the user's ``annotations`` drawn) and, when given,
    the annotations' presentation state ``gsps`` into a fresh outbox folder, C-STORE / STOW-RS them,
    then delete them (they hold patient data; the PACS has them now, or the user sends again)."""
    import shutil
    import tempfile

    from cxr_viewer.clinical.pacs import send_task

    os.makedirs(outbox, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=outbox)
    try:
        request = ExportRequest(os.path.join(folder, outbox_name(image, "sr")),
                                os.path.join(folder, outbox_name(image, "sc")))
        paths = list((yield from export_dicom_task(image, result, request, annotations=annotations, cancel=cancel)))
        if gsps is not None:
            from cxr_viewer.clinical.dicom_results import write_dataset

            path = os.path.join(folder, outbox_name(image, "gsps"))
            write_dataset(gsps, path)
            paths.append(path)
        return (yield from send_task(node, paths, password, cancel=cancel))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ExportDialog(QDialog):
    """Which objects, where, and whether to de-identify them."""

    def __init__(self, image: LoadedImage, folder: str, deidentify: bool, parent: QWidget | None = None,
                 n_opened: int = 1):
        super().__init__(parent)
        self.setWindowTitle("Export results")
        is_dicom = image.ref.kind == "dicom"
        self.sr = QCheckBox("DICOM Structured Report (Comprehensive SR, TID 1500 style): scores and model", self)
        self.sc = QCheckBox("DICOM Secondary Capture: the image with heatmap and scores burnt in", self)
        self.pdf = QCheckBox("PDF report (one page per image)", self)
        self.copy = QCheckBox("A copy of the source DICOM image", self)
        self.deidentify = QCheckBox("De-identify every output (DICOM PS3.15 basic profile: names, IDs, "
                                    "UIDs replaced or removed; dates shifted by one random offset per patient, "
                                    "keeping the order and interval of studies)", self)
        for box in (self.sr, self.sc, self.copy):
            box.setChecked(is_dicom)
            box.setEnabled(is_dicom)
        self.pdf.setChecked(True)
        self.all_images = QCheckBox(f"All {n_opened} opened images (each scored; one PDF page per image)", self)
        self.all_images.setVisible(n_opened > 1)
        # with several images, the DICOM objects are made for those that are DICOM
        self.all_images.toggled.connect(lambda on: [b.setEnabled(is_dicom or on) for b in (self.sr, self.sc, self.copy)])
        self.deidentify.setChecked(deidentify)
        note = QLabel("" if is_dicom else (
            "This image is a PNG/JPEG: DICOM objects need a DICOM source, so only its PDF page can be made"
            + (" (with all opened images, the DICOM ones get their SR, Secondary Capture and copy)."
               if n_opened > 1 else ".")), self)
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
        for w in (self.sr, self.sc, self.pdf, self.copy, note, self.all_images, self.deidentify):
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
                "image_copy": self.copy.isChecked(), "deidentify": self.deidentify.isChecked(),
                "all_images": self.all_images.isChecked()}
