"""Fetch Priors from PACS: the choice of priors (pure), the fetch task against a real Orthanc (DIMSE and
DICOMweb), and the viewer's File > Fetch Priors from PACS: the current study opened from disk, its
prior fetched from the PACS into the cache and hung on the right; reasons in the status bar when
there is no PACS or no PatientID; Cancel while a PACS hangs."""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path

import pydicom
import pytest
from orthanc_server import REPO_ROOT
from test_gui_compare import _copy_as_study

from cxr_viewer.clinical import pacs
from cxr_viewer.clinical.pacs import StudyMatch, choose_priors
from cxr_viewer.common.tasks import Progress, run_to_completion

JPEG = REPO_ROOT / "resources" / "samples" / "children_kermany" / "NORMAL" / "IM-0115-0001.jpeg"


def _match(uid: str, date: str, patient_id: str = "P1") -> StudyMatch:
    return StudyMatch(uid, patient_id, "", date, "", "CR", "", 1, 1)


def test_choose_priors_newest_earlier_studies_of_the_same_patient_only():
    matches = [_match("now", "20240301"), _match("a", "20230105"), _match("b", "20190101"),
               _match("later", "20250101"), _match("undated", ""), _match("other", "20231231", "P2"),
               _match("same-day", "20240301"), _match("a", "20230105")]
    assert [m.study_uid for m in choose_priors(matches, "P1", "now", "20240301")] == ["a"]
    assert [m.study_uid for m in choose_priors(matches, "P1", "now", "20240301", count=5)] == ["a", "b"]
    assert choose_priors(matches, "P1", "now", "") == []  # no date: nothing is "earlier"
    assert choose_priors(matches, "", "now", "20240301") == []


@pytest.fixture
def patient_on_pacs(shared_data: Path, tmp_path: Path, orthanc_restored):
    """One patient (a fresh PatientID): today's study on disk and on the PACS, last year's and an
    older one on the PACS only (copies of the SIIM CR and RG1 with new UIDs and dates)."""
    siim = next((shared_data / "dicom" / "torchxrayvision_siim").glob("1.2.*.dcm"))
    rg1 = shared_data / "dicom" / "pydicom-data_RG1" / "RG1_UNCR.dcm"
    pid = f"PRIOR-{uuid.uuid4().hex[:8]}"
    files = {
        "current": _copy_as_study(siim, tmp_path / "disk" / "2024" / "pa.dcm", patient_id=pid, date="20240301"),
        "prior": _copy_as_study(rg1, tmp_path / "pacs" / "2023.dcm", patient_id=pid, date="20230105"),
        "older": _copy_as_study(siim, tmp_path / "pacs" / "2019.dcm", patient_id=pid, date="20190101"),
    }
    for path in files.values():
        orthanc_restored.upload(path)
    uids = {k: str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for k, p in files.items()}
    return orthanc_restored, pid, files, uids


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_fetch_priors_task_retrieves_the_most_recent_earlier_study(patient_on_pacs, tmp_path, kind):
    orthanc, pid, _files, uids = patient_on_pacs
    node, pw = (orthanc.dimse_node(), None) if kind == "dimse" else (orthanc.dicomweb_node(), orthanc.password)
    gen = pacs.fetch_priors_task(node, pid, uids["current"], "20240301", str(tmp_path / "cache"), pw)
    stages = []
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            fetched = stop.value
            break
        assert isinstance(p, Progress)
        stages.append(p.stage)
    assert stages[0] == "query" and "retrieve" in stages
    assert [s.study_uid for s in fetched.studies] == [uids["prior"]] and fetched.available == 2
    assert len(fetched.paths) == 1
    assert str(pydicom.dcmread(fetched.paths[0], stop_before_pixels=True).StudyInstanceUID) == uids["prior"]


