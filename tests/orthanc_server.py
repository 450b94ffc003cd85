"""A real Orthanc PACS for tests: started on loopback with a throwaway configuration.

Use it as a pytest plugin (``pytest_plugins = ["orthanc_server"]`` in conftest) or import the
fixtures. Fixtures:

``orthanc`` (session)
    a running :class:`OrthancServer` (DIMSE + DICOMweb plugin + HTTP basic auth); skips with a
    clear reason when ``/usr/sbin/Orthanc`` is not installed, fails with its log when it does
    not start.
``orthanc_samples`` (function)
    the same server with the two sample DICOMs of ``resources/samples/dicom`` loaded (idempotent);
    returns a :class:`LoadedSamples` (by name: ``"cr"`` / ``"sc"`` -> :class:`SampleInfo`).

Nothing here talks DICOM itself: the REST API of Orthanc is the test oracle.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "resources" / "samples" / "dicom"
ORTHANC_BIN = os.environ.get("CXR_ORTHANC_BIN", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
NOT_INSTALLED = "Orthanc not installed: apt-get install orthanc orthanc-dicomweb (.ci/run does this)"

ORTHANC_AET = "ORTHANC"
VIEWER_AET = "CXR_VIEWER"          # our calling AE title, registered in Orthanc's DicomModalities
TEST_USER = "cxr-test"
TEST_PASSWORD = "Pw-7f3!orthanc-secret"  # distinctive, so tests can grep for leaks


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class SampleInfo:
    path: Path
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    patient_id: str
    modality: str
    study_date: str
    accession: str


class LoadedSamples(dict):
    """``{"cr": SampleInfo, "sc": SampleInfo}`` of the samples now stored in Orthanc."""


def sample_info(path: Path) -> SampleInfo:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SampleInfo(Path(path), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                      str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.get("PatientID", "")),
                      str(ds.get("Modality", "")), str(ds.get("StudyDate", "")),
                      str(ds.get("AccessionNumber", "")))


class OrthancServer:
    """One Orthanc process; ``start()`` / ``stop()``; helpers use its REST API with auth."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.user = TEST_USER
        self.password = TEST_PASSWORD
        self.aet = ORTHANC_AET
        self.host = "127.0.0.1"
        self.dicom_port = 0
        self.http_port = 0
        self.move_port = 0   # where Orthanc sends C-MOVE sub-operations for AE CXR_VIEWER
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.session = requests.Session()
        self.session.auth = (self.user, self.password)

    # --- lifecycle -----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        storage = str(self.workdir / "storage")
        return {
            "Name": "cxr-test-orthanc",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                         "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "HttpThreadsCount": 10,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {"cxr": [VIEWER_AET, "127.0.0.1", self.move_port]},
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 30,
            "DicomAssociationCloseDelay": 0,
            "DicomThreadsCount": 4,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "OverwriteInstances": True,
            "DeidentifyLogs": True,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
        }

    def start(self, timeout: float = 20.0) -> None:
        last_log = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind: retry
            self.dicom_port, self.http_port, self.move_port = free_port(), free_port(), free_port()
            if len({self.dicom_port, self.http_port, self.move_port}) < 3:
                continue
            shutil.rmtree(self.workdir / "storage", ignore_errors=True)
            cfg = self.workdir / "orthanc.json"
            cfg.write_text(json.dumps(self.config(), indent=2))
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.workdir, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    r = self.session.get(self.url("/system"), timeout=2)
                    if r.status_code == 200 and self._dicom_listening():
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            last_log = self.log_text()
            self.stop()
        raise RuntimeError(f"Orthanc did not start; its log:\n{last_log[-4000:]}")

    def _dicom_listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.dicom_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- nodes for cxr_viewer.clinical.pacs ------------------------------------------------------

    def dimse_node(self, **overrides):
        from cxr_viewer.clinical.pacs import PacsNode

        fields = dict(name="Test Orthanc (DIMSE)", kind="dimse", host=self.host, port=self.dicom_port,
                      called_ae=self.aet, calling_ae=VIEWER_AET, retrieve_method="get",
                      move_port=self.move_port, timeout_s=10.0)
        fields.update(overrides)
        return PacsNode(**fields)

    def dicomweb_node(self, **overrides):
        from cxr_viewer.clinical.pacs import PacsNode

        fields = dict(name="Test Orthanc (DICOMweb)", kind="dicomweb", url=self.dicomweb_url,
                      username=self.user, timeout_s=10.0)
        fields.update(overrides)
        return PacsNode(**fields)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    # --- REST helpers --------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.http_port}/{path.lstrip('/')}"

    def rest(self, path: str, method: str = "GET", **kwargs) -> Any:
        """``rest("/instances")``: the JSON answer of an authenticated REST call (raises on HTTP error)."""
        r = self.session.request(method, self.url(path), timeout=30, **kwargs)
        r.raise_for_status()
        return r.json() if r.content else None

    def upload(self, path: str | os.PathLike) -> str:
        """POST a DICOM file to /instances; returns Orthanc's instance id."""
        data = Path(path).read_bytes()
        answer = self.rest("/instances", method="POST", data=data,
                           headers={"Content-Type": "application/dicom"})
        return answer["ID"]

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return self.rest("/instances")

    def sop_instance_uids(self) -> set[str]:
        found = self.rest("/tools/find", method="POST",
                          json={"Level": "Instance", "Query": {}, "Expand": True})
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in found}

    def has_instance(self, sop_instance_uid: str) -> bool:
        found = self.rest("/tools/lookup", method="POST", data=sop_instance_uid)
        return any(f.get("Type") == "Instance" for f in found)

    def instance_file(self, sop_instance_uid: str) -> bytes:
        found = self.rest("/tools/lookup", method="POST", data=sop_instance_uid)
        ids = [f["ID"] for f in found if f.get("Type") == "Instance"]
        if not ids:
            raise KeyError(sop_instance_uid)
        r = self.session.get(self.url(f"/instances/{ids[0]}/file"), timeout=30)
        r.raise_for_status()
        return r.content

    def delete_instance(self, sop_instance_uid: str) -> None:
        found = self.rest("/tools/lookup", method="POST", data=sop_instance_uid)
        for f in found:
            if f.get("Type") == "Instance":
                self.rest(f"/instances/{f['ID']}", method="DELETE")

    def clear(self) -> None:
        """Delete every patient (and so everything) stored in Orthanc."""
        for pid in self.rest("/patients"):
            self.rest(f"/patients/{pid}", method="DELETE")

    def load_samples(self) -> LoadedSamples:
        loaded = LoadedSamples()
        for key, name in (("cr", "RG1_J2KR.dcm"), ("sc", "NIH_DX_no_finding.dcm")):
            path = SAMPLES_DIR / name
            self.upload(path)
            loaded[key] = sample_info(path)
        return loaded


