"""The reading room: a window that fits 1280x720, text fixed to the viewport's corners, orientation
markers from PatientOrientation only, a scale bar from a valid pixel spacing, and the polish around
them (status-bar readout, panels menu, About, worklist percentages)."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from PySide6.QtCore import QPoint, QRect

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.inference import WorklistRow, probability_text
from cxr_viewer.gui.viewport_overlay import EMPTY_HINT
from cxr_viewer.io.display import Window
from cxr_viewer.io.study import ImageMeta, Spacing
from cxr_viewer.io.viewport import age_text, corner_texts, nice_length_mm, orientation_markers, person_name, scale_bar


def open_and_wait(qtbot, win, paths, timeout=30000):
    with qtbot.waitSignal(win.image_shown, timeout=timeout) as blocker:
        win.open_paths([str(p) for p in paths])
    return blocker.args[0]


@pytest.fixture
def nih(shared_data: Path) -> Path:
    return next((shared_data / "dicom" / "nhsx_nih").glob("*.dcm"))


@pytest.fixture
def rg1(shared_data: Path) -> Path:
    return shared_data / "dicom" / "pydicom-data_RG1" / "RG1_UNCR.dcm"


@pytest.fixture
def siim(shared_data: Path) -> Path:
    """NIH CXR14 image re-wrapped by SIIM as CR with PixelSpacing 0.168 mm (the NIH DX file has none)."""
    return next((shared_data / "dicom" / "torchxrayvision_siim").glob("1.2.*.dcm"))


# --- the Qt-free part: cxr_viewer.io.viewport ------------------------------------------------
def test_orientation_markers_from_patient_orientation_only():
    m = orientation_markers("L\\F")  # rows toward the patient's left, columns toward the feet
    assert (m.left, m.right, m.top, m.bottom) == ("R", "L", "H", "F")
    m = orientation_markers("P\\FL")  # oblique column direction: each letter reversed
    assert (m.left, m.right, m.top, m.bottom) == ("A", "P", "HR", "FL")
    for bad in ("", "L", "L\\F\\A", "X\\F", "L\\"):
        assert orientation_markers(bad) is None, bad


def test_scale_bar_round_lengths_and_labels():
    assert [nice_length_mm(v) for v in (0.7, 1, 3.9, 12, 49.9, 50, 260)] == [0.5, 1, 2, 10, 20, 50, 200]
    patient = Spacing(0.168, 0.168, "mm", "PixelSpacing")
    bar = scale_bar(patient, 0.5, 150)  # 0.336 mm per screen pixel: at most 50.4 mm
    assert bar.length_mm == 50 and bar.text == "5 cm"
    assert bar.screen_px == pytest.approx(50 / 0.168 * 0.5)
    detector = Spacing(0.2, 0.2, "mm (detector)", "ImagerPixelSpacing")
    assert scale_bar(detector, 1.0, 150).text == "2 cm at the detector"
    assert scale_bar(None, 1.0, 150) is None
    assert scale_bar(Spacing(0.0, 0.0, "mm", "PixelSpacing"), 1.0, 150) is None


def test_corner_texts_leave_out_what_is_missing():
    meta = ImageMeta(patient_name="DOE^JANE", patient_id="P1", sex="F", age="062Y", study_date="20040826",
                     modality="CR", view_position="PA", rows=10, cols=20)
    t = corner_texts(meta, voi=Window(40, 400), zoom=0.5, frame=1, frames=3)
    assert t.top_left == ("DOE, JANE", "ID P1", "Sex F, age 62 y")
    assert t.top_right == ("2004-08-26", "CR PA")  # no description, no institution: no empty lines
    assert t.bottom_left == ("W 400  L 40", "Zoom 50%", "Frame 2/3", "20 x 10 px")
    assert t.bottom_right == (RESEARCH_NOTICE,)
    bare = corner_texts(ImageMeta())
    assert bare.top_left == () and bare.top_right == ()
    assert age_text("081") == "81 y" and age_text("003M") == "3 mo" and age_text("about 60") == "about 60"
    assert person_name("SMITH") == "SMITH" and person_name("^John") == "John"


def test_probability_text_never_prints_100_percent():
    assert probability_text(0.99999) == ">99.9%" and probability_text(0.9994) == "99.9%"
    assert probability_text(0.0001) == "<0.1%" and probability_text(0.25) == "25.0%"


# --- the window ---------------------------------------------------------------------------
def _inside(outer: QRect, inner: QRect) -> bool:
    return outer.contains(inner.topLeft()) and outer.contains(inner.bottomRight())


def test_window_fits_1280x720_with_findings_unscrolled(qtbot, window):
    window.fit_to_screen(QRect(0, 0, 1280, 720))
    qtbot.waitUntil(lambda: window.width() <= 1280 and window.height() <= 720)
    qtbot.wait(50)  # the docks' shares are applied once the resize is laid out
    window._size_docks()
    qtbot.wait(50)
    assert window.minimumSizeHint().width() <= 1280 and window.minimumSizeHint().height() <= 720
    inside = window.rect()
    for w in (window.studies_dock, window.image_dock, window.findings_dock, window.statusBar(), window.view):
        assert w.isVisible() and _inside(inside, w.geometry()), (w.objectName(), w.geometry(), inside)
    assert window.view.width() > 0.45 * window.width()  # the image takes the most room
    # both findings sections and the heatmap opacity without scrolling
    viewport = window.findings_scroll.viewport()
    for w in (*window.findings.boxes.values(), window.findings.opacity):
        top_left = w.mapTo(viewport, QPoint(0, 0))
        assert _inside(viewport.rect(), QRect(top_left, w.size())), (w, top_left, w.size(), viewport.size())


def test_status_message_leaves_the_pixel_readout(qtbot, window, siim):
    open_and_wait(qtbot, window, [siim])
    assert window.statusBar().currentMessage() == ""  # the file name is a label, not showMessage
    assert os.path.basename(str(siim)) in window.message_label.text()
    window._on_pixel_hovered(10, 20)
    assert window.position_label.isVisible() and "x 20, y 10 px" in window.position_label.text()
    assert window.value_label.isVisible() and "stored" in window.value_label.text()


def test_overlay_shows_patient_study_and_display_of_nih_dx(qtbot, window, nih):
    overlay = window.view.overlay
    assert overlay.hint.isVisible() and overlay.hint.text() == EMPTY_HINT
    open_and_wait(qtbot, window, [nih])
    assert not overlay.hint.isVisible()
    top_left, top_right = overlay.corner_text("top_left"), overlay.corner_text("top_right")
    assert "Sex M" in top_left and "age 81 y" in top_left and "ID Covid0000" in top_left
    assert "DX" in top_right.splitlines()
    bottom_left = overlay.corner_text("bottom_left")
    assert "1024 x 1024 px" in bottom_left and "Frame 1/1" in bottom_left and "Zoom " in bottom_left
    assert overlay.corner_text("bottom_right") == RESEARCH_NOTICE
    assert overlay.scale_bar_shown() is None  # the NIH DX has no pixel spacing
    assert overlay.marker_text("left") == ""  # nor a PatientOrientation
    # window/level and zoom update the text
    window.view.set_voi(Window(100, 50))
    assert "W 50  L 100" in overlay.corner_text("bottom_left")
    before = window.view.zoom()
    window.view.zoom_by(2.0)
    qtbot.waitUntil(lambda: f"Zoom {window.view.zoom() * 100:.0f}%" in overlay.corner_text("bottom_left"))
    assert window.view.zoom() > 1.5 * before
    # toggled with O / View > Image Overlay Text; the research notice stays
    window.act_overlay.trigger()
    assert not window.act_overlay.isChecked()
    assert overlay.corner_text("top_left") == "" and overlay.corner_text("bottom_left") == ""
    assert overlay.corner_text("bottom_right") == RESEARCH_NOTICE
    assert window.act_overlay.shortcut().toString() == "O"
    window.act_overlay.trigger()
    assert "Sex M" in overlay.corner_text("top_left")


def test_rg1_has_orientation_markers_and_no_scale_bar(qtbot, window, rg1):
    open_and_wait(qtbot, window, [rg1])
    overlay = window.view.overlay
    assert [overlay.marker_text(n) for n in ("left", "right", "top", "bottom")] == ["R", "L", "H", "F"]
    assert overlay.scale_bar_shown() is None  # PixelSpacing [0, 0]: no length at all
    assert "Philips Medical Systems" in overlay.corner_text("top_right")
    assert "2004-08-26" in overlay.corner_text("top_right")


def test_scale_bar_gives_the_mm_of_the_pixel_spacing(qtbot, window, siim):
    open_and_wait(qtbot, window, [siim])
    view, overlay = window.view, window.view.overlay
    assert overlay.marker_text("top") == ""  # no PatientOrientation: no markers
    bar = overlay.scale_bar_shown()
    assert bar is not None and bar.length_mm in (10, 20, 50, 100)
    image_px = bar.screen_px / view.screen_px_per_image_px()
    assert image_px * 0.168 == pytest.approx(bar.length_mm, rel=1e-3)  # PixelSpacing 0.168 mm
    assert "detector" not in bar.text
    view.zoom_by(4.0)
    qtbot.waitUntil(lambda: overlay.scale_bar_shown() is not None and overlay.scale_bar_shown().length_mm < bar.length_mm)
    zoomed = overlay.scale_bar_shown()
    assert zoomed.screen_px / view.screen_px_per_image_px() * 0.168 == pytest.approx(zoomed.length_mm, rel=1e-3)


def test_imager_pixel_spacing_bar_is_at_the_detector(qtbot, window, siim, tmp_path):
    ds = pydicom.dcmread(siim)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.2]
    path = tmp_path / "detector.dcm"
    ds.save_as(path)
    open_and_wait(qtbot, window, [path])
    bar = window.view.overlay.scale_bar_shown()
    assert bar is not None and bar.text.endswith("at the detector")
    assert bar.screen_px / window.view.screen_px_per_image_px() * 0.2 == pytest.approx(bar.length_mm, rel=1e-3)
    assert window.view.overlay.scale_label.text() == bar.text


def test_orientation_markers_only_with_patient_orientation(qtbot, window, rg1, tmp_path):
    ds = pydicom.dcmread(rg1)
    del ds.PatientOrientation
    path = tmp_path / "no_orientation.dcm"
    ds.save_as(path)
    open_and_wait(qtbot, window, [path])
    assert ds.ViewPosition == "PA"  # a PA view, yet no marker is guessed from it
    assert all(window.view.overlay.marker_text(n) == "" for n in ("left", "right", "top", "bottom"))


def test_view_menu_restores_closed_panels_and_about_says_intended_use(qtbot, window):
    window.findings_dock.close()
    assert not window.findings_dock.isVisible()
    window.panel_actions["findings_dock"].trigger()
    assert window.findings_dock.isVisible()
    text = window.about_text()
    assert "Intended use" in text and RESEARCH_NOTICE in text


def test_worklist_shows_ties_at_the_top_and_the_threshold(qtbot, window):
    wl = window.worklist
    wl.begin(2)
    wl.add_row(WorklistRow("/a/one.dcm", {"pneumonia": 0.99999, "lung_cancer_association": None},
                           statuses={"pneumonia": "scored", "lung_cancer_association": "not_available"},
                           positives={"pneumonia": True}))
    wl.add_row(WorklistRow("/a/two.dcm", {"pneumonia": 0.2, "lung_cancer_association": None},
                           statuses={"pneumonia": "scored", "lung_cancer_association": "not_available"},
                           positives={"pneumonia": False}))
    wl.finish("done")
    top, low = wl.table.item(0, 1), wl.table.item(1, 1)
    assert ">99.9%" in top.text() and "\u25b2" in top.text() and "above the threshold" in top.toolTip()
    assert low.text() == "20.0%" and "below the threshold" in low.toolTip()
    assert wl.table.columnWidth(0) >= 150



def test_worklist_keeps_the_score_in_view_at_1280x720(qtbot, window):
    """On a 1280x720 screen the worklist tab gets most of the left column's height, and the image
    column narrows (names elided in the middle) so the pneumonia score stays in view."""
    window.fit_to_screen(QRect(0, 0, 1280, 720))
    qtbot.wait(100)
    wl = window.worklist
    window.worklist_dock.raise_()
    qtbot.waitUntil(wl.isVisible)
    wl.begin(4)
    for i in range(4):
        wl.add_row(WorklistRow(f"/a/person{1000 + i}_bacteria_{2931 + i}.jpeg",
                               {"pneumonia": 0.2 * i, "lung_cancer_association": None},
                               statuses={"pneumonia": "scored", "lung_cancer_association": "not_available"},
                               positives={"pneumonia": i > 1}))
    wl.finish("done")
    header, viewport = wl.table.horizontalHeader(), wl.table.viewport()
    qtbot.waitUntil(lambda: header.sectionViewportPosition(1) + header.sectionSize(1) <= viewport.width())
    assert wl.table.columnWidth(0) >= 100
    qtbot.waitUntil(lambda: viewport.height() >= 3 * wl.table.rowHeight(0))  # more than one row in view
