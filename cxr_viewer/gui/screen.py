"""Window sizes that fit the screen they open on (a 1280x720 laptop included)."""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

#: a window opens on at most this share of the screen's available area
SCREEN_SHARE = 0.9


def available_geometry(widget: QWidget | None = None) -> QRect:
    """The available area (without task bars) of the widget's screen, else of the primary screen."""
    screen = (widget.screen() if widget is not None else None) or QGuiApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else QRect(0, 0, 1280, 720)


def fitted_size(available: QRect, preferred: QSize | None = None, share: float = SCREEN_SHARE) -> QSize:
    """``share`` of the available area, or ``preferred`` when that is smaller; never larger than
    the available area."""
    w, h = int(available.width() * share), int(available.height() * share)
    if preferred is not None:
        w, h = min(w, preferred.width()), min(h, preferred.height())
    return QSize(max(1, min(w, available.width())), max(1, min(h, available.height())))


def centre_on(widget: QWidget, available: QRect) -> None:
    widget.move(available.x() + (available.width() - widget.width()) // 2,
                available.y() + (available.height() - widget.height()) // 2)
