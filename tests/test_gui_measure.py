"""pytest-qt: the measuring tools drawn with real mouse events (ruler, angle, rectangle and ellipse ROI,
arrow, text), their labels on the real files (mm only with a valid spacing), select / move / Delete /
Ctrl+Z, annotations kept per image, and the GSPS saved beside a DICOM and read back when the image is
opened again. Screenshots of each tool at 1280x720 go to out/screenshots/measure_*.png."""

from __future__ import annotations

import shutil

import cxr_testdata as td
import numpy as np
import pydicom
import pytest
from model_fixtures import REPO
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from cxr_viewer.clinical.annotations import Angle, EllipseRoi, RectRoi, Ruler, Text, roi_mask
from cxr_viewer.clinical.gsps import GSPS_SOP_CLASS, read_gsps

DICOM = td.SHARED_DATA / "dicom"
SIIM = DICOM / "torchxrayvision_siim" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH = DICOM / "nhsx_nih" / "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
RG1 = DICOM / "pydicom-data_RG1" / "RG1_UNCR.dcm"
PNG_IMAGE = REPO / "resources" / "samples" / "children_kermany" / "NORMAL" / "IM-0115-0001.jpeg"
SCREENSHOTS = REPO / "out" / "screenshots"

pytestmark = pytest.mark.usefixtures("shared_data")


def open_image(qtbot, win, path) -> None:
    with qtbot.waitSignal(win.image_shown, timeout=30000):
        win.open_paths([str(path)])
    qtbot.wait(200)  # the docks settle around the new image before the mouse is aimed


def _screen(view, p: QPointF) -> QPointF:
    return QPointF(view.graphics.mapFromScene(view.item.mapToScene(p)))


def _send(view, kind, p: QPointF, button, buttons) -> None:
    vp = view.graphics.viewport()
    ev = QMouseEvent(kind, p, QPointF(vp.mapToGlobal(p.toPoint())), button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, ev)


def drag(view, start, end, steps: int = 8) -> None:
    """A left drag with real mouse events, in image coordinates (paced: pyqtgraph drops mouse moves
    closer than 1/100 s apart)."""
    a, b = _screen(view, QPointF(*start)), _screen(view, QPointF(*end))
    left = Qt.MouseButton.LeftButton
    _send(view, QEvent.Type.MouseButtonPress, a, left, left)
    for i in range(1, steps + 1):
        QTest.qWait(15)
        _send(view, QEvent.Type.MouseMove, a + (b - a) * (i / steps), Qt.MouseButton.NoButton, left)
    QTest.qWait(15)
    _send(view, QEvent.Type.MouseButtonRelease, b, left, Qt.MouseButton.NoButton)
    QTest.qWait(15)


def click(view, point) -> None:
    p = _screen(view, QPointF(*point))
    left = Qt.MouseButton.LeftButton
    QTest.qWait(20)
    _send(view, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, Qt.MouseButton.NoButton)
    _send(view, QEvent.Type.MouseButtonPress, p, left, left)
    _send(view, QEvent.Type.MouseButtonRelease, p, left, Qt.MouseButton.NoButton)
    QTest.qWait(20)


def key_image(win):
    return win.view.image.ref.path, win.view.image.frame


def stored(win):
    return win.annotation_store.get(key_image(win))


def shoot(qtbot, win, name: str) -> None:
    qtbot.wait(150)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert win.grab().save(str(SCREENSHOTS / f"measure_{name}.png"))


@pytest.fixture
def window720(window):
    """The main window at 1280x720, as on a small laptop screen."""
    window.resize(1280, 720)
    QTest.qWait(100)
    return window


@pytest.fixture
def siim_copy(tmp_path):
    """The SIIM CR (PixelSpacing 0.168 mm) in a folder of its own: a GSPS may be written beside it."""
    folder = tmp_path / "study"
    folder.mkdir()
    return shutil.copy(SIIM, folder / "siim.dcm")


def test_tools_are_in_the_menu_with_free_keys(window):
    keys = {kind: act.shortcut().toString() for kind, act in window.tool_actions.items()}
    assert keys == {"ruler": "L", "angle": "G", "rect": "B", "ellipse": "E", "arrow": "K", "text": "T"}
    others = [a.shortcut().toString() for a in window.actions() if a not in window.tool_actions.values()]
    assert not set(keys.values()) & set(others)  # no clash with the viewer's other shortcuts
    assert window.act_delete_annotation.shortcut().toString() == "Del"
    assert window.act_undo_annotation.shortcut().toString() == "Ctrl+Z"
    assert window.act_save_gsps.shortcut().toString() == "Ctrl+S"


