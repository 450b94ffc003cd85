"""The reading room's comparison: layouts, the active viewport, "Compare with prior" on two studies
of one patient made from real files, linked zoom/pan/window, display-only flips and rotations,
zoom presets, the loupe and the DICOM tag browser."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from PySide6.QtCore import QPointF, Qt

from cxr_viewer.io.display import Window


def _copy_as_study(src: Path, dest: Path, *, patient_id: str, date: str, view: str = "PA") -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientID = patient_id
    ds.PatientName = "COMPARE^TEST"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = date
    ds.ViewPosition = view
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


@pytest.fixture
def studies(shared_data: Path, tmp_path: Path) -> dict[str, Path]:
    """One patient: today's PA (a SIIM CR, 1024 x 1024), last year's (RG1, 1841 x 1955) and an older one."""
    siim = next((shared_data / "dicom" / "torchxrayvision_siim").glob("1.2.*.dcm"))
    rg1 = shared_data / "dicom" / "pydicom-data_RG1" / "RG1_UNCR.dcm"
    folder = tmp_path / "patient"
    return {
        "current": _copy_as_study(siim, folder / "2024" / "pa.dcm", patient_id="CMP1", date="20240301"),
        "prior": _copy_as_study(rg1, folder / "2023" / "pa.dcm", patient_id="CMP1", date="20230105"),
        "older": _copy_as_study(siim, folder / "2019" / "pa.dcm", patient_id="CMP1", date="20190101"),
    }


def _open_current(qtbot, win, studies) -> None:
    with qtbot.waitSignal(win.index_loaded, timeout=30000):
        win.open_paths([str(studies["current"].parent.parent)])
    qtbot.waitUntil(lambda: win.view.image is not None, timeout=30000)
    ref = next(r for r in win.browser.refs() if r.path == str(studies["current"]))
    if win.view.image.ref.path != ref.path:
        with qtbot.waitSignal(win.image_shown, timeout=30000):
            win.browser.select(ref)


def _compare(qtbot, win, studies) -> None:
    _open_current(qtbot, win, studies)
    with qtbot.waitSignal(win.viewport_shown, timeout=30000, check_params_cb=lambda i, _img: i == 1):
        assert win.compare_with_prior()
    qtbot.wait(50)


def _centre_fraction(view) -> tuple[float, float]:
    x0, y0, x1, y1 = view.view_rect()
    bx0, by0, bx1, by1 = view.display_bounds()
    return ((x0 + x1) / 2 - bx0) / (bx1 - bx0), ((y0 + y1) / 2 - by0) / (by1 - by0)


def _relative_height(view) -> float:
    """The height shown relative to the image's size (linked views keep it equal)."""
    _x0, y0, _x1, y1 = view.view_rect()
    _bx0, _by0, cols, rows = view.display_bounds()
    return (y1 - y0) / (rows * cols) ** 0.5


def test_layouts_and_the_active_viewport(qtbot, window):
    grid = window.grid
    assert grid.layout_name == "1x1" and window.view is grid.views[0]
    assert [v.isVisible() for v in grid.views] == [True, False, False, False]
    window.layout_actions["2x2"].trigger()
    qtbot.waitUntil(lambda: all(v.isVisible() for v in grid.views))
    assert window.layout_actions["2x2"].isChecked()
    qtbot.mouseClick(grid.views[3].graphics.viewport(), Qt.MouseButton.LeftButton)
    assert grid.active == 3 and window.view is grid.views[3]
    assert grid.views[3].framed is True and grid.views[0].framed is False  # the visible frame
    window.set_layout("1x2")
    assert grid.active == 0 and not grid.views[3].isVisible() and grid.views[0].framed is True
    window.set_layout("1x1")
    assert grid.views[0].framed is None  # one viewport: no frame


