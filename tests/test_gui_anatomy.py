"""pytest-qt: the anatomy overlay (lung and heart outlines, CTR lines) from the worker, the missing-model
message, user corrections of the CTR by dragging, stale results dropped, workers joined.

Most tests replace the segmentation with fixed ellipses (deterministic drawing); one runs a tiny
real anatomy model end to end."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pytest
from model_fixtures import REPO
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.anatomy import STRUCTURES, Anatomy, AnatomyMeta, AnatomyModel, AnatomyNet, measure_ctr
from cxr_viewer.ai.outline import mask_outline
from cxr_viewer.ai.preprocess import PreprocessSpec

SAMPLES = REPO / "resources" / "samples"
NORMAL = SAMPLES / "children_kermany" / "NORMAL"
IMAGE_A = NORMAL / "IM-0115-0001.jpeg"
IMAGE_B = NORMAL / "IM-0117-0001.jpeg"
SCREENSHOTS = REPO / "out" / "screenshots"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("anatomy") / "a.safetensors"
    AnatomyModel(AnatomyNet(base=4, depth=3),
                 AnatomyMeta("tiny anatomy", "1", preprocessing=PreprocessSpec(input_size=64, channels=1),
                             base=4, depth=3)).save(str(path))
    return path


def ellipse(shape, cy, cx, ry, rx) -> np.ndarray:
    y, x = np.ogrid[:shape[0], :shape[1]]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def fake_masks(shape) -> np.ndarray:
    h, w = shape
    return np.stack([ellipse(shape, 0.45 * h, 0.30 * w, 0.30 * h, 0.14 * w),   # right lung: image left
                     ellipse(shape, 0.45 * h, 0.70 * w, 0.30 * h, 0.14 * w),   # left lung: image right
                     ellipse(shape, 0.65 * h, 0.55 * w, 0.12 * h, 0.16 * w)])  # heart


@pytest.fixture
def fake_segmentation(monkeypatch, tiny_model):
    """The model file is the tiny one; its segmentation is replaced by fixed ellipses. Segmenting an
    image whose path is in ``hold`` waits until the test sets the event (a slow segmentation)."""
    monkeypatch.setenv("CXR_VIEWER_ANATOMY", str(tiny_model))
    hold: dict[str, threading.Event] = {}
    calls: list[str] = []

    def segment_image(self, image) -> Anatomy:
        calls.append(image.ref.path)
        event = hold.get(os.path.basename(image.ref.path))
        if event is not None:
            assert event.wait(30)
        masks = fake_masks(image.shape)
        return Anatomy(masks, measure_ctr(*masks), self.meta.name)

    monkeypatch.setattr(AnatomyModel, "segment_image", segment_image)
    return hold, calls


def open_image(qtbot, win, path) -> None:
    with qtbot.waitSignal(win.image_shown, timeout=30000):
        win.open_paths([str(path)])


def turn_on(qtbot, win):
    with qtbot.waitSignal(win.anatomy_shown, timeout=60000) as b:
        win.act_anatomy.trigger()
    assert win.act_anatomy.isChecked()
    return b.args[0]


def drag(view, start: QPointF, end: QPointF, steps: int = 8) -> None:
    """A left-button drag with real mouse events on the view's viewport, in image coordinates (paced:
    pyqtgraph's scene drops mouse moves closer than 1/100 s apart)."""
    gv = view.graphics
    vp = gv.viewport()
    item = view.item

    def screen(p: QPointF) -> QPointF:
        return QPointF(gv.mapFromScene(item.mapToScene(p)))

    def send(kind, p, buttons):
        ev = QMouseEvent(kind, p, QPointF(vp.mapToGlobal(p.toPoint())), Qt.MouseButton.LeftButton, buttons,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(vp, ev)

    a, b = screen(start), screen(end)
    send(QEvent.Type.MouseButtonPress, a, Qt.MouseButton.LeftButton)
    for i in range(1, steps + 1):
        QTest.qWait(15)
        send(QEvent.Type.MouseMove, a + (b - a) * (i / steps), Qt.MouseButton.LeftButton)
    QTest.qWait(15)
    send(QEvent.Type.MouseButtonRelease, b, Qt.MouseButton.NoButton)


def flat(line) -> list[float]:
    return [c for point in line for c in point]


def panel_text(win) -> str:
    box = win.findings.anatomy
    return "\n".join(w.text() for w in (box.status, box.widths, box.model, box.notice)) + "\n" + box.ratio_text()


def test_missing_model_says_why_and_the_viewer_works(qtbot, window, monkeypatch, tmp_path):
    open_image(qtbot, window, IMAGE_A)
    assert "Off" in window.findings.anatomy.status.text()
    monkeypatch.setenv("CXR_VIEWER_ANATOMY", str(tmp_path / "none.safetensors"))
    with qtbot.waitSignal(window.anatomy_model_changed, timeout=30000) as b:
        window.act_anatomy.trigger()
    assert b.args[0] is None
    status = window.findings.anatomy.status.text()
    assert status.startswith("Anatomy model not available: anatomy model not found:"), status
    assert not window.act_anatomy.isChecked() and "not available" in window.act_anatomy.toolTip()
    assert not window.view.anatomy_visible() and not window.view.ctr_lines and not window.view.ctr_label.isVisible()
    assert "CTR" not in window.findings.anatomy.ratio_text() or not window.findings.anatomy.ratio.isVisible()
    # a broken file: its own one-line reason; turning it on again tries again
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    monkeypatch.setenv("CXR_VIEWER_ANATOMY", str(bad))
    with qtbot.waitSignal(window.anatomy_model_changed, timeout=30000) as b:
        window.act_anatomy.trigger()
    assert b.args[0] is None
    assert window.findings.anatomy.status.text().startswith("Anatomy model not available: ")
    assert "\n" not in window.findings.anatomy.status.text()
    # the viewer goes on: another image opens, with no outline
    open_image(qtbot, window, IMAGE_B)
    assert not window.view.anatomy_visible()
    assert window.findings.anatomy.status.text().startswith("Anatomy model not available: ")


def test_the_action_toggles_outlines_and_ctr_lines(qtbot, window, fake_segmentation):
    open_image(qtbot, window, IMAGE_A)
    assert window.act_anatomy.shortcut().toString() == "Shift+A"
    assert not window.view.anatomy_visible()
    result = turn_on(qtbot, window)
    image = window.view.image
    assert (result.path, result.frame, result.shape) == (image.ref.path, 0, image.shape)
    assert set(result.structures_found()) == set(STRUCTURES)
    # outlines: one curve per structure, the mask's boundary (within a pixel of its bounding box)
    masks = fake_masks(image.shape)
    for name, mask in zip(STRUCTURES, masks):
        halo, line = window.view.outline_items[name]
        assert line.isVisible() and halo.isVisible()
        x, y = line.getData()
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        assert x.min() == pytest.approx(cols[0], abs=1) and x.max() == pytest.approx(cols[-1] + 1, abs=1)
        assert y.min() == pytest.approx(rows[0], abs=1) and y.max() == pytest.approx(rows[-1] + 1, abs=1)
        assert len(x) == 2 * len(mask_outline(mask))
    # CTR lines where the core measured them, and the label
    ctr = result.ctr
    assert set(window.view.ctr_lines) == {"heart", "thorax"}
    assert flat(window.view.ctr_lines["heart"].ends()) == pytest.approx(flat(ctr.heart))
    assert flat(window.view.ctr_lines["thorax"].ends()) == pytest.approx(flat(ctr.thorax))
    assert window.view.ctr_label.isVisible() and window.view.ctr_label.textItem.toPlainText() == f"CTR {ctr.ratio:.2f}"
    text = panel_text(window)
    assert f"CTR {ctr.ratio:.2f}" in text and "corrected" not in text
    assert f"Heart width {ctr.heart_width:.0f} px" in text and f"thoracic width {ctr.thorax_width:.0f} px" in text
    assert "Model: tiny anatomy v1" in text and RESEARCH_NOTICE in text
    assert window.act_reset_ctr.isEnabled()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    qtbot.wait(100)
    assert window.grab().save(str(SCREENSHOTS / "anatomy_synthetic_outlines.png"))
    # off: nothing drawn, the panel says how to turn it on
    window.act_anatomy.trigger()
    assert not window.act_anatomy.isChecked()
    assert not window.view.anatomy_visible() and not window.view.ctr_lines and not window.view.ctr_label.isVisible()
    assert "Off" in window.findings.anatomy.status.text() and not window.act_reset_ctr.isEnabled()
    # on again: the model is not loaded a second time
    with qtbot.assertNotEmitted(window.anatomy_model_changed):
        turn_on(qtbot, window)
    assert window.view.anatomy_visible()


def test_dragging_a_line_end_corrects_the_ratio_and_reset_restores_it(qtbot, window, fake_segmentation):
    open_image(qtbot, window, IMAGE_A)
    result = turn_on(qtbot, window)
    model_ctr = result.ctr
    heart = window.view.ctr_lines["heart"]
    (x0, y), (x1, _) = model_ctr.heart
    handle_pos = heart.mapToParent(heart.getHandles()[1].pos())
    assert (handle_pos.x(), handle_pos.y()) == pytest.approx((x1, y))
    # drag the heart line's right end 60 px to the right (and 30 px down: a width stays horizontal)
    with qtbot.waitSignal(window.view.ctr_edited, timeout=5000):
        drag(window.view, QPointF(x1, y), QPointF(x1 + 60, y + 30))
    edited = window.view.ctr
    assert edited.corrected
    (ex0, ey0), (ex1, ey1) = edited.heart
    assert ey0 == ey1 == pytest.approx(y)  # still horizontal, on its row
    assert ex0 == pytest.approx(x0) and ex1 == pytest.approx(x1 + 60, abs=3)
    assert flat(edited.thorax) == pytest.approx(flat(model_ctr.thorax))
    ratio = (ex1 - ex0) / model_ctr.thorax_width
    assert edited.ratio == pytest.approx(ratio)
    assert edited.ratio > model_ctr.ratio
    assert window.view.ctr_label.textItem.toPlainText() == f"CTR {ratio:.2f} (corrected)"
    text = panel_text(window)
    assert f"CTR {ratio:.2f}" in text and "(corrected by user)" in text
    assert f"Heart width {ex1 - ex0:.0f} px" in text
    qtbot.wait(100)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SCREENSHOTS / "anatomy_synthetic_corrected.png"))
    # moving a line's end through the API a handle uses (scene coordinates) does the same
    thorax = window.view.ctr_lines["thorax"]
    (tx0, ty), _ = model_ctr.thorax
    with qtbot.waitSignal(window.view.ctr_edited, timeout=5000):
        thorax.movePoint(thorax.getHandles()[0], window.view.item.mapToScene(QPointF(tx0 - 20, ty)), coords="scene")
    assert window.view.ctr.thorax_width == pytest.approx(model_ctr.thorax_width + 20)
    # Reset CTR: the model's lines and ratio, not corrected
    window.act_reset_ctr.trigger()
    assert window.view.ctr == model_ctr and not window.view.ctr.corrected
    assert window.view.ctr_label.textItem.toPlainText() == f"CTR {model_ctr.ratio:.2f}"
    assert "corrected" not in panel_text(window)
    assert flat(window.view.ctr_lines["heart"].ends()) == pytest.approx(flat(model_ctr.heart))


