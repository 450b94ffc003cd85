"""Shared fixtures: the real data in ../shared/data and a corpus of broken inputs built from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # GUI tests run headless; the Xvfb tests start a server
# Tests of the scoring plumbing use small random models and no nodule/mass model (a ResNet50 at 512 px
# per scored image would double their time); tests of the nodule model and of the shipped models set
# CXR_VIEWER_NODULE themselves (tests/test_nodule.py, tests/test_default_model.py).
os.environ.setdefault("CXR_VIEWER_NODULE", "none")

import cxr_testdata as td

REPO_ROOT = td.REPO_ROOT


def _missing_reason() -> str | None:
    data = td.SHARED_DATA
    if not data.is_dir():
        return f"../shared/data is missing: expected the real test images at {data}"
    for needed in ("dicom/labels.csv", "dicom/pydicom-data_RG1/RG1_UNCR.dcm", "kermany/train/NORMAL"):
        if not (data / needed).exists():
            return f"../shared/data is missing: {needed} not found under {data}"
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (relative to the repository root); skips the test when absent."""
    reason = _missing_reason()
    if reason:
        pytest.skip(reason)
    return td.SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Tests using ``shared_data`` (directly or through another fixture) get the marker."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture
def broken_corpus(shared_data: Path, tmp_path: Path) -> td.BrokenCorpus:
    """A folder of every kind of bad input, made from real files, with good files beside them."""
    return td.build_broken_corpus(shared_data, tmp_path / "corpus")


@pytest.fixture(scope="module")
def module_corpus(shared_data: Path, tmp_path_factory) -> td.BrokenCorpus:
    """The same corpus, built once per test module (read-only use only)."""
    return td.build_broken_corpus(shared_data, tmp_path_factory.mktemp("corpus") / "corpus")


@pytest.fixture
def cli():
    """``cli("info", PATH, ...)``: run the command line in a subprocess (see :func:`td.run_cli`)."""
    return td.run_cli


@pytest.fixture
def window(qtbot, tmp_path):
    """The real main window (no default model loaded; tests load what they need), shut down after."""
    from cxr_viewer.gui.app import configure_pyqtgraph
    from cxr_viewer.gui.main_window import MainWindow
    from cxr_viewer.gui.settings import Settings

    configure_pyqtgraph()
    win = MainWindow(Settings(str(tmp_path / "settings.ini")), load_default_model=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.shutdown()


@pytest.fixture
def xvfb_display():
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (Debian package 'xvfb'; .ci/run installs it)")
    for number in range(91, 120):
        if not os.path.exists(f"/tmp/.X11-unix/X{number}") and not os.path.exists(f"/tmp/.X{number}-lock"):
            break
    display = f":{number}"
    proc = subprocess.Popen([xvfb, display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Xvfb did not start on {display}")
        time.sleep(0.05)
    yield display
    proc.terminate()
    proc.wait(timeout=10)
pytest_plugins = ["orthanc_server"]
