"""pytest-qt tests that drive the real main window on real studies (offscreen platform)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent, QMouseEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from cxr_viewer import RESEARCH_NOTICE  # noqa: E402
from cxr_viewer.gui.main_window import MainWindow  # noqa: E402
from cxr_viewer.gui.settings import Settings  # noqa: E402
from cxr_viewer.io.display import Window, display_mapping, render_uint8  # noqa: E402
from cxr_viewer.io.image import open_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "resources" / "samples"
SCREENSHOTS = REPO / "out" / "screenshots"


def open_and_wait(qtbot, win: MainWindow, paths, timeout=30000):
    with qtbot.waitSignal(win.image_shown, timeout=timeout) as blocker:
        win.open_paths([str(p) for p in paths])
    return blocker.args[0]


def qimage_to_grey(qimage) -> np.ndarray:
    from PySide6.QtGui import QImage

    img = qimage.convertToFormat(QImage.Format.Format_RGB32)
    h, w = img.height(), img.width()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8).reshape(h, img.bytesPerLine())[:, : w * 4]
    return arr.reshape(h, w, 4)[..., 2].copy()  # R of BGRA; the picture is grey


def test_opens_bundled_samples_and_shows_first_image(qtbot, window):
    image = open_and_wait(qtbot, window, [SAMPLES])
    refs = window.browser.refs()
    assert len(refs) == 7, [r.path for r in refs]
    assert window.study_index.errors == ()
    assert window.view.image is image
    assert window.side.metadata.value_of("Size") is not None
    assert window.notice_label.isVisible() and RESEARCH_NOTICE in window.notice_label.text()
    assert RESEARCH_NOTICE in window.windowTitle()


def test_screen_pixels_are_what_render_writes(qtbot, window):
    """The ImageItem's own rendering equals core.render_uint8 (so `cxr-viewer render` = screen)."""
    path = SAMPLES / "dicom" / "RG1_J2KR.dcm"
    open_and_wait(qtbot, window, [path])
    item = window.view.item
    item.render()
    on_screen = qimage_to_grey(item.qimage)
    expected = render_uint8(display_mapping(open_image(str(path)).values, open_image(str(path)).default_voi(), True))
    assert on_screen.shape == expected.shape == (1955, 1841)
    assert np.array_equal(on_screen, expected)
    assert np.array_equal(window.view.rendered(), expected)
    # MONOCHROME1: the header window is shown inverted (bright bone), stored values untouched
    assert window.view.inverted and not window.view.user_invert
    assert window.view.image.stored.dtype == np.uint16