def test_ruler_on_siim_cr_is_in_mm_and_each_tool_draws(qtbot, window720, siim_copy):
    win = window720
    open_image(qtbot, win, siim_copy)
    view = win.view
    win.tool_actions["ruler"].trigger()
    assert view.viewbox.left_mode == "ruler" and view.measure.tool == "ruler"
    drag(view, (200, 300), (600, 300))
    (ruler,) = stored(win)
    assert isinstance(ruler, Ruler)
    (x0, y0), (x1, y1) = ruler.points
    assert [x0, y0, x1, y1] == pytest.approx([200, 300, 600, 300], abs=2)
    expected = f"{np.hypot(x1 - x0, y1 - y0) * 0.168:.1f} mm"
    assert view.measure.label_of(ruler.uid) == expected
    assert expected in win.last_message
    shoot(qtbot, win, "ruler")

    win.tool_actions["angle"].trigger()
    drag(view, (250, 700), (450, 550))  # first arm, to the vertex
    assert len(stored(win)) == 1  # waits for the third point
    click(view, (650, 700))
    angle = stored(win)[-1]
    assert isinstance(angle, Angle) and angle.points[1] == pytest.approx((450, 550), abs=2)
    assert view.measure.label_of(angle.uid).endswith("°")
    shoot(qtbot, win, "angle")

    win.tool_actions["rect"].trigger()
    drag(view, (620, 200), (820, 380))
    rect = stored(win)[-1]
    assert type(rect) is RectRoi
    image = win.view.image
    mask = roi_mask(rect, image.shape)
    label = view.measure.label_of(rect.uid)
    assert f"Mean {image.values[mask].astype(np.float64).mean():.1f}" in label
    assert f"Area {mask.sum() * 0.168 * 0.168:.1f} mm²" in label
    shoot(qtbot, win, "rect_roi")

    win.tool_actions["ellipse"].trigger()
    drag(view, (150, 400), (330, 520))
    ellipse = stored(win)[-1]
    assert isinstance(ellipse, EllipseRoi)
    emask = roi_mask(ellipse, image.shape)
    assert f"({emask.sum()} px)" in view.measure.label_of(ellipse.uid)
    shoot(qtbot, win, "ellipse_roi")

    win.tool_actions["arrow"].trigger()
    drag(view, (850, 850), (700, 650))
    assert stored(win)[-1].kind == "arrow"
    shoot(qtbot, win, "arrow")

    win.tool_actions["text"].trigger()
    view.measure.ask_text = lambda: "Line tip?"
    click(view, (640, 900))
    text = stored(win)[-1]
    assert isinstance(text, Text) and text.text == "Line tip?"
    assert view.measure.label_of(text.uid) == "Line tip?"
    shoot(qtbot, win, "text")
    assert len(stored(win)) == 6 and len(view.measure.items) == 6
    # back to window/level: the left drag no longer draws
    win.act_mode_window.trigger()
    drag(view, (100, 100), (300, 300))
    assert len(stored(win)) == 6
    shoot(qtbot, win, "all_tools")


@pytest.mark.parametrize("source", [RG1, NIH], ids=["rg1_bogus_spacing", "nih_no_spacing"])
def test_ruler_without_a_valid_spacing_is_in_px_with_a_note(qtbot, window720, source):
    window = window720
    open_image(qtbot, window, source)
    window.tool_actions["ruler"].trigger()
    drag(window.view, (100, 100), (400, 500))
    (ruler,) = stored(window)
    label = window.view.measure.label_of(ruler.uid)
    assert label.endswith("px (no valid pixel spacing)") and "mm" not in label
    if source == RG1:
        shoot(qtbot, window, "ruler_rg1_px")


def test_select_move_delete_and_undo(qtbot, window, siim_copy):
    open_image(qtbot, window, siim_copy)
    view = window.view
    window.tool_actions["rect"].trigger()
    drag(view, (300, 300), (500, 450))
    (rect,) = stored(window)
    assert view.measure.selected_uid == rect.uid  # a new annotation is selected
    # drag the region by its inside: it moves (the tool does not draw a new one over it)
    drag(view, (400, 380), (480, 430))
    (moved,) = stored(window)
    assert moved.uid == rect.uid
    dx = moved.points[0][0] - rect.points[0][0]
    dy = moved.points[0][1] - rect.points[0][1]
    assert (dx, dy) == pytest.approx((80, 50), abs=3)
    # in window/level mode: a click beside it deselects, a click on it selects
    window.act_mode_window.trigger()
    click(view, (700, 700))
    assert view.measure.selected_uid is None
    click(view, (440, 420))
    assert view.measure.selected_uid == rect.uid
    # Delete removes the selected one
    QTest.keyClick(window, Qt.Key.Key_Delete)
    assert stored(window) == () and not view.measure.items
    # Ctrl+Z: back (delete undone), then the move undone, then the add undone
    QTest.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert stored(window) == (moved,) and set(view.measure.items) == {rect.uid}
    QTest.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert stored(window) == (rect,)
    item = view.measure.items[rect.uid]
    assert (item.roi.pos().x(), item.roi.pos().y()) == pytest.approx(rect.points[0])
    QTest.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert stored(window) == () and not view.measure.items
    QTest.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert "Nothing to undo" in window.last_message