def test_widths_in_mm_with_pixel_spacing(qtbot, window, fake_segmentation, tmp_path):
    pixels = (np.add.outer(np.arange(300), np.arange(400)) % 4096).astype(np.uint16)
    path = td.write_image(tmp_path / "spaced.dcm", pixels, bits_stored=12, ImagerPixelSpacing=[0.15, 0.2])
    open_image(qtbot, window, path)
    ctr = turn_on(qtbot, window).ctr
    text = panel_text(window)
    assert f"Heart width {ctr.heart_width * 0.2:.1f} mm (detector) ({ctr.heart_width:.0f} px)" in text, text
    assert f"thoracic width {ctr.thorax_width * 0.2:.1f} mm (detector)" in text


def test_switching_image_drops_stale_results(qtbot, window, fake_segmentation):
    hold, calls = fake_segmentation
    open_image(qtbot, window, IMAGE_B)
    stale_b = turn_on(qtbot, window)
    # image A's segmentation is slow: the user moves on to B before it ends
    hold[IMAGE_A.name] = threading.Event()
    shown = []
    window.anatomy_shown.connect(lambda r: shown.append(r.path))
    open_image(qtbot, window, IMAGE_A)
    qtbot.waitUntil(lambda: calls[-1].endswith(IMAGE_A.name), timeout=30000)
    assert window.anatomy_runner.busy and not window.view.anatomy_visible()  # B's outlines left with B
    open_image(qtbot, window, IMAGE_B)
    hold[IMAGE_A.name].set()
    qtbot.waitUntil(lambda: bool(shown), timeout=30000)
    qtbot.wait(200)
    assert [os.path.basename(p) for p in shown] == [IMAGE_B.name]  # A's result never drawn
    assert window.view.anatomy.path.endswith(IMAGE_B.name)
    # a result for another image arriving late is dropped too (the path check, not only the generation)
    open_image(qtbot, window, IMAGE_A)
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=30000)
    window._on_anatomy(stale_b)
    assert window.view.anatomy.path.endswith(IMAGE_A.name)
    assert window.anatomy_result.path.endswith(IMAGE_A.name)


