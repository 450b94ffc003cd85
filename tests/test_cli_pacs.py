"""``cxr-viewer pacs ...`` against a real Orthanc: nodes, echo, query, retrieve, send, and exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cxr_testdata as td
import pydicom
import pytest
from orthanc_server import free_port

RG1 = td.REPO_ROOT / "resources" / "samples" / "dicom" / "RG1_J2KR.dcm"


@pytest.fixture
def config(tmp_path, orthanc):
    """A throwaway config dir holding two nodes: the test Orthanc over DIMSE and over DICOMweb."""
    from cxr_viewer.clinical.pacs_config import NodeStore

    folder = tmp_path / "config"
    NodeStore(str(folder)).save([orthanc.dimse_node(name="pacs"), orthanc.dicomweb_node(name="web")])
    return {"CXR_VIEWER_CONFIG_DIR": str(folder), "CXR_VIEWER_CACHE_DIR": str(tmp_path / "cache"),
            "CXR_VIEWER_PACS_PASSWORD": orthanc.password}


def pacs(*args, env, timeout=60, stdin=None):
    return td.run_cli("pacs", *args, env=env, timeout=timeout, stdin=stdin)


def test_nodes_echo_query_retrieve(config, orthanc_restored, orthanc_samples, tmp_path):
    orthanc = orthanc_restored
    r = pacs("nodes", env=config)
    assert r.returncode == 0 and "pacs\tdimse" in r.stdout and "web\tdicomweb" in r.stdout
    assert orthanc.password not in r.stdout
    r = pacs("echo", "--node", "pacs", env=config)
    assert r.returncode == 0 and "answered in" in r.stdout, r.stderr
    cr = orthanc_samples["cr"]
    for node in ("pacs", "web"):
        r = pacs("query", "--node", node, "--patient-id", cr.patient_id, "--json", env=config)
        assert r.returncode == 0, r.stderr
        found = json.loads(r.stdout)
        assert [m["study_uid"] for m in found] == [cr.study_uid]
    r = pacs("query", "--node", "pacs", "--date", f"{cr.study_date}-", "--modality", "CR", env=config)
    assert r.returncode == 0 and cr.study_uid in r.stdout
    r = pacs("retrieve", "--node", "web", cr.study_uid, env=config)
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert paths and all(p.startswith(config["CXR_VIEWER_CACHE_DIR"]) for p in paths)
    got = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    oid = orthanc.rest("/tools/lookup", method="POST", data=cr.study_uid)[0]["ID"]
    # the whole study as Orthanc holds it (other tests may have stored more in it)
    assert got == {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.rest(f"/studies/{oid}/instances")}
    assert cr.sop_instance_uid in got
    r = pacs("cache", "--clear", env=config)
    assert r.returncode == 0 and f"{len(got)} file(s)" in r.stdout and f"deleted {len(got)} file(s)" in r.stdout
    assert not any(Path(p).exists() for p in paths)


def test_export_then_send_round_trip(config, orthanc_restored, orthanc_samples, tmp_path):
    orthanc = orthanc_restored
    r = td.run_cli("export", str(RG1), "--sr", str(tmp_path / "sr.dcm"), "--sc", str(tmp_path / "sc.dcm"),
                   "--device", "cpu", timeout=180)
    assert r.returncode == 0, r.stderr
    sr_uid = pydicom.dcmread(tmp_path / "sr.dcm", stop_before_pixels=True).SOPInstanceUID
    sc_uid = pydicom.dcmread(tmp_path / "sc.dcm", stop_before_pixels=True).SOPInstanceUID
    r = pacs("send", "--node", "pacs", str(tmp_path / "sr.dcm"), env=config)
    assert r.returncode == 0, r.stderr
    r = pacs("send", "--url", orthanc.dicomweb_url, "--user", orthanc.user, "--password-stdin",
             str(tmp_path / "sc.dcm"), env={**config, "CXR_VIEWER_PACS_PASSWORD": ""}, stdin=orthanc.password + "\n")
    assert r.returncode == 0, r.stderr
    assert orthanc.has_instance(sr_uid) and orthanc.has_instance(sc_uid)  # accepted by the PACS
    study = orthanc_samples["cr"].study_uid
    r = pacs("query", "--node", "pacs", "--patient-id", orthanc_samples["cr"].patient_id, "--json", env=config)
    match = json.loads(r.stdout)[0]
    assert match["study_uid"] == study and "SR" in match["modalities"]


def test_exit_codes_and_messages(config, orthanc_restored, tmp_path):
    orthanc = orthanc_restored
    r = pacs("query", env=config)
    assert r.returncode == 2 and "say which PACS" in r.stderr
    r = pacs("query", "--node", "nope", env=config)
    assert r.returncode == 2 and "no PACS node named 'nope'" in r.stderr
    r = pacs("query", "--node", "pacs", "--date", "2004-08-26", env=config)
    assert r.returncode == 2 and "YYYYMMDD" in r.stderr
    r = pacs("send", "--node", "pacs", str(tmp_path / "missing.dcm"), env=config)
    assert r.returncode == 2
    t0 = time.monotonic()
    r = pacs("echo", "--aet", "X", "--host", "127.0.0.1", "--port", str(free_port()), "--timeout", "3", env=config)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and "refused" in r.stderr
    assert time.monotonic() - t0 < 30
    wrong = "not-the-password-8125"
    r = pacs("query", "--node", "web", env={**config, "CXR_VIEWER_PACS_PASSWORD": wrong})
    assert r.returncode == 3 and "401" in r.stderr
    assert wrong not in r.stderr and orthanc.password not in r.stderr
    for node, says in (("pacs", "does the PACS have the study?"), ("web", "HTTP 404")):
        r = pacs("retrieve", "--node", node, "1.2.3.4.5.6.7.8.9", env=config)
        assert r.returncode == 3 and says in r.stderr and not r.stdout


def test_send_and_retrieve_exit_codes_for_mixed_inputs(config, orthanc_restored, orthanc_samples, tmp_path):
    jpeg = sorted((td.REPO_ROOT / "resources" / "samples" / "children_kermany" / "NORMAL").iterdir())[0]
    r = pacs("send", "--node", "pacs", str(jpeg), env=config)
    assert r.returncode == 2 and "not a DICOM file" in r.stderr  # nothing was sent: bad input, not the PACS
    r = pacs("retrieve", "--node", "pacs", orthanc_samples["cr"].study_uid, "1.2.3.999", env=config)
    assert r.returncode == 1 and r.stdout.strip() and "1.2.3.999" in r.stderr  # partly done
