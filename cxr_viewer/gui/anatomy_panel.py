"""The "Anatomy" section of the findings panel: the cardiothoracic ratio, the heart and thoracic
widths (mm when the image has a pixel spacing, else px), whether the user corrected the lines,
the model's name, and the outline colours."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.anatomy import STRUCTURES, CtrMeasurement
from cxr_viewer.ai.anatomy_tasks import AnatomyModelSummary, AnatomyResult
from cxr_viewer.gui.image_view import ANATOMY_COLOURS, ANATOMY_TITLES
from cxr_viewer.io.study import Spacing

OFF_TEXT = "Off. View > Anatomy (Shift+A) outlines the lungs and heart and measures the cardiothoracic ratio."


def width_text(px: float, spacing: Spacing | None) -> str:
    """A horizontal width: in mm (the spacing's label) when the image has one, else in px."""
    if spacing is None:
        return f"{px:.0f} px"
    return f"{px * spacing.col_mm:.1f} {spacing.label} ({px:.0f} px)"


class AnatomyBox(QFrame):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel("<b>Anatomy</b>: lungs, heart, cardiothoracic ratio", self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.ratio = QLabel("", self)
        self.ratio.setTextFormat(Qt.TextFormat.RichText)
        self.widths = QLabel("", self)
        self.widths.setWordWrap(True)
        self.model = QLabel("", self)
        self.model.setWordWrap(True)
        self.model.setStyleSheet("color: #555;")
        swatch = "<span style='color:{}'>&#9644;</span>&nbsp;{}"
        self.legend = QLabel("&nbsp; ".join(
            [swatch.format(ANATOMY_COLOURS[s], ANATOMY_TITLES[s]) for s in STRUCTURES]
            + [swatch.format("#999999", "thoracic width (white line)")]), self)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.hint = QLabel("Drag a line's ends to correct a width; View > Reset CTR undoes it.", self)
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #555;")
        self.notice = QLabel(f"<b>{RESEARCH_NOTICE}</b>", self)
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("color: #b00000;")
        for label in (self.status, self.widths, self.legend):
            label.setStyleSheet("font-size: 8pt;")
        for label in (self.model, self.hint):
            label.setStyleSheet("color: #555; font-size: 8pt;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 3, 6, 3)
        layout.setSpacing(2)
        top = QHBoxLayout()
        top.addWidget(self.title)
        top.addStretch(1)
        layout.addLayout(top)
        for w in (self.status, self.ratio, self.widths, self.hint, self.legend, self.model, self.notice):
            layout.addWidget(w)
        self.summary: AnatomyModelSummary | None = None
        self.show_off()

    # --- states ---------------------------------------------------------------------------
    def _result_widgets(self, visible: bool) -> None:
        for w in (self.ratio, self.widths, self.legend, self.hint):
            w.setVisible(visible)

    def set_model(self, summary: AnatomyModelSummary | None) -> None:
        self.summary = summary
        self.model.setText(f"Model: {summary.title} ({summary.sha256[:12]})" if summary is not None else "")

    def show_off(self) -> None:
        self._result_widgets(False)
        self.status.setText(OFF_TEXT)

    def show_status(self, text: str) -> None:
        self._result_widgets(False)
        self.status.setText(text)

    def show_unavailable(self, reason: str) -> None:
        self._result_widgets(False)
        self.status.setText(f"Anatomy model not available: {reason}")

    def show_result(self, result: AnatomyResult, ctr: CtrMeasurement | None, spacing: Spacing | None) -> None:
        found = result.structures_found()
        missing = [ANATOMY_TITLES[s] for s in STRUCTURES if s not in found]
        self.status.setText(f"Outlined in {result.seconds * 1000:.0f} ms"
                            + (f"; not found: {', '.join(missing)}" if missing else "") + ".")
        self._result_widgets(True)
        self.model.setText(f"Model: {self.summary.title} ({self.summary.sha256[:12]})" if self.summary is not None
                           else f"Model: {result.model}")
        self.show_ctr(ctr, spacing, result.ctr_note)

    def show_ctr(self, ctr: CtrMeasurement | None, spacing: Spacing | None, note: str = "") -> None:
        if ctr is None:
            self.ratio.setText(f"<i>No cardiothoracic ratio: {html.escape(note or 'a lung or the heart was not found')}."
                               "</i>")
            self.widths.setText("")
            self.hint.setVisible(False)
            return
        corrected = " <span style='color:#8a5a00'>(corrected by user)</span>" if ctr.corrected else ""
        self.ratio.setText(f"<span style='font-size:16pt'><b>CTR {ctr.ratio:.2f}</b></span>{corrected}")
        self.widths.setText(f"Heart width {width_text(ctr.heart_width, spacing)}; "
                            f"thoracic width {width_text(ctr.thorax_width, spacing)}")
        self.hint.setVisible(True)

    def ratio_text(self) -> str:
        """The ratio line as plain text."""
        doc = QTextDocument()
        doc.setHtml(self.ratio.text())
        return doc.toPlainText()
