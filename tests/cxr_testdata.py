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