def _drag(viewport, start: QPoint, end: QPoint, button=Qt.MouseButton.LeftButton, steps=8):
    def send(kind, pos, buttons, btn):
        ev = QMouseEvent(kind, QPointF(pos), QPointF(viewport.mapToGlobal(pos)), btn, buttons,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(viewport, ev)

    send(QEvent.Type.MouseButtonPress, start, button, button)
    for i in range(1, steps + 1):
        p = start + (end - start) * (i / steps)
        send(QEvent.Type.MouseMove, p, button, Qt.MouseButton.NoButton)
        QApplication.processEvents()
    send(QEvent.Type.MouseButtonRelease, end, Qt.MouseButton.NoButton, button)
    QApplication.processEvents()  # the ViewBox applies range changes lazily


def test_window_level_by_mouse_drag(qtbot, window):
    open_and_wait(qtbot, window, [SAMPLES / "dicom" / "NIH_DX_no_finding.dcm"])
    before = window.view.voi
    viewport = window.view.graphics.viewport()
    centre = viewport.rect().center()
    _drag(viewport, centre, centre + QPoint(120, 0))  # right: wider
    after_w = window.view.voi
    assert isinstance(after_w, Window) and after_w.width > before.width + 20
    assert after_w.center == pytest.approx(before.center)
    qtbot.wait(QApplication.doubleClickInterval() + 50)  # two presses in a row would be a double click
    _drag(viewport, centre + QPoint(-50, -50), centre + QPoint(-50, 30))  # down: higher centre (darker)
    after_c = window.view.voi
    assert after_c.center > after_w.center + 10
    assert window.side.controls.center.value() == pytest.approx(after_c.center, abs=0.1)
    # the picture changed accordingly: a higher centre darkens the image
    assert window.view.rendered().mean() < render_uint8(
        display_mapping(window.view.image.values, before, False)).mean()


def test_middle_drag_pans_and_keys_zoom(qtbot, window):
    open_and_wait(qtbot, window, [SAMPLES / "dicom" / "NIH_DX_no_finding.dcm"])
    vb = window.view.viewbox
    r0 = vb.viewRect()
    viewport = window.view.graphics.viewport()
    c = viewport.rect().center()
    _drag(viewport, c, c + QPoint(100, 0), button=Qt.MouseButton.MiddleButton)
    r1 = vb.viewRect()
    assert r1.center().x() < r0.center().x() - 20  # content moved right: view moved left
    assert window.view.voi == window.view.image.default_voi()  # panning is not windowing
    qtbot.keyClick(window, Qt.Key.Key_1)
    assert window.view.pixels_per_screen_pixel() == pytest.approx(1.0, rel=0.05)
    qtbot.keyClick(window, Qt.Key.Key_F)
    r2 = vb.viewRect()
    assert r2.width() >= 1024 or r2.height() >= 1024


def test_invert_key_inverts_the_picture(qtbot, window):
    open_and_wait(qtbot, window, [SAMPLES / "children_kermany" / "NORMAL" / "IM-0115-0001.jpeg"])
    before = window.view.rendered().copy()
    qtbot.keyClick(window, Qt.Key.Key_I)
    assert window.view.user_invert and window.act_invert.isChecked()
    assert np.array_equal(window.view.rendered(), 255 - before)
    assert window.side.controls.invert.isChecked()
    qtbot.keyClick(window, Qt.Key.Key_R)
    assert not window.view.user_invert
    assert np.array_equal(window.view.rendered(), before)


def test_presets_from_header_and_auto(qtbot, window):
    open_and_wait(qtbot, window, [SAMPLES / "dicom" / "RG1_J2KR.dcm"])
    combo = window.side.controls.preset
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[0].endswith("C 15000 / W 30000"), texts
    assert any(t.startswith("Auto") for t in texts) and any(t.startswith("Full range") for t in texts)
    qtbot.keyClick(window, Qt.Key.Key_A)
    auto = window.view.voi
    assert auto.name.startswith("Auto") and auto.width < 30000
    assert combo.currentText().startswith("Auto")


def test_switch_images_with_keys_and_browser(qtbot, window):
    first = open_and_wait(qtbot, window, [SAMPLES])
    with qtbot.waitSignal(window.image_shown, timeout=20000) as b:
        qtbot.keyClick(window, Qt.Key.Key_PageDown)
    second = b.args[0]
    assert second.ref.path != first.ref.path
    assert window.browser.current().path == second.ref.path
    with qtbot.waitSignal(window.image_shown, timeout=20000) as b:
        qtbot.keyClick(window, Qt.Key.Key_PageUp)
    assert b.args[0].ref.path == first.ref.path


def test_status_bar_reports_pixel_values(qtbot, window):
    image = open_and_wait(qtbot, window, [SAMPLES / "dicom" / "RG1_J2KR.dcm"])
    window.view.pixel_hovered.emit(100, 200)
    stored = int(image.stored[100, 200])
    assert "x 200, y 100 px" in window.position_label.text()
    assert f"stored {stored}" in window.value_label.text()
    assert "px" in window.units_label.text()  # RG1's PixelSpacing is [0, 0]: no mm
    window.view.pixel_hovered.emit(-1, -1)
    assert window.value_label.text() == ""


def test_multiframe_frame_selector(qtbot, window, tmp_path):
    import cxr_testdata as td
    from PIL import Image

    jpegs = sorted((SAMPLES / "children_kermany").glob("*/*-0001.jpeg")) + sorted((SAMPLES / "children_kermany").glob("*/person1000*.jpeg"))
    frames = np.stack([np.asarray(Image.open(p).convert("L")) for p in jpegs[:3]])
    path = td.write_image(tmp_path / "mf.dcm", frames, frames=3)
    image = open_and_wait(qtbot, window, [path])
    assert image.frame == 0 and window.side.controls.frame.isEnabled()
    with qtbot.waitSignal(window.image_shown, timeout=20000) as b:
        qtbot.keyClick(window, Qt.Key.Key_Right)
    assert b.args[0].frame == 1
    assert not np.array_equal(b.args[0].stored, image.stored)
    assert window.side.controls.frame.value() == 2


def test_broken_files_are_listed_and_app_keeps_working(qtbot, window, broken_corpus):
    with qtbot.waitSignal(window.index_loaded, timeout=60000):
        window.open_paths([str(broken_corpus.root)])
    qtbot.waitUntil(lambda: not window.image_runner.busy, timeout=20000)
    errors = {Path(e.path).name: e.reason for e in window.study_index.errors}
    for name, case in broken_corpus.index_errors.items():
        assert case.path.name in errors, (name, sorted(errors))
    assert window.browser.errors.count() == len(window.study_index.errors)
    assert "Could not open" in window.browser.errors_label.text()
    good = next(r for r in window.browser.refs() if Path(r.path).name == broken_corpus.good["nih"].name)
    with qtbot.waitSignal(window.image_shown, timeout=20000):
        window.browser.select(good)
    # a file whose header indexes but whose pixels do not decode: message, no crash, app alive
    for case in broken_corpus.decode_errors.values():
        ref = next(r for r in window.browser.refs() if Path(r.path).name == case.path.name)
        with qtbot.waitSignal(window.image_runner.failed, timeout=20000) as b:
            window.show_ref(ref)
        assert b.args[0] and "\n" not in b.args[0]
        assert "Cannot show this image" in window.last_message
    open_and_wait(qtbot, window, [SAMPLES / "children_kermany"])


def test_recent_studies_and_drop(qtbot, window):
    target = SAMPLES / "children_kermany" / "NORMAL"
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(target))])
    with qtbot.waitSignal(window.image_shown, timeout=20000):
        ev = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier)
        window.dropEvent(ev)
    assert window.settings.recent()[0] == str(target)
    assert len(window.browser.refs()) == 2
    reread = Settings(window.settings.file_name)
    assert reread.recent()[0] == str(target)


