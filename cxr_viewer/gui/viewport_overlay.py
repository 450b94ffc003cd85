"""Text fixed to the image viewport's corners and edges, over the picture: patient, study, display
state, research notice, orientation markers and a scale bar; a hint while no image is shown.

One transparent widget laid over the graphics view (mouse events pass through to the view), with
a QLabel per corner and edge; zooming and panning move the picture, never this text. The words
come from :mod:`cxr_viewer.io.viewport`; this module only places them.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QLabel, QWidget

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.io.viewport import CornerTexts, OrientationMarkers, ScaleBar

EMPTY_HINT = "Open a study: File > Open, or drop files here"
MARGIN = 6
#: the longest scale bar, as a share of the viewport's width
SCALE_BAR_SHARE = 0.2

_CORNER_STYLE = "color: #f0f0f0; background: rgba(0, 0, 0, 110); padding: 2px 4px; font-size: 9pt;"
_NOTICE_STYLE = "color: #ff8080; background: rgba(0, 0, 0, 140); padding: 2px 4px; font-size: 9pt; font-weight: bold;"
_MARKER_STYLE = "color: #ffe680; background: rgba(0, 0, 0, 110); padding: 1px 4px; font-size: 13pt; font-weight: bold;"
_HINT_STYLE = "color: #b0b0b0; font-size: 13pt;"


class ViewportOverlay(QWidget):
    """Lies over the graphics view; call :meth:`show_info` whenever what it says changes."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.corners = {name: self._label(_CORNER_STYLE) for name in
                        ("top_left", "top_right", "bottom_left")}
        self.notice = self._label(_NOTICE_STYLE)
        self.notice.setText(RESEARCH_NOTICE)
        self.markers = {name: self._label(_MARKER_STYLE) for name in ("left", "right", "top", "bottom")}
        self.scale_label = self._label(_CORNER_STYLE)
        self.hint = self._label(_HINT_STYLE)
        self.hint.setText(EMPTY_HINT)
        self.hint.setStyleSheet(_HINT_STYLE)
        self.info_visible = True  # the corner text, markers and scale bar (the notice always shows)
        self.has_image = False
        self.scale: ScaleBar | None = None
        self._texts = CornerTexts()
        self._markers: OrientationMarkers | None = None
        self.show_info(None, None, None)

    def _label(self, style: str) -> QLabel:
        label = QLabel(self)
        label.setStyleSheet(style)
        label.setTextFormat(Qt.TextFormat.PlainText)
        label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        label.hide()
        return label

    # --- content ---------------------------------------------------------------------
    def show_info(self, texts: CornerTexts | None, markers: OrientationMarkers | None,
                  scale: ScaleBar | None) -> None:
        """What to write; ``texts`` None: no image (the hint instead)."""
        self._texts = texts or CornerTexts()
        self._markers = markers
        self.scale = scale
        has_image = self.has_image = texts is not None
        show = has_image and self.info_visible
        for name, label in self.corners.items():
            lines = getattr(self._texts, name)
            label.setText("\n".join(lines))  # elided to the room there is in _place
            label.setAlignment(Qt.AlignmentFlag.AlignRight if name.endswith("right") else Qt.AlignmentFlag.AlignLeft)
            label.setVisible(show and bool(lines))
        self.notice.setText("\n".join(self._texts.bottom_right) or RESEARCH_NOTICE)
        self.notice.setVisible(True)
        for name, label in self.markers.items():
            label.setText(getattr(markers, name) if markers is not None else "")
            label.setVisible(show and markers is not None)
        self.scale_label.setText(scale.text if scale is not None else "")
        self.scale_label.setVisible(show and scale is not None)
        self.hint.setVisible(not has_image)
        self._place()
        self.update()

    def set_info_visible(self, on: bool) -> None:
        self.info_visible = on
        self.show_info(self._texts if self.has_image else None, self._markers, self.scale)

    def corner_text(self, name: str) -> str:
        """The shown text of a corner ("" when hidden): top_left, top_right, bottom_left, bottom_right."""
        label = self.notice if name == "bottom_right" else self.corners[name]
        return label.text() if label.isVisibleTo(self) else ""

    def marker_text(self, name: str) -> str:
        label = self.markers[name]
        return label.text() if label.isVisibleTo(self) else ""

    def scale_bar_shown(self) -> ScaleBar | None:
        return self.scale if self.scale_label.isVisibleTo(self) else None

    # --- geometry ----------------------------------------------------------------------
    def _place(self) -> None:
        w, h = self.width(), self.height()
        # a narrow viewport (1x2, 2x2 at 1280x720): each corner gets half the width, lines elided
        room = max((w - 3 * MARGIN) // 2 - 8, 60)
        metrics = self.corners["top_left"].fontMetrics()
        for name, label in self.corners.items():
            lines = getattr(self._texts, name)
            label.setText("\n".join(metrics.elidedText(line, Qt.TextElideMode.ElideRight, room) for line in lines))
        for label in (*self.corners.values(), self.notice, *self.markers.values(), self.scale_label, self.hint):
            label.adjustSize()
        tl, tr, bl = self.corners["top_left"], self.corners["top_right"], self.corners["bottom_left"]
        tl.move(MARGIN, MARGIN)
        tr.move(w - tr.width() - MARGIN, MARGIN)
        bl.move(MARGIN, h - bl.height() - MARGIN)
        self.notice.move(w - self.notice.width() - MARGIN, h - self.notice.height() - MARGIN)
        if bl.isVisibleTo(self) and bl.geometry().intersects(self.notice.geometry()):
            bl.move(MARGIN, self.notice.y() - bl.height() - 2)  # the notice spans the bottom: the text above it
        m = self.markers
        m["left"].move(MARGIN, (h - m["left"].height()) // 2)
        m["right"].move(w - m["right"].width() - MARGIN, (h - m["right"].height()) // 2)
        m["top"].move((w - m["top"].width()) // 2, MARGIN)
        m["bottom"].move((w - m["bottom"].width()) // 2, h - m["bottom"].height() - MARGIN)
        # a narrow viewport: the edge markers step past the corner text rather than cover it
        top_corners = [c for c in (tl, tr) if c.isVisibleTo(self) and c.geometry().intersects(m["top"].geometry())]
        if top_corners:
            m["top"].move(m["top"].x(), max(c.geometry().bottom() for c in top_corners) + 4)
        bottom_corners = [c for c in (bl, self.notice) if c.isVisibleTo(self)
                          and c.geometry().intersects(m["bottom"].geometry())]
        if bottom_corners:
            m["bottom"].move(m["bottom"].x(), min(c.y() for c in bottom_corners) - m["bottom"].height() - 4)
        sl = self.scale_label
        sl.move(w - sl.width() - MARGIN, self.notice.y() - sl.height() - 14)
        # the hint wraps in a narrow viewport (1x2, 2x2) rather than run past its edges
        natural = self.hint.fontMetrics().horizontalAdvance(self.hint.text()) + 8
        self.hint.setWordWrap(natural > w - 2 * MARGIN)
        self.hint.setFixedWidth(max(min(natural, w - 2 * MARGIN), 20))
        self.hint.setFixedHeight(self.hint.heightForWidth(self.hint.width()) if self.hint.wordWrap()
                                 else self.hint.sizeHint().height())
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.move((w - self.hint.width()) // 2, (h - self.hint.height()) // 2)

    def scale_bar_max_px(self) -> float:
        return max(self.width() * SCALE_BAR_SHARE, 20.0)

    def resizeEvent(self, event):
        super().resizeEvent(event)
        self._place()

    def paintEvent(self, event):
        bar = self.scale_bar_shown()
        if bar is None:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        right = self.width() - MARGIN - 2
        y = self.scale_label.y() + self.scale_label.height() + 6
        left = right - bar.screen_px
        for colour, width in ((QColor(0, 0, 0, 180), 5), (QColor(240, 240, 240), 2)):
            painter.setPen(QPen(colour, width))
            painter.drawLine(QPointF(left, y), QPointF(right, y))
            painter.drawLine(QPointF(left, y - 5), QPointF(left, y + 5))
            painter.drawLine(QPointF(right, y - 5), QPointF(right, y + 5))
        painter.end()
