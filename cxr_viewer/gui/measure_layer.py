"""Measurement and annotation tools on the image view: draws the annotations of the shown image as
editable pyqtgraph ROIs with their value labels, and turns left-mouse gestures into new ones.

The annotations themselves, what they measure and their undo history are the Qt-free core's
(:mod:`cxr_viewer.clinical.annotations`); this layer only shows them and reports what the user did:
``added`` (a new annotation drawn), ``changed`` (one moved or reshaped, on release), ``selected``.

Tools (left mouse): ruler, rectangle and ellipse ROI and arrow are dragged from one point to the
other; an angle is dragged along its first arm (to the vertex), then a click places the end of the
second arm; a text is a click (the text is asked for). Dragging an annotation moves it, dragging a
handle reshapes it, clicking it selects it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, Qt, Signal
from PySide6.QtGui import QPolygonF
from PySide6.QtWidgets import QGraphicsPolygonItem

from cxr_viewer.clinical.annotations import (
    Angle,
    Annotation,
    Arrow,
    EllipseRoi,
    RectRoi,
    Ruler,
    Text,
    arrow_head,
    label_anchor,
    label_text,
    make,
    outline_paths,
)

#: the left-mouse tools, in menu order: kind -> (menu text, shortcut, tip)
TOOLS = {
    "ruler": ("Ruler", "L", "Measure a length: drag from one end to the other (mm with a pixel spacing, else px)"),
    "angle": ("Angle", "G", "Measure an angle: drag the first arm to the vertex, then click the end of the second arm"),
    "rect": ("Rectangle ROI", "B", "Region statistics (mean, SD, min, max, area) in a rectangle: drag its diagonal"),
    "ellipse": ("Ellipse ROI", "E", "Region statistics in an ellipse: drag the diagonal of its bounding box"),
    "arrow": ("Arrow", "K", "Point at something: drag from the tail to the head"),
    "text": ("Text", "T", "Write a note on the image: click where it goes"),
}
COLOUR = "#ffd21f"  # yellow: apart from the anatomy's cyan, green and magenta and the CTR's white
SELECTED = "#ff7a00"
HOVER = "#fff3a0"
Z = 50


def _pen(colour: str, width: float = 2) -> pg.QtGui.QPen:
    return pg.mkPen(colour, width=width)


class _AngleRoi(pg.PolyLineROI):
    """Three fixed handles: clicking a segment selects, never adds a handle; none can be removed."""

    def segmentClicked(self, segment, ev=None, pos=None):
        if ev is not None:
            ev.accept()
            self.sigClicked.emit(self, ev)

    def checkRemoveHandle(self, h):
        return False


def _corner_handles(roi: pg.ROI) -> None:
    """Scale handles on all four corners, each scaling about the opposite one."""
    for pos, centre in (([1, 1], [0, 0]), ([0, 0], [1, 1]), ([1, 0], [0, 1]), ([0, 1], [1, 0])):
        roi.addScaleHandle(pos, centre)


class _RectRoi(pg.ROI):
    def __init__(self, pos, size, **kw):
        super().__init__(pos, size, **kw)
        _corner_handles(self)


class _EllipseRoi(pg.EllipseROI):
    def _addHandles(self):  # no rotation: an ellipse ROI stays axis-aligned
        _corner_handles(self)


class _Item:
    """What draws one annotation: its ROI (or a movable target for a text), its label, and for an
    arrow the arrowhead."""

    def __init__(self, ann: Annotation, roi, label: pg.TextItem, head: QGraphicsPolygonItem | None = None):
        self.ann, self.roi, self.label, self.head = ann, roi, label, head

    def items(self) -> list:
        return [i for i in (self.roi, self.label, self.head) if i is not None]


class MeasureLayer(QObject):
    """The annotations drawn on one image view's ViewBox."""

    added = Signal(object)  # Annotation drawn by the user
    changed = Signal(object)  # Annotation moved or reshaped (emitted on release)
    selected = Signal(object)  # uid or None

    def __init__(self, viewbox: pg.ViewBox, image_item: pg.ImageItem, parent: QObject | None = None):
        super().__init__(parent)
        self.viewbox, self.image_item = viewbox, image_item
        self.image = None  # the LoadedImage the annotations belong to (labels measure its pixels)
        self.items: dict[str, _Item] = {}
        self.selected_uid: str | None = None
        self.tool: str | None = None
        #: asks the user for a text (None: cancelled); the main window replaces it in tests
        self.ask_text: Callable[[], str | None] = lambda: None
        self._draft: Annotation | None = None
        self._angle_arm: tuple | None = None  # (a, vertex) while the angle waits for its third point
        self._draft_curves = [pg.PlotCurveItem(pen=_pen("#000000", 4)), pg.PlotCurveItem(pen=_pen(COLOUR, 2))]
        for z, curve in enumerate(self._draft_curves):
            curve.setZValue(Z + 20 + z)
            curve.setVisible(False)
            viewbox.addItem(curve)

    # --- showing ----------------------------------------------------------------------------
    def set_image(self, image) -> None:
        """Annotations belong to one image: a different one removes them (the store keeps them)."""
        if image is None or self.image is None or (image.ref.path, image.frame) != (self.image.ref.path, self.image.frame):
            self.cancel_draft()
            self.set_annotations(())
            self.selected_uid = None
        self.image = image

    def set_annotations(self, annotations) -> None:
        """Show exactly ``annotations``: unchanged ones keep their items (one being dragged is never
        rebuilt under the mouse), moved or new ones get new items, the rest are removed."""
        wanted = {a.uid: a for a in annotations}
        for uid in list(self.items):
            if uid not in wanted or wanted[uid] != self._current(uid):
                self._remove_item(uid)
        for uid, ann in wanted.items():
            if uid not in self.items:
                self.items[uid] = self._make_item(ann)
        if self.selected_uid not in self.items:
            self.selected_uid = None
        self._restyle()

    def annotations(self) -> tuple[Annotation, ...]:
        return tuple(self._current(uid) for uid in self.items)

    def label_of(self, uid: str) -> str:
        return self.items[uid].label.textItem.toPlainText()

    def _remove_item(self, uid: str) -> None:
        item = self.items.pop(uid)
        for gi in item.items():
            self.viewbox.removeItem(gi)

    def _make_item(self, ann: Annotation) -> _Item:
        pen, hover = _pen(COLOUR), _pen(HOVER)
        handle = {"handlePen": _pen(COLOUR), "handleHoverPen": _pen(HOVER)}
        head = None
        if isinstance(ann, (Ruler, Arrow)):
            roi = pg.LineSegmentROI(positions=list(ann.points), pen=pen, hoverPen=hover, **handle)
        elif isinstance(ann, Angle):
            roi = _AngleRoi(list(ann.points), closed=False, pen=pen, hoverPen=hover, **handle)
        elif isinstance(ann, RectRoi):
            x0, y0, x1, y1 = ann.bounds()
            cls = _EllipseRoi if isinstance(ann, EllipseRoi) else _RectRoi
            roi = cls((x0, y0), (x1 - x0, y1 - y0), pen=pen, hoverPen=hover, **handle)
        else:  # text: a small movable target at its anchor
            roi = pg.TargetItem(pos=ann.points[0], size=9, symbol="s", pen=pen, hoverPen=hover, movable=True)
        roi.setZValue(Z)
        if isinstance(roi, pg.ROI):
            roi.setAcceptedMouseButtons(Qt.MouseButton.LeftButton)
            roi.sigClicked.connect(lambda _r, _ev=None, uid=ann.uid: self.select(uid))
            roi.sigRegionChangeStarted.connect(lambda _r, uid=ann.uid: self.select(uid))
            roi.sigRegionChanged.connect(lambda _r, uid=ann.uid: self._on_moving(uid))
            roi.sigRegionChangeFinished.connect(lambda _r, uid=ann.uid: self._on_moved(uid))
        else:
            roi.sigPositionChanged.connect(lambda _r, uid=ann.uid: self._on_moving(uid, select=True))
            roi.sigPositionChangeFinished.connect(lambda _r, uid=ann.uid: self._on_moved(uid))
        roi.setToolTip(f"{ann.title}: drag to move, drag a handle to reshape; Delete removes it, Ctrl+Z undoes")
        self.viewbox.addItem(roi)
        label = pg.TextItem("", color=COLOUR, fill=pg.mkBrush(0, 0, 0, 160), anchor=(0, 1))
        font = label.textItem.font()
        font.setPointSize(11 if isinstance(ann, Text) else 10)
        font.setBold(True)
        label.setFont(font)
        label.setZValue(Z + 10)
        self.viewbox.addItem(label)
        if isinstance(ann, Arrow):  # a filled head, in image coordinates (it scales with the arrow)
            head = QGraphicsPolygonItem()
            head.setPen(_pen(COLOUR, 1))
            head.setBrush(pg.mkBrush(COLOUR))
            head.setZValue(Z)
            self.viewbox.addItem(head)
        item = _Item(ann, roi, label, head)
        self._refresh(item, ann)
        return item

    def _current(self, uid: str) -> Annotation:
        """The annotation as its item now stands (after a drag)."""
        item = self.items[uid]
        ann, roi = item.ann, item.roi
        if isinstance(ann, (Ruler, Arrow, Angle)):
            pts = [roi.mapToParent(h.pos()) for h in roi.getHandles()]
        elif isinstance(ann, RectRoi):
            pos, size = roi.pos(), roi.size()
            pts = [pos, pos + size]
        else:
            pts = [roi.pos()]
        return ann.with_points((float(p.x()), float(p.y())) for p in pts)

    def _refresh(self, item: _Item, ann: Annotation) -> None:
        """The label (and arrowhead) of ``ann`` where it now is."""
        text = label_text(ann, self.image)
        item.label.setText(text)
        item.label.setVisible(bool(text))
        if isinstance(ann, Text):
            item.label.setAnchor((0, 0))
            item.label.setPos(*ann.points[0])
        else:
            x, y = label_anchor(ann)
            # in the image's right part a label extends to the left, near its top downwards: on the image
            h, w = self.image.shape if self.image is not None else (0, 0)
            item.label.setAnchor((1.0 if w and x > 0.6 * w else 0.0, 0.0 if h and y < 0.12 * h else 1.0))
            item.label.setPos(x, y)
        if item.head is not None:
            w1, w2 = arrow_head(*ann.points)
            item.head.setPolygon(QPolygonF([QPointF(*w1), QPointF(*ann.points[1]), QPointF(*w2)]))

    def _on_moving(self, uid: str, select: bool = False) -> None:
        if uid in self.items:
            if select and self.selected_uid != uid:
                self.select(uid)
            self._refresh(self.items[uid], self._current(uid))

    def _on_moved(self, uid: str) -> None:
        if uid not in self.items:
            return
        item = self.items[uid]
        current = self._current(uid)
        if current != item.ann:
            item.ann = current
            self.changed.emit(current)

    # --- selection ----------------------------------------------------------------------------
    def select(self, uid: str | None) -> None:
        uid = uid if uid in self.items else None
        if uid != self.selected_uid:
            self.selected_uid = uid
            self._restyle()
            self.selected.emit(uid)

    def _restyle(self) -> None:
        for uid, item in self.items.items():
            chosen = uid == self.selected_uid
            colour, width = (SELECTED, 3) if chosen else (COLOUR, 2)
            item.roi.setPen(_pen(colour, width))
            if item.head is not None:
                item.head.setPen(_pen(colour, 1))
                item.head.setBrush(pg.mkBrush(colour))
            item.label.setColor(colour)

    # --- drawing new ones -------------------------------------------------------------------------
    def set_tool(self, tool: str | None) -> None:
        self.cancel_draft()
        self.tool = tool if tool in TOOLS else None

    def cancel_draft(self) -> None:
        self._draft, self._angle_arm = None, None
        for curve in self._draft_curves:
            curve.setVisible(False)

    def _show_draft(self, ann: Annotation | None) -> None:
        self._draft = ann
        paths = outline_paths(ann) if ann is not None else []
        if not paths:
            for curve in self._draft_curves:
                curve.setVisible(False)
            return
        xs, ys, connect = [], [], []
        for path in paths:
            for i, (x, y) in enumerate(path):
                xs.append(x)
                ys.append(y)
                connect.append(i < len(path) - 1)
        for curve in self._draft_curves:
            curve.setData(np.array(xs), np.array(ys), connect=np.array(connect))
            curve.setVisible(True)

    def _point(self, scene_pos) -> tuple[float, float]:
        p = self.viewbox.mapSceneToView(scene_pos)
        return float(p.x()), float(p.y())

    def _min_size(self) -> float:
        """Two screen pixels in image pixels: shorter drags are clicks, not drawings."""
        px = self.viewbox.viewPixelSize()
        return 2.0 * float(px[0] or 1.0)

    def drag(self, ev) -> bool:
        """A left drag on the image (not on an annotation) in a tool mode; True when handled."""
        if self.tool is None or self.image is None or self.tool == "text":
            return False
        ev.accept()
        if ev.isStart():
            self.select(None)
            self._angle_arm = None
        start, now = self._point(ev.buttonDownScenePos()), self._point(ev.scenePos())
        kind = "ruler" if self.tool == "angle" else self.tool
        self._show_draft(make(kind, (start, now)))
        if ev.isFinish():
            self.cancel_draft()
            if max(abs(now[0] - start[0]), abs(now[1] - start[1])) < self._min_size():
                return True
            if self.tool == "angle":
                self._angle_arm = (start, now)
                self._show_draft(make("angle", (start, now, now)))
            else:
                self.added.emit(make(self.tool, (start, now)))
        return True

    def click(self, ev) -> bool:
        """A left click on the image in a tool mode: the angle's third point, or a text."""
        if self.tool is None or self.image is None:
            self.select(None)  # a click beside the annotations deselects (window/level and pan too)
            return False
        point = self._point(ev.scenePos())
        if self.tool == "angle" and self._angle_arm is not None:
            ev.accept()
            a, vertex = self._angle_arm
            self.cancel_draft()
            self.added.emit(Angle((a, vertex, point)))
            return True
        if self.tool == "text":
            ev.accept()
            text = self.ask_text()
            if text:
                self.added.emit(Text((point,), text=text))
            return True
        self.select(None)
        return False

    def hover(self, scene_pos: QPointF) -> None:
        """The angle's second arm follows the mouse until the click."""
        if self.tool == "angle" and self._angle_arm is not None:
            a, vertex = self._angle_arm
            self._show_draft(Angle((a, vertex, self._point(scene_pos))))
