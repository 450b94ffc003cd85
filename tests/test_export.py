"""``cxr-viewer export``: SR, Secondary Capture, PDF report and image copy, plain and de-identified.

Real sample studies, the real shipped model; the PDF is rendered back to PNG (pypdfium2) and
saved under out/screenshots/ to be looked at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pydicom
import pytest

SAMPLES = td.REPO_ROOT / "resources" / "samples"
RG1 = SAMPLES / "dicom" / "RG1_J2KR.dcm"
NIH = SAMPLES / "dicom" / "NIH_DX_no_finding.dcm"
PNG_DIR = SAMPLES / "children_kermany" / "PNEUMONIA"
SHOTS = td.REPO_ROOT / "out" / "screenshots"


def render_pdf(path: Path, scale: float = 1.0) -> list[np.ndarray]:
    """Each page of a PDF as an RGB array (pypdfium2, independent of the Qt writer)."""
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 renders PDFs in tests: pip install -e '.[test]'")
    doc = pdfium.PdfDocument(str(path))
    try:
        return [np.asarray(doc[i].render(scale=scale).to_pil().convert("RGB")) for i in range(len(doc))]
    finally:
        doc.close()


def pdf_text(path: Path) -> list[str]:
    pdfium = pytest.importorskip("pypdfium2")
    doc = pdfium.PdfDocument(str(path))
    try:
        return [doc[i].get_textpage().get_text_range() for i in range(len(doc))]
    finally:
        doc.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export run over both DICOM samples and one PNG: everything, not de-identified."""
    out = tmp_path_factory.mktemp("export")
    src = out / "src"
    src.mkdir()
    for p in (RG1, NIH):
        shutil.copy(p, src / p.name)
    png = sorted(PNG_DIR.iterdir())[0]
    shutil.copy(png, src / png.name)
    r = td.run_cli("export", str(src / RG1.name), "--sr", str(out / "sr.dcm"), "--sc", str(out / "sc.dcm"),
                   "--pdf", str(out / "report.pdf"), "--image", str(out / "copy.dcm"), "--device", "cpu",
                   "--score-anyway", timeout=240)  # RG1 is an adult: outside the pneumonia head's intended use
    return out, r


def test_export_writes_all_four(exported):
    out, r = exported
    assert r.returncode == 0, r.stderr
    for name in ("sr.dcm", "sc.dcm", "report.pdf", "copy.dcm"):
        assert (out / name).stat().st_size > 1000, name
        assert str(out / name) in r.stdout
    sr = pydicom.dcmread(out / "sr.dcm")
    sc = pydicom.dcmread(out / "sc.dcm")
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.PatientID == src.PatientID  # not de-identified: the study it belongs to
    copy = pydicom.dcmread(out / "copy.dcm")
    assert copy.SOPInstanceUID == src.SOPInstanceUID
    assert "Research use only" in r.stderr


def test_pdf_page_shows_header_image_scores_and_notice(exported):
    out, _ = exported
    texts = pdf_text(out / "report.pdf")
    assert len(texts) == 1
    text = " ".join(texts[0].split())
    assert "Research use only. Not for diagnostic use." in text
    assert "CompressedSamples RG1" in text and "9RG1" in text  # header: patient name and ID
    assert "Pneumonia" in text and "threshold: probability" in text  # score with its operating point
    assert "above threshold" in text or "below threshold" in text
    assert "positive at probability" not in text  # "above threshold", never "positive": not a diagnosis
    assert "OUTSIDE INTENDED USE: adult radiograph (age 64 from the birth and study dates)" in text
    assert "not available" in text  # the untrained lung-cancer head is never a score
    assert "SHA-256" in text and "validation AUROC" in text  # model and model-card summary
    page = render_pdf(out / "report.pdf", scale=1.5)[0]
    SHOTS.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(page).save(SHOTS / "pdf_report_page1.png")
    h, w, _ = page.shape
    assert h > w  # A4 portrait
    # the image area (left, below the header) is radiograph, greyer and far more varied than the white
    # page around it (this light adult film: mean 200 with v5's small heatmap, under 200 with v4's wide one)
    left = page[int(h * 0.3):int(h * 0.6), int(w * 0.1):int(w * 0.5)]
    assert left.mean() < 230 and left.std() > 20 and page[:, :].mean() > 150
    # the heatmap adds colour (inferno: red/orange/yellow) to a grey radiograph
    r, g, b = (left[..., i].astype(int) for i in range(3))
    assert ((r - b) > 40).mean() > 0.01