def test_compare_with_prior_hangs_current_left_and_the_latest_prior_right(qtbot, window, studies):
    _compare(qtbot, window, studies)
    left, right = window.grid.views[:2]
    assert window.grid.layout_name == "1x2" and right.isVisible()
    assert left.image.ref.path == str(studies["current"])
    assert right.image.ref.path == str(studies["prior"])  # 2023, not 2019
    assert "2024-03-01" in left.overlay.corner_text("top_right")
    assert "2023-01-05" in right.overlay.corner_text("top_right")  # each viewport has its own overlay
    assert window.view is left and window.current_ref.path == str(studies["current"])
    # clicking the prior makes it the active viewport: the panels and the studies list follow
    qtbot.mouseClick(right.graphics.viewport(), Qt.MouseButton.LeftButton)
    assert window.view is right and window.browser.current().path == str(studies["prior"])
    assert window.side.metadata.value_of("Study date") == "2023-01-05"  # dates as YYYY-MM-DD
    assert right.image.ref.path == str(studies["prior"])  # selecting it in the list did not reload it elsewhere


def test_compare_without_prior_says_why(qtbot, window, studies):
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(studies["older"])])
    assert not window.compare_with_prior()
    assert "no earlier study" in window.last_message and window.grid.layout_name == "1x1"


def test_linked_views_zoom_pan_and_window_together_and_not_when_unlinked(qtbot, window, studies):
    _compare(qtbot, window, studies)
    left, right = window.grid.views[:2]
    assert window.act_link.isChecked()
    assert left.image.shape != right.image.shape  # different sizes: linked relative to each image
    # zoom
    left.zoom_by(2.0)
    qtbot.waitUntil(lambda: _relative_height(right) == pytest.approx(_relative_height(left), rel=0.02))
    # pan: the same place of each image
    left.viewbox.translateBy(x=150, y=-80)
    qtbot.waitUntil(lambda: np.allclose(_centre_fraction(right), _centre_fraction(left), atol=0.01))
    # window/level: a drag in one is repeated in the other, in its own value range
    before = right.voi
    left._on_window_drag(40.0, 25.0)
    assert isinstance(right.voi, Window) and right.voi is not before
    assert right.voi.width > before.width and right.voi.center > before.center
    # the other way round too
    right.zoom_by(0.5)
    qtbot.waitUntil(lambda: _relative_height(left) == pytest.approx(_relative_height(right), rel=0.02))
    # unlinked: each on its own
    window.act_link.trigger()
    assert not window.grid.linked
    height, centre, voi = _relative_height(right), _centre_fraction(right), right.voi
    left.zoom_by(3.0)
    left.viewbox.translateBy(x=-100, y=50)
    left._on_window_drag(-60.0, 10.0)
    qtbot.wait(50)
    assert _relative_height(right) == pytest.approx(height, rel=1e-6)
    assert _centre_fraction(right) == pytest.approx(centre, abs=1e-6)
    assert right.voi is voi
    # linked again: the others come to the active viewport
    window.set_linked(True)
    qtbot.waitUntil(lambda: _relative_height(right) == pytest.approx(_relative_height(left), rel=0.02))


def test_flips_and_rotations_change_the_display_only(qtbot, window, shared_data):
    rg1 = shared_data / "dicom" / "pydicom-data_RG1" / "RG1_UNCR.dcm"  # 1841 x 1955, PatientOrientation L\F
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(rg1)])
    view = window.view
    image = view.image
    stored, values, rendered = image.stored.copy(), image.values.copy(), view.rendered().copy()
    rows, cols = image.shape
    overlay = view.overlay
    assert [overlay.marker_text(n) for n in ("left", "right", "top", "bottom")] == ["R", "L", "H", "F"]
    window.act_flip_h.trigger()
    assert [overlay.marker_text(n) for n in ("left", "right")] == ["L", "R"]
    assert "Flip H" in overlay.corner_text("bottom_left")
    # image pixel (5, 5) is now near the right edge of the picture on screen
    shown = view.viewbox.mapSceneToView(view.item.mapToScene(QPointF(5.5, 5.5)))
    assert (shown.x(), shown.y()) == pytest.approx((cols - 5.5, 5.5))
    window.act_flip_h.trigger()
    window.act_rotate_right.trigger()  # the head goes to the right
    assert view.display_bounds() == (0.0, 0.0, float(rows), float(cols))  # rows and columns swap on screen
    assert [overlay.marker_text(n) for n in ("left", "right", "top", "bottom")] == ["F", "H", "R", "L"]
    shown = view.viewbox.mapSceneToView(view.item.mapToScene(QPointF(5.5, 5.5)))
    assert (shown.x(), shown.y()) == pytest.approx((rows - 5.5, 5.5))
    # the pixel readout still reports the stored pixel under the mouse
    hovered = []
    view.pixel_hovered.connect(lambda r, c: hovered.append((r, c)))
    view._on_mouse_moved(view.item.mapToScene(QPointF(100.5, 40.5)))
    assert hovered[-1] == (40, 100)
    window.act_flip_v.trigger()
    window.act_rotate_left.trigger()
    # the stored pixels, the values and the rendered picture never changed
    assert np.array_equal(image.stored, stored) and np.array_equal(image.values, values)
    assert np.array_equal(view.rendered(), rendered) and view.image is image
    window.act_reset_orientation.trigger()
    assert view.orientation.is_identity and "Flip" not in overlay.corner_text("bottom_left")
    window.act_rotate_left.trigger()
    window.act_reset.trigger()  # Reset View also puts the picture back
    assert view.orientation.is_identity


