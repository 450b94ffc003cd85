"""The Qt-free annotation core and the GSPS: lengths in mm with the right spacing (or px with a
note), angles, ROI statistics against numpy directly, undo, and a DICOM presentation state round trip
on the real files (validated with dciodvfy where installed)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import cxr_testdata as td
import numpy as np
import pydicom
import pytest

from cxr_viewer.clinical.annotations import (
    Angle,
    AnnotationStore,
    Arrow,
    EllipseRoi,
    RectRoi,
    Ruler,
    Text,
    angle_degrees,
    label_text,
    length,
    outline_paths,
    roi_mask,
    roi_stats,
)
from cxr_viewer.clinical.dicom_results import ExportError, read_source_header, write_dataset
from cxr_viewer.clinical.gsps import GSPS_SOP_CLASS, build_gsps, find_gsps, gsps_name, read_gsps
from cxr_viewer.io.display import Window
from cxr_viewer.io.image import LoadedImage, open_image
from cxr_viewer.io.study import ImageMeta, ImageRef, Spacing

DICOM = td.SHARED_DATA / "dicom"
SIIM = DICOM / "torchxrayvision_siim" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH = DICOM / "nhsx_nih" / "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
RG1 = DICOM / "pydicom-data_RG1" / "RG1_UNCR.dcm"
DCIODVFY = shutil.which("dciodvfy")


def all_kinds():
    return [Ruler(((10, 10), (110, 10))), Angle(((10, 10), (50, 50), (90, 10))), RectRoi(((100, 100), (200, 150))),
            EllipseRoi(((300, 300), (400, 350))), Arrow(((5, 5), (60, 70))), Text(((20, 400),), text="Look here")]


# --- lengths and angles -------------------------------------------------------------------------


def test_length_in_mm_px_and_detector_wording():
    sp = Spacing(0.168, 0.168, "mm", "PixelSpacing")
    out = length((0, 0), (300, 400), sp)
    assert out.px == pytest.approx(500.0)
    assert out.mm == pytest.approx(500 * 0.168)
    assert out.text == "84.0 mm"
    detector = Spacing(0.1, 0.1, "mm (detector)", "ImagerPixelSpacing")
    assert length((0, 0), (100, 0), detector).text == "10.0 mm at the detector"
    aniso = Spacing(0.2, 0.1, "mm", "PixelSpacing")  # rows 0.2 mm apart, columns 0.1 mm
    assert length((0, 0), (30, 40), aniso).mm == pytest.approx(math.hypot(30 * 0.1, 40 * 0.2))
    none = length((0, 0), (3, 4), None)
    assert none.mm is None and none.text == "5.0 px (no valid pixel spacing)"


def test_angle_degrees_pixels_and_physical():
    assert angle_degrees((10, 0), (0, 0), (0, 10)) == pytest.approx(90.0)
    assert angle_degrees((10, 0), (0, 0), (10, 10)) == pytest.approx(45.0)
    assert angle_degrees((10, 0), (0, 0), (-10, 0)) == pytest.approx(180.0)
    assert angle_degrees((0, 0), (0, 0), (1, 1)) == 0.0  # a zero-length arm
    # rows twice as far apart as columns: a 45 degree diagonal in pixels is steeper in mm
    aniso = Spacing(0.2, 0.1, "mm", "PixelSpacing")
    assert angle_degrees((10, 0), (0, 0), (10, 10), aniso) == pytest.approx(math.degrees(math.atan2(2.0, 1.0)))


# --- regions of interest against numpy ----------------------------------------------------------------


def synthetic_image(slope: float = 2.0, intercept: float = -1024.0) -> LoadedImage:
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(60, 80)).astype(np.uint16)
    values = (stored.astype(np.float32) * slope + intercept).astype(np.float32)
    meta = ImageMeta(rows=60, cols=80, spacing=Spacing(0.5, 0.25, "mm", "PixelSpacing"))
    ref = ImageRef(path="/synthetic.dcm", kind="dicom", meta=meta)
    return LoadedImage(ref, 0, stored, values, False, value_unit="HU")


def test_rect_roi_statistics_equal_numpy_on_stored_and_modality_values():
    image = synthetic_image()
    roi = RectRoi(((10.2, 5.0), (30.0, 25.7)))  # corners anywhere: pixels whose centres are inside
    mask = roi_mask(roi, image.shape)
    # pixel centres c + 0.5 in [10.2, 30.0] -> columns 10..29; rows r + 0.5 in [5.0, 25.7] -> rows 5..25
    expected = np.zeros(image.shape, bool)
    expected[5:26, 10:30] = True
    assert np.array_equal(mask, expected)
    stats = roi_stats(roi, image.stored, image.values, image.ref.meta.spacing, image.value_unit)
    st, va = image.stored[5:26, 10:30].astype(np.float64), image.values[5:26, 10:30].astype(np.float64)
    assert stats.n_pixels == st.size == 21 * 20
    assert stats.stored.mean == pytest.approx(st.mean()) and stats.stored.sd == pytest.approx(st.std())
    assert (stats.stored.min, stats.stored.max) == (st.min(), st.max())
    assert stats.values.mean == pytest.approx(va.mean()) and stats.values.sd == pytest.approx(va.std())
    assert (stats.values.min, stats.values.max) == (va.min(), va.max())
    assert stats.area == pytest.approx(21 * 20 * 0.5 * 0.25) and stats.area_unit == "mm²"
    text = label_text(roi, image)
    assert "HU" in text and "Stored:" in text and f"{stats.area:.1f} mm²" in text
    # corners given the other way round: the same region
    flipped = RectRoi(((30.0, 25.7), (10.2, 5.0)))
    assert np.array_equal(roi_mask(flipped, image.shape), mask)


def test_ellipse_roi_mask_and_statistics_equal_numpy():
    image = synthetic_image()
    roi = EllipseRoi(((20, 10), (60, 50)))  # centre (40, 30), radii 20
    yy, xx = np.mgrid[:60, :80]
    expected = ((xx + 0.5 - 40) / 20) ** 2 + ((yy + 0.5 - 30) / 20) ** 2 <= 1
    mask = roi_mask(roi, image.shape)
    assert np.array_equal(mask, expected)
    stats = roi_stats(roi, image.stored, image.values, None)
    assert stats.area_unit == "px²" and stats.area == expected.sum()
    assert stats.values.mean == pytest.approx(image.values[expected].astype(np.float64).mean())
    assert stats.stored.max == image.stored[expected].max()
    # partly outside the image: only the pixels inside count; wholly outside: none
    edge = EllipseRoi(((-20, -20), (20, 20)))
    assert roi_mask(edge, image.shape).sum() == np.sum((((xx + 0.5) / 20) ** 2 + ((yy + 0.5) / 20) ** 2) <= 1)
    out = roi_stats(RectRoi(((200, 200), (300, 300))), image.stored, image.values, None)
    assert out.n_pixels == 0 and out.values is None and "no pixel centre inside" in out.lines()


def test_roi_without_rescale_shows_one_set_of_values():
    image = synthetic_image(1.0, 0.0)
    text = label_text(RectRoi(((0, 0), (10, 10))), image)
    assert "Stored:" not in text


def test_annotations_validate_and_outline():
    with pytest.raises(ValueError):
        Ruler(((0, 0),))
    with pytest.raises(ValueError):
        Ruler(((0, 0), (float("nan"), 1)))
    arrow = Arrow(((0, 0), (100, 0)))
    shaft, head = outline_paths(arrow)
    assert shaft == [(0.0, 0.0), (100.0, 0.0)] and head[1] == (100.0, 0.0)
    assert head[0][0] < 100 and head[0][1] == pytest.approx(-head[2][1])
    assert len(outline_paths(EllipseRoi(((0, 0), (10, 10))))[0]) == 73
    assert outline_paths(Text(((1, 1),), text="x")) == []
    moved = arrow.moved(5, 5)
    assert moved.uid == arrow.uid and moved.points == ((5.0, 5.0), (105.0, 5.0))


def test_store_add_move_delete_undo_per_image():
    store = AnnotationStore()
    a, b = ("a.dcm", 0), ("b.dcm", 0)
    r = Ruler(((0, 0), (10, 0)))
    store.add(a, r)
    store.add(b, Text(((1, 1),), text="b"))
    moved = r.moved(1, 2)
    store.replace(a, moved)
    assert store.get(a) == (moved,)
    store.remove(a, r.uid)
    assert store.get(a) == ()
    assert store.undo(a) and store.get(a) == (moved,)  # delete undone
    assert store.undo(a) and store.get(a) == (r,)  # move undone
    assert store.undo(a) and store.get(a) == ()  # add undone
    assert not store.undo(a)
    assert len(store.get(b)) == 1  # the other image untouched


# --- on the real files ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("shared_data")
def test_ruler_on_the_real_files_mm_only_with_a_valid_spacing():
    ruler = Ruler(((100, 200), (400, 600)))  # 500 px
    siim = open_image(str(SIIM))
    assert siim.ref.meta.spacing.col_mm == pytest.approx(0.168)
    assert label_text(ruler, siim) == f"{500 * 0.168:.1f} mm"
    rg1 = open_image(str(RG1))  # PixelSpacing [0, 0]: no mm
    assert rg1.ref.meta.spacing is None
    assert label_text(ruler, rg1) == "500.0 px (no valid pixel spacing)"
    nih = open_image(str(NIH))  # no spacing at all
    assert label_text(ruler, nih) == "500.0 px (no valid pixel spacing)"


@pytest.mark.usefixtures("shared_data")
def test_roi_statistics_on_rg1_equal_numpy_on_the_stored_pixels():
    image = open_image(str(RG1))
    roi = EllipseRoi(((500, 600), (900, 1100)))
    mask = roi_mask(roi, image.shape)
    stats = roi_stats(roi, image.stored, image.values, image.ref.meta.spacing)
    raw = pydicom.dcmread(str(RG1)).pixel_array  # the file's stored values, read independently
    assert stats.stored.mean == pytest.approx(raw[mask].astype(np.float64).mean())
    assert stats.stored.sd == pytest.approx(raw[mask].astype(np.float64).std())
    assert (stats.stored.min, stats.stored.max) == (raw[mask].min(), raw[mask].max())
    assert stats.area_unit == "px²" and stats.area == mask.sum()


def dciodvfy_errors(path) -> list[str]:
    r = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [ln.strip() for ln in (r.stdout + "\n" + r.stderr).splitlines() if re.match(r"\s*Error\b", ln)]


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize("source", [SIIM, RG1, NIH], ids=["siim_cr", "rg1_mono1", "nih_dx"])
def test_gsps_round_trip_on_real_files(source, tmp_path):
    image = open_image(str(source))
    header = read_source_header(str(source))
    anns = all_kinds()
    labels = {a.uid: label_text(a, image) for a in anns}
    window = Window(1234.0, 567.0, "LINEAR", "Reading window")
    ds = build_gsps(header, anns, labels=labels, window=window)
    path = tmp_path / gsps_name(str(source))
    write_dataset(ds, path)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == GSPS_SOP_CLASS and back.Modality == "PR"
    assert back.StudyInstanceUID == header.StudyInstanceUID
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == header.SeriesInstanceUID
    assert back.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    layers = {item.GraphicLayer for item in back.GraphicLayerSequence}
    assert layers == {"MEASUREMENTS", "ANNOTATIONS", "MEASURED VALUES"}
    # MONOCHROME1 (RG1) is shown inverted as usual: the presentation says INVERSE
    assert back.PresentationLUTShape == ("INVERSE" if image.monochrome1 else "IDENTITY")
    content = read_gsps(path, header.SOPInstanceUID)
    assert content.annotations == tuple(anns)  # same kinds, points, texts and UIDs
    assert content.window.center == 1234.0 and content.window.width == 567.0
    assert content.window.name == "Reading window" and content.skipped == 0
    assert content.inverse == image.monochrome1
    values = [t.UnformattedTextValue for g in back.GraphicAnnotationSequence if g.GraphicLayer == "MEASURED VALUES"
              for t in g.TextObjectSequence]
    assert any("deg" in v for v in values)  # the angle's value, in the default repertoire
    assert find_gsps(str(tmp_path), header.SOPInstanceUID) == [str(path)]
    assert find_gsps(str(tmp_path), "1.2.3") == []
    if DCIODVFY:
        assert dciodvfy_errors(path) == []


@pytest.mark.usefixtures("shared_data")
def test_gsps_needs_annotations_and_a_dicom_source(tmp_path):
    header = read_source_header(str(SIIM))
    with pytest.raises(ExportError, match="no annotations"):
        build_gsps(header, [])
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    with pytest.raises(ExportError, match="needs a DICOM source"):
        read_source_header(str(png))


@pytest.mark.usefixtures("shared_data")
def test_gsps_from_elsewhere_is_read_as_well_as_it_can_be(tmp_path):
    header = read_source_header(str(SIIM))
    ds = build_gsps(header, [Ruler(((1, 2), (3, 4))), RectRoi(((5, 6), (7, 8)))])
    for group in ds.GraphicAnnotationSequence:  # another viewer: no tracking identifiers
        for item in group.get("GraphicObjectSequence") or []:
            for keyword in ("TrackingID", "TrackingUID"):
                if keyword in item:
                    delattr(item, keyword)
    content = read_gsps(ds, header.SOPInstanceUID)
    assert [a.kind for a in content.annotations] == ["ruler", "rect"]
    assert content.annotations[1].bounds() == (5.0, 6.0, 7.0, 8.0)
    # another image's UID: nothing of it
    assert read_gsps(ds, "1.2.3.4").annotations == ()


# --- exports: the Secondary Capture and the report page show the annotations -----------------------------


def fake_result(image) -> object:
    from cxr_viewer.ai.inference import HeadScore, ScoreResult

    head = HeadScore("pneumonia", "Pneumonia", True, 0.3, False, 0.5, 0.9, 0.8, meaning="test")
    return ScoreResult(image.ref.path, image.frame, (head,), {}, "test model", "1", "ab" * 32, "cpu")


def yellow(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 200) & (g > 150) & (b < 100)


def test_draw_annotations_burns_lines_labels_and_arrowheads():
    from cxr_viewer.clinical.annotation_render import annotation_summary, draw_annotations

    image = synthetic_image()
    rgb = np.zeros((60, 80, 3), np.uint8)
    ruler, arrow = Ruler(((5, 30), (75, 30))), Arrow(((5, 55), (40, 55)))
    out = draw_annotations(rgb, [ruler, arrow], image)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and not rgb.any()  # a new array
    assert yellow(out)[30, 5:40].all()  # the ruler's line (its label box is at the right end)
    assert yellow(out)[50:60, 30:40].sum() > 10  # the filled arrowhead
    assert np.array_equal(draw_annotations(rgb, [], image), rgb)
    with pytest.raises(ValueError, match="80 x 60"):
        draw_annotations(np.zeros((10, 10, 3), np.uint8), [ruler], image)
    lines = annotation_summary([ruler, arrow, Text(((1, 1),), text="hi")], image)
    assert lines[0] == f"Ruler: {length(*ruler.points, image.ref.meta.spacing).text}"
    assert lines[1:] == ["Arrow", "Text: hi"]


@pytest.mark.usefixtures("shared_data")
def test_secondary_capture_and_report_page_show_the_annotations(tmp_path):
    from cxr_viewer.clinical.export import ExportRequest, export_dicom_task, report_page
    from cxr_viewer.common.tasks import run_to_completion

    source = tmp_path / "siim.dcm"
    shutil.copy(SIIM, source)
    image = open_image(str(source))
    result = fake_result(image)
    ruler = Ruler(((200, 600), (800, 600)))
    roi = RectRoi(((300, 300), (500, 450)))
    plain, marked = tmp_path / "plain_sc.dcm", tmp_path / "marked_sc.dcm"
    run_to_completion(export_dicom_task(image, result, ExportRequest(sc=str(plain))))
    run_to_completion(export_dicom_task(image, result, ExportRequest(sc=str(marked)), annotations=(ruler, roi)))
    a, b = pydicom.dcmread(plain), pydicom.dcmread(marked)
    pa, pb = a.pixel_array, b.pixel_array
    assert not yellow(pa)[600, 250:750].any() and yellow(pb)[600, 250:750].mean() > 0.95
    assert yellow(pb)[300:451, 300].mean() > 0.9  # the region's left edge
    expected = f"{600 * 0.168:.1f} mm"
    assert f"User annotations: Ruler: {expected}" in str(b.ImageComments)
    assert str(b.BurnedInAnnotation) == "YES"
    if DCIODVFY:
        assert dciodvfy_errors(marked) == []
    page = report_page(image, result, None, annotations=(ruler, roi))
    assert yellow(page.rgb)[600, 250:750].mean() > 0.95
    assert f"Annotations (user): Ruler: {expected}; Rectangle ROI: area " in page.image_caption
    assert not yellow(report_page(image, result, None).rgb)[600, 250:750].any()


def test_presentation_states_in_a_folder_are_not_listed_as_broken_files(tmp_path):
    from cxr_viewer.io.index import index

    shutil.copy(SIIM, tmp_path / "siim.dcm")
    header = read_source_header(str(SIIM))
    write_dataset(build_gsps(header, [Ruler(((0, 0), (5, 5)))]), tmp_path / "siim_gsps.dcm")
    idx = index([str(tmp_path)])
    assert idx.image_count == 1 and idx.errors == ()
    assert idx.presentation_states == (str(tmp_path / "siim_gsps.dcm"),)
