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
    QSlider,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.inference import HEAD_MEANING, ModelSummary, ScoreResult
from cxr_viewer.ai.model import HEAD_TITLES, HEADS, unavailable_reason
from cxr_viewer.ai.overlay import HEATMAP_COLORMAP, heatmap_alpha
from cxr_viewer.gui.anatomy_panel import AnatomyBox


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


class HeadBox(QFrame):
    def __init__(self, head: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.head = head
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel(f"<b>{HEAD_TITLES[head]}</b>", self)
        self.score = QLabel("", self)
        self.score.setTextFormat(Qt.TextFormat.RichText)
        self.score.setWordWrap(True)
        self.detail = QLabel("", self)
        self.detail.setWordWrap(True)
        self.meaning = QLabel(HEAD_MEANING[head], self)
        self.meaning.setWordWrap(True)
        self.meaning.setStyleSheet("color: #555;")
        self.use = QLabel("", self)  # the head's intended use
        self.use.setWordWrap(True)
        self.use.setStyleSheet("color: #555;")
        self.heatmap = QCheckBox("Show heatmap", self)
        self.heatmap.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        for w in (self.title, self.score, self.detail, self.heatmap, self.meaning, self.use):
            layout.addWidget(w)

    def fit_text(self) -> None:
        """Give each wrapped label the height its text needs at the box's width: in a dock's scroll
        area Qt would otherwise squeeze a label that grew a line, and the lines overlap."""
        width = max(self.contentsRect().width() - 12, 120)
        for label in (self.score, self.detail, self.meaning, self.use):
            label.setMinimumHeight(label.heightForWidth(width) if label.text() else 0)

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        self.fit_text()

    def show_unavailable(self, reason: str) -> None:
        self.score.setText(f"<i>{reason}</i>")
        self.detail.setText("")
        self.heatmap.setEnabled(False)
        self.heatmap.setChecked(False)


class FindingsPanel(QGroupBox):
    heatmap_requested = Signal(str)  # head name, or "" for none
    opacity_changed = Signal(float)
    score_anyway_requested = Signal()  # score the shown image although it is outside a head's intended use

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", parent)
        self.model_label = QLabel("", self)
        self.model_label.setWordWrap(True)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
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
        self.notice.setStyleSheet("color: #b00000;")
        legend_row = QHBoxLayout()
        legend_row.addWidget(QLabel("low", self))
        legend_row.addWidget(self.legend)
        legend_row.addWidget(QLabel("high", self))
        legend_row.addStretch(1)
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(QLabel("Heatmap opacity", self))
        opacity_row.addWidget(self.opacity, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.notice)
        layout.addWidget(self.model_label)
        layout.addWidget(self.status)
        for box in self.boxes.values():
            layout.addWidget(box)
        layout.addWidget(self.score_anyway)
        layout.addLayout(opacity_row)
        layout.addLayout(legend_row)
        layout.addWidget(self.anatomy)
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
            score = (f"<span style='font-size:16pt'><b>{hs.probability * 100:.1f}%</b></span> "
                     f"<span style='color:{colour}'>{label}</span>")
            op = ""
            if hs.sensitivity is not None and hs.specificity is not None:
                op = (f"; at this threshold the model had sensitivity {hs.sensitivity:.2f} and specificity "
                      f"{hs.specificity:.2f} on its validation data")
            detail = f"Calibrated probability; threshold {hs.threshold:.2f}{op}."
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