def test_zoom_presets_and_the_loupe(qtbot, window, studies):
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(studies["current"])])
    view = window.view
    window.act_1to1.trigger()
    qtbot.waitUntil(lambda: view.zoom() == pytest.approx(1.0, rel=0.02))
    window.act_2to1.trigger()
    qtbot.waitUntil(lambda: view.zoom() == pytest.approx(2.0, rel=0.02))
    window.act_fit.trigger()
    qtbot.waitUntil(lambda: view.zoom() < 1.0)
    window.act_loupe.trigger()
    assert view.loupe_on
    centre = view.item.mapToScene(QPointF(512, 512))
    view._on_mouse_moved(centre)
    assert view.loupe.isVisible() and view.loupe.pixmap() is not None and not view.loupe.pixmap().isNull()
    window.act_loupe.trigger()
    assert not view.loupe.isVisible()


def test_window_preset_box_says_custom_after_a_drag(qtbot, window, studies):
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(studies["current"])])
    box = window.side.controls.preset
    assert box.currentIndex() >= 0
    window.view._on_window_drag(30.0, 10.0)
    assert box.currentIndex() == -1 and box.placeholderText() == "Custom"


def test_tag_browser_finds_tags_by_keyword_number_and_value(qtbot, window, studies):
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(studies["current"])])
    window.act_tags.trigger()
    browser = window.tag_browser
    qtbot.waitUntil(browser.isVisible)
    everything = browser.shown_rows()
    assert ("(0010,0020)", "PatientID", "CMP1") in everything
    assert any(tag == "(7FE0,0010)" and "not shown" in value for tag, _name, value in everything)
    browser.search.setText("StudyDate")
    assert [r[0] for r in browser.shown_rows()] == ["(0008,0020)"]
    browser.search.setText("00100020")
    assert [r[1] for r in browser.shown_rows()] == ["PatientID"]
    browser.search.setText("COMPARE^TEST")  # by value
    assert [r[1] for r in browser.shown_rows()] == ["PatientName"]
    assert "1 of" in browser.info.text()
    browser.close()


