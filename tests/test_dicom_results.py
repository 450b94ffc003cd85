"""AI results as DICOM: the TID 1500 SR and the burnt-in Secondary Capture, from the real sample
DICOMs scored by the real shipped model (loaded once for the module)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import cxr_testdata as td
import highdicom as hd
import numpy as np
import pydicom
import pytest
from model_fixtures import nodule_result
from PIL import Image
from pydicom.uid import UID

from cxr_viewer import RESEARCH_NOTICE, __version__
from cxr_viewer.ai import overlay
from cxr_viewer.ai.inference import HeadScore, Scorer, ScoreResult
from cxr_viewer.ai.model import unavailable_reason
from cxr_viewer.ai.model_store import default_model_path
from cxr_viewer.clinical import dicom_results as dr
from cxr_viewer.clinical import finding_marks as fm
from cxr_viewer.io.image import open_image

SAMPLES = td.REPO_ROOT / "resources" / "samples"
RG1 = SAMPLES / "dicom" / "RG1_J2KR.dcm"
NIH = SAMPLES / "dicom" / "NIH_DX_no_finding.dcm"
KERMANY_JPEG = SAMPLES / "children_kermany" / "NORMAL" / "IM-0115-0001.jpeg"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PROBABILITY = ("122157", "DCM")
PNEUMONIA = ("233604007", "SCT")


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    path = default_model_path()
    assert path, "models/default.safetensors is missing"
    return Scorer.from_file(str(path))


@pytest.fixture(scope="module")
def scored(scorer):
    """path -> (LoadedImage, ScoreResult, header) for both samples (scored once). Both are adults,
    outside the pneumonia head's intended use: scored anyway, so the numbers are there, marked."""
    out = {}
    for path in (RG1, NIH):
        image = open_image(str(path))
        out[path.name] = (image, scorer.score(image, score_anyway=True), dr.read_source_header(path))
    return out


# --- helpers ---------------------------------------------------------------------------------


def content_items(ds):
    """Every SR content item (pydicom Datasets), depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def texts(ds) -> list[str]:
    return [str(i.TextValue) for i in content_items(ds) if i.ValueType == "TEXT"]


def num_items(ds) -> list:
    return [i for i in content_items(ds) if i.ValueType == "NUM"]


def dsrdump_problems(path: Path) -> str | None:
    """dcmtk's SR parser output on stderr (None when dcmtk is not installed)."""
    exe = shutil.which("dsrdump")
    if exe is None:
        return None
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.strip()


def unavailable_result(result: ScoreResult) -> ScoreResult:
    """The same result as if the model had no trained head at all."""
    heads = tuple(HeadScore(h.head, h.title, False, reason=unavailable_reason(h.head, "test"), meaning=h.meaning)
                  for h in result.heads)
    return dataclasses.replace(result, heads=heads, heatmaps={})


