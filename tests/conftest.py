"""Shared fixtures: the real data in ../shared/data and a corpus of broken inputs built from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


def run_cli(*args: str, timeout: float = 60, python_code: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cxr_viewer ARGS`` (or ``python -c CODE ARGS``) from the repository root."""
    cmd = [sys.executable, "-c", python_code, *args] if python_code else [sys.executable, "-m", "cxr_viewer", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def cli():
    return run_cli
