"""The image view: pyqtgraph ImageItem on a ViewBox, window/level by mouse, zoom and pan.

Mouse: left-drag = window/level (horizontal: width, vertical: centre) or pan in pan mode;
middle-drag = pan; right-drag and wheel = zoom. ImageItem gets float32 C-contiguous data with
``levels`` and a 256-entry uint8 LUT (its fast path); MONOCHROME1 and invert flip the LUT.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget

from cxr_viewer.io.display import DisplayMapping, Voi, Window, display_mapping, render_uint8
from cxr_viewer.io.image import LoadedImage


class _ViewBox(pg.ViewBox):
    window_drag = Signal(float, float)  # screen dx, dy in pixels

    def __init__(self):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self.left_mode = "window"  # or "pan"

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802 (Qt name)
        if ev.button() == Qt.MouseButton.LeftButton and self.left_mode == "window":
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self.window_drag.emit(float(delta.x()), float(delta.y()))
            return
        super().mouseDragEvent(ev, axis)


class ImageView(QWidget):
    """Shows one LoadedImage; emits the VOI it shows and the pixel under the mouse."""

    voi_changed = Signal(object, bool)  # Voi, inverted-on-screen
    pixel_hovered = Signal(int, int)  # row, col; -1, -1 when outside

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.graphics = pg.GraphicsView(parent=self)
        self.graphics.setBackground("k")
        self.viewbox = _ViewBox()
        self.graphics.setCentralItem(self.viewbox)
        self.item = pg.ImageItem(axisOrder="row-major")
        self.viewbox.addItem(self.item)
        self.heat_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item.setZValue(10)
        self.heat_item.setOpacity(0.7)
        self.heat_item.setVisible(False)
        self.viewbox.addItem(self.heat_item)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics)
        self.image: LoadedImage | None = None
        self.voi: Voi | None = None
        self.user_invert = False
        self._mapping: DisplayMapping | None = None
        self.viewbox.window_drag.connect(self._on_window_drag)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.setAcceptDrops(False)  # the main window takes drops

    # --- state ------------------------------------------------------------------------
    @property
    def inverted(self) -> bool:
        """What the screen shows: MONOCHROME1 XOR the user's invert toggle."""
        return bool(self.image is not None and self.image.monochrome1) != self.user_invert

    def set_image(self, image: LoadedImage, voi: Voi | None = None, keep_view: bool = False) -> None:
        same_size = self.image is not None and self.image.shape == image.shape
        if self.image is None or self.image.ref.path != image.ref.path or self.image.frame != image.frame:
            self.set_heatmap(None)  # a heatmap belongs to one image
        self.image = image
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
    def zoom_fit(self) -> None:
        if self.image is not None:
            h, w = self.image.shape
            self.viewbox.setRange(xRange=(0, w), yRange=(0, h), padding=0.02)

    def zoom_1to1(self) -> None:
        """One image pixel per screen pixel, centred on the current view centre."""
        if self.image is None:
            return
        rect = self.viewbox.viewRect()
        centre = rect.center()
        size = self.viewbox.size()
        dpr = self.devicePixelRatioF() or 1.0
        w, h = size.width() / dpr, size.height() / dpr
        self.viewbox.setRange(xRange=(centre.x() - w / 2, centre.x() + w / 2),
                              yRange=(centre.y() - h / 2, centre.y() + h / 2), padding=0)

    def zoom_by(self, factor: float) -> None:
        self.viewbox.scaleBy((1 / factor, 1 / factor))

    def pixels_per_screen_pixel(self) -> float:
        px = self.viewbox.viewPixelSize()
        return float(px[0])

    def set_left_mode(self, mode: str) -> None:
        self.viewbox.left_mode = mode

    def reset(self) -> None:
        if self.image is not None:
            self.user_invert = False
            self.set_voi(self.image.default_voi())
            self.zoom_fit()

    # --- mouse --------------------------------------------------------------------------
    def _on_window_drag(self, dx: float, dy: float) -> None:
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
        p = self.item.mapFromScene(scene_pos)
        row, col = int(np.floor(p.y())), int(np.floor(p.x()))
        h, w = self.image.shape
        if 0 <= row < h and 0 <= col < w:
            self.pixel_hovered.emit(row, col)
        else:
            self.pixel_hovered.emit(-1, -1)
