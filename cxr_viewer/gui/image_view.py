"""The image view: pyqtgraph ImageItem on a ViewBox, window/level by mouse, zoom and pan.

Mouse: left-drag = window/level (horizontal: width, vertical: centre) or pan in pan mode;
middle-drag = pan; right-drag and wheel = zoom. ImageItem gets float32 C-contiguous data with
``levels`` and a 256-entry uint8 LUT (its fast path); MONOCHROME1 and invert flip the LUT.

Overlays, all in image pixel coordinates: the AI heatmap (an ImageItem stretched over the image),
the anatomy outlines (line segments computed by the core, drawn as pairs with a cosmetic pen: a
thin line at any zoom, over a dark halo) and the two CTR lines (horizontal line ROIs whose ends
the user drags; the ratio is recomputed by the core's ``CtrMeasurement.with_lines``), and the AI's
finding marks (the box of a positive finding that says where, e.g. the nodule/mass model's, an
orange cosmetic-pen rectangle over a dark halo with a short label: :mod:`cxr_viewer.clinical.finding_marks`).
Fixed to the viewport instead (they stay put while zooming and panning): the corner text,
orientation markers and scale bar of :class:`ViewportOverlay`, worded by :mod:`cxr_viewer.io.viewport`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap, QTransform
from PySide6.QtWidgets import QGraphicsRectItem, QLabel, QVBoxLayout, QWidget

from cxr_viewer.ai.anatomy import STRUCTURES, CtrMeasurement
from cxr_viewer.ai.anatomy_tasks import AnatomyResult
from cxr_viewer.clinical.finding_marks import MARK_HEX, FindingMark
from cxr_viewer.gui.measure_layer import TOOLS, MeasureLayer
from cxr_viewer.gui.viewport_overlay import ViewportOverlay
from cxr_viewer.io.display import DisplayMapping, Voi, Window, display_mapping, render_uint8
from cxr_viewer.io.image import LoadedImage
from cxr_viewer.io.viewport import (
    FLIP_H,
    FLIP_V,
    ROTATE_LEFT,
    ROTATE_RIGHT,
    DisplayOrientation,
    corner_texts,
    orientation_markers,
    scale_bar,
)

#: the loupe: its size on screen and how much more it magnifies than the view
LOUPE_PX, LOUPE_FACTOR = 220, 3.0


class _ViewBox(pg.ViewBox):
    window_drag = Signal(float, float)  # screen dx, dy in pixels

    def __init__(self):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.left_mode = "window"  # or "pan", or a measuring tool (see measure_layer.TOOLS)
        self.measure: MeasureLayer | None = None

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802 (Qt name)
        if (ev.button() == Qt.MouseButton.LeftButton and self.measure is not None and self.measure.tool
                and self.measure.drag(ev)):
            return
        if ev.button() == Qt.MouseButton.LeftButton and self.left_mode == "window":
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self.window_drag.emit(float(delta.x()), float(delta.y()))
            return
        super().mouseDragEvent(ev, axis)

    def mouseClickEvent(self, ev):  # (Qt name)
        if ev.button() == Qt.MouseButton.LeftButton and self.measure is not None and self.measure.click(ev):
            return
        super().mouseClickEvent(ev)


class _Content(pg.ItemGroup):
    """Everything drawn in image pixel coordinates (image, heatmap, outlines, CTR lines,
    annotations). Its transform turns the picture (flips, quarter turns) as a whole, so overlays stay
    on their pixels and the stored pixels never change. It stands in for the view box where items
    are added and scene points mapped to image coordinates."""

    def __init__(self, viewbox: pg.ViewBox):
        super().__init__()
        self.viewbox = viewbox

    def addItem(self, item) -> None:
        item.setParentItem(self)

    def removeItem(self, item) -> None:
        if item.scene() is not None:
            item.scene().removeItem(item)

    def mapSceneToView(self, pos):  # image pixel coordinates
        return self.mapFromScene(pos)

    def viewPixelSize(self):
        return self.viewbox.viewPixelSize()


#: outline colours: cold hues, apart from the heatmap's inferno (black, purple, red, orange, yellow)
ANATOMY_COLOURS = {"right_lung": "#00e5ff", "left_lung": "#4dff88", "heart": "#ff5cf4"}
ANATOMY_TITLES = {"right_lung": "right lung", "left_lung": "left lung", "heart": "heart"}
#: the CTR lines: the heart's width in the heart's colour, the thorax's in white
CTR_COLOURS = {"heart": ANATOMY_COLOURS["heart"], "thorax": "#ffffff"}


def ctr_text(ctr: CtrMeasurement) -> str:
    return f"CTR {ctr.ratio:.2f}" + (" (corrected)" if ctr.corrected else "")


class _WidthLine(pg.LineSegmentROI):
    """A horizontal measuring line: its ends move sideways only (a width is a horizontal extent);
    dragging the line itself moves it to another row."""

    def movePoint(self, handle, pos, modifiers=None, finish=True, coords="parent"):
        p = self.mapSceneToParent(pos) if coords == "scene" else pg.Point(pos)
        index = self.indexOfHandle(handle)
        y = self.mapToParent(self.handles[index]["item"].pos()).y()
        super().movePoint(handle, QPointF(p.x(), y), modifiers, finish, coords="parent")

    def ends(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two ends in image pixel coordinates, left first."""
        pts = sorted((float(q.x()), float(q.y())) for q in (self.mapToParent(h.pos()) for h in self.getHandles()))
        return pts[0], pts[1]