def test_deidentified_export_keeps_no_identifier(tmp_path):
    out = tmp_path
    r = td.run_cli("export", str(RG1), "--sr", str(out / "sr.dcm"), "--sc", str(out / "sc.dcm"), "--pdf",
                   str(out / "r.pdf"), "--image", str(out / "copy.dcm"), "--deidentify", "--device", "cpu",
                   timeout=240)
    assert r.returncode == 0, r.stderr
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    secrets = [str(src.PatientID), "CompressedSamples", str(src.StudyInstanceUID), str(src.SOPInstanceUID),
               str(src.SeriesInstanceUID), str(src.get("InstitutionName", "")), str(src.get("AccessionNumber", ""))]
    secrets = [s for s in secrets if len(s) >= 4]
    for name in ("sr.dcm", "sc.dcm", "copy.dcm"):
        raw = (out / name).read_bytes()
        for s in secrets:
            assert s.encode() not in raw, (name, s)
        ds = pydicom.dcmread(out / name)
        assert ds.PatientIdentityRemoved == "YES"
    copy, sr, sc = (pydicom.dcmread(out / n) for n in ("copy.dcm", "sr.dcm", "sc.dcm"))
    # one de-identification for the whole export: the results point at the de-identified copy
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == copy.StudyInstanceUID
    refs = {str(item.ReferencedSOPInstanceUID) for item in sc.SourceImageSequence}
    assert copy.SOPInstanceUID in refs
    assert copy.SOPInstanceUID.encode() in (out / "sr.dcm").read_bytes()
    text = " ".join(pdf_text(out / "r.pdf")[0].split())
    for s in ("CompressedSamples", "9RG1", "Philips", "2004-08-26", "1940-03-05"):  # names, IDs, real dates
        assert s not in text
    assert "De-identified" in text
    assert "(shifted)" in text and "order and intervals between studies are kept" in text
    assert copy.LongitudinalTemporalInformationModified == "MODIFIED"
    assert copy.StudyDate != src.StudyDate and copy.StudyTime == src.StudyTime  # whole days: times kept
    page = render_pdf(out / "r.pdf")[0]
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(page).save(SHOTS / "pdf_report_deidentified.png")


def test_png_source_gives_pdf_but_no_dicom(tmp_path):
    png = sorted(PNG_DIR.iterdir())[0]
    r = td.run_cli("export", str(png), "--sr", str(tmp_path / "sr.dcm"), "--device", "cpu", timeout=180)
    assert r.returncode == 2
    assert "needs a DICOM source image" in r.stderr
    assert not (tmp_path / "sr.dcm").exists()
    r = td.run_cli("export", str(png), str(RG1), "--pdf", str(tmp_path / "two.pdf"), "--device", "cpu", timeout=240)
    assert r.returncode == 0, r.stderr
    assert len(render_pdf(tmp_path / "two.pdf", scale=0.3)) == 2  # one page per image


def test_export_exit_codes(tmp_path):
    r = td.run_cli("export", str(RG1))
    assert r.returncode == 2 and "nothing to export" in r.stderr
    r = td.run_cli("export", str(tmp_path / "missing.dcm"), "--pdf", str(tmp_path / "x.pdf"))
    assert r.returncode == 2 and not (tmp_path / "x.pdf").exists()
    r = td.run_cli("export", str(RG1), "--sr", str(tmp_path / "no" / "such" / "dir" / "sr.dcm"), "--device", "cpu",
                   timeout=180)
    assert r.returncode == 2 and "does not exist" in r.stderr
    # a good image and a PNG asked for an SR: partly done
    png = sorted(PNG_DIR.iterdir())[0]
    r = td.run_cli("export", str(RG1), str(png), "--sr", str(tmp_path / "srs"), "--device", "cpu", timeout=240)
    assert r.returncode == 1, r.stderr
    assert [p.name for p in (tmp_path / "srs").iterdir()] == ["RG1_J2KR_sr.dcm"]


