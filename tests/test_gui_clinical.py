"""GUI clinical integration against a real Orthanc: PACS dialog (nodes, query, retrieve, open),
errors shown in the dialog, send results back, and the export dialog. Screenshots are saved to
out/screenshots/ to be looked at."""

from __future__ import annotations

from pathlib import Path

import cxr_testdata as td
import pydicom
import pytest
from orthanc_server import free_port

SHOTS = td.REPO_ROOT / "out" / "screenshots"
RG1 = td.REPO_ROOT / "resources" / "samples" / "dicom" / "RG1_J2KR.dcm"


@pytest.fixture
def no_keyring():
    """The headless case: no OS keyring (passwords stay in memory)."""
    import keyring
    from keyring.backends import fail

    old = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(old)


def _orthanc_study(orthanc, study_uid: str) -> str:
    """Orthanc's own id of a study (its REST API is the oracle)."""
    return orthanc.rest("/tools/lookup", method="POST", data=study_uid)[0]["ID"]


def _dialog(window, qtbot):
    window.open_pacs_dialog()
    dialog = window.pacs_dialog
    qtbot.waitExposed(dialog)
    return dialog


def _shot(qtbot, widget, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = qtbot.screenshot(widget)
    Path(path).replace(SHOTS / name)


def test_pacs_dialog_query_retrieve_and_open(qtbot, window, orthanc_restored, orthanc_samples, no_keyring):
    orthanc = orthanc_restored
    window.settings.pacs_store().save([orthanc.dimse_node()])
    dialog = _dialog(window, qtbot)
    assert dialog.node.currentText() == orthanc.dimse_node().name
    dialog.patient_id.setText(orthanc_samples["cr"].patient_id)
    with qtbot.waitSignal(dialog.runner.finished, timeout=30000):
        dialog.btn_search.click()
    assert dialog.table.rowCount() == 1
    assert dialog.table.item(0, 0).text() == orthanc_samples["cr"].patient_id
    assert "1 study found" in dialog.status.text()
    _shot(qtbot, dialog, "pacs_dialog_query.png")
    with qtbot.waitSignal(window.index_loaded, timeout=60000):
        dialog.btn_retrieve.click()
    refs = window.browser.refs()
    expected = {str(i["MainDicomTags"]["SOPInstanceUID"])
                for i in orthanc.rest(f"/studies/{_orthanc_study(orthanc, orthanc_samples['cr'].study_uid)}/instances")}
    assert refs and all(Path(r.path).is_relative_to(Path(window.settings.pacs_cache_dir())) for r in refs)
    got = {str(pydicom.dcmread(r.path, stop_before_pixels=True).SOPInstanceUID) for r in refs}
    assert orthanc_samples["cr"].sop_instance_uid in got and got <= expected
    # the whole study is in the cache (an SR that other tests stored there is retrieved, not shown)
    cached = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
              for p in Path(refs[0].path).parent.glob("*.dcm")}
    assert cached == expected
    assert dialog.clear_cache(confirm=False) == len(expected)  # patient data off the disk on request
    assert not list(Path(window.settings.pacs_cache_dir()).rglob("*.dcm"))
    assert dialog.status.text().startswith("Deleted")


def test_pacs_dialog_dicomweb_and_node_editor(qtbot, window, orthanc_restored, orthanc_samples, no_keyring):
    orthanc = orthanc_restored
    dialog = _dialog(window, qtbot)
    editor = dialog.editor
    dialog.tabs.setCurrentWidget(editor)
    editor.new_node()
    web = orthanc.dicomweb_node()
    editor.name.setText("Orthanc web")
    editor.kind.setCurrentIndex(editor.kind.findData("dicomweb"))
    editor.url.setText(web.url)
    editor.username.setText(web.username)
    editor.password.setText(orthanc.password)
    assert editor.save_current()
    assert "kept for this session only" in editor.message.text()  # no OS keyring here
    _shot(qtbot, dialog, "pacs_dialog_nodes.png")
    stored = Path(window.settings.pacs_store().path).read_text()
    assert orthanc.password not in stored and "Orthanc web" in stored
    dialog.tabs.setCurrentIndex(0)
    dialog.node.setCurrentText("Orthanc web")
    dialog.modality.setText("CR")
    with qtbot.waitSignal(dialog.runner.finished, timeout=30000):
        dialog.search()
    uids = {m.study_uid for m in dialog.matches}
    assert orthanc_samples["cr"].study_uid in uids