def test_fetch_priors_task_without_an_earlier_study_or_a_patient_id(patient_on_pacs, tmp_path):
    orthanc, pid, _files, uids = patient_on_pacs
    fetched = run_to_completion(pacs.fetch_priors_task(orthanc.dimse_node(), pid, uids["older"], "20190101",
                                                       str(tmp_path / "cache")))
    assert fetched.studies == () and fetched.paths == () and not (tmp_path / "cache").exists()
    with pytest.raises(pacs.PacsError, match="no PatientID"):
        run_to_completion(pacs.fetch_priors_task(orthanc.dimse_node(), " ", uids["current"], "20240301",
                                                 str(tmp_path)))


def _open(qtbot, win, path) -> None:
    with qtbot.waitSignal(win.image_shown, timeout=30000):
        win.open_paths([str(path)])


def test_fetch_priors_from_orthanc_hangs_the_prior_on_the_right(qtbot, window, patient_on_pacs):
    orthanc, _pid, files, uids = patient_on_pacs
    window.settings.pacs_store().save([orthanc.dimse_node()])
    _open(qtbot, window, files["current"])
    assert not window.compare_with_prior()  # nothing earlier on disk
    assert "Fetch Priors" in window.last_message
    assert window.act_fetch_priors in window.menuBar().actions()[0].menu().actions()  # File menu
    with qtbot.waitSignal(window.viewport_shown, timeout=60000, check_params_cb=lambda i, _img: i == 1):
        window.act_fetch_priors.trigger()
    left, right = window.grid.views[:2]
    assert window.grid.layout_name == "1x2" and right.isVisible()
    assert left.image.ref.path == str(files["current"]) and window.view is left
    cache = Path(window.settings.pacs_cache_dir())
    assert Path(right.image.ref.path).is_relative_to(cache)  # the prior came from the PACS, into the cache
    assert str(pydicom.dcmread(right.image.ref.path, stop_before_pixels=True).StudyInstanceUID) == uids["prior"]
    assert "2023-01-05" in right.overlay.corner_text("top_right")
    assert "Comparing with the prior of 2023-01-05" in window.last_message
    assert not window.cancel_button.isVisible() and not window.priors_runner.busy


def test_fetch_priors_says_why_not(qtbot, window, shared_data, tmp_path):
    window.fetch_priors()
    assert "Open an image first" in window.last_message
    _open(qtbot, window, JPEG)
    assert not window.fetch_priors() and "no PatientID" in window.last_message
    siim = next((shared_data / "dicom" / "torchxrayvision_siim").glob("1.2.*.dcm"))
    _open(qtbot, window, _copy_as_study(siim, tmp_path / "s" / "pa.dcm", patient_id="X1", date="20240301"))
    assert not window.fetch_priors() and "no PACS configured" in window.last_message
    assert not window.priors_runner.busy


def test_cancel_fetch_priors_while_the_pacs_hangs(qtbot, window, shared_data, tmp_path):
    from cxr_viewer.clinical.pacs import PacsNode

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held, stop = [], threading.Event()

    def accept_and_hold():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        hung = PacsNode.from_dict({"name": "Hung", "kind": "dimse", "host": "127.0.0.1",
                                   "port": listener.getsockname()[1], "called_ae": "HUNG", "timeout_s": 3600})
        window.settings.pacs_store().save([hung])
        siim = next((shared_data / "dicom" / "torchxrayvision_siim").glob("1.2.*.dcm"))
        _open(qtbot, window, _copy_as_study(siim, tmp_path / "s" / "pa.dcm", patient_id="X2", date="20240301"))
        assert window.fetch_priors()
        qtbot.waitUntil(lambda: bool(held), timeout=5000)
        assert window.cancel_button.isVisible() and window.progress.isVisible()
        assert "Fetching priors from Hung" in window.last_message
        with qtbot.waitSignal(window.priors_runner.cancelled, timeout=2000):
            window.cancel_button.click()
        assert "cancelled" in window.last_message and not window.cancel_button.isVisible()
        assert window.grid.layout_name == "1x1"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
