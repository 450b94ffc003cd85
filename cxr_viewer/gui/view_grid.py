"""The reading room's viewports: 1x1, 1x2 or 2x2 image views, one of them active, optionally linked.

Each viewport is an :class:`ImageView` with its own overlays. The active one (the last pressed,
framed in blue) is the one the studies list, the findings panel and the tools act on. While linked,
zoom and pan follow the viewport that moved (the same place at the same zoom relative to each
image, worked out by :func:`cxr_viewer.io.hanging.linked_range`) and a window/level drag is
repeated in each linked viewport, in that image's own value range.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGridLayout, QWidget

from cxr_viewer.gui.image_view import ImageView
from cxr_viewer.io.hanging import linked_range

#: layout name -> (rows, columns)
LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x2": (2, 2)}
MAX_VIEWS = 4


class ViewGrid(QWidget):
    active_changed = Signal(int)  # index of the new active viewport

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.views = [ImageView(self) for _ in range(MAX_VIEWS)]
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self.layout_name = "1x1"
        self.active = 0
        self.linked = True
        self._syncing = False
        for i, view in enumerate(self.views):
            view.activated.connect(lambda i=i: self.set_active(i))
            view.viewbox.sigRangeChanged.connect(lambda *_args, i=i: self._on_range_changed(i))
            view.window_dragged.connect(lambda dx, dy, i=i: self._on_window_dragged(i, dx, dy))
        self.set_layout("1x1")

    @property
    def active_view(self) -> ImageView:
        return self.views[self.active]

    def count(self) -> int:
        rows, cols = LAYOUTS[self.layout_name]
        return rows * cols

    def shown_views(self) -> list[ImageView]:
        return self.views[: self.count()]

    def set_layout(self, name: str) -> None:
        if name not in LAYOUTS:
            raise ValueError(f"unknown layout {name!r}: one of {', '.join(LAYOUTS)}")
        self.layout_name = name
        rows, cols = LAYOUTS[name]
        for view in self.views:
            self._grid.removeWidget(view)
        for i, view in enumerate(self.views):
            if i < rows * cols:
                self._grid.addWidget(view, i // cols, i % cols)
                view.show()
            else:
                view.hide()  # keeps its image: a larger layout shows it again
        for r in range(2):
            self._grid.setRowStretch(r, 1 if r < rows else 0)
        for c in range(2):
            self._grid.setColumnStretch(c, 1 if c < cols else 0)
        self.set_active(self.active if self.active < rows * cols else 0)

    def set_active(self, index: int) -> None:
        changed = index != self.active
        self.active = index
        single = self.count() == 1
        for i, view in enumerate(self.views):
            view.set_framed(None if single else i == index)
        if changed:
            self.active_changed.emit(index)

    def set_linked(self, on: bool) -> None:
        self.linked = on
        if on:  # the others come to where the active viewport looks
            self._on_range_changed(self.active)

    # --- linking ------------------------------------------------------------------------------
    def _linked_others(self, index: int) -> list[ImageView]:
        if not self.linked:
            return []
        return [v for i, v in enumerate(self.shown_views()) if i != index and v.image is not None]

    def _on_range_changed(self, index: int) -> None:
        source = self.views[index]
        if self._syncing or source.image is None or index >= self.count():
            return
        others = self._linked_others(index)
        if not others:
            return
        self._syncing = True
        try:
            view, bounds = source.view_rect(), source.display_bounds()
            for other in others:
                other.set_view_rect(linked_range(view, bounds, other.display_bounds()))
        finally:
            self._syncing = False

    def _on_window_dragged(self, index: int, dx: float, dy: float) -> None:
        for other in self._linked_others(index):
            other.drag_window(dx, dy)