def test_pacs_dialog_reports_errors_and_keeps_working(qtbot, window, orthanc_restored, orthanc_samples):
    orthanc = orthanc_restored
    from cxr_viewer.clinical.pacs import PacsNode
    down = PacsNode.from_dict({"name": "Down", "kind": "dimse", "host": "127.0.0.1", "port": free_port(),
                               "called_ae": "NOBODY", "timeout_s": 3})
    wrong_ae = PacsNode.from_dict({**orthanc.dimse_node().to_dict(), "name": "Wrong AE", "called_ae": "NOT_ORTHANC"})
    window.settings.pacs_store().save([down, wrong_ae, orthanc.dimse_node()])
    dialog = _dialog(window, qtbot)
    # Orthanc refuses a wrong called AE title either at the association or by accepting none of the
    # presentation contexts (it depends on its state); both are refusals, neither is a timeout
    refusals = {"Down": ("connection refused",),
                "Wrong AE": ("association rejected", "accepted none of the proposed services")}
    for name, kinds in refusals.items():
        dialog.node.setCurrentText(name)
        with qtbot.waitSignal(dialog.runner.failed, timeout=20000) as blocker:  # a hang guard, not a speed check
            dialog.search()
        # the refusal itself is reported (not the node's 3 s timeout running out)
        assert any(k in blocker.args[0] for k in kinds) and "did not answer" not in blocker.args[0], blocker.args[0]
        assert "#b00000" in dialog.status.styleSheet()
        assert dialog.status.text() == blocker.args[0] and len(blocker.args[0].splitlines()) == 1
    _shot(qtbot, dialog, "pacs_dialog_error.png")
    dialog.node.setCurrentText(orthanc.dimse_node().name)
    with qtbot.waitSignal(dialog.runner.finished, timeout=20000):
        dialog.search()
    assert dialog.table.rowCount() >= 2


def test_cancel_a_hung_query_and_go_on(qtbot, window, orthanc_restored, orthanc_samples):
    """A PACS that accepts the connection and never answers: Cancel frees the dialog at once, and
    the next search (on a working node) does not wait for the hung one's timeout."""
    orthanc = orthanc_restored
    import socket
    import threading

    from cxr_viewer.clinical.pacs import PacsNode

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held = []
    stop = threading.Event()

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
        window.settings.pacs_store().save([hung, orthanc.dimse_node()])
        dialog = _dialog(window, qtbot)
        dialog.node.setCurrentText("Hung")
        dialog.search()
        qtbot.waitUntil(lambda: bool(held), timeout=5000)
        assert dialog.btn_cancel.isEnabled()
        with qtbot.waitSignal(dialog.runner.cancelled, timeout=2000):
            dialog.btn_cancel.click()
        assert dialog.status.text() == "Cancelled." and dialog.btn_search.isEnabled()
        dialog.node.setCurrentText(orthanc.dimse_node().name)
        # the hung query's timeout is an hour: this search finishing at all shows it did not wait
        # behind the hung one (the signal wait's own limit is only a hang guard)
        with qtbot.waitSignal(dialog.runner.finished, timeout=60000):
            dialog.search()
        assert dialog.table.rowCount() >= 2
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.fixture
def scored_rg1(qtbot, window):
    from cxr_viewer.ai.model_store import default_model_path

    with qtbot.waitSignal(window.model_changed, timeout=60000):
        window.load_model(str(default_model_path()))
    with qtbot.waitSignal(window.scored, timeout=90000):
        window.open_paths([str(RG1)])
    return window