# --- polish: natural order, dates, truncated JPEGs, worklist, open adds or replaces -------------------
def test_a_truncated_jpeg_is_listed_under_could_not_open(qtbot, window, shared_data, tmp_path):
    good = min((shared_data / "kermany" / "train" / "NORMAL").glob("*.jpeg"))
    folder = tmp_path / "jpegs"
    folder.mkdir()
    data = good.read_bytes()
    (folder / "a_good.jpeg").write_bytes(data)
    (folder / "b_cut.jpeg").write_bytes(data[: len(data) // 2])  # the header indexes, the pixels do not decode
    with qtbot.waitSignal(window.index_loaded, timeout=30000):
        window.open_paths([str(folder)])
    assert window.browser.errors.count() == 0  # the header alone reads
    qtbot.waitUntil(lambda: window.browser.errors.count() == 1, timeout=20000)  # once its thumbnail failed
    assert "b_cut.jpeg" in window.browser.errors.item(0).text() and "truncated" in window.browser.errors.item(0).text()
    assert window.browser.errors_label.text() == "Could not open (1)"
    assert [e.path for e in window.study_index.errors] == [str(folder / "b_cut.jpeg")]
    item = window.browser._items[str(folder / "b_cut.jpeg")]
    assert "cannot be decoded" in item.text(0)


def test_worklist_names_sort_naturally_and_progress_resets_after_cancel(qtbot, window):
    from cxr_viewer.ai.inference import WorklistRow

    worklist = window.worklist
    worklist.begin(4)
    for name in ("person998_a.jpeg", "person99_b.jpeg", "person1000_c.jpeg"):
        worklist.add_row(WorklistRow(f"/d/{name}", {}))
    assert "Scoring 3 of 4" in worklist.info.text() and "left" in worklist.info.text()  # with an ETA
    assert worklist.progress.value() == 3
    window.worklist_runner.cancelled.emit()
    assert worklist.progress.value() == 0 and "Cancelled" in worklist.info.text()
    worklist.table.sortItems(0)
    assert [os.path.basename(p) for p in worklist.paths_in_order()] == [
        "person99_b.jpeg", "person998_a.jpeg", "person1000_c.jpeg"]


def test_open_replaces_the_list_and_the_worklist_or_adds_to_them(qtbot, window, studies):
    from cxr_viewer.ai.inference import WorklistRow

    with qtbot.waitSignal(window.index_loaded, timeout=30000):
        window.open_paths([str(studies["current"])])
    window.worklist.begin(1)
    window.worklist.add_row(WorklistRow(str(studies["current"]), {}))
    window.worklist.finish("done")
    assert not window.act_add_mode.isChecked()  # the default: Open replaces
    with qtbot.waitSignal(window.index_loaded, timeout=30000):
        window.open_paths([str(studies["prior"])])
    assert [r.path for r in window.browser.refs()] == [str(studies["prior"])]
    assert window.worklist.table.rowCount() == 0 and "removed" in window.worklist.info.text()
    window.act_add_mode.trigger()  # File > Open Adds to the List (a setting, remembered)
    assert window.settings.add_to_list()
    window.worklist.begin(1)
    window.worklist.add_row(WorklistRow(str(studies["prior"]), {}))
    window.worklist.finish("done")
    with qtbot.waitSignal(window.image_shown, timeout=30000) as shown:
        window.open_paths([str(studies["older"]), str(studies["prior"])])
    assert sorted(r.path for r in window.browser.refs()) == sorted([str(studies["prior"]), str(studies["older"])])
    assert window.worklist.table.rowCount() == 1  # kept
    assert shown.args[0].ref.path in (str(studies["older"]), str(studies["prior"]))


def test_clicking_back_into_a_viewport_shows_its_score_again_without_rescoring(qtbot, window, studies, tmp_path):
    """Each viewport keeps the score of what it shows (with the model that made it): clicking between
    the current and the prior does not score them again; another model does."""
    from model_fixtures import make_test_model

    model = make_test_model(tmp_path / "m.safetensors")
    with qtbot.waitSignal(window.model_changed, timeout=60000):
        window.load_model(str(model))
    with qtbot.waitSignal(window.scored, timeout=60000):
        _compare(qtbot, window, studies)
    left, right = window.grid.views[:2]
    submitted = []
    real_submit = window.score_runner.submit
    window.score_runner.submit = lambda *a, **k: (submitted.append(a[1:3]), real_submit(*a, **k))
    with qtbot.waitSignal(window.scored, timeout=60000) as prior:
        qtbot.mouseClick(right.graphics.viewport(), Qt.MouseButton.LeftButton)
    assert prior.args[0].path == str(studies["prior"]) and len(submitted) == 1  # never scored before: scored
    with qtbot.waitSignal(window.scored, timeout=5000) as again:
        qtbot.mouseClick(left.graphics.viewport(), Qt.MouseButton.LeftButton)
    assert again.args[0].path == str(studies["current"]) and len(submitted) == 1  # shown again, not re-scored
    assert window.last_score is again.args[0] and window.findings.boxes["pneumonia"].score.text()
    with qtbot.waitSignal(window.scored, timeout=5000):
        qtbot.mouseClick(right.graphics.viewport(), Qt.MouseButton.LeftButton)
    assert len(submitted) == 1
    with qtbot.waitSignal(window.model_changed, timeout=60000):
        window.load_model(str(model))  # another load: another scorer, so its own scores
    qtbot.waitUntil(lambda: len(submitted) >= 2, timeout=30000)
    with qtbot.waitSignal(window.scored, timeout=60000):
        qtbot.mouseClick(left.graphics.viewport(), Qt.MouseButton.LeftButton)
    assert len(submitted) == 3