class ImageView(QWidget):
    """Shows one LoadedImage; emits the VOI it shows and the pixel under the mouse."""

    voi_changed = Signal(object, bool)  # Voi, inverted-on-screen
    window_dragged = Signal(float, float)  # the user's window/level drag (screen dx, dy): linked views follow
    activated = Signal()  # pressed with any mouse button: the reading room's active viewport
    pixel_hovered = Signal(int, int)  # row, col; -1, -1 when outside
    ctr_edited = Signal(object)  # CtrMeasurement (corrected) after the user moved a CTR line

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.graphics = pg.GraphicsView(parent=self)
        self.graphics.setBackground("k")
        self.viewbox = _ViewBox()
        self.graphics.setCentralItem(self.viewbox)
        self.content = _Content(self.viewbox)
        self.viewbox.addItem(self.content)
        self.orientation = DisplayOrientation()
        self.item = pg.ImageItem(axisOrder="row-major")
        self.content.addItem(self.item)
        self.heat_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item.setZValue(10)
        self.heat_item.setOpacity(0.7)
        self.heat_item.setVisible(False)
        self.content.addItem(self.heat_item)
        self.outline_items: dict[str, tuple[pg.PlotCurveItem, pg.PlotCurveItem]] = {}
        for name in STRUCTURES:
            halo = pg.PlotCurveItem(pen=pg.mkPen((0, 0, 0, 150), width=4), connect="pairs", antialias=True)
            line = pg.PlotCurveItem(pen=pg.mkPen(ANATOMY_COLOURS[name], width=2), connect="pairs", antialias=True)
            for z, item in ((20, halo), (21, line)):
                item.setZValue(z)
                item.setVisible(False)
                self.content.addItem(item)
            self.outline_items[name] = (halo, line)
        self.ctr_lines: dict[str, _WidthLine] = {}
        self.ctr_label = pg.TextItem("", color="#ffffff", fill=pg.mkBrush(0, 0, 0, 170), anchor=(0, 1))
        font = self.ctr_label.textItem.font()
        font.setPointSize(12)
        font.setBold(True)
        self.ctr_label.setFont(font)
        self.ctr_label.setZValue(40)
        self.ctr_label.setVisible(False)
        self.content.addItem(self.ctr_label)
        self.anatomy: AnatomyResult | None = None
        self.ctr: CtrMeasurement | None = None
        self.marks: tuple[FindingMark, ...] = ()  # the AI's finding boxes on this image
        self.mark_items: list = []  # per mark: halo, outline, label
        self.marks_visible = True
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)
        self._layout = layout
        self.framed: bool | None = None  # None: no frame (one viewport); True/False: active or not
        self.image: LoadedImage | None = None
        self.voi: Voi | None = None
        self.user_invert = False
        self._mapping: DisplayMapping | None = None
        self.overlay = ViewportOverlay(self)  # corner text, markers, scale bar: fixed to the viewport
        self.measure = MeasureLayer(self.content, self.item, self)  # rulers, angles, ROIs, arrows, text
        self.viewbox.measure = self.measure
        self.viewbox.window_drag.connect(self._on_window_drag)
        self.viewbox.sigRangeChanged.connect(self._refresh_overlay)
        self.viewbox.sigResized.connect(self._refresh_overlay)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.graphics.viewport().installEventFilter(self)
        self.loupe = QLabel(self)  # the magnifier, shown while on and the mouse is over the image
        self.loupe.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.loupe.setStyleSheet("border: 2px solid #ffe680; background: black;")
        self.loupe.resize(LOUPE_PX, LOUPE_PX)
        self.loupe.hide()
        self.loupe_on = False
        self.setAcceptDrops(False)  # the main window takes drops

    def eventFilter(self, obj, event):
        if event.type() == QEvent.Type.MouseButtonPress:
            self.activated.emit()
        elif event.type() == QEvent.Type.Leave:
            self.loupe.hide()
        return False

    # --- reading-room frame: which viewport the tools act on ------------------------------------
    def set_framed(self, active: bool | None) -> None:
        """None: no frame (a single viewport); True: the active viewport's frame; False: a thin one."""
        self.framed = active
        self._layout.setContentsMargins(*(0, 0, 0, 0) if active is None else (3, 3, 3, 3))
        self.update()

    def paintEvent(self, event):
        super().paintEvent(event)
        if self.framed is None:
            return
        painter = QPainter(self)
        colour = QColor("#3d9bff") if self.framed else QColor("#303030")
        painter.setPen(QPen(colour, 3 if self.framed else 1))
        painter.drawRect(self.rect().adjusted(1, 1, -2, -2))
        painter.end()

    # --- state ------------------------------------------------------------------------
    @property
    def inverted(self) -> bool:
        """What the screen shows: MONOCHROME1 XOR the user's invert toggle."""
        return bool(self.image is not None and self.image.monochrome1) != self.user_invert

    def set_image(self, image: LoadedImage, voi: Voi | None = None, keep_view: bool = False) -> None:
        same_size = self.image is not None and self.image.shape == image.shape
        if self.image is None or self.image.ref.path != image.ref.path or self.image.frame != image.frame:
            self.set_heatmap(None)  # a heatmap belongs to one image
            self.set_anatomy(None)  # and so do outlines and CTR lines
            self.set_finding_marks(())  # and the AI's finding boxes
        self.image = image
        if not (keep_view and same_size):
            self.orientation = DisplayOrientation()
        self._apply_orientation()
        self.measure.set_image(image)  # and annotations (the main window's store keeps them)
        self._mapping = None
        self.set_voi(voi if voi is not None else image.default_voi())
        if not (keep_view and same_size):
            self.zoom_fit()

    def clear(self) -> None:
        self.image = None
        self.voi = None
        self._mapping = None
        self.item.clear()
        self.set_heatmap(None)
        self.set_anatomy(None)
        self.set_finding_marks(())
        self.measure.set_image(None)
        self._refresh_overlay()

    # --- viewport overlay: corner text, orientation markers, scale bar ------------------------
    def set_overlay_visible(self, on: bool) -> None:
        """Corner text, orientation markers and scale bar on or off (the research notice stays)."""
        self.overlay.set_info_visible(on)
        self._refresh_overlay()

    def overlay_visible(self) -> bool:
        return self.overlay.info_visible

    def zoom(self) -> float | None:
        """Device pixels per image pixel (1.0 after Zoom 1:1); None before the view has a size."""
        px = self.screen_px_per_image_px()
        return None if px is None else px / (self.devicePixelRatioF() or 1.0)

    def screen_px_per_image_px(self) -> float | None:
        """Logical screen pixels per image pixel, across."""
        if self.viewbox.width() <= 1 or self.viewbox.height() <= 1:
            return None
        size = float(self.viewbox.viewPixelSize()[0])
        return 1.0 / size if size > 0 and np.isfinite(size) else None

    def _refresh_overlay(self, *_args) -> None:
        image = self.image
        if image is None:
            self.overlay.show_info(None, None, None)
            return
        meta = image.ref.meta
        texts = corner_texts(meta, voi=self.voi, zoom=self.zoom(), frame=image.frame, frames=image.ref.frames,
                             shape=image.shape)
        turned = self.orientation.describe()
        if turned:
            texts = replace(texts, bottom_left=(*texts.bottom_left, turned))
        px = self.screen_px_per_image_px()
        bar = scale_bar(meta.spacing, px, self.overlay.scale_bar_max_px()) if px is not None else None
        self.overlay.show_info(texts, self.orientation.markers(orientation_markers(meta.patient_orientation)), bar)

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        self.overlay.setGeometry(self.graphics.geometry())
        self.overlay.raise_()

    def set_heatmap(self, heat: np.ndarray | None, lut: np.ndarray | None = None) -> None:
        """Overlay a [0, 1] heatmap (any resolution), stretched over the whole image."""
        if heat is None or self.image is None:
            self.heat_item.setVisible(False)
            self.heat_item.clear()
            return
        self.heat_item.setImage(np.ascontiguousarray(heat, dtype=np.float32), levels=(0.0, 1.0), lut=lut,
                                autoLevels=False)
        h, w = self.image.shape
        self.heat_item.setRect(QRectF(0, 0, w, h))
        self.heat_item.setVisible(True)

    def set_heatmap_opacity(self, opacity: float) -> None:
        self.heat_item.setOpacity(float(opacity))

    def heatmap_visible(self) -> bool:
        return self.heat_item.isVisible() and self.heat_item.image is not None

    # --- AI finding marks: where a positive finding is -------------------------------------
    def set_finding_marks(self, marks) -> None:
        """Draw ``marks`` (FindingMark boxes in image pixels; empty: remove them). They are items of
        the image's content, so they follow pan, zoom, flips and turns."""
        for item in self.mark_items:
            self.content.removeItem(item)
        self.mark_items = []
        self.marks = tuple(marks) if self.image is not None else ()
        rows = self.image.shape[0] if self.image is not None else 0
        for mark in self.marks:
            x0, y0, x1, y1 = mark.box
            rect = QRectF(x0, y0, x1 - x0, y1 - y0)
            items = []
            for colour, width, z in ((QColor(0, 0, 0, 170), 4, 24), (QColor(MARK_HEX), 2, 25)):
                pen = QPen(colour, width)
                pen.setCosmetic(True)  # the same width on screen at any zoom
                item = QGraphicsRectItem(rect)
                item.setPen(pen)
                item.setZValue(z)
                items.append(item)
            items[-1].setToolTip(f"{mark.label}: where the AI finding is (above its threshold). Not a diagnosis.")
            label = pg.TextItem(mark.label, color=MARK_HEX, fill=pg.mkBrush(0, 0, 0, 170))
            font = label.textItem.font()
            font.setPointSize(10)
            font.setBold(True)
            label.setFont(font)
            above = y0 > 0.04 * rows  # above the box, below it at the image's top
            label.setAnchor((0.0, 1.0) if above else (0.0, 0.0))
            label.setPos(x0, y0 if above else y1)
            label.setZValue(41)
            items.append(label)
            for item in items:
                item.setVisible(self.marks_visible)
                self.content.addItem(item)
            self.mark_items += items

    def set_finding_marks_visible(self, on: bool) -> None:
        self.marks_visible = bool(on)
        for item in self.mark_items:
            item.setVisible(self.marks_visible)

    def finding_marks_shown(self) -> bool:
        return any(item.isVisible() for item in self.mark_items)

    def finding_mark_rects(self) -> list[tuple[float, float, float, float]]:
        """(x, y, width, height) of each drawn box in image pixels (what the scene items hold)."""
        return [(r.x(), r.y(), r.width(), r.height())
                for r in (item.rect() for item in self.mark_items if isinstance(item, QGraphicsRectItem)
                          and item.zValue() == 25)]

    # --- anatomy: outlines and CTR lines ---------------------------------------------------
    def set_anatomy(self, result: AnatomyResult | None) -> None:
        """Draw the outlines and the model's CTR lines of ``result`` (None: remove them)."""
        self.anatomy = result if self.image is not None else None
        for name, (halo, line) in self.outline_items.items():
            seg = self.anatomy.outlines.get(name) if self.anatomy is not None else None
            if seg is None or not len(seg):
                halo.setVisible(False)
                line.setVisible(False)
                halo.setData([], [])
                line.setData([], [])
                continue
            x, y = np.ascontiguousarray(seg[:, :, 0].ravel()), np.ascontiguousarray(seg[:, :, 1].ravel())
            for item in (halo, line):
                item.setData(x, y, connect="pairs")
                item.setVisible(True)
        self.set_ctr(self.anatomy.ctr if self.anatomy is not None else None)

    def set_ctr(self, ctr: CtrMeasurement | None) -> None:
        """Place the two CTR lines (new line items: what the user dragged before is gone)."""
        for roi in self.ctr_lines.values():
            self.content.removeItem(roi)
        self.ctr_lines = {}
        self.ctr = ctr if self.anatomy is not None else None
        if self.ctr is None:
            self.ctr_label.setVisible(False)
            return
        for name, ends in (("thorax", self.ctr.thorax), ("heart", self.ctr.heart)):
            colour = CTR_COLOURS[name]
            roi = _WidthLine(positions=[tuple(ends[0]), tuple(ends[1])], pen=pg.mkPen(colour, width=3),
                             hoverPen=pg.mkPen("#ffff80", width=3), handlePen=pg.mkPen(colour, width=2),
                             handleHoverPen=pg.mkPen("#ffff80", width=2))
            roi.setZValue(30)
            roi.setToolTip(f"{name} width: drag an end sideways to correct it, or the line to another row")
            roi.sigRegionChanged.connect(self._on_ctr_dragged)
            self.content.addItem(roi)
            self.ctr_lines[name] = roi
        self._place_ctr_label()

    def anatomy_visible(self) -> bool:
        return any(line.isVisible() for _halo, line in self.outline_items.values())

    def _on_ctr_dragged(self, _roi=None) -> None:
        if self.ctr is None or len(self.ctr_lines) != 2:
            return
        self.ctr = self.ctr.with_lines(heart=self.ctr_lines["heart"].ends(), thorax=self.ctr_lines["thorax"].ends())
        self._place_ctr_label()
        self.ctr_edited.emit(self.ctr)

    def _place_ctr_label(self) -> None:
        """Centred above the heart line (below it when the line is at the image's top)."""
        (x0, y0), (x1, _y1) = self.ctr.heart
        gap = 0.01 * (self.image.shape[0] if self.image is not None else 100)
        above = y0 - gap > 0.05 * (self.image.shape[0] if self.image is not None else 0)
        self.ctr_label.setAnchor((0.5, 1.0) if above else (0.5, 0.0))
        self.ctr_label.setText(ctr_text(self.ctr))
        self.ctr_label.setPos((x0 + x1) / 2, y0 - gap if above else y0 + gap)
        self.ctr_label.setVisible(True)

    def set_voi(self, voi: Voi) -> None:
        if self.image is None:
            return
        old = self._mapping
        mapping = display_mapping(self.image.values, voi, self.inverted)
        self.voi, self._mapping = voi, mapping
        if old is not None and isinstance(voi, Window) and old.data is mapping.data:
            self.item.setLookupTable(mapping.lut, update=False)
            self.item.setLevels(mapping.levels)
        else:
            self.item.setImage(mapping.data, levels=mapping.levels, lut=mapping.lut, autoLevels=False)
        self._refresh_overlay()
        self.voi_changed.emit(voi, self.inverted)

    def set_user_invert(self, on: bool) -> None:
        if on != self.user_invert:
            self.user_invert = on
            if self.voi is not None:
                self.set_voi(self.voi)

    def rendered(self) -> np.ndarray | None:
        """The 8-bit picture currently shown, computed as ImageItem computes it."""
        return None if self._mapping is None else render_uint8(self._mapping)

    # --- view ---------------------------------------------------------------------------
    def display_bounds(self) -> tuple[float, float, float, float] | None:
        """The picture's rectangle in view coordinates (x0, y0, x1, y1): [0, cols] x [0, rows] as
        turned on screen."""
        if self.image is None:
            return None
        rows, cols = self.orientation.display_shape(self.image.shape)
        return 0.0, 0.0, float(cols), float(rows)

    def view_rect(self) -> tuple[float, float, float, float]:
        r = self.viewbox.viewRect()
        return r.left(), r.top(), r.right(), r.bottom()

    def set_view_rect(self, rect: tuple[float, float, float, float]) -> None:
        x0, y0, x1, y1 = rect
        self.viewbox.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0)

    def zoom_fit(self) -> None:
        bounds = self.display_bounds()
        if bounds is not None:
            self.viewbox.setRange(xRange=(bounds[0], bounds[2]), yRange=(bounds[1], bounds[3]), padding=0.02)

    def zoom_1to1(self) -> None:
        """One image pixel per screen pixel, centred on the current view centre."""
        self.zoom_to(1.0)

    def zoom_to(self, ratio: float) -> None:
        """``ratio`` device pixels per image pixel (1: 1:1, 2: 2:1), centred on the view centre."""
        if self.image is None:
            return
        rect = self.viewbox.viewRect()
        centre = rect.center()
        size = self.viewbox.size()
        dpr = self.devicePixelRatioF() or 1.0
        w, h = size.width() / dpr / ratio, size.height() / dpr / ratio
        self.viewbox.setRange(xRange=(centre.x() - w / 2, centre.x() + w / 2),
                              yRange=(centre.y() - h / 2, centre.y() + h / 2), padding=0)

    # --- display orientation: flips and quarter turns (the stored pixels never change) ----------
    def _apply_orientation(self) -> None:
        if self.image is None:
            self.content.setTransform(QTransform())
            return
        m11, m12, m21, m22, dx, dy = self.orientation.affine(self.image.shape)
        # QTransform maps (x, y) -> (m11 x + m21 y + dx, m12 x + m22 y + dy)
        self.content.setTransform(QTransform(m11, m21, m12, m22, dx, dy))

    def set_orientation(self, orientation: DisplayOrientation) -> None:
        self.orientation = orientation
        self._apply_orientation()
        self.zoom_fit()
        self._refresh_overlay()

    def flip_horizontal(self) -> None:
        self.set_orientation(self.orientation.then(FLIP_H))

    def flip_vertical(self) -> None:
        self.set_orientation(self.orientation.then(FLIP_V))

    def rotate_right(self) -> None:
        self.set_orientation(self.orientation.then(ROTATE_RIGHT))

    def rotate_left(self) -> None:
        self.set_orientation(self.orientation.then(ROTATE_LEFT))

    def reset_orientation(self) -> None:
        self.set_orientation(DisplayOrientation())

    # --- the loupe ---------------------------------------------------------------------------
    def set_loupe(self, on: bool) -> None:
        self.loupe_on = on
        if not on:
            self.loupe.hide()

    def _show_loupe(self, scene_pos: QPointF) -> None:
        """A square around the mouse, LOUPE_FACTOR times the view's magnification, from the shown
        8-bit picture turned as on screen (overlays are not in it); only the square is rendered."""
        mapping = self._mapping
        px = self.screen_px_per_image_px()
        size = int(min(LOUPE_PX, 0.6 * min(self.width(), self.height())))
        if mapping is None or px is None or size < 40:
            self.loupe.hide()
            return
        p = self.viewbox.mapSceneToView(scene_pos)
        picture = self.orientation.orient(mapping.data)  # a view of the values, not a copy
        rows, cols = picture.shape[:2]
        scale = max(px * LOUPE_FACTOR, 1.0)  # screen pixels per image pixel in the loupe
        half = max(int(size / scale / 2), 2)
        cx, cy = int(np.floor(p.x())), int(np.floor(p.y()))
        if not (0 <= cx < cols and 0 <= cy < rows):
            self.loupe.hide()
            return
        crop = np.zeros((2 * half, 2 * half), dtype=np.uint8)
        y0, x0 = cy - half, cx - half
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(cy + half, rows), min(cx + half, cols)
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = render_uint8(replace(mapping, data=picture[sy0:sy1, sx0:sx1]))
        qimage = QImage(crop.data, crop.shape[1], crop.shape[0], crop.shape[1], QImage.Format.Format_Grayscale8)
        pixmap = QPixmap.fromImage(qimage.copy()).scaled(size, size,
                                                          Qt.AspectRatioMode.IgnoreAspectRatio,
                                                          Qt.TransformationMode.FastTransformation)
        self.loupe.setPixmap(pixmap)
        self.loupe.resize(size, size)
        at = self.graphics.mapTo(self, self.graphics.mapFromScene(scene_pos))
        self.loupe.move(at.x() - size // 2, at.y() - size // 2)  # a lens centred on the mouse
        self.loupe.show()
        self.loupe.raise_()

    def zoom_by(self, factor: float) -> None:
        self.viewbox.scaleBy((1 / factor, 1 / factor))

    def pixels_per_screen_pixel(self) -> float:
        px = self.viewbox.viewPixelSize()
        return float(px[0])

    def set_left_mode(self, mode: str) -> None:
        """"window", "pan" or a measuring tool ("ruler", "angle", "rect", "ellipse", "arrow", "text")."""
        self.viewbox.left_mode = mode
        self.measure.set_tool(mode if mode in TOOLS else None)

    def reset(self) -> None:
        if self.image is not None:
            self.user_invert = False
            self.orientation = DisplayOrientation()
            self._apply_orientation()
            self.set_voi(self.image.default_voi())
            self.zoom_fit()

    # --- mouse --------------------------------------------------------------------------
    def _on_window_drag(self, dx: float, dy: float) -> None:
        self.drag_window(dx, dy)
        self.window_dragged.emit(dx, dy)

    def drag_window(self, dx: float, dy: float) -> None:
        """Change the window as a left drag of (dx, dy) screen pixels does, in this image's range."""
        if self.image is None or self.voi is None:
            return
        voi = self.voi if isinstance(self.voi, Window) else self.image.auto_window()
        full = self.image.full_window()
        step = max(full.width, 1.0) / 512.0  # a drag across ~500 px spans the data range
        width = max(1.0, voi.width + dx * step)
        center = voi.center + dy * step  # drag down: higher centre, darker picture
        self.set_voi(voi.with_center_width(center, width))

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        if self.image is None:
            return
        self.measure.hover(scene_pos)
        if self.loupe_on:
            self._show_loupe(scene_pos)
        p = self.item.mapFromScene(scene_pos)
        row, col = int(np.floor(p.y())), int(np.floor(p.x()))
        h, w = self.image.shape
        if 0 <= row < h and 0 <= col < w:
            self.pixel_hovered.emit(row, col)
        else:
            self.pixel_hovered.emit(-1, -1)