def test_annotations_belong_to_their_image_in_the_session(qtbot, window, siim_copy):
    open_image(qtbot, window, siim_copy)
    window.tool_actions["ruler"].trigger()
    drag(window.view, (100, 100), (300, 100))
    (ruler,) = stored(window)
    open_image(qtbot, window, NIH)
    assert stored(window) == () and not window.view.measure.items
    open_image(qtbot, window, siim_copy)
    assert stored(window) == (ruler,) and set(window.view.measure.items) == {ruler.uid}


def test_gsps_saved_beside_the_study_and_read_back_in_a_new_session(qtbot, window, siim_copy, tmp_path):
    from cxr_viewer.gui.main_window import MainWindow
    from cxr_viewer.gui.settings import Settings
    from cxr_viewer.io.display import Window

    open_image(qtbot, window, siim_copy)
    view = window.view
    for kind, a, b in (("ruler", (100, 100), (400, 100)), ("ellipse", (500, 500), (700, 650)),
                       ("arrow", (800, 200), (650, 300))):
        window.tool_actions[kind].trigger()
        drag(view, a, b)
    window.tool_actions["text"].trigger()
    view.measure.ask_text = lambda: "Note"
    click(view, (200, 800))
    anns = stored(window)
    assert len(anns) == 4
    view.set_voi(Window(140.0, 180.0, "LINEAR", "Custom"))
    QTest.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    path = siim_copy.parent / "siim_gsps.dcm"
    assert path.is_file(), window.last_message
    assert "Saved 4 annotation(s)" in window.last_message
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == GSPS_SOP_CLASS
    assert ds.SoftcopyVOILUTSequence[0].WindowCenter == 140 and ds.SoftcopyVOILUTSequence[0].WindowWidth == 180
    assert read_gsps(path).annotations == anns

    # a new session: the GSPS beside the image is found, its annotations and window shown
    other = MainWindow(Settings(str(tmp_path / "s2.ini")), load_default_model=False)
    qtbot.addWidget(other)
    other.resize(1280, 720)
    other.show()
    try:
        open_image(qtbot, other, siim_copy)
        assert stored(other) == anns
        assert set(other.view.measure.items) == {a.uid for a in anns}
        assert "Loaded 4 annotation(s) and the window from siim_gsps.dcm" in other.last_message
        assert (other.view.voi.center, other.view.voi.width) == (140.0, 180.0)
        shoot(qtbot, other, "gsps_reloaded")
    finally:
        other.shutdown()


def test_gsps_needs_a_dicom_image(qtbot, window):
    open_image(qtbot, window, PNG_IMAGE)
    window.tool_actions["ruler"].trigger()
    drag(window.view, (50, 50), (250, 50))
    assert len(stored(window)) == 1
    window.save_annotations()
    assert "needs a DICOM source image" in window.last_message
    assert not list(PNG_IMAGE.parent.glob("*_gsps.dcm"))


def test_export_draws_the_session_annotations_into_sc_and_pdf(qtbot, window720, siim_copy, tmp_path):
    from PIL import Image
    from test_annotations import fake_result, yellow
    from test_export import render_pdf

    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.gui.export_dialog import export_task

    win = window720
    open_image(qtbot, win, siim_copy)
    view = win.view
    for kind, a, b in (("ruler", (150, 620), (850, 620)), ("ellipse", (600, 250), (820, 450)),
                       ("arrow", (300, 200), (420, 330))):
        win.tool_actions[kind].trigger()
        drag(view, a, b)
    image = view.image
    out = tmp_path / "export"
    paths = run_to_completion(export_task(image, fake_result(image), None, str(out), sr=False, sc=True, pdf=True,
                                          image_copy=False, deidentify=False, voi=view.voi,
                                          annotations=win._all_annotations()))
    sc = next(p for p in paths if p.endswith("_sc.dcm"))
    pdf = next(p for p in paths if p.endswith(".pdf"))
    pixels = pydicom.dcmread(sc).pixel_array
    assert yellow(pixels)[620, 200:700].mean() > 0.9
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(SCREENSHOTS / "measure_export_sc.png")
    page = render_pdf(pdf, scale=1.2)[0]
    Image.fromarray(page).save(SCREENSHOTS / "measure_export_pdf.png")
    assert yellow(page).sum() > 200  # the annotations on the page's picture


