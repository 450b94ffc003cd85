"""AI findings: per-head calibrated probability, label, operating point, meaning; heatmap controls."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.inference import HEAD_MEANING, ModelSummary, ScoreResult, probability_text
from cxr_viewer.ai.model import HEAD_TITLES, HEADS, unavailable_reason
from cxr_viewer.ai.overlay import HEATMAP_COLORMAP, heatmap_alpha
from cxr_viewer.clinical.finding_marks import MARK_HEX, MARK_TITLES
from cxr_viewer.gui.anatomy_panel import AnatomyBox


CELL_MAP_TIP = "Show the nodule/mass model's probability per cell over the image"
GRAD_CAM_TIP = ("Show where the score comes from over the image, coarsely (Grad-CAM on the model's 7 x 7 "
                "feature grid): not an outline of disease. The model card says how much of this model's "
                "heatmaps falls in the lungs")


def heatmap_lut() -> np.ndarray:
    """256 x 4 RGBA: inferno colours, transparent at 0 rising to 80% opaque at the hottest
    (the colour map and ramp of the burnt-in exports, :mod:`cxr_viewer.ai.overlay`)."""
    lut = pg.colormap.get(HEATMAP_COLORMAP).getLookupTable(nPts=256, alpha=True).astype(np.uint8)
    lut[:, 3] = heatmap_alpha(256)
    return lut


def legend_pixmap(width: int = 160, height: int = 12) -> QPixmap:
    lut = pg.colormap.get(HEATMAP_COLORMAP).getLookupTable(nPts=width, alpha=False).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(lut[None, :, :3], height, axis=0))
    img = QImage(rgb.data, width, height, width * 3, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(img.copy())


#: explanatory text in the findings panel: smaller than the scores (the panel fits 1280x720)
SMALL_STYLE = "font-size: 8pt;"
MUTED_STYLE = "color: #555; font-size: 8pt;"


def small_label(text: str, parent: QWidget, muted: bool = False) -> QLabel:
    label = QLabel(text, parent)
    label.setWordWrap(True)
    label.setStyleSheet(MUTED_STYLE if muted else SMALL_STYLE)
    return label


class HeadBox(QFrame):
    """One head: title and heatmap switch on one line, the score, a short detail; what the score
    means and the head's intended use behind a "Details" toggle (also the title's tooltip)."""

    def __init__(self, head: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.head = head
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel(f"<b>{HEAD_TITLES[head]}</b>", self)
        self.title.setWordWrap(True)
        self.title.setToolTip(HEAD_MEANING[head])
        self.score = QLabel("", self)
        self.score.setTextFormat(Qt.TextFormat.RichText)
        self.score.setWordWrap(True)
        self.detail = small_label("", self)
        self.meaning = small_label(HEAD_MEANING[head], self, muted=True)
        self.use = small_label("", self, muted=True)  # the head's intended use
        self.heatmap = QCheckBox("Heatmap", self)
        self.heatmap.setToolTip(CELL_MAP_TIP if head in MARK_TITLES else GRAD_CAM_TIP)
        self.heatmap.setEnabled(False)
        self.more = QToolButton(self)
        self.more.setText("Details")
        self.more.setCheckable(True)
        self.more.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.more.setArrowType(Qt.ArrowType.RightArrow)
        self.more.setAutoRaise(True)
        self.more.setStyleSheet(SMALL_STYLE)
        self.more.setToolTip("What this score means and the head's intended use")
        self.more.toggled.connect(self.show_details)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.title, 1)
        top.addWidget(self.heatmap, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 3, 6, 3)
        layout.setSpacing(2)
        layout.addLayout(top)
        for w in (self.score, self.detail, self.more, self.meaning, self.use):
            layout.addWidget(w)
        self.show_details(False)

    def show_details(self, on: bool) -> None:
        self.more.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.meaning.setVisible(on)
        self.use.setVisible(on and bool(self.use.text()))
        self.fit_text()

    def fit_text(self) -> None:
        """Give each wrapped label the height its text needs at the box's width: in a dock's scroll
        area Qt would otherwise squeeze a label that grew a line, and the lines overlap."""
        width = max(self.contentsRect().width() - 12, 120)
        self.detail.setVisible(bool(self.detail.text()))
        for label in (self.score, self.detail, self.meaning, self.use):
            label.setMinimumHeight(label.heightForWidth(width) if label.text() and not label.isHidden() else 0)

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        self.fit_text()

    def show_unavailable(self, reason: str) -> None:
        self.score.setText(f"<i style='font-size:8pt'>{reason}</i>")
        self.detail.setText("")
        self.heatmap.setEnabled(False)
        self.heatmap.setChecked(False)


class FindingsPanel(QGroupBox):
    heatmap_requested = Signal(str)  # head name, or "" for none
    opacity_changed = Signal(float)
    score_anyway_requested = Signal()  # score the shown image although it is outside a head's intended use

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", parent)
        self.model_label = small_label("", self)
        self.status = small_label("", self)
        self.boxes = {h: HeadBox(h, self) for h in HEADS}
        self.score_anyway = QPushButton("Score anyway (outside intended use)", self)
        self.score_anyway.setToolTip("Show the numbers for this image although the input checks found it outside "
                                     "a head's intended use; they are marked as such everywhere")
        self.score_anyway.setVisible(False)
        self.score_anyway.clicked.connect(self.score_anyway_requested)
        self.opacity = QSlider(Qt.Orientation.Horizontal, self)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(70)
        self.legend = QLabel(self)
        self.legend.setPixmap(legend_pixmap())
        self.anatomy = AnatomyBox(self)
        self.notice = QLabel(f"<b>{RESEARCH_NOTICE}</b>", self)
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("color: #b00000;")
        self.legend.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.legend.setScaledContents(True)
        self.legend.setMaximumWidth(160)
        legend_row = QHBoxLayout()
        legend_row.addWidget(small_label("Heatmap: low", self))
        legend_row.addWidget(self.legend, 1)
        legend_row.addWidget(small_label("high", self))
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(small_label("Opacity", self))
        opacity_row.addWidget(self.opacity, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(3)
        layout.addWidget(self.notice)
        layout.addWidget(self.model_label)
        layout.addWidget(self.status)
        for box in self.boxes.values():
            layout.addWidget(box)
        layout.addWidget(self.score_anyway)
        layout.addLayout(legend_row)
        layout.addLayout(opacity_row)
        layout.addWidget(self.anatomy)
        layout.addStretch(1)
        for head, box in self.boxes.items():
            box.heatmap.toggled.connect(lambda on, h=head: self._on_heatmap_toggled(h, on))
        self.opacity.valueChanged.connect(lambda v: self.opacity_changed.emit(v / 100.0))
        self.result: ScoreResult | None = None
        self.set_model(None)

    def set_model(self, summary: ModelSummary | None, error: str = "") -> None:
        if summary is None:
            text = ("<b>No model loaded: no scores.</b> Load one with Model > Load Model..., or train one "
                    "(Model > Train, or <tt>cxr-viewer train</tt>).")
            if error:
                text += f"<br>Last attempt failed: {error}"
            self.model_label.setText(text)
            for box in self.boxes.values():
                box.show_unavailable("not available: no model loaded")
        else:
            self.model_label.setText(
                f"Model: {summary.name} v{summary.version} ({summary.sha256[:12]})<br>Device: {summary.device}"
                + (f"<br><span style='color:#b00000'>Last load failed, kept this model: {error}</span>" if error else ""))
            for head, box in self.boxes.items():
                use = summary.intended_uses.get(head, "")
                box.use.setText(f"Intended use: {use}." if use else "")
                box.title.setToolTip(HEAD_MEANING[head] + (f"\n\nIntended use: {use}." if use else ""))
                box.show_details(box.more.isChecked())
                if head not in summary.trained_heads:
                    box.show_unavailable(unavailable_reason(head, summary.head_notes.get(head, "")))
                else:
                    box.score.setText("<i>waiting for an image</i>")
                    box.detail.setText("")
        self.result = None
        self.score_anyway.setVisible(False)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_result(self, result: ScoreResult) -> None:
        self.result = result
        for hs in result.heads:
            box = self.boxes[hs.head]
            if not hs.available:
                box.show_unavailable(hs.reason)
                if hs.status == "outside_intended_use":
                    why = hs.reason.split(": ", 1)[-1]
                    box.score.setText("<span style='color:#8a5a00'><b>Not scored</b>: outside this head's "
                                      "intended use</span>")
                    box.detail.setText(why[:1].upper() + why[1:] + ".")
                continue
            label = "above threshold" if hs.positive else "below threshold"
            colour = "#b00000" if hs.positive else "#006000"
            score = (f"<span style='font-size:14pt'><b>{probability_text(hs.probability)}</b></span> "
                     f"<span style='color:{colour}'>{label}</span>")
            op = ""
            if hs.sensitivity is not None and hs.specificity is not None:
                op = (f"; at this threshold the model had sensitivity {hs.sensitivity:.2f} and specificity "
                      f"{hs.specificity:.2f} on its validation data")
            detail = f"Calibrated probability; threshold {hs.threshold:.2f}{op}."
            if hs.positive and hs.location is not None:  # the viewer draws the box (View > AI Finding Marks)
                score += (f"<br><span style='font-size:8pt'><span style='color:{MARK_HEX}'>&#9632;</span> "
                          "marked on the image</span>")
            if hs.status == "scored_outside_intended_use":
                score += " <span style='color:#8a5a00'><b>outside intended use</b></span>"
                why = hs.reason.split(": ", 1)[-1]
                detail = f"Scored anyway: {why}; this number was not earned on images like this one."
            box.score.setText(score)
            box.detail.setText(detail)
            box.heatmap.setEnabled(hs.head in result.heatmaps)
        for box in self.boxes.values():
            box.fit_text()
        self.set_status(f"Scored in {result.seconds * 1000:.0f} ms on {result.device}.")
        self.score_anyway.setVisible(any(hs.status == "outside_intended_use" for hs in result.heads))

    def show_no_image(self, text: str) -> None:
        """No image on screen: no score, no heatmap control, for every head."""
        self.result = None
        self.score_anyway.setVisible(False)
        for box in self.boxes.values():
            box.show_unavailable(text)
        self.set_status("")

    def clear_result(self, text: str = "") -> None:
        self.result = None
        self.score_anyway.setVisible(False)
        for box in self.boxes.values():
            if box.heatmap.isEnabled():
                box.score.setText("<i>scoring...</i>" if not text else f"<i>{text}</i>")
                box.detail.setText("")
        self.set_status(text)

    def shown_heatmap(self) -> str:
        return next((h for h, b in self.boxes.items() if b.heatmap.isChecked()), "")

    def _on_heatmap_toggled(self, head: str, on: bool) -> None:
        if on:  # one heatmap at a time
            for h, box in self.boxes.items():
                if h != head and box.heatmap.isChecked():
                    box.heatmap.blockSignals(True)
                    box.heatmap.setChecked(False)
                    box.heatmap.blockSignals(False)
        self.heatmap_requested.emit(self.shown_heatmap())
