"""Every DICOM object cxr_viewer writes passes David Clunie's ``dciodvfy`` (dicom3tools), an IOD
validator that PACS vendors use: SR, Secondary Capture and image copy, plain and de-identified,
from every real DICOM in ../shared/data and resources/samples.

The test fails on any "Error" line of dciodvfy's output (its exit status is not reliable);
warnings are printed (``pytest -s``) but allowed. Skipped with a message where dicom3tools is
not installed (Debian/Ubuntu package ``dicom3tools``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cxr_testdata as td
import pydicom
import pytest

DCIODVFY = shutil.which("dciodvfy")
SAMPLE_DIR = td.REPO_ROOT / "resources" / "samples" / "dicom"
KINDS = ("sr", "sc", "image")

pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not found: install the Debian package "
                                                           "dicom3tools (apt-get install dicom3tools; .ci/run does)")


def sources() -> list[Path]:
    shared = td.all_dicoms(td.SHARED_DATA) if td.SHARED_DATA.is_dir() else []
    return shared + sorted(SAMPLE_DIR.glob("*.dcm"))


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) that dciodvfy prints for ``path``."""
    r = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (r.stdout + "\n" + r.stderr).splitlines()
    errors = [ln.strip() for ln in lines if re.match(r"\s*Error\b", ln)]
    warnings = [ln.strip() for ln in lines if re.match(r"\s*Warning\b", ln)]
    return errors, warnings


@pytest.fixture(scope="module")
def scored():
    """``scored(path)`` -> (image, result) with the shipped model, each source scored once."""
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.io.image import open_image

    path = default_model_path()
    assert path, "models/default.safetensors is missing"
    scorer = Scorer.from_file(str(path), "cpu")
    cache: dict[Path, tuple] = {}

    def get(source: Path):
        if source not in cache:
            image = open_image(str(source))
            cache[source] = (image, scorer.score(image))
        return cache[source]

    return get


def export_all(source: Path, out: Path, scored, deidentify: bool) -> dict[str, Path]:
    from cxr_viewer.clinical.export import ExportRequest, export_dicom_task
    from cxr_viewer.common.tasks import run_to_completion

    image, result = scored(source)
    mode = "deid" if deidentify else "plain"
    paths = {kind: out / f"{mode}_{kind}.dcm" for kind in KINDS}
    written = run_to_completion(export_dicom_task(image, result, ExportRequest(
        str(paths["sr"]), str(paths["sc"]), str(paths["image"]), deidentify)))
    assert sorted(written) == sorted(map(str, paths.values()))
    return paths


def test_dciodvfy_finds_errors_in_a_bad_source(shared_data):
    """The parsing is not blind: RG1's own header has a Pixel Spacing of [0, 0], an error."""
    errors, _ = dciodvfy(td.rg1(shared_data, "UNCR"))
    assert any("PixelSpacing" in e and "zero" in e for e in errors), errors


@pytest.mark.parametrize("deidentify", [False, True], ids=["plain", "deidentified"])
@pytest.mark.parametrize("source", sources(), ids=lambda p: f"{p.parent.name}/{p.name[:24]}")
def test_every_output_passes_dciodvfy(source, deidentify, scored, tmp_path):
    if not source.is_file():
        pytest.skip(f"{source} is missing (../shared/data not mounted?)")
    paths = export_all(source, tmp_path, scored, deidentify)
    report = {}
    for kind, path in paths.items():
        errors, warnings = dciodvfy(path)
        report[kind] = errors
        print(f"{source.name} {'deid' if deidentify else 'plain'} {kind}: {len(errors)} errors, "
              f"{len(warnings)} warnings", *warnings, sep="\n    ")
    assert report == {kind: [] for kind in KINDS}
    if deidentify:  # the copies say how their dates were treated, and no dummy date is left
        for path in paths.values():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
            assert b"00010101" not in path.read_bytes()[:200_000]


@pytest.mark.parametrize("deidentify", [False, True], ids=["plain", "deidentified"])
def test_marked_finding_outputs_pass_dciodvfy(deidentify, tmp_path):
    """A positive nodule/mass finding with its box: the SR's planar ROI group (SCOORD POLYLINE on
    the source image) and the Secondary Capture with the box burnt in still pass. The result is
    hand-built (no network ran)."""
    from model_fixtures import nodule_result

    from cxr_viewer.clinical.export import ExportRequest, export_dicom_task
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.io.image import open_image

    source = SAMPLE_DIR / "NIH_DX_no_finding.dcm"
    image = open_image(str(source))
    result = nodule_result(image.ref.path, (400.0, 500.0, 620.0, 700.0))
    paths = {kind: tmp_path / f"{kind}.dcm" for kind in ("sr", "sc")}
    run_to_completion(export_dicom_task(image, result, ExportRequest(str(paths["sr"]), str(paths["sc"]), None,
                                                                      deidentify)))
    assert any(getattr(i, "ValueType", "") == "SCOORD" for i in _items(pydicom.dcmread(paths["sr"])))
    assert {kind: dciodvfy(path)[0] for kind, path in paths.items()} == {"sr": [], "sc": []}


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)