def test_newest_request_wins(qtbot, window):
    """Two quick opens: only the second one's result is shown."""
    window.open_paths([str(SAMPLES / "dicom")])
    with qtbot.waitSignal(window.image_shown, timeout=20000) as b:
        window.open_paths([str(SAMPLES / "children_kermany" / "NORMAL")])
    assert "NORMAL" in b.args[0].ref.path
    qtbot.wait(300)
    assert all("NORMAL" in r.path for r in window.browser.refs())


def test_screenshot_of_real_study(qtbot, window):
    from cxr_viewer.ai.model_store import default_model_path

    model = default_model_path()
    if model:  # the shipped model, so the screenshot shows its findings
        with qtbot.waitSignal(window.model_changed, timeout=60000):
            window.load_model(model)
        with qtbot.waitSignal(window.scored, timeout=60000):
            window.open_paths([str(SAMPLES)])
    else:
        open_and_wait(qtbot, window, [SAMPLES])
    qtbot.waitUntil(lambda: not window.thumb_runner.busy, timeout=30000)
    qtbot.wait(100)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = window.grab()
    out = SCREENSHOTS / "main_window_samples.png"
    assert shot.save(str(out))
    grey = qimage_to_grey(shot.toImage())
    assert grey.shape[0] > 500 and grey.std() > 20  # not a blank window
    shutil.copy(out, SCREENSHOTS / "latest.png")
