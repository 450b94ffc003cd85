"""Start the GUI."""

from __future__ import annotations

import logging
import sys


def configure_pyqtgraph() -> None:
    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)


def run_app(paths: list[str], screenshot: str | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from cxr_viewer.gui.main_window import MainWindow, screenshot_when_shown

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("cxr_viewer")
    app.setOrganizationName("cxr_viewer")
    configure_pyqtgraph()
    window = MainWindow()
    if screenshot:
        screenshot_when_shown(window, screenshot)
    window.show()
    if paths:
        window.open_paths(paths)
    elif screenshot:
        from PySide6.QtCore import QTimer

        QTimer.singleShot(500, lambda: (window.grab().save(screenshot), window.close(), app.quit()))
    code = app.exec()
    window.shutdown()
    return code