def test_deidentified_exports_are_not_named_after_the_source(tmp_path):
    """A source file named after its original SOP UID (as the PACS cache names them) or a patient:
    de-identified outputs take the de-identified SOP UID as their name."""
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    named = tmp_path / "in" / f"{src.SOPInstanceUID}.dcm"
    named.parent.mkdir()
    shutil.copy(RG1, named)
    patient = tmp_path / "in" / "Smith_John.dcm"
    shutil.copy(RG1, patient)
    out = tmp_path / "out"
    r = td.run_cli("export", str(named), str(patient), "--sr", str(out), "--image", str(out), "--deidentify",
                   "--device", "cpu", timeout=240)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and all(n.startswith("deid_2.25.") for n in names)
    assert not any(str(src.SOPInstanceUID) in n or "Smith" in n for n in names) and "Smith" not in r.stdout
    copies = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.glob("*_image.dcm")]
    assert {f"deid_{c.SOPInstanceUID}_image.dcm" for c in copies} <= set(names)


def test_burnt_in_identifiers_are_never_exported_as_deidentified(tmp_path):
    ds = pydicom.dcmread(RG1)
    ds.BurnedInAnnotation = "YES"
    src = tmp_path / "burnt.dcm"
    ds.save_as(src)
    for args in (("--sc", str(tmp_path / "sc.dcm")), ("--image", str(tmp_path / "copy.dcm")),
                 ("--pdf", str(tmp_path / "r.pdf"))):
        r = td.run_cli("export", str(src), *args, "--deidentify", "--device", "cpu", timeout=180)
        assert r.returncode == 2 and "BurnedInAnnotation YES" in r.stderr, r.stderr
        assert not Path(args[1]).exists()
    r = td.run_cli("export", str(src), "--sr", str(tmp_path / "sr.dcm"), "--deidentify", "--device", "cpu",
                   timeout=180)
    assert r.returncode == 0, r.stderr  # the SR holds no pixels: it can be de-identified
    r = td.run_cli("export", str(src), "--sc", str(tmp_path / "sc.dcm"), "--device", "cpu", timeout=180)
    assert r.returncode == 0, r.stderr  # not de-identified: the study's own copy, burnt-in text and all


def test_export_is_all_or_nothing_on_cancel(tmp_path):
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.clinical.export import ExportRequest, export_dicom_task
    from cxr_viewer.common.tasks import Cancelled, CancelToken
    from cxr_viewer.io.image import open_image

    image = open_image(str(NIH))
    result = Scorer.from_file(str(default_model_path()), "cpu").score(image)
    outs = [tmp_path / n for n in ("sr.dcm", "sc.dcm", "copy.dcm")]
    token = CancelToken()
    gen = export_dicom_task(image, result, ExportRequest(*map(str, outs)), cancel=token)
    next(gen)  # about to write the SR
    next(gen)  # the SR is written; about to write the Secondary Capture
    assert outs[0].exists()
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)
    assert not any(p.exists() for p in outs) and not list(tmp_path.glob(".tmp-*"))


def test_failed_export_keeps_the_files_an_earlier_export_left(tmp_path):
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.clinical.export import ExportError, ExportRequest, export_dicom_task
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.io.image import open_image

    image = open_image(str(NIH))
    result = Scorer.from_file(str(default_model_path()), "cpu").score(image)
    sr, sc = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    run_to_completion(export_dicom_task(image, result, ExportRequest(str(sr))))
    before = sr.read_bytes()
    sc.mkdir()  # the second export cannot write its Secondary Capture
    with pytest.raises((ExportError, OSError)):
        run_to_completion(export_dicom_task(image, result, ExportRequest(str(sr), str(sc))))
    assert sr.read_bytes() == before  # the first export's SR is back, not deleted with the failed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sc.dcm", "sr.dcm"]  # nothing set aside left over