# --- SR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [RG1.name, NIH.name])
def test_sr_round_trip(scored, tmp_path, name):
    _, result, src = scored[name]
    pneu = result.head("pneumonia")
    assert pneu.available and not result.head("lung_cancer_association").available

    path = tmp_path / "sr.dcm"
    dr.write_dataset(dr.build_sr(src, result), path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == COMPREHENSIVE_SR and ds.Modality == "SR"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert UID(ds.SeriesInstanceUID).is_valid and UID(ds.SOPInstanceUID).is_valid
    assert ds.PatientID == src.PatientID and str(ds.PatientName) == str(src.PatientName)
    assert ds.Manufacturer == "cxr_viewer project" and ds.SoftwareVersions == f"cxr_viewer {__version__}"
    assert RESEARCH_NOTICE in ds.SeriesDescription
    assert ds.SeriesNumber == 9901 and ds.VerificationFlag == "UNVERIFIED"
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    refs = [r.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
    assert refs == [src.SOPInstanceUID]
    assert dr.vr_problems(ds) == []

    # the scores, read back with highdicom
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1  # one per available head: pneumonia only
    group = groups[0]
    assert (group.finding_type.value, group.finding_type.scheme_designator) == PNEUMONIA
    assert [i.referenced_sop_instance_uid for i in group.source_images] == [src.SOPInstanceUID]
    (measurement,) = group.get_measurements()
    assert (measurement.name.value, measurement.name.scheme_designator) == PROBABILITY
    assert measurement.value == pytest.approx(pneu.probability, abs=1e-6)
    assert (measurement.unit.value, measurement.unit.scheme_designator) == ("1", "UCUM")
    (evaluation,) = group.get_qualitative_evaluations()
    assert (evaluation.name.value, evaluation.name.scheme_designator) == PNEUMONIA
    assert evaluation.value.value == ("52101004" if pneu.positive else "272519000")

    # no lung-cancer number anywhere: one NUM item in the whole tree, pneumonia's
    nums = num_items(ds)
    assert len(nums) == 1 and concept(nums[0]) == PROBABILITY
    # TID 4019 algorithm identification under the measurement
    algorithm = [(concept(i)[0], str(i.TextValue)) for i in nums[0].ContentSequence]
    assert ("111001", result.model_name) in algorithm and ("111003", result.model_version) in algorithm
    params = [v for code, v in algorithm if code == "111002"]
    assert f"sha256={result.model_sha256}" in params and "calibration=temperature" in params
    assert f"threshold={pneu.threshold:.6g}" in params
    all_text = texts(ds)
    assert any("Lung-cancer association" in t and "not available" in t for t in all_text)
    assert RESEARCH_NOTICE in all_text  # a TEXT item of its own, in the root's Qualitative Evaluations

    # the model as the device observer
    items = {concept(i): i for i in content_items(ds) if i.RelationshipType == "HAS OBS CONTEXT"}
    assert items[("121005", "DCM")].ConceptCodeSequence[0].CodeValue == "121007"  # observer type: device
    assert items[("121012", "DCM")].UID == dr.device_uid(result.model_sha256)
    assert items[("121016", "DCM")].TextValue == result.model_sha256
    assert len(result.model_sha256) == 64
    assert items[("121014", "DCM")].TextValue == "cxr_viewer project"
    assert result.model_name in items[("121013", "DCM")].TextValue
    assert items[("121015", "DCM")].TextValue == f"{result.model_name} {result.model_version}"

    problems = dsrdump_problems(path)
    assert not problems, problems


def test_sr_tree_reads_with_from_dataset(scored):
    _, result, src = scored[RG1.name]
    ds = dr.build_sr(src, result)
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_image_measurement_groups(referenced_sop_instance_uid=src.SOPInstanceUID)) == 1
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_device_uid_is_stable_and_valid():
    sha = "abc0942c2e0a16a3b174081358b4467283d8cbe7feb18739b1c00e5ebae0dc84"
    uid = dr.device_uid(sha)
    assert uid == f"2.25.{int(sha[:32], 16)}" and UID(uid).is_valid and len(uid) <= 64
    assert dr.device_uid(sha) == uid


def test_sr_without_any_trained_head(scored):
    _, result, src = scored[NIH.name]
    none = unavailable_result(result)
    ds = dr.build_sr(src, none)
    assert num_items(ds) == []
    assert not [i for i in content_items(ds) if i.ValueType == "CODE" and concept(i) == PNEUMONIA]
    all_text = texts(ds)
    for title in ("Pneumonia", "Lung-cancer association"):
        assert any(t.startswith(title) and "not available" in t for t in all_text)
    assert RESEARCH_NOTICE in all_text
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    (group,) = sr.content.get_image_measurement_groups()
    assert group.get_measurements() == [] and group.source_images[0].referenced_sop_instance_uid == src.SOPInstanceUID


# --- Secondary Capture ---------------------------------------------------------------------------


def text_box(sc_rgb: np.ndarray, plain_rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right) of the pixels the burnt-in text changed."""
    rows, cols = np.nonzero(np.any(sc_rgb != plain_rgb, axis=2))
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("name", [RG1.name, NIH.name])
def test_secondary_capture(scored, tmp_path, name):
    image, result, src = scored[name]
    rgb = overlay.annotated_rgb(image, result)
    assert rgb.dtype == np.uint8 and rgb.shape == (*image.shape, 3) and rgb.flags.c_contiguous
    path = tmp_path / "sc.dcm"
    dr.write_dataset(dr.build_secondary_capture(src, rgb, result), path)

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
    assert ds.SeriesNumber == 9902
    assert ds.BurnedInAnnotation == "YES"
    assert RESEARCH_NOTICE in ds.SeriesDescription and RESEARCH_NOTICE in ds.ImageComments
    assert "Lung-cancer association: not available" in ds.ImageComments
    assert "Grad-CAM" in ds.DerivationDescription
    (ref,) = ds.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    assert "PixelSpacing" not in ds  # RG1's is a bogus [0, 0], the NIH file has none
    assert dr.vr_problems(ds) == []
    # Laterality (General Series, Type 2C): absent for a known unpaired body part (RG1: CHEST),
    # present and empty (unknown) when the body part is not known (the NIH file says none)
    if src.get("BodyPartExamined"):
        assert ds.BodyPartExamined == src.BodyPartExamined and "Laterality" not in ds
    else:
        assert "Laterality" in ds and not ds.Laterality
    pixels = ds.pixel_array
    assert np.array_equal(pixels, rgb)
    assert np.array_equal(hd.imread(path).get_frame(1), rgb)

    # the heatmap: where it is hot the picture is coloured, unlike the plain grey rendering
    grey = overlay.render_grey(image)
    heat = overlay.resize_heatmap(result.heatmaps["pneumonia"], image.shape)
    plain = overlay.composite_rgb(image, result.heatmaps["pneumonia"])
    top, left, bottom, right = text_box(pixels, plain)
    hot = heat > 0.8
    hot[:bottom, :right] = False
    assert hot.sum() > 1000
    diff = np.abs(pixels.astype(int) - grey[:, :, None].astype(int)).max(axis=2)
    assert diff[hot].mean() > 40
    colour = pixels.astype(int).max(axis=2) - pixels.astype(int).min(axis=2)
    assert colour[hot].mean() > 40  # inferno's hot end is yellow, not grey
    cold = heat < 0.02
    cold[:bottom, :right] = False
    assert diff[cold].max() <= 3  # transparent where the map is cold

    # the text box: top-left, at most 40% of the width, dark with bright text
    assert (top, left) == (0, 0)
    assert right <= 0.4 * image.shape[1] + 1 and bottom < 0.6 * image.shape[0]
    box = pixels[top:bottom, left:right]
    assert (box.min(axis=2) >= 240).sum() > 200  # white text
    assert box.mean() < plain[top:bottom, left:right].mean()  # the box darkens what it covers


def test_secondary_capture_keeps_known_pixel_spacing(scorer, shared_data):
    path = td.siim(shared_data)  # a real CR with PixelSpacing 0.168 mm
    image = open_image(str(path))
    result = scorer.score(image, score_anyway=True)
    src = dr.read_source_header(path)
    sc = dr.build_secondary_capture(src, overlay.annotated_rgb(image, result), result)
    assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in src.PixelSpacing]
    half = overlay.composite_rgb(image, None)[::2, ::2]
    assert "PixelSpacing" not in dr.build_secondary_capture(src, np.ascontiguousarray(half), result)
    assert "LossyImageCompression" in sc and sc.LossyImageCompression == "01"  # the source was JPEG


def test_secondary_capture_without_any_trained_head(scored):
    image, result, src = scored[NIH.name]
    none = unavailable_result(result)
    lines = overlay.result_lines(none)
    assert "Pneumonia: not available" in lines and "Lung-cancer association: not available" in lines
    assert "Heatmap: none" in lines and RESEARCH_NOTICE in lines
    assert not any(ch.isdigit() for line in lines[:2] for ch in line)  # no score at all
    rgb = overlay.annotated_rgb(image, none)
    grey = overlay.composite_rgb(image, None)
    _, _, bottom, right = text_box(rgb, grey)
    outside = np.ones(image.shape, bool)
    outside[:bottom, :right] = False
    assert np.array_equal(rgb[outside], grey[outside])  # no heatmap drawn
    sc = dr.build_secondary_capture(src, rgb, none)
    assert "Pneumonia: not available" in sc.ImageComments
    assert "Lung-cancer association: not available" in sc.ImageComments
    with pytest.raises(ValueError, match="not available"):
        overlay.annotated_rgb(image, none, head="pneumonia")


def test_result_lines(scored):
    _, result, _ = scored[RG1.name]
    lines = overlay.result_lines(result)
    p = result.head("pneumonia")
    assert lines[0].startswith(f"Pneumonia: {p.probability:.2f} [OUTSIDE INTENDED USE] "
                               f"({'positive' if p.positive else 'negative'} at threshold {p.threshold:.2f}; sens ")
    assert lines[1] == "Lung-cancer association: not available"
    assert lines[2] == "Heatmap: Pneumonia (Grad-CAM)"
    assert lines[3] == f"Model: {result.model_name} {result.model_version} sha256:{result.model_sha256[:12]}"
    assert lines[4] == RESEARCH_NOTICE
    src = dr.read_source_header(RG1)
    joined = "\n".join(lines)
    for identifier in ("CompressedSamples", "9RG1", src.StudyInstanceUID, "exam Number"):
        assert identifier not in joined


def test_heatmap_colours_are_the_guis():
    from matplotlib import colormaps

    lut = overlay.heatmap_rgba_lut()
    assert lut.shape == (256, 4) and lut[0, 3] == 0 and lut[-1, 3] == 204 and lut[160, 3] == 204
    expected = np.rint(colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert np.abs(lut[:, :3].astype(int) - expected).max() <= 1


def test_text_box_on_a_small_image():
    grey = td.kermany_grey(KERMANY_JPEG)  # 224 x 224
    rgb = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    lines = ["Pneumonia: 0.87 (positive at threshold 0.19; sens 0.97 / spec 0.96 on validation)",
             "Lung-cancer association: not available", RESEARCH_NOTICE]
    out = overlay.burn_in_text(rgb, lines)
    top, left, bottom, right = text_box(out, rgb)
    assert (top, left) == (0, 0) and right <= 0.4 * 224 + 1
    assert (out[:bottom, :right].min(axis=2) >= 200).sum() > 20
    assert np.array_equal(out[bottom:], rgb[bottom:])


def test_sc_preview_png(scored):
    """The picture of one SC, for people to look at (out/ is git-ignored)."""
    image, result, src = scored[RG1.name]
    sc = dr.build_secondary_capture(src, overlay.annotated_rgb(image, result), result)
    out = td.REPO_ROOT / "out"
    out.mkdir(exist_ok=True)
    Image.fromarray(sc.pixel_array).save(out / "sc_preview.png")
    assert (out / "sc_preview.png").stat().st_size > 10_000


# --- errors -----------------------------------------------------------------------------------


def test_export_errors(tmp_path, scored):
    with pytest.raises(dr.ExportError, match=r"needs a DICOM source image; .*IM-0115-0001\.jpeg is a JPEG$"):
        dr.read_source_header(KERMANY_JPEG)
    png = tmp_path / "kermany.png"
    Image.open(KERMANY_JPEG).save(png)
    with pytest.raises(dr.ExportError, match=r"kermany\.png is a PNG$"):
        dr.read_source_header(png)
    text = tmp_path / "notes.dcm"
    text.write_text("not an image\n" * 20)
    with pytest.raises(dr.ExportError, match="not a DICOM file"):
        dr.read_source_header(text)
    with pytest.raises(dr.ExportError, match="cannot read"):
        dr.read_source_header(tmp_path / "missing.dcm")

    _, result, src = scored[NIH.name]
    for bad in (None, dataclasses.replace(result, heads=())):
        with pytest.raises(dr.ExportError, match="no AI result"):
            dr.build_sr(src, bad)
        with pytest.raises(dr.ExportError, match="no AI result"):
            dr.build_secondary_capture(src, np.zeros((4, 4, 3), np.uint8), bad)
    with pytest.raises(dr.ExportError, match="SHA-256"):
        dr.build_sr(src, dataclasses.replace(result, model_sha256=""))
    with pytest.raises(dr.ExportError, match="RGB"):
        dr.build_secondary_capture(src, np.zeros((4, 4), np.uint8), result)
    for message in ("needs a DICOM source image", "no AI result"):
        assert "\n" not in message


def test_write_is_atomic(scored, tmp_path):
    _, result, src = scored[NIH.name]
    target = tmp_path / "sr.dcm"
    target.write_bytes(b"previous")
    broken = dr.build_sr(src, result)
    del broken.file_meta.TransferSyntaxUID  # enforce_file_format refuses it
    with pytest.raises(dr.ExportError, match="cannot write"):
        dr.write_dataset(broken, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["sr.dcm"]


# --- sources as they come: dual-format files, Japanese names, non-conformant values -------------------


def source_copy(path: Path, tmp_path: Path, name: str = "source.dcm", **values) -> Path:
    """A copy of a real DICOM file in tmp_path with ``values`` set (written as they are, even
    when they break their VR: pydicom's warnings about that are the point of the test)."""
    import warnings

    dst = tmp_path / name
    if not values:
        shutil.copyfile(path, dst)
        return dst
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(dst)
    return dst


def build_write_read(src, result, tmp_path: Path) -> dict[str, pydicom.Dataset]:
    """The SR and SC of ``result`` on ``src``, written and read back."""
    rgb = np.zeros((int(src.Rows), int(src.Columns), 3), np.uint8)
    out = {}
    for kind, ds in (("sr", dr.build_sr(src, result)), ("sc", dr.build_secondary_capture(src, rgb, result))):
        path = tmp_path / f"{kind}.dcm"
        dr.write_dataset(ds, path)
        out[kind] = pydicom.dcmread(path)
        assert dr.vr_problems(out[kind]) == [], kind
    hd.sr.srread(tmp_path / "sr.dcm")
    return out


def test_dual_format_dicom_with_a_tiff_preamble(scored, shared_data, tmp_path):
    """RG1_UNCR starts with a TIFF header in its preamble ("II*" at 0) and has "DICM" at 128:
    a valid DICOM file (PS3.10 7.5), not a TIFF."""
    path = source_copy(td.rg1(shared_data, "UNCR"), tmp_path)
    head = path.read_bytes()[:132]
    assert head.startswith(b"II*\x00") and head[128:] == b"DICM"
    src = dr.read_source_header(path)
    assert src.SOPInstanceUID == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    _, result, _ = scored[RG1.name]
    out = build_write_read(src, result, tmp_path)
    assert out["sr"].StudyInstanceUID == src.StudyInstanceUID
    # a real TIFF (no DICM at 128) is still refused as one
    tiff = tmp_path / "kermany.tif"
    Image.open(KERMANY_JPEG).save(tiff)
    with pytest.raises(dr.ExportError, match=r"kermany\.tif is a TIFF$"):
        dr.read_source_header(tiff)


def test_japanese_name_with_iso_2022_code_extensions(scored, shared_data, tmp_path):
    """Specific Character Set ['', 'ISO 2022 IR 87'] (the usual Japanese form): highdicom refuses
    the empty first value; the SR and SC are built with 'ISO 2022 IR 6' in its place."""
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    path = source_copy(td.rg1(shared_data, "UNCR"), tmp_path, SpecificCharacterSet=["", "ISO 2022 IR 87"],
                       PatientName=name)
    assert b"\x1b$B" in path.read_bytes()[:4096]  # really encoded as ISO 2022 (JIS X 0208)
    src = dr.read_source_header(path)
    assert list(src.SpecificCharacterSet) == ["", "ISO 2022 IR 87"] and str(src.PatientName) == name
    _, result, _ = scored[RG1.name]
    out = build_write_read(src, result, tmp_path)
    for kind, ds in out.items():
        assert list(ds.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"], kind
        assert str(ds.PatientName) == name, kind
        assert ds.PatientName.ideographic == "山田^太郎" and ds.PatientName.phonetic == "やまだ^たろう"
    assert list(src.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]  # the source header is not changed


@pytest.mark.parametrize(("keyword", "value"), [
    ("PatientSex", "m"), ("PatientSex", "X"), ("PatientBirthDate", "1960-01-01"), ("PatientBirthDate", "19601301"),
    ("StudyDate", "2020/01/01"), ("StudyTime", "25:99"), ("StudyTime", "12:30:00"), ("PatientAge", "81"),
])
def test_nonconformant_source_values(scored, tmp_path, monkeypatch, keyword, value):
    """Values that break their VR or enumerated values are emptied (Type 2) or dropped before
    highdicom sees them; the export goes through and the value is nowhere in the output."""
    path = source_copy(RG1, tmp_path, **{keyword: value})
    src = dr.read_source_header(path)
    assert str(src[keyword].value) == value
    _, result, _ = scored[RG1.name]
    out = build_write_read(src, result, tmp_path)
    for kind, ds in out.items():
        if keyword == "PatientAge":  # Type 3: dropped
            assert keyword not in ds, kind
        else:  # Type 2: present and empty ("unknown")
            assert keyword in ds and not ds[keyword].value, kind
        assert ds.PatientID == src.PatientID and ds.StudyInstanceUID == src.StudyInstanceUID
    assert str(src[keyword].value) == value  # the source header is not changed

    # were a value to reach highdicom uncleaned, the error names the attribute, never the value
    monkeypatch.setattr(dr, "_clean_source", lambda ds, depth=0: [])
    if keyword == "PatientAge":  # highdicom copies it without a look (and _drop_invalid_copies drops it)
        assert keyword not in dr.build_sr(src, result)
        return
    rgb = np.zeros((int(src.Rows), int(src.Columns), 3), np.uint8)
    for build in (lambda: dr.build_sr(src, result), lambda: dr.build_secondary_capture(src, rgb, result)):
        with pytest.raises(dr.ExportError) as info:
            build()
        message = str(info.value)
        assert keyword in message and value not in message, message
        assert "\n" not in message


def test_conform_image_repairs_only_what_is_invalid_or_missing(shared_data):
    """Image copies: the real RG1 header (Pixel Spacing [0, 0], Sensitivity 0) and the real NIH
    Secondary Capture (Patient's Age "81", no Conversion Type, no Type 2 study attributes)."""
    rg1 = pydicom.dcmread(td.rg1(shared_data, "UNCR"), stop_before_pixels=True)
    before = pydicom.dcmread(td.rg1(shared_data, "UNCR"), stop_before_pixels=True)
    changed = dr.conform_image(rg1)
    assert [float(v) for v in before.PixelSpacing] == [0.0, 0.0]
    assert "PixelSpacing" not in rg1 and "Sensitivity" not in rg1
    assert set(changed) == {"PixelSpacing", "Sensitivity"}  # RG1 has all its Type 2 attributes
    assert "Laterality" not in rg1  # CHEST: unpaired, none needed
    for elem in before:
        if elem.keyword not in changed:
            assert rg1[elem.tag] == elem, elem.keyword  # nothing else touched

    nih = pydicom.dcmread(td.nih(shared_data), stop_before_pixels=True)
    assert nih.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and "ConversionType" not in nih
    changed = dr.conform_image(nih)
    assert "PatientAge" not in nih  # "81" is no AS value (it needs "081Y"); left out, not guessed
    assert nih.ConversionType == dr.DEFAULT_CONVERSION_TYPE
    for kw in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "SeriesNumber",
               "InstanceNumber", "Laterality", "PatientOrientation"):
        assert kw in nih and nih[kw].value in (None, "", []), kw
        assert kw in changed
    assert dr.vr_problems(nih) == []


def _sr_texts(ds) -> list[str]:
    out = []

    def walk(items):
        for item in items:
            if getattr(item, "ValueType", "") == "TEXT":
                out.append(str(item.TextValue))
            walk(getattr(item, "ContentSequence", []))

    walk(ds.ContentSequence)
    return out


def test_sr_says_outside_intended_use_with_and_without_a_number(scorer, scored):
    """Set aside: no measurement, the reason as a comment. Scored anyway: the number, marked."""
    image, anyway, src = scored[NIH.name]
    texts = _sr_texts(dr.build_sr(src, anyway))
    assert any(t.startswith("OUTSIDE INTENDED USE (scored anyway, outside this head's intended use: adult "
                            "radiograph (age 81 in the header)") for t in texts), texts
    aside = scorer.score(image)
    assert aside.head("pneumonia").status == "outside_intended_use"
    sr = dr.build_sr(src, aside)
    texts = _sr_texts(sr)
    assert ("Pneumonia: not scored, outside this head's intended use: adult radiograph (age 81 in the header); "
            "this head was trained on children aged 1-5") in texts
    assert not any("calibrated probability" in t for t in texts)


# --- the nodule/mass finding's box: SR image region, burnt-in box --------------------------------
# Hand-built results (no network ran): the lung-cancer association head positive with a box, or not.

BOX = (100.0, 120.0, 300.0, 340.0)  # x0, y0, x1, y1 in image pixels (columns, rows)


@pytest.fixture(scope="module")
def nih():
    return open_image(str(NIH)), dr.read_source_header(NIH)


def scoords(ds) -> list:
    return [i for i in content_items(ds) if i.ValueType == "SCOORD"]


def test_finding_marks_only_for_a_positive_head_with_a_location():
    assert fm.finding_marks(None) == ()
    (mark,) = fm.finding_marks(nodule_result("x", BOX))
    assert (mark.head, mark.label, mark.box) == ("lung_cancer_association", "Nodule/mass 73%", BOX)
    assert fm.finding_marks(nodule_result("x", BOX, positive=False)) == ()
    assert fm.finding_marks(nodule_result("x", None)) == ()
    # clipped to the image; a box wholly outside is no mark
    assert fm.finding_marks(nodule_result("x", (-10, 5, 50, 900)), (800, 600))[0].box == (0, 5, 50, 800)
    assert fm.finding_marks(nodule_result("x", (700, 5, 750, 50)), (800, 600)) == ()


def test_sr_marks_the_positive_finding_with_an_image_region(nih, tmp_path):
    image, src = nih
    path = tmp_path / "sr.dcm"
    dr.write_dataset(dr.build_sr(src, nodule_result(image.ref.path, BOX)), path)
    ds = pydicom.dcmread(path)
    (region,) = scoords(ds)
    assert region.GraphicType == "POLYLINE"
    x0, y0, x1, y1 = BOX  # SCOORD: column\row pairs, closed (the last point is the first)
    assert np.allclose(np.asarray(region.GraphicData, float), [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0])
    (ref,) = region.ContentSequence  # SELECTED FROM the source image, the one the SR is about
    assert ref.ValueType == "IMAGE" and ref.RelationshipType == "SELECTED FROM"
    sop = ref.ReferencedSOPSequence[0]
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
    # the planar ROI group (TID 1410) still carries the probability and "Present"
    report = hd.sr.ComprehensiveSR.from_dataset(ds).content
    (group,) = report.get_planar_roi_measurement_groups()
    assert group.roi is not None and group.get_measurements()[0].value == pytest.approx(0.73)
    assert [str(e.value.value) for e in group.get_qualitative_evaluations()] == ["52101004"]
    texts_ = texts(ds)
    assert any(t.startswith("Nodule/mass model: TEST FIXTURE nodule/mass") for t in texts_)
    assert dr.vr_problems(ds) == []
    problems = dsrdump_problems(path)
    assert not problems, problems
    # negative, or no location: no region, the plain TID 1501 group with the source image
    for result in (nodule_result(image.ref.path, BOX, positive=False), nodule_result(image.ref.path, None)):
        ds = dr.build_sr(src, result)
        assert scoords(ds) == []
        assert len(hd.sr.ComprehensiveSR.from_dataset(ds).content.get_image_measurement_groups()) == 1


def outline_pixels(shape, box, width=2):
    """A mask of the box's outline ring (``width`` px inside its edge)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    mask[y0 + width:y1 - width, x0 + width:x1 - width] = False
    return mask


def test_secondary_capture_burns_in_the_box(nih, tmp_path):
    image, src = nih
    h, w = image.shape
    box = (0.6 * w, 0.6 * h, 0.6 * w + 200, 0.6 * h + 220)  # away from the text box (top left)
    marked, plain = nodule_result(image.ref.path, box), nodule_result(image.ref.path, None)
    rgb, lines = fm.marked_rgb(image, marked)
    rgb0, lines0 = fm.marked_rgb(image, plain)
    ring = outline_pixels(image.shape, box)
    changed = np.any(rgb != rgb0, axis=2)
    assert changed[ring].mean() > 0.9  # the outline is drawn
    orange = (rgb[..., 0] > 200) & (rgb[..., 1] > 100) & (rgb[..., 1] < 180) & (rgb[..., 2] < 60)
    assert orange[ring].mean() > 0.3
    inner = np.zeros(image.shape, bool)
    inner[round(box[1]) + 12:round(box[3]) - 12, round(box[0]) + 12:round(box[2]) - 12] = True
    assert not changed[inner].any()  # the finding itself is not covered
    (text,) = [t for t in lines if "marked on the image" in t]
    assert text.startswith(f"Nodule/mass 73%: marked on the image (box x {box[0]:.0f}-{box[2]:.0f}")
    assert not any("marked" in t for t in lines0)
    sc = dr.build_secondary_capture(src, rgb, marked)
    assert "finding boxes" in sc.ImageComments and "Nodule/mass 73%: marked on the image" in sc.ImageComments
    assert "Nodule/mass model: TEST FIXTURE nodule/mass" in sc.DerivationDescription
    assert "box (orange) drawn" in sc.DerivationDescription
    assert np.array_equal(sc.pixel_array, rgb)
    # a picture at half size: the box follows the scale
    small = np.ascontiguousarray(rgb0[::2, ::2])
    half = fm.draw_finding_boxes(small, marked, scale=0.5)
    assert np.any(half != small, axis=2)[outline_pixels(half.shape[:2], [v / 2 for v in box])].mean() > 0.9