def test_send_results_to_pacs(qtbot, scored_rg1, orthanc_restored, orthanc_samples):
    orthanc = orthanc_restored
    window = scored_rg1
    before = set(orthanc.instances())
    with qtbot.waitSignal(window.exported, timeout=60000) as blocker:
        window.send_results(orthanc.dimse_node())
    result = blocker.args[0]
    assert len(result.sent) == 2 and not result.failed
    new = set(orthanc.instances()) - before
    assert len(new) == 2
    study = orthanc_samples["cr"].study_uid
    classes = set()
    for oid in new:
        tags = orthanc.rest(f"/instances/{oid}/simplified-tags")
        assert tags["StudyInstanceUID"] == study  # in the source study, new series
        classes.add(tags["SOPClassUID"])
    assert classes == {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"}
    assert "Sent 2 object(s)" in window.last_message


def test_export_dialog_writes_deidentified_files(qtbot, scored_rg1, tmp_path, monkeypatch):
    from cxr_viewer.gui import export_dialog

    window = scored_rg1
    shown = {}

    def fake_exec(self):
        shown["dialog"] = self
        self.folder.setText(str(tmp_path / "out"))
        self.deidentify.setChecked(True)
        _shot(qtbot, self, "export_dialog.png") if self.show() is None else None
        return export_dialog.ExportDialog.DialogCode.Accepted

    monkeypatch.setattr(export_dialog.ExportDialog, "exec", fake_exec)
    with qtbot.waitSignal(window.exported, timeout=90000) as blocker:
        window.export_dialog()
    paths = [Path(p) for p in blocker.args[0]]
    stems = {p.name.rsplit("_", 1)[0] for p in paths}
    assert sorted(p.name.rsplit("_", 1)[1] for p in paths) == ["image.dcm", "report.pdf", "sc.dcm", "sr.dcm"]
    assert len(stems) == 1 and stems.pop().startswith("deid_2.25.")  # never the source's name or UID
    for p in paths:
        assert b"9RG1" not in p.read_bytes()
    assert window.settings.deidentify_exports()
    _shot(qtbot, window, "main_window_after_export.png")


def test_whole_workflow_query_open_score_send_back(qtbot, window, orthanc_restored, orthanc_samples, no_keyring):
    """The issue's scenario over DICOMweb: query the PACS from the viewer, open the study, score it,
    send the results back; the PACS then holds an SR and a Secondary Capture in that study."""
    from cxr_viewer.ai.model_store import default_model_path

    orthanc = orthanc_restored
    web = orthanc.dicomweb_node()
    window.settings.pacs_store().save([web])
    window._password_book().put(web, orthanc.password)  # as typed in the node editor
    with qtbot.waitSignal(window.model_changed, timeout=60000):
        window.load_model(str(default_model_path()))
    dialog = _dialog(window, qtbot)
    dialog.accession.setText(orthanc_samples["cr"].accession)
    with qtbot.waitSignal(dialog.runner.finished, timeout=30000):
        dialog.search()
    assert [m.study_uid for m in dialog.matches] == [orthanc_samples["cr"].study_uid]
    with qtbot.waitSignal(window.scored, timeout=90000) as scored:
        dialog.retrieve_selected()
    # RG1 is an adult's radiograph: outside the pneumonia head's intended use, then scored anyway
    assert scored.args[0].head("pneumonia").status == "outside_intended_use"
    assert window.findings.score_anyway.isVisibleTo(window.findings)
    with qtbot.waitSignal(window.scored, timeout=90000) as scored:
        window.findings.score_anyway.click()
    assert scored.args[0].head("pneumonia").status == "scored_outside_intended_use"
    before = set(orthanc.instances())
    with qtbot.waitSignal(window.exported, timeout=60000) as sent:
        window.send_results(web)
    assert len(sent.args[0].sent) == 2 and not sent.args[0].failed
    new = set(orthanc.instances()) - before
    modalities = {orthanc.rest(f"/instances/{oid}/simplified-tags")["Modality"] for oid in new}
    studies = {orthanc.rest(f"/instances/{oid}/simplified-tags")["StudyInstanceUID"] for oid in new}
    assert modalities == {"SR", "OT"}  # the Comprehensive SR and the Secondary Capture (modality OT)
    assert studies == {orthanc_samples["cr"].study_uid}
    _shot(qtbot, window, "main_window_scored_from_pacs.png")


def test_send_asks_for_a_missing_password_and_leaves_no_outbox(qtbot, scored_rg1, orthanc_restored, orthanc_samples,
                                                               no_keyring, monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    window = scored_rg1
    web = orthanc_restored.dicomweb_node()
    asked = []
    monkeypatch.setattr(QInputDialog, "getText",
                        staticmethod(lambda *a, **k: (asked.append(a[2]) or orthanc_restored.password, True)))
    with qtbot.waitSignal(window.exported, timeout=60000) as sent:
        window.send_results(web)
    assert len(sent.args[0].sent) == 2 and len(asked) == 1 and web.username in asked[0]
    outbox = Path(window.settings.pacs_cache_dir()) / "outbox"
    assert not list(outbox.rglob("*.dcm"))  # the derived objects are on the PACS, not left on this disk
    with qtbot.waitSignal(window.exported, timeout=60000):
        window.send_results(web)  # the password is remembered for the session
    assert len(asked) == 1


def test_export_all_opened_images_one_pdf_page_each(qtbot, window, tmp_path, monkeypatch):
    """Both sample DICOMs and a PNG opened: SR + SC for each DICOM, one PDF with a page per image."""
    import shutil

    from test_export import pdf_text

    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.gui import export_dialog

    src = tmp_path / "study"
    src.mkdir()
    for p in (td.REPO_ROOT / "resources" / "samples" / "dicom").glob("*.dcm"):
        shutil.copy(p, src / p.name)
    png = sorted((td.REPO_ROOT / "resources" / "samples" / "children_kermany" / "NORMAL").iterdir())[0]
    shutil.copy(png, src / png.name)
    with qtbot.waitSignal(window.model_changed, timeout=60000):
        window.load_model(str(default_model_path()))
    with qtbot.waitSignal(window.scored, timeout=90000):
        window.open_paths([str(src)])
    assert len(window.browser.refs()) == 3

    def fake_exec(self):
        assert not self.all_images.isHidden()  # offered: more than one image is open
        self.show()
        self.folder.setText(str(tmp_path / "out"))
        self.all_images.setChecked(True)
        assert self.sr.isEnabled() and self.sc.isEnabled()  # for the DICOM ones, even if a PNG is shown
        self.sr.setChecked(True)
        self.sc.setChecked(True)
        self.copy.setChecked(False)
        _shot(qtbot, self, "export_dialog_all_images.png")
        return export_dialog.ExportDialog.DialogCode.Accepted

    monkeypatch.setattr(export_dialog.ExportDialog, "exec", fake_exec)
    with qtbot.waitSignal(window.exported, timeout=180000) as blocker:
        window.export_dialog()
    paths = [Path(p) for p in blocker.args[0]]
    kinds = sorted(p.name.rsplit("_", 1)[1] for p in paths if p.suffix == ".dcm")
    assert kinds == ["sc.dcm", "sc.dcm", "sr.dcm", "sr.dcm"]  # for the two DICOMs; none of the PNG
    assert [p.name.endswith("_report_3_images.pdf") for p in paths if p.suffix == ".pdf"] == [True]
    pdf = next(p for p in paths if p.suffix == ".pdf")
    pages = pdf_text(pdf)
    assert len(pages) == 3 and all("Research use only" in t for t in pages)


def test_gui_export_of_same_named_files_keeps_both(qtbot, tmp_path):
    """Two opened files with one name in different folders: each keeps its own SR."""
    import shutil

    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.gui.export_dialog import export_task
    from cxr_viewer.io.image import load_image
    from cxr_viewer.io.index import index

    for folder, src in (("a", RG1), ("b", td.REPO_ROOT / "resources" / "samples" / "dicom" / "NIH_DX_no_finding.dcm")):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "IM0001.dcm")
    refs = sorted(index([str(tmp_path / "a"), str(tmp_path / "b")]).images(), key=lambda r: r.path)
    scorer = Scorer.from_file(str(default_model_path()), "cpu")
    image = load_image(refs[0])
    paths = run_to_completion(export_task(image, scorer.score(image), scorer.meta, str(tmp_path / "out"), sr=True,
                                          sc=False, pdf=False, image_copy=False, deidentify=False,
                                          others=refs[1:], model_path=scorer.path, device="cpu"))
    assert sorted(Path(p).name for p in paths) == ["IM0001_sr.dcm", "IM0001_sr_2.dcm"]
    patients = {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in paths}
    assert patients == {"9RG1", "Covid0000"}