def test_send_results_to_orthanc_takes_the_annotations_as_a_gsps(qtbot, window, orthanc_restored, orthanc_samples,
                                                                 tmp_path, monkeypatch):
    """Send Results to PACS with annotations on the image: SR, Secondary Capture and the GSPS land in
    the study on a real Orthanc; the GSPS fetched back gives the same annotations."""
    import io

    from test_annotations import fake_result

    orthanc = orthanc_restored
    sample = REPO / "resources" / "samples" / "dicom" / "RG1_J2KR.dcm"
    open_image(qtbot, window, sample)
    window.tool_actions["ruler"].trigger()
    drag(window.view, (300, 300), (900, 300))
    window.tool_actions["rect"].trigger()
    drag(window.view, (400, 600), (800, 900))
    anns = stored(window)
    assert len(anns) == 2
    image = window.view.image
    monkeypatch.setattr(window, "_scored_image", lambda: (image, fake_result(image)))  # no model needed here
    monkeypatch.setattr(window.settings, "pacs_cache_dir", lambda: str(tmp_path / "cache"))
    before = set(orthanc.instances())
    with qtbot.waitSignal(window.exported, timeout=60000) as blocker:
        window.send_results(orthanc.dimse_node(), password="")
    result = blocker.args[0]
    assert len(result.sent) == 3 and not result.failed, result
    assert "annotations as GSPS" in window.last_message
    new = set(orthanc.instances()) - before
    by_class = {orthanc.rest(f"/instances/{oid}/simplified-tags")["SOPClassUID"]: oid for oid in new}
    assert set(by_class) == {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7", GSPS_SOP_CLASS}
    raw = orthanc.session.get(orthanc.url(f"/instances/{by_class[GSPS_SOP_CLASS]}/file"), timeout=30).content
    gsps = pydicom.dcmread(io.BytesIO(raw))
    assert gsps.StudyInstanceUID == orthanc_samples["cr"].study_uid
    assert read_gsps(gsps, image.ref.sop_instance_uid).annotations == anns


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_gsps_round_trip_through_orthanc_retrieved_and_reopened(qtbot, window, orthanc_restored, orthanc_samples,
                                                               tmp_path, kind):
    """Annotations saved as a GSPS, stored on a real Orthanc beside their study, come back in a new
    session through the viewer's own retrieve (C-GET / WADO-RS into the cache) and show on the image."""
    from cxr_viewer.clinical import pacs
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.gui.main_window import MainWindow
    from cxr_viewer.gui.settings import Settings

    orthanc = orthanc_restored
    sample = orthanc_samples["cr"]
    node, pw = (orthanc.dimse_node(), None) if kind == "dimse" else (orthanc.dicomweb_node(), orthanc.password)
    open_image(qtbot, window, sample.path)
    window.tool_actions["ruler"].trigger()
    drag(window.view, (300, 300), (900, 300))
    window.tool_actions["ellipse"].trigger()
    drag(window.view, (400, 600), (800, 900))
    anns = stored(window)
    assert len(anns) == 2
    gsps_path = window.save_annotations(str(tmp_path / "ann_gsps.dcm"))
    assert gsps_path
    sent = run_to_completion(pacs.send_task(node, [gsps_path], pw))
    assert sent.sent and not sent.failed, sent

    paths = run_to_completion(pacs.retrieve_task(node, sample.study_uid, str(tmp_path / "cache"), pw))
    classes = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}
    assert GSPS_SOP_CLASS in classes  # the presentation state came with the study
    other = MainWindow(Settings(str(tmp_path / "s2.ini")), load_default_model=False)
    qtbot.addWidget(other)
    other.show()
    try:
        with qtbot.waitSignal(other.image_shown, timeout=30000):
            other.open_paths([str(tmp_path / "cache")])
        assert other.view.image.ref.sop_instance_uid == sample.sop_instance_uid
        assert stored(other) == anns
        assert set(other.view.measure.items) == {a.uid for a in anns}
        assert "Loaded 2 annotation(s)" in other.last_message
    finally:
        other.shutdown()
