"""Builders for test inputs made from the REAL images in ../shared/data.

Nothing here invents pixels: every DICOM wrapper, broken file and odd PNG starts from a real
radiograph (RG1, NIH, SIIM, Kermany). Only headers are written by hand.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()

DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
KEY_OBJECT_SELECTION = UID("1.2.840.10008.5.1.4.1.1.88.59")
#: A private transfer syntax UID no decoder knows (under pydicom's own test root).
PRIVATE_TS = "1.2.826.0.1.3680043.8.498.77.1.2.3"


# --- real sources ------------------------------------------------------------------------


def dicom_dir(shared: Path) -> Path:
    return shared / "dicom"


def rg1(shared: Path, kind: str = "UNCR") -> Path:
    return dicom_dir(shared) / "pydicom-data_RG1" / f"RG1_{kind}.dcm"


def nih(shared: Path) -> Path:
    return next((dicom_dir(shared) / "nhsx_nih").glob("*.dcm"))


def siim(shared: Path) -> Path:
    return dicom_dir(shared) / "torchxrayvision_siim" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def fake_mono1(shared: Path) -> Path:
    return dicom_dir(shared) / "torchxrayvision_siim" / "Fake_MONOHR1.dcm"


def kermany_jpegs(shared: Path, n: int = 2, cls: str = "NORMAL") -> list[Path]:
    folder = shared / "kermany" / "train" / cls
    return sorted(folder.glob("*.jpeg"))[:n]


def all_dicoms(shared: Path) -> list[Path]:
    return sorted(dicom_dir(shared).glob("*/*.dcm"))


@functools.lru_cache(maxsize=None)
def _pixels_cached(path: str) -> np.ndarray:
    arr = pydicom.dcmread(path).pixel_array
    arr.setflags(write=False)
    return arr


def real_pixels(path: Path) -> np.ndarray:
    """The decoded stored pixels of a real DICOM (read-only, cached)."""
    return _pixels_cached(str(path))


def kermany_grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


# --- DICOM wrappers around real pixels ---------------------------------------------------


def base_dataset(*, sop_class: str = DX_PRESENTATION, modality: str = "DX", patient_id: str = "TESTPAT",
                 patient_name: str = "Test^Patient", study_uid: str | None = None,
                 series_uid: str | None = None, instance: int | None = 1,
                 study_date: str = "20240101", ts: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    if instance is not None:
        ds.InstanceNumber = instance
    return ds


_BASE_KEYS = {"sop_class", "modality", "patient_id", "patient_name", "study_uid", "series_uid", "instance",
              "study_date", "ts"}


def image_dataset(pixels: np.ndarray, *, bits_stored: int | None = None, signed: bool = False,
                  photometric: str = "MONOCHROME2", frames: int | None = None, **kwargs) -> Dataset:
    """A DX image dataset around ``pixels`` (2-D, (frames, r, c) or (r, c, 3) for RGB).

    Keyword arguments of :func:`base_dataset` set the identity; any other keyword is a DICOM
    keyword set on the dataset (``WindowCenter="40"``, ``PixelSpacing=[0.2, 0.2]``...).
    """
    base = {k: kwargs.pop(k) for k in list(kwargs) if k in _BASE_KEYS}
    ds = base_dataset(**base)
    pixels = np.ascontiguousarray(pixels)
    rgb = photometric == "RGB"
    if rgb:
        rows, cols = pixels.shape[-3:-1]
    else:
        rows, cols = pixels.shape[-2:]
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    for keyword, value in kwargs.items():
        setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path


def write_image(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    return write(image_dataset(pixels, **kwargs), path)


def crop(arr: np.ndarray, size: int = 256, top: int = 0, left: int = 0) -> np.ndarray:
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def copy_header_from(dst: Dataset, src_path: Path) -> None:
    """Copy the patient and study identity of a real file into ``dst``."""
    src = pydicom.dcmread(src_path, stop_before_pixels=True)
    for kw in ("PatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyInstanceUID",
               "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        if kw in src:
            setattr(dst, kw, src[kw].value)


def structured_report(path: Path, real: Path) -> Path:
    """A Comprehensive SR about a real study (no pixel data)."""
    ds = base_dataset(sop_class=COMPREHENSIVE_SR, modality="SR")
    copy_header_from(ds, real)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning = "121071", "DCM", "Finding"
    text.ConceptNameCodeSequence = Sequence([finding])
    text.TextValue = "No acute cardiopulmonary abnormality."
    ds.ContentSequence = Sequence([text])
    return write(ds, path)


def key_object_selection(path: Path, real: Path) -> Path:
    """A Key Object Selection document flagging a real image (no pixel data)."""
    src = pydicom.dcmread(real, stop_before_pixels=True)
    ds = base_dataset(sop_class=KEY_OBJECT_SELECTION, modality="KO")
    copy_header_from(ds, real)
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "113000", "DCM", "Of Interest"
    ds.ConceptNameCodeSequence = Sequence([title])
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([ref])
    study = Dataset()
    study.StudyInstanceUID = src.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    return write(ds, path)


def with_transfer_syntax(path: Path, real: Path, ts: str) -> Path:
    """A real file whose meta header claims another transfer syntax (pixels untouched)."""
    ds = pydicom.dcmread(real)
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


def without_file_meta(path: Path, real: Path) -> Path:
    """A real implicit-VR file written as a bare dataset: no 128-byte preamble, no DICM, no meta."""
    ds = pydicom.dcmread(real)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM" and not raw.startswith(b"\x02\x00"), "file meta was written"
    return path


def pixel_data_offset(path: Path) -> int:
    """Byte offset of the (7FE0,0010) element in a little-endian file."""
    raw = path.read_bytes()
    pos = raw.rfind(b"\xe0\x7f\x10\x00")
    assert pos > 0
    return pos


# --- raster --------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, real_row: np.ndarray, width: int = 60000, height: int = 60000) -> Path:
    """A PNG whose IHDR claims ``width x height`` grey pixels, with one real row of data."""
    row = np.zeros(width, np.uint8)
    row[: real_row.size] = real_row[:width]
    idat = zlib.compress(b"\x00" + row.tobytes())
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    path.write_bytes(png)
    return path


def odd_pngs(folder: Path, grey: np.ndarray) -> dict[str, tuple[Path, np.ndarray]]:
    """PNGs in unusual modes made from a real grey image, with the grey each must show."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, np.ndarray]] = {}

    p = folder / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(p)
    out["grey16"] = (p, grey.astype(np.uint16) * 257)

    # palette whose index i shows grey 255 - i, so showing raw indices would be caught
    p = folder / "palette.png"
    im = Image.fromarray((255 - grey).astype(np.uint8), mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    im.save(p)
    out["palette"] = (p, grey)

    alpha = np.full(grey.shape, 255, np.uint8)
    alpha[: grey.shape[0] // 2] = 0  # top half transparent: composited onto black
    expected = grey.copy()
    expected[: grey.shape[0] // 2] = 0

    p = folder / "rgba.png"
    Image.fromarray(np.dstack([grey, grey, grey, alpha]), mode="RGBA").save(p)
    out["rgba"] = (p, expected)

    p = folder / "la.png"
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(p)
    out["la"] = (p, expected)

    p = folder / "bilevel.png"
    Image.fromarray(grey > 127).save(p)  # mode "1"
    out["bilevel"] = (p, np.where(grey > 127, 255, 0).astype(np.uint8))
    return out


# --- the broken corpus ---------------------------------------------------------------------


@dataclass
class Case:
    path: Path
    expect: tuple[str, ...]  # substrings (lower case) the one-line reason must contain


@dataclass
class BrokenCorpus:
    root: Path
    #: bad files that indexing (headers only) must report in ``StudyIndex.errors``
    index_errors: dict[str, Case] = field(default_factory=dict)
    #: files whose header is fine but whose pixels cannot be decoded (load/render must fail)
    decode_errors: dict[str, Case] = field(default_factory=dict)
    #: good files beside the bad ones, which must open
    good: dict[str, Path] = field(default_factory=dict)
    #: odd but valid PNGs and the grey values each must show
    odd_png: dict[str, tuple[Path, np.ndarray]] = field(default_factory=dict)
    #: a real JPEG 2000 file, good unless its decoder is made unavailable
    j2k: Path | None = None
    #: a symbolic link to its own parent folder (no error, but must not loop)
    dir_loop: Path | None = None
    fifo: Path | None = None


def build_broken_corpus(shared: Path, root: Path) -> BrokenCorpus:
    root.mkdir(parents=True, exist_ok=True)
    c = BrokenCorpus(root)
    uncr, nih_path = rg1(shared, "UNCR"), nih(shared)
    kermany = kermany_jpegs(shared, 1)[0]

    # good files beside the bad ones
    c.good["nih"] = Path(shutil.copyfile(nih_path, root / "good_nih.dcm"))
    c.good["kermany"] = Path(shutil.copyfile(kermany, root / "good_kermany.jpeg"))
    c.good["no_meta"] = without_file_meta(root / "no_preamble_no_meta.dcm", nih_path)

    # zero bytes
    (root / "empty.dcm").write_bytes(b"")
    c.index_errors["empty"] = Case(root / "empty.dcm", ("empty",))
    (root / "empty.png").write_bytes(b"")
    c.index_errors["empty_png"] = Case(root / "empty.png", ("empty",))

    # truncated DICOM: cut inside the header, and inside the pixel data
    raw = uncr.read_bytes()
    pix = pixel_data_offset(uncr)
    (root / "cut_header.dcm").write_bytes(raw[: pix // 2])
    c.index_errors["cut_header"] = Case(root / "cut_header.dcm", ("truncated",))
    (root / "cut_pixels.dcm").write_bytes(raw[: pix + (len(raw) - pix) // 2])
    c.index_errors["cut_pixels"] = Case(root / "cut_pixels.dcm", ("truncated",))
    j2k_raw = rg1(shared, "J2KR").read_bytes()
    (root / "cut_j2k.dcm").write_bytes(j2k_raw[: len(j2k_raw) // 2])
    c.decode_errors["cut_j2k"] = Case(root / "cut_j2k.dcm", ("truncated", "jpeg 2000"))

    # text named .dcm
    shutil.copyfile(dicom_dir(shared) / "labels.csv", root / "notes.dcm")
    c.index_errors["text"] = Case(root / "notes.dcm", ("not a dicom file",))

    # DICOM without pixel data
    structured_report(root / "report_sr.dcm", uncr)
    c.index_errors["sr"] = Case(root / "report_sr.dcm", ("without pixel data", "comprehensive sr"))
    key_object_selection(root / "kos.dcm", uncr)
    c.index_errors["kos"] = Case(root / "kos.dcm", ("without pixel data", "key object selection"))

    # an unknown (private) transfer syntax around real pixels
    with_transfer_syntax(root / "private_ts.dcm", nih_path, PRIVATE_TS)
    c.index_errors["private_ts"] = Case(root / "private_ts.dcm", ("transfer syntax", PRIVATE_TS))

    # huge images: a DICOM header claiming 60000 x 60000 around real (tiny) pixels; a PNG IHDR
    ds = pydicom.dcmread(nih_path)
    ds.Rows = ds.Columns = 60000
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write(ds, root / "huge.dcm")
    c.index_errors["huge_dcm"] = Case(root / "huge.dcm", ("too large", "60000"))
    huge_png(root / "huge.png", kermany_grey(kermany)[0])
    c.index_errors["huge_png"] = Case(root / "huge.png", ("too large",))

    # truncated raster: JPEG and PNG cut inside the header (index fails) and the data (decode fails)
    jpeg_raw = kermany.read_bytes()
    (root / "cut_head.jpeg").write_bytes(jpeg_raw[:100])
    c.index_errors["cut_jpeg_header"] = Case(root / "cut_head.jpeg", ("not a readable image", "truncated"))
    (root / "cut_data.jpeg").write_bytes(jpeg_raw[: len(jpeg_raw) // 2])
    c.decode_errors["cut_jpeg_data"] = Case(root / "cut_data.jpeg", ("cannot decode", "truncated"))
    png_path = root / "_full.png"
    Image.open(kermany).convert("L").save(png_path)
    png_raw = png_path.read_bytes()
    png_path.unlink()
    (root / "cut_head.png").write_bytes(png_raw[:20])
    c.index_errors["cut_png_header"] = Case(root / "cut_head.png", ("not a readable image", "truncated"))
    (root / "cut_data.png").write_bytes(png_raw[: len(png_raw) // 2])
    c.decode_errors["cut_png_data"] = Case(root / "cut_data.png", ("cannot decode", "truncated"))

    # symlinks: a folder link to its parent (must not loop) and a file link to itself
    sub = root / "sub"
    sub.mkdir()
    shutil.copyfile(kermany, sub / "nested.jpeg")
    c.good["nested"] = sub / "nested.jpeg"
    c.dir_loop = sub / "up"
    os.symlink("..", c.dir_loop)
    os.symlink("self.dcm", root / "self.dcm")
    c.index_errors["self_link"] = Case(root / "self.dcm", ("symbolic link",))

    # a named pipe that nobody writes to: opening it for reading would block forever
    c.fifo = root / "pipe.dcm"
    os.mkfifo(c.fifo)
    c.index_errors["fifo"] = Case(c.fifo, ("not a regular file",))

    # a real JPEG 2000 file (good unless its decoder is removed)
    c.j2k = Path(shutil.copyfile(rg1(shared, "J2KR"), root / "j2k_lossless.dcm"))
    c.good["j2k"] = c.j2k

    # odd but valid PNGs
    c.odd_png = odd_pngs(root / "odd_png", kermany_grey(kermany))
    for name, (p, _) in c.odd_png.items():
        c.good[f"odd_{name}"] = p
    return c


# --- making the JPEG 2000 decoder unavailable -----------------------------------------------

#: Python run before ``cxr_viewer.cli.main`` in a subprocess: pydicom's JPEG 2000 decoders lose
#: every plugin (pylibjpeg-openjpeg, gdcm, Pillow), as if pylibjpeg-openjpeg were not installed.
NO_J2K_PRELUDE = """
import sys
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000, JPEG2000Lossless
for uid in (JPEG2000, JPEG2000Lossless):
    get_decoder(uid)._available.clear()
from cxr_viewer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def disable_j2k_decoders(monkeypatch) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000, JPEG2000Lossless

    for uid in (JPEG2000, JPEG2000Lossless):
        decoder = get_decoder(uid)
        assert decoder.is_available  # installed here: the test really removes it
        monkeypatch.setattr(decoder, "_available", {})
        assert not decoder.is_available


def run_cli(*args: str, timeout: float = 60, python_code: str | None = None, env: dict | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cxr_viewer ARGS`` (or ``python -c CODE ARGS``) from the repository root.

    ``timeout`` guards against a hang (the test fails with TimeoutExpired); it is no speed check.
    """
    cmd = [sys.executable, "-c", python_code, *args] if python_code else [sys.executable, "-m", "cxr_viewer", *args]
    full_env = {**os.environ, **env} if env else None
    if stdin is not None:
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, input=stdin,
                              env=full_env)
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env)


# --- fuzz corpus: seeded mutations of the real files ------------------------------------------


@dataclass(frozen=True)
class FuzzCase:
    name: str  # unique, also the file name (without suffix)
    path: Path
    what: str  # the mutation, for a failure message


def pydicom_test_files() -> list[Path]:
    """The DICOM test files that ship inside pydicom (a peer's corpus of odd encodings)."""
    from pydicom import data as pydicom_data

    folder = Path(pydicom_data.__file__).parent / "test_files"
    return sorted(p for p in folder.glob("*.dcm") if p.is_file())


def _fuzz_bases(shared: Path, root: Path) -> dict[str, Path]:
    """Small real inputs for every decoder path: native 8/16-bit, JPEG baseline (Pillow),
    JPEG 2000 (openjpeg), JPEG lossless and JPEG-LS (GDCM, in its child process), RLE."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    root.mkdir(parents=True, exist_ok=True)
    bases = {"nih": nih(shared), "siim_jpeg": siim(shared), "rg1_j2ki": rg1(shared, "J2KI")}
    rg1_crop = crop(real_pixels(rg1(shared, "UNCR")), 256, 800, 800)
    bases["rg1_native16"] = write_image(root / "_base_rg1_native16.dcm", rg1_crop, bits_stored=15,
                                        photometric="MONOCHROME1", WindowCenter="15000", WindowWidth="30000")
    for name, ts in (("rg1_j2k", JPEG2000Lossless), ("rg1_rle", RLELossless)):
        ds = image_dataset(rg1_crop, bits_stored=15, photometric="MONOCHROME1")
        ds.compress(ts, encoding_plugin="pylibjpeg" if ts == JPEG2000Lossless else "pydicom")
        bases[name] = write(ds, root / f"_base_{name}.dcm")
    shipped = {p.name: p for p in pydicom_test_files()}
    for name, file in (("pyd_jpeg_lossless", "SC_rgb_jpeg_gdcm.dcm"), ("pyd_jpeg_ls", "MR_small_jpeg_ls_lossless.dcm")):
        if file in shipped:
            bases[name] = shipped[file]
    return bases


#: Structured header edits: (label, {keyword: value}); None deletes the element.
_NAN, _INF = float("nan"), float("inf")
FUZZ_EDITS: list[tuple[str, dict]] = [
    *[(f"photometric={v or 'empty'}", {"PhotometricInterpretation": v, "PlanarConfiguration": 0})
      for v in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "MONOCHROME1", "PALETTE COLOR", "", "FOO")],
    *[(f"samples={v}", {"SamplesPerPixel": v, "PlanarConfiguration": 0}) for v in (0, 2, 3, 4)],
    ("samples=3+rgb", {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0}),
    ("planar=7", {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 7}),
    *[(f"bits_allocated={v}", {"BitsAllocated": v}) for v in (1, 8, 12, 16, 32, 64)],
    *[(f"bits_stored={v}", {"BitsStored": v}) for v in (0, 1, 7, 8, 12, 15, 16, 17, 32)],
    *[(f"high_bit={v}", {"HighBit": v}) for v in (0, 31, 100)],
    ("bits_alloc32+stored1", {"BitsAllocated": 32, "BitsStored": 1}),
    ("bits_alloc64+stored64", {"BitsAllocated": 64, "BitsStored": 64}),
    *[(f"pixel_rep={v}", {"PixelRepresentation": v}) for v in (0, 1, 2)],
    *[(f"rows={v}", {"Rows": v}) for v in (1, 2, 3, 0, 65535)],
    *[(f"cols={v}", {"Columns": v}) for v in (1, 2, 3, 0, 65535)],
    ("rows=cols=1", {"Rows": 1, "Columns": 1}),
    ("rows_missing", {"Rows": None}),
    *[(f"frames={v}", {"NumberOfFrames": v}) for v in (0, -1, 2, 1000)],
    *[(f"slope={v}", {"RescaleSlope": str(v), "RescaleIntercept": "0"}) for v in ("NaN", "inf", "-inf", "1e300", "0")],
    *[(f"intercept={v}", {"RescaleSlope": "1", "RescaleIntercept": str(v)}) for v in ("NaN", "inf", "1e300")],
    *[(f"window_center={v}", {"WindowCenter": str(v), "WindowWidth": "400"}) for v in ("NaN", "inf", "1e300")],
    *[(f"window_width={v}", {"WindowCenter": "100", "WindowWidth": str(v)}) for v in ("NaN", "inf", "-inf", "1e300", "-5", "0")],
    ("windows=nan+good", {"WindowCenter": ["NaN", "128"], "WindowWidth": ["NaN", "256"]}),
    ("padding=two_values", {"PixelPaddingValue": [0, 1]}),
    ("padding=raw_bytes", {"PixelPaddingValue": b"\x00\x00\x01\x00"}),
    ("padding=huge", {"PixelPaddingValue": 70000}),
    ("padding_limit=two_values", {"PixelPaddingValue": 0, "PixelPaddingRangeLimit": [0, 5]}),
]

_TS_SWAPS = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
             "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
             "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5")


def _apply_edit(ds: Dataset, edit: dict) -> None:
    from pydicom.dataelem import DataElement

    for kw, value in edit.items():
        if value is None:
            if kw in ds:
                delattr(ds, kw)
        elif kw == "PixelPaddingValue" and isinstance(value, bytes):
            ds[0x00280120] = DataElement(0x00280120, "OB", value)
        elif kw in ("PixelPaddingValue", "PixelPaddingRangeLimit") and isinstance(value, list):
            ds[kw] = DataElement(ds.data_element(kw).tag if kw in ds else pydicom.datadict.tag_for_keyword(kw),
                                 "US", value)
        else:
            setattr(ds, kw, value)


def _save_raw(ds: Dataset, path: Path) -> Path:
    """Write a dataset as it is (no fixing), in the encoding its meta header names where possible."""
    ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    try:
        implicit = ts == ImplicitVRLittleEndian
        little = ts != "1.2.840.10008.1.2.2"
        ds.save_as(path, enforce_file_format=False, implicit_vr=implicit, little_endian=little)
    except Exception:
        ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def build_fuzz_corpus(shared: Path, root: Path, seed: int = 0, n_bytes: int = 60) -> list[FuzzCase]:
    """A few hundred seeded mutations of the real shared files (and pydicom's shipped ones).

    Structured header edits (photometric, samples, bits, pixel representation, size, frames,
    rescale/window NaN/inf/huge, padding of the wrong multiplicity or VR, swapped transfer
    syntax, pixel data cut or extended), garbage VR bytes, seeded byte flips and cuts, and
    PNG/JPEG mutations (flips, cuts, a JPEG without a suffix, a PNG named .dcm).
    """
    import random

    from pydicom import config

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    bases = _fuzz_bases(shared, root / "_bases")
    cases: list[FuzzCase] = []

    def add(name: str, path: Path, what: str) -> None:
        cases.append(FuzzCase(name, path, what))

    old_read, old_write = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        for base_name, base in bases.items():
            edits = FUZZ_EDITS if base_name != "rg1_j2ki" else [e for e in FUZZ_EDITS if e[0].startswith(
                ("photometric=RGB", "photometric=YBR", "samples=3", "bits_allocated=32", "bits_stored=1"))]
            for label, edit in edits:
                ds = pydicom.dcmread(base, force=True)
                _apply_edit(ds, edit)
                name = f"{base_name}__{label}".replace(" ", "_").replace("=", "-")
                try:
                    add(name, _save_raw(ds, root / f"{name}.dcm"), f"{base_name}: {label}")
                except Exception:
                    continue  # pydicom cannot write this combination: nothing to test
            for ts in _TS_SWAPS:
                raw = base.read_bytes()
                ds = pydicom.dcmread(base, force=True)
                if str(ds.file_meta.TransferSyntaxUID) == ts:
                    continue
                ds.file_meta.TransferSyntaxUID = ts  # header says another encoding, bytes unchanged
                name = f"{base_name}__ts-{ts}"
                path = root / f"{name}.dcm"
                try:
                    ds.save_as(path, enforce_file_format=False)
                except Exception:
                    # rewrite only the meta UID in the original bytes (same length when padded)
                    old = str(pydicom.dcmread(base, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                    new = ts.ljust(len(old), "\0")[: max(len(old), len(ts))]
                    if len(new) != len(old):
                        continue
                    path.write_bytes(raw.replace(old.encode(), new.encode(), 1))
                add(name, path, f"{base_name}: transfer syntax swapped to {ts}")
            # pixel data cut or extended (the element's length follows)
            for label, factor in (("pixels_half", 0.5), ("pixels_minus1", -1), ("pixels_double", 2.0)):
                ds = pydicom.dcmread(base, force=True)
                data = ds.PixelData
                if factor == -1:
                    data = data[:-2]
                elif factor < 1:
                    data = data[: int(len(data) * factor) // 2 * 2]
                else:
                    data = data + data
                ds.PixelData = data
                name = f"{base_name}__{label}"
                add(name, _save_raw(ds, root / f"{name}.dcm"), f"{base_name}: {label}")
            # float pixel data with NaN and inf (real values)
            if base_name == "rg1_native16":
                ds = pydicom.dcmread(base)
                values = ds.pixel_array.astype(np.float32)
                values[10:20, 10:20] = np.nan
                values[30, 30] = np.inf
                del ds.PixelData
                ds.FloatPixelData = values.tobytes()
                ds.BitsAllocated = 32
                for kw in ("BitsStored", "HighBit", "PixelRepresentation"):
                    delattr(ds, kw)
                name = f"{base_name}__float_nan"
                add(name, _save_raw(ds, root / f"{name}.dcm"), "float pixel data with NaN and inf")
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = old_read, old_write

    # garbage VR bytes in an explicit-VR header, seeded byte flips and cuts of the real files
    dicoms = [bases["nih"], bases["rg1_native16"], bases["rg1_j2k"], bases["siim_jpeg"]]
    explicit = pydicom.dcmread(bases["rg1_native16"], stop_before_pixels=True)
    raw = bases["rg1_native16"].read_bytes()
    for i, (kw, vr) in enumerate((("PhotometricInterpretation", b"ZZ"), ("Rows", b"\x00\x01"), ("BitsStored", b"QQ"),
                                  ("WindowCenter", b"\xff\xfe"), ("PatientID", b"UN"))):
        tag = explicit.data_element(kw).tag if kw in explicit else None
        if tag is None:
            continue
        key = struct.pack("<HH", tag.group, tag.element)
        pos = raw.find(key, 132)
        if pos > 0:
            name = f"vr_garbage_{i}_{kw}"
            (root / f"{name}.dcm").write_bytes(raw[: pos + 4] + vr + raw[pos + 6:])
            add(name, root / f"{name}.dcm", f"VR of {kw} replaced by {vr!r}")
    for i in range(n_bytes):
        src = dicoms[i % len(dicoms)]
        data = bytearray(src.read_bytes())
        head = pixel_data_offset(src) + 16 if src.read_bytes().rfind(b"\xe0\x7f\x10\x00") > 0 else len(data)
        if i % 3 == 2:
            cut = rng.randrange(132, len(data))
            data = data[:cut]
            what = f"{src.name} cut at byte {cut}"
        else:
            flips = []
            for _ in range(rng.randint(1, 8)):
                # mostly the header (where the structure is), sometimes the pixel data
                pos = rng.randrange(132, head) if rng.random() < 0.8 else rng.randrange(132, len(data))
                data[pos] = rng.randrange(256)
                flips.append(pos)
            what = f"{src.name} bytes changed at {flips}"
        name = f"bytes_{i:03d}"
        (root / f"{name}.dcm").write_bytes(bytes(data))
        add(name, root / f"{name}.dcm", what)

    # raster: flips and cuts of a real JPEG and PNG; a JPEG without suffix; a PNG named .dcm
    jpeg = kermany_jpegs(shared, 1)[0]
    png = root / "_bases" / "kermany.png"
    Image.open(jpeg).convert("L").save(png)
    shutil.copyfile(jpeg, root / "jpeg_no_suffix")
    add("jpeg_no_suffix", root / "jpeg_no_suffix", "a real JPEG without a file suffix")
    shutil.copyfile(png, root / "png_named.dcm")
    add("png_named_dcm", root / "png_named.dcm", "a real PNG named .dcm")
    for i in range(max(8, n_bytes // 3)):
        src, suffix = (jpeg, ".jpeg") if i % 2 == 0 else (png, ".png")
        data = bytearray(src.read_bytes())
        if i % 4 >= 2:
            cut = rng.randrange(2, len(data))
            data = data[:cut]
            what = f"{src.name} cut at byte {cut}"
        else:
            flips = [rng.randrange(0, min(len(data), 600)) for _ in range(rng.randint(1, 6))]
            for pos in flips:
                data[pos] = rng.randrange(256)
            what = f"{src.name} bytes changed at {flips}"
        name = f"raster_{i:03d}"
        (root / f"{name}{suffix}").write_bytes(bytes(data))
        add(name, root / f"{name}{suffix}", what)
    return cases
