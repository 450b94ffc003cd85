"""Start the GUI, after checking that Qt can open a window at all.

Qt 6's xcb platform plugin aborts the whole process (qFatal, exit 134) when it cannot connect to
the X display or cannot load one of its libraries, and the line that names the cause is printed
above a misleading one about libxcb-cursor0. :func:`gui_start_problem` looks first, cheaply and
without Qt or a child process, and says in one line what is missing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cxr_viewer.common.errors import UserError

# What Qt 6's xcb platform (plugins/platforms/libqxcb.so, lib/libQt6XcbQpa.so.6) and QtGui link
# against from the system (readelf -d, PySide6 6.12), lowest first so that the first one missing is
# the cause, with the package holding it on Debian/Ubuntu and on Fedora.
XCB_LIBRARIES: tuple[tuple[str, str, str], ...] = (
    ("libxcb.so.1", "libxcb1", "libxcb"),
    ("libX11.so.6", "libx11-6", "libX11"),
    ("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
    ("libxcb-render.so.0", "libxcb-render0", "libxcb"),
    ("libxcb-shm.so.0", "libxcb-shm0", "libxcb"),
    ("libxcb-sync.so.1", "libxcb-sync1", "libxcb"),
    ("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb"),
    ("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    ("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    ("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    ("libxcb-util.so.1", "libxcb-util1", "xcb-util"),
    ("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    ("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    ("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    ("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    ("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
    ("libglib-2.0.so.0", "libglib2.0-0", "glib2"),
    ("libgthread-2.0.so.0", "libglib2.0-0", "glib2"),
    ("libfreetype.so.6", "libfreetype6", "freetype"),
    ("libfontconfig.so.1", "libfontconfig1", "fontconfig"),
    ("libGL.so.1", "libgl1", "libglvnd-glx"),
    ("libEGL.so.1", "libegl1", "libglvnd-egl"),
)

# xcb_connection_has_error() codes (xcb.h) a user can act on.
_XCB_ERRORS = {
    1: "no X server answers there, or it refused the connection (check DISPLAY and xauth)",
    5: "the name is not a valid X display",
    6: "the X server has no such screen",
}


def qt_platforms(environ: Mapping[str, str]) -> list[str]:
    """The platform plugins Qt 6.5+ will try, in order (QGuiApplicationPrivate::createPlatformIntegration):
    $QT_QPA_PLATFORM ("a;b", each "name:options") when set; else on Linux wayland first when
    WAYLAND_DISPLAY is set or XDG_SESSION_TYPE is wayland, then xcb (the wheels' default)."""
    explicit = environ.get("QT_QPA_PLATFORM", "")
    if explicit:
        return [part.split(":", 1)[0].strip() for part in explicit.split(";") if part.strip()]
    names = []
    if environ.get("WAYLAND_DISPLAY") or environ.get("XDG_SESSION_TYPE") == "wayland":
        names.append("wayland")
    return names + ["xcb"]


def _library_dirs() -> list[Path]:
    """Where a library Qt needs may sit besides the system's path: the frozen bundle, PySide6's Qt/lib."""
    dirs = []
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        dirs.append(Path(sys._MEIPASS))
    spec = importlib.util.find_spec("PySide6")  # finds the package without importing Qt
    for location in (spec.submodule_search_locations or []) if spec else []:
        dirs.append(Path(location) / "Qt" / "lib")
    return dirs


def _loads(soname: str, dirs: list[Path]) -> bool:
    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        pass
    for folder in dirs:
        if (folder / soname).is_file():
            try:
                ctypes.CDLL(str(folder / soname))
                return True
            except OSError:
                pass
    return False


def missing_xcb_libraries() -> list[tuple[str, str, str]]:
    """The entries of :data:`XCB_LIBRARIES` that cannot be loaded here."""
    dirs = _library_dirs()
    return [entry for entry in XCB_LIBRARIES if not _loads(entry[0], dirs)]


def _x_connect_error(display: str) -> str | None:
    """Connect to ``display`` with libxcb (as Qt will) and disconnect; the reason when it fails."""
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return None  # reported as a missing library before this is asked
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.restype = ctypes.c_int
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.restype = None
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)
    try:
        code = xcb.xcb_connection_has_error(connection) if connection else 1
    finally:
        if connection:
            xcb.xcb_disconnect(connection)  # also frees a connection that is in error
    if code == 0:
        return None
    return f"cannot connect to X display {display}: {_XCB_ERRORS.get(code, f'libxcb error {code}')}"


def gui_start_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """One line saying why Qt could not open a window here, or None when it should (or when this
    cannot tell: other systems, and platforms other than xcb alone, such as offscreen, wayland or
    a list with a fallback, are left to Qt)."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or set(qt_platforms(environ)) != {"xcb"}:
        return None
    display = environ.get("DISPLAY", "")
    if not display:
        return ("cannot open a window: no X display (DISPLAY is not set); run cxr-viewer from a desktop "
                "session, or set QT_QPA_PLATFORM=offscreen to use --screenshot without one")
    missing = missing_xcb_libraries()
    if missing:
        names = ", ".join(m[0] for m in missing)
        debian = " ".join(dict.fromkeys(m[1] for m in missing))
        fedora = " ".join(dict.fromkeys(m[2] for m in missing))
        return (f"cannot open a window: Qt's xcb platform needs {names}, which cannot be loaded: "
                f"install {debian} (Debian/Ubuntu) or {fedora} (Fedora)")
    return _x_connect_error(display)


def _qt_import_problem(exc: ImportError) -> str:
    """A one-line message for Qt failing to import (a system library QtGui links against is missing)."""
    text = " ".join(str(exc).split())
    for soname, debian, fedora in XCB_LIBRARIES:
        if text.startswith(soname + ":") or f" {soname}:" in text:
            return f"cannot start the GUI: Qt needs {soname}: install {debian} (Debian/Ubuntu) or {fedora} (Fedora)"
    return f"cannot start the GUI: Qt could not be loaded: {text}"


def configure_pyqtgraph() -> None:
    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)


def run_app(paths: list[str], screenshot: str | None = None) -> int:
    """Open the main window (on ``paths``) and run until it closes. Raises :class:`UserError` (one
    line) when no window can be opened here, before Qt gets the chance to abort the process."""
    problem = gui_start_problem()
    if problem:
        raise UserError(problem)
    try:
        from PySide6.QtWidgets import QApplication

        from cxr_viewer.gui.main_window import MainWindow, screenshot_when_shown
    except ImportError as exc:
        raise UserError(_qt_import_problem(exc)) from exc

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