def start_orthanc(workdir: Path) -> OrthancServer:
    """Start an Orthanc in ``workdir`` (skips the test when Orthanc is not installed)."""
    if not os.path.exists(ORTHANC_BIN):
        pytest.skip(NOT_INSTALLED)
    if not os.path.exists(DICOMWEB_PLUGIN):
        pytest.skip(f"Orthanc DICOMweb plugin missing at {DICOMWEB_PLUGIN}: apt-get install orthanc-dicomweb")
    server = OrthancServer(workdir)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc (session-wide), stopped at the end; see :class:`OrthancServer`."""
    workdir = Path(tempfile.mkdtemp(prefix="cxr-orthanc-"))
    server = start_orthanc(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def orthanc_samples(orthanc) -> LoadedSamples:
    """The two sample DICOMs (CR JPEG 2000 ``"cr"``, Secondary Capture ``"sc"``) stored in Orthanc."""
    return orthanc.load_samples()


@pytest.fixture
def orthanc_restored(orthanc):
    """The session's Orthanc, put back as it was after the test: what the test stored is deleted,
    so tests that send (SR, Secondary Capture, copies) leave no trace for the next test module."""
    before = set(orthanc.instances())
    yield orthanc
    for oid in set(orthanc.instances()) - before:
        orthanc.rest(f"/instances/{oid}", method="DELETE")
