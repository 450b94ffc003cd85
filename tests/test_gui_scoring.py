"""pytest-qt: scores from the worker, heatmaps, worklist with cancel, no-model and untrained-head states."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from model_fixtures import REPO, make_test_model  # noqa: E402
from PySide6.QtCore import QTimer  # noqa: E402

from cxr_viewer import RESEARCH_NOTICE  # noqa: E402

SAMPLES = REPO / "resources" / "samples"
SCREENSHOTS = REPO / "out" / "screenshots"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("gui_model") / "m.safetensors")


def load(qtbot, win, path):
    with qtbot.waitSignal(win.model_changed, timeout=60000):
        win.load_model(str(path))


def test_no_model_says_so_and_viewer_works(qtbot, window):
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(SAMPLES / "children_kermany" / "NORMAL")])
    text = window.findings.model_label.text()
    assert "No model loaded" in text and "Train" in text
    for box in window.findings.boxes.values():
        assert "not available" in box.score.text()
        assert "%" not in box.score.text()
    assert window.last_score is None


def test_scores_arrive_from_the_worker_with_heatmap(qtbot, window, model_path):
    load(qtbot, window, model_path)
    assert window.model_summary.trained_heads == ("pneumonia",)
    assert "CPU" in window.device_label.text()
    child = SAMPLES / "children_kermany" / "PNEUMONIA" / "person21_bacteria_73_fullres.jpeg"
    with qtbot.waitSignal(window.scored, timeout=60000) as b:
        window.open_paths([str(child)])
    result = b.args[0]
    assert result.path.endswith(child.name)
    pneu = window.findings.boxes["pneumonia"]
    assert "%" in pneu.score.text() and "threshold" in pneu.detail.text()
    assert "sensitivity 0.90" in pneu.detail.text()
    lung = window.findings.boxes["lung_cancer_association"]
    assert lung.score.text().count("not available: this model has no trained lung-cancer association head") == 1
    assert not lung.heatmap.isEnabled()
    assert RESEARCH_NOTICE in window.findings.notice.text()
    assert "not a prediction that pneumonia turns into cancer" in lung.meaning.text()
    # heatmap toggle, which says what a heatmap is and is not
    assert "Grad-CAM" in pneu.heatmap.toolTip() and "not an outline of disease" in pneu.heatmap.toolTip()
    assert not window.view.heatmap_visible()
    pneu.heatmap.setChecked(True)
    assert window.view.heatmap_visible()
    rect = window.view.heat_item.mapRectToParent(window.view.heat_item.boundingRect())
    assert (rect.width(), rect.height()) == (1882, 1608)  # stretched over the whole image
    window.findings.opacity.setValue(40)
    assert window.view.heat_item.opacity() == pytest.approx(0.4)
    qtbot.wait(200)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SCREENSHOTS / "scoring_heatmap_overlay.png"))
    pneu.heatmap.setChecked(False)
    assert not window.view.heatmap_visible()


def test_bad_model_file_keeps_previous_model(qtbot, window, model_path, tmp_path):
    load(qtbot, window, model_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    with qtbot.waitSignal(window.model_runner.failed, timeout=30000) as b:
        window.load_model(str(bad))
    assert "pickled" in b.args[0]
    assert window.models.summary().path == str(model_path)
    assert "kept this model" in window.findings.model_label.text()


def test_gui_stays_responsive_while_scoring_a_folder_and_cancel_works(qtbot, window, model_path):
    load(qtbot, window, model_path)
    with qtbot.waitSignal(window.scored, timeout=60000):
        window.open_paths([str(SAMPLES)])
    # heartbeat: a 10 ms timer on the GUI thread keeps ticking while the worker scores the folder.
    # What is asserted is behaviour (ticks arrive before the worklist has its rows and before it
    # finishes), never a duration: the longest stall is a figure for bench/gui_responsiveness.py.
    ticks_while_scoring = []

    def beat():
        if window.worklist_runner.busy and window.worklist.table.rowCount() < 7:
            ticks_while_scoring.append(window.worklist.table.rowCount())

    timer = QTimer()
    timer.timeout.connect(beat)
    timer.start(10)
    with qtbot.waitSignal(window.worklist_runner.finished, timeout=120000):
        window.score_all()
        assert window.worklist_runner.busy  # submitted to the worker: score_all returned at once
    timer.stop()
    assert window.worklist.table.rowCount() == 7
    probs = [window.worklist.table.item(r, 1).value for r in range(7)]
    assert probs == sorted(probs, reverse=True)
    # had scoring run on the GUI thread, no tick could fire before all 7 rows were there
    assert len(ticks_while_scoring) >= 3, ticks_while_scoring
    # clicking a row opens that image
    path = window.worklist.paths_in_order()[3]
    with qtbot.waitSignal(window.image_shown, timeout=30000) as b:
        window.worklist.table.cellClicked.emit(3, 0)
    assert b.args[0].ref.path == path
    # cancel a run
    window.score_all()
    window.worklist.cancel.click()
    qtbot.waitUntil(lambda: window.worklist.start.isEnabled(), timeout=30000)
    assert "Cancelled" in window.worklist.info.text()
    assert window.worklist.table.rowCount() < 7 or not window.worklist_runner.busy


def test_outside_intended_use_is_not_scored_until_asked_and_then_marked(qtbot, window, model_path):
    """An adult's radiograph: the pneumonia head says why it does not score, no number, no heatmap;
    "Score anyway" gives the number marked as outside the intended use; the worklist says so too."""
    load(qtbot, window, model_path)
    with qtbot.waitSignal(window.scored, timeout=60000) as b:
        window.open_paths([str(SAMPLES / "dicom" / "NIH_DX_no_finding.dcm")])
    pneu = window.findings.boxes["pneumonia"]
    assert b.args[0].head("pneumonia").status == "outside_intended_use"
    assert "Not scored" in pneu.score.text() and "Adult radiograph (age 81 in the header)" in pneu.detail.text()
    assert "%" not in pneu.score.text() and not pneu.heatmap.isEnabled()
    assert "Intended use: children aged 1-5" in pneu.use.text()
    assert window.findings.score_anyway.isVisibleTo(window.findings)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    qtbot.screenshot(window).rename(SCREENSHOTS / "outside_intended_use_not_scored.png")
    with qtbot.waitSignal(window.scored, timeout=60000) as b:
        window.findings.score_anyway.click()
    assert b.args[0].head("pneumonia").status == "scored_outside_intended_use"
    assert "%" in pneu.score.text() and "outside intended use" in pneu.score.text() and "Scored anyway" in pneu.detail.text()
    assert pneu.heatmap.isEnabled() and not window.findings.score_anyway.isVisibleTo(window.findings)
    qtbot.screenshot(window).rename(SCREENSHOTS / "outside_intended_use_scored_anyway.png")
    # the worklist: the adults "not scored" with the reason, the children scored
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(SAMPLES)])
    with qtbot.waitSignal(window.worklist_runner.finished, timeout=120000):
        window.score_all()
    table = window.worklist.table
    texts = {table.item(r, 0).text(): (table.item(r, 1).text(), table.item(r, 3).text()) for r in range(table.rowCount())}
    assert texts["NIH_DX_no_finding.dcm"][0] == "not scored" and "adult radiograph" in texts["NIH_DX_no_finding.dcm"][1]
    assert texts["IM-0115-0001.jpeg"][0].endswith("%")
    assert window.worklist.info.text() == ("5 image(s) scored, 2 set aside as outside intended use; "
                                           "sorted by pneumonia score.")
    qtbot.screenshot(window).rename(SCREENSHOTS / "worklist_with_intended_use.png")


def test_a_failed_open_leaves_nothing_of_the_previous_image(qtbot, window, model_path, tmp_path):
    load(qtbot, window, model_path)
    with qtbot.waitSignal(window.scored, timeout=60000):
        window.open_paths([str(SAMPLES / "children_kermany" / "NORMAL" / "IM-0115-0001.jpeg")])
    assert "%" in window.findings.boxes["pneumonia"].score.text()
    window.findings.boxes["pneumonia"].heatmap.setChecked(True)
    assert window.view.heatmap_visible()
    from cxr_viewer.io.index import read_any

    bad = tmp_path / "later_cut.jpeg"  # indexed while whole, cut short before it is opened
    whole = (SAMPLES / "children_kermany" / "NORMAL" / "IM-0117-0001.jpeg").read_bytes()
    bad.write_bytes(whole)
    ref = read_any(str(bad))[0]
    bad.write_bytes(whole[: len(whole) // 4])
    window.position_label.setText("x 1, y 1 px")
    with qtbot.waitSignal(window.image_runner.failed, timeout=30000):
        window.show_ref(ref)
    assert window.view.image is None and not window.view.heatmap_visible()
    assert window.last_score is None and window.position_label.text() == ""
    for box in window.findings.boxes.values():
        assert "%" not in box.score.text() and not box.heatmap.isEnabled()


def test_another_model_clears_the_old_worklist_and_a_failed_load_rescores(qtbot, window, model_path, tmp_path):
    load(qtbot, window, model_path)
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(SAMPLES / "children_kermany" / "NORMAL")])
    with qtbot.waitSignal(window.worklist_runner.finished, timeout=120000):
        window.score_all()
    assert window.worklist.table.rowCount() == 2
    other = make_test_model(tmp_path / "other.safetensors", seed=1)
    load(qtbot, window, other)
    assert window.worklist.table.rowCount() == 0  # no row of the previous model's scores stays unmarked
    assert "Model changed" in window.worklist.info.text()
    # a load that fails keeps the model and scores the shown image again (no stale heatmap or status)
    qtbot.waitUntil(lambda: window.last_score is not None, timeout=60000)
    window.findings.boxes["pneumonia"].heatmap.setChecked(True)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage")
    with qtbot.waitSignal(window.scored, timeout=60000):
        window.load_model(str(bad))
    assert "Loading model" not in window.findings.status.text()
    assert window.last_score is not None and window.last_score.model_sha256 == window.model_summary.sha256


# --- the nodule/mass model's finding box ------------------------------------------------------------


@pytest.fixture(scope="module")
def nodule_path(tmp_path_factory) -> Path:
    """A nodule/mass model with RANDOM weights and threshold 0.05 (NOT trained): every image is
    positive, so the box is always drawn."""
    from model_fixtures import make_test_nodule_model

    return make_test_nodule_model(tmp_path_factory.mktemp("nodule") / "nodule.safetensors")


def test_the_nodule_box_is_drawn_toggled_and_goes_with_the_image(qtbot, window, model_path, nodule_path,
                                                                 monkeypatch, shared_data):
    from dataclasses import replace

    from cxr_viewer.clinical.finding_marks import finding_marks

    monkeypatch.setenv("CXR_VIEWER_NODULE", str(nodule_path))
    load(qtbot, window, model_path)
    window.resize(1280, 720)
    with qtbot.waitSignal(window.scored, timeout=120000) as b:
        window.open_paths([str(shared_data / "jsrt" / "images" / "JPCLN001.png")])
    result = b.args[0]
    lung = result.head("lung_cancer_association")
    assert lung.positive and lung.location is not None and result.companion[0].startswith("TEST FIXTURE")
    x0, y0, x1, y1 = lung.location
    view = window.view
    # one box, in image pixel coordinates (the scene items' rect), with its label
    (rect,) = view.finding_mark_rects()
    assert rect == pytest.approx((x0, y0, x1 - x0, y1 - y0), abs=1e-3)
    assert view.finding_marks_shown()
    label = next(i for i in view.mark_items if hasattr(i, "textItem"))
    assert label.textItem.toPlainText() == finding_marks(result)[0].label
    assert label.textItem.toPlainText().startswith("Nodule/mass ")
    assert "marked on the image" in window.findings.boxes["lung_cancer_association"].score.text()
    assert "marked on the image" not in window.findings.boxes["pneumonia"].score.text()
    qtbot.wait(200)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SCREENSHOTS / "nodule_box_1280x720.png"))
    # it follows zoom and pan: the same image rect, another place on screen
    outline = next(i for i in view.mark_items if i.zValue() == 25)
    before = outline.sceneBoundingRect()
    view.set_view_rect((x0 - 150, y0 - 150, x1 + 150, y1 + 150))
    qtbot.wait(100)
    after = outline.sceneBoundingRect()
    assert after.width() > 1.5 * before.width()
    assert view.finding_mark_rects() == [rect]
    assert window.grab().save(str(SCREENSHOTS / "nodule_box_zoomed_1280x720.png"))
    view.zoom_fit()
    # View > AI Finding Marks hides and shows it
    assert window.act_marks.isChecked()
    window.act_marks.trigger()
    assert not window.act_marks.isChecked() and not view.finding_marks_shown()
    assert view.finding_mark_rects() == [rect]  # hidden, not forgotten
    window.act_marks.trigger()
    assert view.finding_marks_shown()
    # a negative result (or no location) draws none
    negative = replace(lung, positive=False, location=None)
    window._on_scored(replace(result, heads=tuple(negative if h.head == lung.head else h for h in result.heads)))
    assert view.finding_mark_rects() == [] and not view.finding_marks_shown()
    assert "marked on the image" not in window.findings.boxes["lung_cancer_association"].score.text()
    window._on_scored(result)
    assert view.finding_mark_rects() == [rect]
    # another image: the box goes at once (before its own scores arrive)
    with qtbot.waitSignal(window.image_shown, timeout=30000):
        window.open_paths([str(SAMPLES / "children_kermany" / "NORMAL")])
    assert view.finding_mark_rects() == [] and view.mark_items == []
    qtbot.waitUntil(lambda: not window.score_runner.busy, timeout=120000)
