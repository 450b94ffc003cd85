"""DICOM decoding and the display pipeline, on the real files in ../shared/data/dicom and on
DICOM wrappers built around their real pixels.

The VOI checks compare against the formulas of DICOM PS3.3 C.11.2.1.2 (window centre/width
with VOI LUT Function LINEAR, LINEAR_EXACT and SIGMOID), with output range 0..255.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid

from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.io.display import VoiLut, Window, display_mapping, render_uint8
from cxr_viewer.io.image import load_image, open_image
from cxr_viewer.io.index import index

pytestmark = pytest.mark.shared_data


def render_default(img) -> np.ndarray:
    return render_uint8(display_mapping(img.values, img.default_voi(), img.monochrome1))


def render_with(img, voi, invert: bool = False) -> np.ndarray:
    return render_uint8(display_mapping(img.values, voi, img.monochrome1 != invert))


# --- PS3.3 C.11.2.1.2 reference formulas (ymin 0, ymax 255) ---------------------------------


def ref_linear(x, c, w):
    x = np.asarray(x, np.float64)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y)


def ref_linear_exact(x, c, w):
    x = np.asarray(x, np.float64)
    y = ((x - c) / w + 0.5) * 255.0
    y = np.where(x <= c - w / 2, 0.0, y)
    return np.where(x > c + w / 2, 255.0, y)


def ref_sigmoid(x, c, w):
    x = np.asarray(x, np.float64)
    return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))


REFERENCE = {"LINEAR": ref_linear, "LINEAR_EXACT": ref_linear_exact, "SIGMOID": ref_sigmoid}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rg1_crop(shared_data) -> np.ndarray:
    """A 256 x 256 piece of the real 15-bit RG1 radiograph, through the lung field."""
    arr = td.real_pixels(td.rg1(shared_data))
    return td.crop(arr, 256, 800, 500)


@pytest.fixture(scope="module")
def labels(shared_data) -> list[dict]:
    with open(td.dicom_dir(shared_data) / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- the real files ---------------------------------------------------------------------------


def test_labels_cover_every_dicom(shared_data, labels):
    listed = {r["file"] for r in labels}
    on_disk = {str(p.relative_to(td.dicom_dir(shared_data))) for p in td.all_dicoms(shared_data)}
    assert listed == on_disk and len(listed) == 6


def test_every_real_dicom_opens_and_renders(shared_data, labels):
    for row in labels:
        path = td.dicom_dir(shared_data) / row["file"]
        img = open_image(str(path))
        rows, cols = int(row["rows"]), int(row["cols"])
        meta = img.ref.meta
        assert (meta.rows, meta.cols) == (rows, cols), row["file"]
        assert meta.bits_stored == int(row["bits_stored"]), row["file"]
        assert meta.modality == row["modality"]
        assert row["transfer_syntax"].split()[0] in meta.transfer_syntax
        assert img.shape == (rows, cols) and img.values.dtype == np.float32
        assert img.monochrome1 == row["photometric"].startswith("MONOCHROME1"), row["file"]
        out = render_default(img)
        assert out.shape == (rows, cols) and out.dtype == np.uint8
        # a real radiograph shows a spread of greys, not a blank or saturated frame
        assert out.std() > 20 and len(np.unique(out)) > 100, row["file"]


def test_fake_monochrome1_renders_as_exact_inverse(shared_data):
    original = open_image(str(td.siim(shared_data)))
    fake = open_image(str(td.fake_mono1(shared_data)))
    assert not original.monochrome1 and fake.monochrome1
    np.testing.assert_array_equal(fake.stored, original.stored)  # the tag flips the LUT only
    a, b = render_default(original), render_default(fake)
    np.testing.assert_array_equal(b.astype(np.int16), 255 - a.astype(np.int16))
    # the user's invert toggle undoes MONOCHROME1
    np.testing.assert_array_equal(render_with(fake, fake.default_voi(), invert=True), a)


def test_rg1_encodings_render_identically(shared_data):
    uncr = open_image(str(td.rg1(shared_data, "UNCR")))
    j2kr = open_image(str(td.rg1(shared_data, "J2KR")))
    j2ki = open_image(str(td.rg1(shared_data, "J2KI")))
    np.testing.assert_array_equal(j2kr.stored, uncr.stored)
    assert (int(uncr.stored.min()), int(uncr.stored.max())) == (874, 26479)
    ref = render_default(uncr)
    np.testing.assert_array_equal(render_default(j2kr), ref)
    lossy = render_default(j2ki).astype(np.int16)
    diff = np.abs(lossy - ref.astype(np.int16))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3
    assert not np.array_equal(lossy, ref)  # it is lossy, so it is a real comparison


def test_rg1_header_window_is_the_default_preset(shared_data):
    img = open_image(str(td.rg1(shared_data)))
    assert img.monochrome1
    assert len(img.header_windows) == 1
    w = img.header_windows[0]
    assert (w.center, w.width, w.function) == (15000.0, 30000.0, "LINEAR")
    assert img.default_voi() is w
    presets = img.presets()
    assert presets[0] is w
    assert [p.name for p in presets[1:]] == ["Auto (0.5-99.5 percentile)", "Full range"]
    # the image is MONOCHROME1: high values are dark
    out = render_default(img)
    hi = np.unravel_index(np.argmax(img.values), img.shape)
    lo = np.unravel_index(np.argmin(img.values), img.shape)
    assert out[hi] < 100 < out[lo]
    expected = 255.0 - ref_linear(img.values[::37, ::41], 15000, 30000)
    assert np.abs(out[::37, ::41] - expected).max() <= 1.0


def test_rg1_bogus_zero_spacing_is_unknown(shared_data):
    img = open_image(str(td.rg1(shared_data)))
    assert img.ref.meta.spacing is None
    assert dict(img.ref.meta.display_items())["Pixel spacing"] == "unknown (lengths in px)"


def test_siim_pixel_spacing(shared_data):
    sp = open_image(str(td.siim(shared_data))).ref.meta.spacing
    assert sp is not None and sp.label == "mm" and sp.source == "PixelSpacing"
    assert sp.row_mm == pytest.approx(0.168) and sp.col_mm == pytest.approx(0.168)


# --- pixel module: BitsStored, Modality LUT -----------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
def test_bits_stored_masks_garbage_high_bits(shared_data, tmp_path, rg1_crop, signed):
    clean = (rg1_crop >> 3).astype(np.int32)  # real pixels as 12-bit values, 0..4095
    assert clean.max() < 4096 and clean.max() > 2000
    if signed:
        clean = clean - 2048  # -2048..2047, stored as 12-bit two's complement
    nih = td.crop(td.real_pixels(td.nih(shared_data)), 256, 300, 300)
    garbage = (nih.astype(np.uint16) & 0xF) << 12  # real, non-zero junk in bits 12-15
    assert garbage.any()
    raw = ((clean.astype(np.int64) & 0xFFF) | garbage).astype(np.uint16)
    path = td.write_image(tmp_path / "bits12.dcm", raw, bits_stored=12, signed=signed)
    img = open_image(str(path))
    assert img.ref.meta.bits_stored == 12
    np.testing.assert_array_equal(img.stored.astype(np.int64), clean)
    np.testing.assert_array_equal(img.values, clean.astype(np.float32))
    full = img.full_window()
    assert full.bounds() == (float(clean.min()), float(clean.max()))


def test_modality_lut_rescale_slope_intercept(tmp_path, rg1_crop):
    stored = (rg1_crop >> 3).astype(np.uint16)
    path = td.write_image(tmp_path / "rescale.dcm", stored, bits_stored=12,
                          RescaleSlope="2.5", RescaleIntercept="-1024", RescaleType="US")
    img = open_image(str(path))
    np.testing.assert_array_equal(img.stored, stored)
    np.testing.assert_allclose(img.values, stored * 2.5 - 1024, rtol=0, atol=1e-3)
    assert img.pixel_report(10, 20) == pytest.approx((float(stored[10, 20]), float(stored[10, 20]) * 2.5 - 1024))
    assert img.pixel_report(-1, 0) is None and img.pixel_report(0, 256) is None


def test_modality_lut_sequence(tmp_path, rg1_crop):
    stored = (rg1_crop >> 3).astype(np.uint16)
    first = 800
    n = 1200  # values below 800 map to entry 0, above 1999 to the last entry
    table = np.rint(np.sqrt(np.arange(n) / (n - 1)) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [n, first, 16]
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    path = td.write_image(tmp_path / "mlut.dcm", stored, bits_stored=12, ModalityLUTSequence=Sequence([item]))
    img = open_image(str(path))
    expected = table[np.clip(stored.astype(np.int64) - first, 0, n - 1)].astype(np.float32)
    assert (stored < first).any() and (stored >= first + n).any()  # both clipping ends exercised
    np.testing.assert_array_equal(img.values, expected)


# --- VOI -----------------------------------------------------------------------------------------


def test_voi_lut_sequence(tmp_path, rg1_crop):
    first, n = 5000, 9000
    table = np.rint(((np.arange(n) / (n - 1)) ** 0.6) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [n, first, 16]
    item.LUTExplanation = "GAMMA 0.6"
    item.add_new("LUTData", "OW", table.astype("<u2").tobytes())
    path = td.write_image(tmp_path / "voilut.dcm", rg1_crop, bits_stored=15, VOILUTSequence=Sequence([item]))
    img = open_image(str(path))
    assert img.header_windows == ()
    assert len(img.header_luts) == 1
    lut = img.header_luts[0]
    assert isinstance(lut, VoiLut) and lut.name == "GAMMA 0.6" and lut.first_mapped == first
    assert img.default_voi() is lut and img.presets()[0] is lut
    x = rg1_crop.astype(np.int64)
    assert (x < first).any() and (x >= first + n).any()
    expected = table[np.clip(x - first, 0, n - 1)] / 65535.0 * 255.0
    out = render_default(img)
    assert np.abs(out - expected).max() <= 1.0
    # MONOCHROME1 flips the output of the VOI LUT
    img1 = open_image(str(td.write_image(tmp_path / "voilut_m1.dcm", rg1_crop, bits_stored=15,
                                         photometric="MONOCHROME1", VOILUTSequence=Sequence([item]))))
    assert np.abs(render_default(img1) - (255.0 - expected)).max() <= 1.0


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_voi_lut_function_matches_ps33_formulas(tmp_path, rg1_crop, function, photometric):
    c, w = 9000.0, 6000.0
    path = td.write_image(tmp_path / f"{function}.dcm", rg1_crop, bits_stored=15, photometric=photometric,
                          WindowCenter=str(c), WindowWidth=str(w), VOILUTFunction=function)
    img = open_image(str(path))
    voi = img.default_voi()
    assert isinstance(voi, Window) and (voi.center, voi.width, voi.function) == (c, w, function)
    out = render_default(img).astype(np.float64)
    expected = REFERENCE[function](img.values, c, w)
    if photometric == "MONOCHROME1":
        expected = 255.0 - expected
    # the crop spans the whole window: both ends and the middle are exercised
    assert (img.values < c - w / 2).any() and (img.values > c + w / 2).any()
    # a few named pixel values (below, at the foot, in the middle, near the top, above)...
    for value in (c - w, c - w / 2 + 1, c - w / 4, c, c + w / 8, c + w / 2 - 1, c + w):
        probe = np.array([[value]], np.float32)
        got = render_uint8(display_mapping(probe, voi, photometric == "MONOCHROME1"))[0, 0]
        ref = REFERENCE[function](value, c, w)
        ref = 255.0 - ref if photometric == "MONOCHROME1" else ref
        assert abs(float(got) - float(ref)) <= 1.0, (function, value, got, ref)
    # ...and every pixel of the real image
    assert np.abs(out - expected).max() <= 1.0


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_function_dense_sweep(function):
    """Every value across a narrow and a wide window, to 1 grey level."""
    for c, w in ((40.0, 2.0), (100.0, 10.0), (1000.0, 400.0), (15000.0, 30000.0)):
        x = np.linspace(c - 3 * w, c + 3 * w, 40001, dtype=np.float32)[None, :]
        got = render_uint8(display_mapping(x, Window(c, w, function), False)).astype(np.float64)
        assert np.abs(got - REFERENCE[function](x, c, w)).max() <= 1.0, (function, c, w)


def test_multiple_windows_with_explanations_are_presets(tmp_path, rg1_crop):
    path = td.write_image(tmp_path / "multiwin.dcm", rg1_crop, bits_stored=15,
                          WindowCenter=["12000", "8000", "5000"], WindowWidth=["8000", "3000", "0"],
                          WindowCenterWidthExplanation=["LUNG", "BONE", "INVALID"])
    img = open_image(str(path))
    names = [(w.center, w.width, w.name) for w in img.header_windows]
    assert names == [(12000.0, 8000.0, "LUNG"), (8000.0, 3000.0, "BONE")]  # width 0 is dropped
    presets = img.presets()
    assert [p.name for p in presets[:2]] == ["LUNG", "BONE"]
    assert img.default_voi().name == "LUNG"
    a, b = render_with(img, presets[0]), render_with(img, presets[1])
    assert not np.array_equal(a, b)
    assert "LUNG" in presets[0].describe() and "8000" in presets[0].describe()


def test_window_without_explanation_gets_a_name(tmp_path, rg1_crop):
    path = td.write_image(tmp_path / "w.dcm", rg1_crop, bits_stored=15,
                          WindowCenter=["12000", "9000"], WindowWidth=["8000", "4000"])
    img = open_image(str(path))
    assert [w.name for w in img.header_windows] == ["Header window 1", "Header window 2"]


# --- padding -----------------------------------------------------------------------------------


def test_pixel_padding_value_excluded_from_auto_levels(tmp_path, rg1_crop):
    padded = rg1_crop.copy()
    padded[:, :64] = 0  # a quarter of the image is padding (real values start at 874)
    real = rg1_crop[:, 64:].astype(np.float64)
    plain = open_image(str(td.write_image(tmp_path / "nopad.dcm", padded, bits_stored=15)))
    assert plain.padding is None
    assert plain.auto_window().bounds()[0] == 0.0  # without the tag, padding drags the levels down

    img = open_image(str(td.write_image(tmp_path / "pad.dcm", padded, bits_stored=15, PixelPaddingValue=0)))
    assert img.padding is not None
    expected_mask = np.zeros(padded.shape, bool)
    expected_mask[:, :64] = True
    np.testing.assert_array_equal(img.padding, expected_mask)
    lo, hi = img.auto_window().bounds()
    assert (lo, hi) == pytest.approx(tuple(np.percentile(real, [0.5, 99.5])), rel=1e-6)
    assert img.full_window().bounds() == (real.min(), real.max())
    assert img.default_voi().bounds() == (real.min(), real.max())  # no header window: full range
    assert img.stored[0, 0] == 0  # stored values are never rewritten


def test_pixel_padding_range_limit(tmp_path, rg1_crop, shared_data):
    padded = rg1_crop.copy()
    nih = td.crop(td.real_pixels(td.nih(shared_data)), 256, 300, 300).astype(np.uint16)
    padded[200:, :] = nih[200:, :]  # padding values 0..252 taken from another real image
    path = td.write_image(tmp_path / "padrange.dcm", padded, bits_stored=15,
                          PixelPaddingValue=300, PixelPaddingRangeLimit=0)
    img = open_image(str(path))
    assert img.padding is not None
    assert img.padding[200:].all() and not img.padding[:200].any()
    assert img.full_window().bounds()[0] == float(rg1_crop[:200].min())


# --- multi-frame ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_real_frames(shared_data) -> np.ndarray:
    nih = td.crop(td.real_pixels(td.nih(shared_data)), 224, 400, 400)
    siim = td.crop(td.real_pixels(td.siim(shared_data)), 224, 300, 200)
    kermany = td.kermany_grey(td.kermany_jpegs(shared_data, 1, "PNEUMONIA")[0])
    assert kermany.shape == (224, 224)
    frames = np.stack([nih, siim, kermany]).astype(np.uint8)
    assert len({f.tobytes() for f in frames}) == 3
    return frames


@pytest.mark.parametrize("compressed", [False, True])
def test_multiframe_decodes_each_frame(tmp_path, three_real_frames, compressed):
    ds = td.image_dataset(three_real_frames, frames=3)
    if compressed:
        ds.compress(RLELossless)
    path = td.write(ds, tmp_path / "multi.dcm")
    result = index([str(path)])
    assert result.errors == ()
    (ref,) = list(result.images())
    assert ref.frames == 3
    assert "3 frames" in dict(ref.meta.display_items())["Size"]
    for i in range(3):
        img = load_image(ref, i)
        assert img.frame == i and img.shape == (224, 224)
        np.testing.assert_array_equal(img.stored, three_real_frames[i])
        out = render_default(img)
        lo, hi = float(three_real_frames[i].min()), float(three_real_frames[i].max())
        expected = np.clip((three_real_frames[i] - lo) * 256.0 / (hi - lo), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(out, expected)
    for bad in (3, -1):
        with pytest.raises(ImageOpenError, match="out of range"):
            load_image(ref, bad)


def test_multiframe_decodes_only_the_requested_frame(tmp_path, three_real_frames, monkeypatch):
    """Per-frame decoding: asking for frame 2 decodes frame 2, not the whole stack."""
    from cxr_viewer.io import dicom as dicom_io

    path = td.write(td.image_dataset(three_real_frames, frames=3), tmp_path / "multi.dcm")
    calls = []
    real = dicom_io.pixel_array

    def spy(ds, *args, **kwargs):
        out = real(ds, *args, **kwargs)
        calls.append((kwargs.get("index"), out.shape))
        return out

    monkeypatch.setattr(dicom_io, "pixel_array", spy)
    img = open_image(str(path), 2)
    np.testing.assert_array_equal(img.stored, three_real_frames[2])
    assert calls == [(2, (224, 224))]


# --- spacing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs, expected",
    [
        ({"PixelSpacing": [0.2, 0.25]}, (0.2, 0.25, "mm", "PixelSpacing")),
        ({"ImagerPixelSpacing": [0.15, 0.15]}, (0.15, 0.15, "mm (detector)", "ImagerPixelSpacing")),
        ({"ImagerPixelSpacing": [0.15, 0.18], "EstimatedRadiographicMagnificationFactor": 1.2},
         (0.125, 0.15, "mm (magnification-corrected)", "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor")),
        ({"PixelSpacing": [0.0, 0.0], "ImagerPixelSpacing": [0.15, 0.15]},
         (0.15, 0.15, "mm (detector)", "ImagerPixelSpacing")),
        ({"PixelSpacing": [0.2, 0.2], "ImagerPixelSpacing": [0.15, 0.15],
          "EstimatedRadiographicMagnificationFactor": 1.2}, (0.2, 0.2, "mm", "PixelSpacing")),
        ({"PixelSpacing": [0.0, 0.0]}, None),
        ({}, None),
    ],
)
def test_spacing(tmp_path, rg1_crop, attrs, expected):
    path = td.write_image(tmp_path / "sp.dcm", rg1_crop, bits_stored=15, **attrs)
    result = index([str(path)])
    assert result.errors == ()
    sp = next(result.images()).meta.spacing
    if expected is None:
        assert sp is None
    else:
        assert (sp.row_mm, sp.col_mm) == pytest.approx(expected[:2])
        assert (sp.label, sp.source) == expected[2:]
        assert sp.length_mm(3, 4) == pytest.approx(((3 * expected[0]) ** 2 + (4 * expected[1]) ** 2) ** 0.5)
        assert sp.label in dict(next(result.images()).meta.display_items())["Pixel spacing"]


# --- colour DICOM shown as grey --------------------------------------------------------------


def test_rgb_dicom_shown_as_grey(tmp_path, shared_data):
    greys = [td.kermany_grey(p) for p in td.kermany_jpegs(shared_data, 3, "PNEUMONIA")]
    rgb = np.dstack(greys).astype(np.uint8)  # three different real images as R, G, B
    path = td.write_image(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    img = open_image(str(path))
    assert img.values.ndim == 2 and img.shape == (224, 224)
    expected = 0.299 * greys[0] + 0.587 * greys[1] + 0.114 * greys[2]
    np.testing.assert_allclose(img.values, expected, atol=1e-3)
    assert not img.monochrome1
    assert render_default(img).shape == (224, 224)


def test_palette_color_dicom_shown_as_grey_of_the_palette(tmp_path, shared_data):
    grey = td.kermany_grey(td.kermany_jpegs(shared_data, 1)[0])
    indices = (255 - grey).astype(np.uint8)  # palette entry i shows grey 255 - i
    ramp = ((255 - np.arange(256)) * 257).astype("<u2").tobytes()
    path = td.write_image(
        tmp_path / "palette.dcm", indices, photometric="PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16], GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
    )
    ds = pydicom.dcmread(path)
    for colour in ("Red", "Green", "Blue"):
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", ramp)
    ds.save_as(path, enforce_file_format=True)
    img = open_image(str(path))
    assert img.values.ndim == 2
    # the grey shown follows the palette colours, not the raw indices
    corr = np.corrcoef(img.values.ravel().astype(np.float64), grey.ravel().astype(np.float64))[0, 1]
    assert corr > 0.999
    lo, hi = float(grey.min()), float(grey.max())
    expected = np.clip(np.floor((grey - lo) * 256.0 / (hi - lo)), 0, 255)  # full range of the grey
    assert np.abs(render_default(img) - expected).max() <= 1


# --- DICOMDIR ---------------------------------------------------------------------------------


def fill_dicomdir_keys(ds) -> None:
    """Give a copy the attributes the DICOMDIR records require, where the real file lacks them."""
    for keyword, value in (("StudyDate", "19000101"), ("StudyTime", "000000"), ("StudyID", "1"),
                           ("SeriesNumber", "1"), ("InstanceNumber", "1")):
        if not ds.get(keyword):
            setattr(ds, keyword, value)


def test_dicomdir_groups_patient_study_series(tmp_path, shared_data, rg1_crop):
    from pydicom.fileset import FileSet

    src = tmp_path / "src"
    src.mkdir()
    copies = [Path(shutil.copyfile(p, src / f"real{i}.dcm"))
              for i, p in enumerate([td.nih(shared_data), td.siim(shared_data), td.rg1(shared_data)])]
    # one more patient: two studies, the first with two series, around real pixels
    study_a, study_b = generate_uid(), generate_uid()
    series = [generate_uid() for _ in range(3)]
    made = [
        td.write_image(src / "a1.dcm", rg1_crop, bits_stored=15, patient_id="P2", patient_name="Two^Studies",
                       study_uid=study_a, series_uid=series[0], study_date="20230101", instance=2),
        td.write_image(src / "a2.dcm", rg1_crop[::-1].copy(), bits_stored=15, patient_id="P2",
                       patient_name="Two^Studies", study_uid=study_a, series_uid=series[0],
                       study_date="20230101", instance=1),
        td.write_image(src / "a3.dcm", rg1_crop.T.copy(), bits_stored=15, patient_id="P2", patient_name="Two^Studies",
                       study_uid=study_a, series_uid=series[1], study_date="20230101"),
        td.write_image(src / "b1.dcm", rg1_crop, bits_stored=15, patient_id="P2", patient_name="Two^Studies",
                       study_uid=study_b, series_uid=series[2], study_date="20220101"),
    ]
    fs = FileSet()
    for p in copies + made:
        ds = pydicom.dcmread(p)
        fill_dicomdir_keys(ds)
        ds.save_as(p)
        fs.add(p)
    out = tmp_path / "media"
    fs.write(out)
    dicomdir = out / "DICOMDIR"
    assert dicomdir.is_file()

    for target in (dicomdir, out):  # the DICOMDIR itself, or the folder holding it
        result = index([str(target)])
        assert result.errors == ()
        assert result.image_count == 7
        by_id = {p.patient_id: p for p in result.patients}
        assert set(by_id) == {"Covid0000", "9RG1", "16d7f894-55d7-4d95-8957-d18987f0e981", "P2"}
        p2 = by_id["P2"]
        assert [s.uid for s in p2.studies] == [study_b, study_a]  # ordered by date
        assert [len(s.series) for s in p2.studies] == [1, 2]
        first_series = next(se for se in p2.studies[1].series if se.uid == series[0])
        assert [im.instance_number for im in first_series.images] == [1, 2]
        for im in result.images():
            assert Path(im.path).is_relative_to(out)  # the copies the DICOMDIR points to
            assert load_image(im).shape[0] > 0


def test_dicomdir_listing_a_missing_file(tmp_path, shared_data):
    from pydicom.fileset import FileSet

    fs = FileSet()
    for real in (td.nih(shared_data), td.siim(shared_data)):
        ds = pydicom.dcmread(real)
        fill_dicomdir_keys(ds)
        fs.add(ds)
    fs.write(tmp_path / "media")
    result = index([str(tmp_path / "media" / "DICOMDIR")])
    assert result.image_count == 2
    victim = next(result.images()).path
    Path(victim).unlink()
    result = index([str(tmp_path / "media" / "DICOMDIR")])
    assert result.image_count == 1
    assert [(Path(e.path).name, e.reason) for e in result.errors] == [
        (Path(victim).name, "listed in the DICOMDIR but missing on disk")
    ]


def test_bad_dicomdir_is_reported(tmp_path, shared_data):
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copyfile(td.nih(shared_data), folder / "DICOMDIR")  # an image, not a directory record
    shutil.copyfile(td.siim(shared_data), folder / "image.dcm")
    result = index([str(folder)])
    assert result.image_count == 1
    assert len(result.errors) == 1 and "DICOMDIR" in result.errors[0].reason


def test_non_finite_windows_and_rescale(tmp_path, shared_data):
    """NaN/inf windows are skipped (the next valid one is the default); a NaN RescaleSlope or
    float pixels with NaN are one-line errors, never NaN on screen or in a model."""
    from cxr_viewer.common.errors import ImageOpenError

    pixels = td.crop(td.real_pixels(td.rg1(shared_data, "UNCR")), 128, 800, 800)
    path = td.write_image(tmp_path / "w.dcm", pixels, bits_stored=15,
                          WindowCenter=["NaN", "inf", "15000"], WindowWidth=["100", "100", "30000"])
    img = open_image(str(path))
    assert [(w.center, w.width) for w in img.header_windows] == [(15000.0, 30000.0)]
    assert img.default_voi() == img.header_windows[0]
    bad = td.write_image(tmp_path / "s.dcm", pixels, bits_stored=15, RescaleSlope="NaN", RescaleIntercept="0")
    with pytest.raises(ImageOpenError, match="RescaleSlope"):
        open_image(str(bad))