def test_deidentified_export_keeps_order_and_interval_of_two_studies(tmp_path):
    """Two studies of one patient in one de-identified export (the real RG1 file, and the same
    file as a later study: its own UIDs, its dates 37 days on): one date offset for the patient,
    so the copies and SRs keep which came first and how many days apart; no original date left."""
    import datetime

    first = pydicom.dcmread(RG1)
    second = pydicom.dcmread(RG1)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(second, kw, pydicom.uid.generate_uid())
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID

    def later(value: str) -> str:
        return (datetime.datetime.strptime(value, "%Y%m%d") + datetime.timedelta(days=37)).strftime("%Y%m%d")

    for kw in ("StudyDate", "SeriesDate", "ContentDate", "InstanceCreationDate"):
        setattr(second, kw, later(first.get(kw)))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(RG1, src / "a.dcm")
    second.save_as(src / "b.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    r = td.run_cli("export", str(src), "--sr", str(out), "--image", str(out), "--deidentify", "--device", "cpu",
                   timeout=300)
    assert r.returncode == 0, r.stderr
    copies = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out.glob("*_image.dcm"))]
    srs = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(out.glob("*_sr.dcm"))]
    assert len(copies) == len(srs) == 2
    assert len({c.PatientID for c in copies + srs}) == 1 and len({c.StudyInstanceUID for c in copies}) == 2

    def days(a: str, b: str) -> int:
        return (datetime.datetime.strptime(a, "%Y%m%d") - datetime.datetime.strptime(b, "%Y%m%d")).days

    a, b = sorted(copies, key=lambda c: c.StudyDate)
    assert days(b.StudyDate, a.StudyDate) == 37 and days(b.ContentDate, a.ContentDate) == 37
    assert a.PatientBirthDate == b.PatientBirthDate
    assert days(a.StudyDate, a.PatientBirthDate) == days(first.StudyDate, first.PatientBirthDate)  # age kept
    for sr in srs:  # each SR carries its own study's shifted date
        assert sr.StudyDate == next(c.StudyDate for c in copies if c.StudyInstanceUID == sr.StudyInstanceUID)
        assert sr.LongitudinalTemporalInformationModified == "MODIFIED"
    originals = {str(v).encode() for ds in (first, second) for v in
                 (ds.StudyDate, ds.SeriesDate, ds.ContentDate, ds.PatientBirthDate) if v}
    for path in out.iterdir():
        head = path.read_bytes()[:100_000]
        for value in originals:
            assert value not in head, (path.name, value)


def test_pdf_page_shows_the_finding_box_and_the_nodule_model():
    """A positive nodule/mass finding (hand-built result: no network ran): the page's picture has
    the orange box, its caption says where, the model block names the nodule/mass model."""
    from model_fixtures import nodule_result

    from cxr_viewer.clinical.export import report_page
    from cxr_viewer.io.image import open_image

    image = open_image(str(NIH))
    h, w = image.shape
    box = (0.55 * w, 0.5 * h, 0.55 * w + 180, 0.5 * h + 160)
    page = report_page(image, nodule_result(image.ref.path, box), None)
    plain = report_page(image, nodule_result(image.ref.path, None), None)
    x0, y0, x1, y1 = (round(v) for v in box)
    ring = np.zeros(image.shape, bool)
    ring[y0:y1, x0:x1] = True
    ring[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = False
    changed = np.any(page.rgb != plain.rgb, axis=2)
    assert changed[ring].mean() > 0.9 and not changed[y0 + 12:y1 - 12, x0 + 12:x1 - 12].any()
    assert "Nodule/mass 73%: marked on the image" in page.image_caption and "orange box" in page.image_caption
    assert "marked" not in plain.image_caption
    lung = next(s for s in page.scores if s.title.startswith("Lung"))
    assert lung.label == "above threshold; marked on the image"
    assert "Nodule/mass model: TEST FIXTURE nodule/mass (random weights) (version 0)" in page.model_lines
    assert f"Nodule/mass model SHA-256: {'cd' * 32}" in page.model_lines
    assert not any("Nodule/mass" in t for t in report_page(
        image, nodule_result(image.ref.path, None, companion=False), None).model_lines)