def test_the_real_model_runs_in_the_worker_and_workers_are_joined(qtbot, window, tiny_model, monkeypatch):
    monkeypatch.setenv("CXR_VIEWER_ANATOMY", str(tiny_model))
    open_image(qtbot, window, IMAGE_A)
    idle = qtbot.waitSignal(window.anatomy_runner.busy_changed, timeout=60000, check_params_cb=lambda busy: not busy)
    with qtbot.waitSignal(window.anatomy_model_changed, timeout=30000) as b, idle:
        window.set_anatomy_visible(True)
    assert b.args[0].name == "tiny anatomy" and b.args[0].path == str(tiny_model)
    # an untrained net draws whatever it finds; the panel reports it without crashing
    assert "Outlined in" in window.findings.anatomy.status.text() or "failed" in window.findings.anatomy.status.text()
    assert window.anatomy_result is None or window.anatomy_result.path == str(IMAGE_A)
    assert window.anatomy_model_runner in window.runners and window.anatomy_runner in window.runners
    # a segmentation still running when the window goes: shutdown waits for it
    window.show_ref(window.browser.refs()[0])
    window.set_anatomy_visible(False)
    window.set_anatomy_visible(True)
    window.shutdown()
    assert not window.anatomy_runner.busy
    assert window.anatomy_runner._pool.activeThreadCount() == 0
