"""The PyInstaller bundle (packaging/build_linux.sh; .ci/run builds it): its self-test must pass and
match the installed app's results, and it must open a real study in a real X window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
APP = Path(os.environ.get("CXR_FROZEN_APP", REPO / "build" / "dist" / "cxr-viewer" / "cxr-viewer"))
SCREENSHOTS = REPO / "out" / "screenshots"

pytestmark = pytest.mark.skipif(
    not APP.exists(), reason=f"no frozen bundle at {APP}: build it with 'bash packaging/build_linux.sh'")


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CXR_VIEWER_MODEL", "PYTHONPATH")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), **extra)
    return env


def test_frozen_self_test_matches_the_installed_app(tmp_path):
    frozen_json, installed_json = tmp_path / "frozen.json", tmp_path / "installed.json"
    r = subprocess.run([str(APP), "--self-test", "--json", str(frozen_json)], capture_output=True, text=True,
                       timeout=300, env=_env(tmp_path, QT_QPA_PLATFORM="offscreen"), cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    frozen = json.loads(frozen_json.read_text())
    assert frozen["frozen"] and frozen["ok"]
    assert any(c["name"] == "torchvision compiled ops" and c["ok"] for c in frozen["checks"])
    r = subprocess.run([sys.executable, "-m", "cxr_viewer", "--self-test", "--json", str(installed_json)],
                       capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=REPO,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    installed = json.loads(installed_json.read_text())
    assert frozen["model"]["sha256"] == installed["model"]["sha256"] and frozen["device"] == installed["device"]
    a = {e["file"]: e["scores"] for e in frozen["images"]}
    b = {e["file"]: e["scores"] for e in installed["images"]}
    assert a.keys() == b.keys()
    for name in a:
        for head, p in a[name].items():
            assert (p is None) == (b[name][head] is None)
            if p is not None:
                assert p == pytest.approx(b[name][head], abs=1e-3), (name, head)


@pytest.mark.xvfb
def test_frozen_app_opens_a_study_in_a_real_x_window(xvfb_display, tmp_path):
    out = tmp_path / "frozen_window.png"
    env = _env(tmp_path, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb")
    r = subprocess.run([str(APP), str(REPO / "resources" / "samples"), "--screenshot", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    grey = np.asarray(Image.open(out).convert("L"))
    assert grey.shape[0] > 400 and grey.std() > 20
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out.replace(SCREENSHOTS / "frozen_xvfb_window.png")


def test_frozen_window_mode_offscreen(tmp_path):
    """The second self-test mode without any display: main window on a sample, closed once rendered."""
    out = tmp_path / "offscreen.png"
    r = subprocess.run([str(APP), str(REPO / "resources" / "samples" / "dicom"), "--screenshot", str(out)],
                       capture_output=True, text=True, timeout=300, env=_env(tmp_path, QT_QPA_PLATFORM="offscreen"),
                       cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    grey = np.asarray(Image.open(out).convert("L"))
    assert grey.shape[0] > 400 and grey.std() > 20


def test_frozen_export_writes_sr_sc_and_pdf(tmp_path, orthanc_restored):
    """The bundle's highdicom, dicom-anonymizer, Qt PDF writer and pynetdicom work: export a
    de-identified SR, Secondary Capture and PDF, then C-STORE the SR to a real Orthanc."""
    import pydicom

    outs = [tmp_path / "sr.dcm", tmp_path / "sc.dcm", tmp_path / "report.pdf"]
    r = subprocess.run([str(APP), "export", str(REPO / "resources" / "samples" / "dicom" / "RG1_J2KR.dcm"),
                        "--sr", str(outs[0]), "--sc", str(outs[1]), "--pdf", str(outs[2]), "--deidentify",
                        "--device", "cpu"], capture_output=True, text=True, timeout=300, env=_env(tmp_path),
                       cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(p.stat().st_size > 1000 for p in outs)
    assert outs[2].read_bytes().startswith(b"%PDF")
    sr = pydicom.dcmread(outs[0])
    assert sr.PatientIdentityRemoved == "YES"
    node = orthanc_restored.dimse_node()
    r = subprocess.run([str(APP), "pacs", "send", "--aet", node.called_ae, "--host", node.host, "--port",
                        str(node.port), str(outs[0])], capture_output=True, text=True, timeout=120,
                       env=_env(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert orthanc_restored.has_instance(str(sr.SOPInstanceUID))
