"""DICOM reading with pydicom 3: header indexing without pixels, then per-frame decoding.

Decoding of compressed transfer syntaxes goes through pydicom's pixel plugins:
pylibjpeg-openjpeg (JPEG 2000, HTJ2K), pylibjpeg-rle (RLE) and python-gdcm (JPEG, JPEG
lossless, JPEG-LS). No GPL plugin is used.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxr_viewer.common.errors import ImageOpenError

#: Softcopy presentation states (grayscale, colour, pseudo-colour, blending...): 1.2.840.10008.5.1.4.1.1.11.x
PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."


class PresentationStateFile(ImageOpenError):
    """A presentation state (annotations of other images, e.g. a GSPS saved beside them): not an
    image to list, and not a broken file either."""
from cxr_viewer.io import codecs
from cxr_viewer.io.display import VoiLut, Window
from cxr_viewer.io.study import ImageMeta, ImageRef, Spacing

#: Refuse frames larger than this many pixels (a 10,000 x 10,000 detector) before decoding.
MAX_FRAME_PIXELS = 100_000_000
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData

_PLUGIN_PACKAGES = {
    "JPEG 2000": "pylibjpeg-openjpeg",
    "HTJ2K": "pylibjpeg-openjpeg",
    "High-Throughput JPEG 2000": "pylibjpeg-openjpeg",
    "RLE": "pylibjpeg-rle",
    "JPEG-LS": "python-gdcm",
    "JPEG Lossless": "python-gdcm",
    "JPEG Baseline": "python-gdcm (or Pillow)",
    "JPEG Extended": "python-gdcm",
}


def decoder_package_for(ts: UID) -> str:
    """The package that decodes a transfer syntax, for messages."""
    for key, pkg in _PLUGIN_PACKAGES.items():
        if key.lower() in ts.name.lower():
            return pkg
    return "a pydicom pixel-data plugin"


def _syntax_label(ts: UID) -> str:
    return f"{ts.name} ({ts})" if ts.is_transfer_syntax else str(ts)


def _is_deflated(ts: UID) -> bool:
    return ts.is_transfer_syntax and ts.is_deflated


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _has_pixel_tag_at(f, little_endian: bool) -> bool:
    raw = f.read(4)
    if len(raw) < 4:
        return False
    fmt = "<" if little_endian else ">"
    group, elem = np.frombuffer(raw, dtype=f"{fmt}u2")
    return (int(group) << 16 | int(elem)) in PIXEL_TAGS


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    # No file meta (a raw dataset without preamble): use the encoding pydicom found.
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit in (None, True):
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _positive_pair(value) -> tuple[float, float] | None:
    try:
        r, c = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (r, c) if r > 0 and c > 0 else None


def spacing_of(ds: Dataset) -> Spacing | None:
    """PixelSpacing if valid; else ImagerPixelSpacing, corrected by the magnification factor."""
    ps = _positive_pair(ds.get("PixelSpacing"))
    if ps:
        return Spacing(ps[0], ps[1], "mm", "PixelSpacing")
    ips = _positive_pair(ds.get("ImagerPixelSpacing"))
    if not ips:
        return None
    try:
        factor = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
    except (TypeError, ValueError):
        factor = 0.0
    if factor > 0:
        return Spacing(ips[0] / factor, ips[1] / factor, "mm (magnification-corrected)",
                       "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor")
    return Spacing(ips[0], ips[1], "mm (detector)", "ImagerPixelSpacing")


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def meta_of(ds: Dataset, ts: UID) -> ImageMeta:
    age = _text(ds, "PatientAge")
    sop = ds.get("SOPClassUID")
    return ImageMeta(
        patient_name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        sex=_text(ds, "PatientSex"),
        age=age,
        birth_date=_text(ds, "PatientBirthDate"),
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        body_part=_text(ds, "BodyPartExamined"),
        rows=_int(ds, "Rows"),
        cols=_int(ds, "Columns"),
        frames=max(1, _int(ds, "NumberOfFrames", 1)),
        photometric=_text(ds, "PhotometricInterpretation"),
        bits_stored=_int(ds, "BitsStored"),
        transfer_syntax=_syntax_label(ts),
        spacing=spacing_of(ds),
        sop_class=UID(str(sop)).name if sop else "",
        institution=_text(ds, "InstitutionName"),
        patient_orientation=_text(ds, "PatientOrientation"),
    )


def _check_decodable(ts: UID) -> None:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageOpenError(f"unsupported transfer syntax {_syntax_label(ts)}: pydicom has no decoder for it")
    if not decoder.is_available:
        raise ImageOpenError(
            f"transfer syntax {_syntax_label(ts)} needs a decoder that is not installed: "
            f"install {decoder_package_for(ts)}"
        )


def regular_file_size(path: str) -> int:
    """The size of a regular file. Folders, pipes, devices and sockets are refused without being
    opened (opening a FIFO for reading would block). Raises OSError if ``path`` cannot be stat'ed."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise ImageOpenError("is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageOpenError("not a regular file (device, pipe or socket)")
    return st.st_size


def _check_size(rows: int, cols: int) -> None:
    if rows <= 0 or cols <= 0:
        raise ImageOpenError(f"invalid image size Rows={rows} Columns={cols}")
    if rows * cols > MAX_FRAME_PIXELS:
        raise ImageOpenError(
            f"image too large to display: {cols} x {rows} px per frame (limit {MAX_FRAME_PIXELS:,} px)"
        )


def expected_pixel_bytes(ds: Dataset, rows: int, cols: int, frames: int) -> int:
    """Bytes of native pixel data the header asks for, by pydicom's own rules (YBR_FULL_422
    stores 2 bytes per pixel, BitsAllocated 1 packs 8 pixels a byte)."""
    try:
        return int(get_expected_length(ds, unit="bytes"))
    except Exception:  # an element pydicom needs is missing or odd: the plain product
        samples = max(1, _int(ds, "SamplesPerPixel", 1))
        bits = _int(ds, "BitsAllocated", 16)
        return rows * cols * frames * samples * bits // 8


def read_header(path: str) -> tuple[ImageRef, "DicomKeys"]:
    """Index one DICOM file without decoding pixels. Raises ImageOpenError with a reason."""
    try:
        return _read_header(path)
    except (ImageOpenError, MemoryError):
        raise
    except Exception as exc:  # values pydicom parses lazily (bad VR bytes, odd numbers)
        raise ImageOpenError(f"unreadable DICOM header: {_first_line(exc)}") from None


def _read_header(path: str) -> tuple[ImageRef, "DicomKeys"]:
    try:
        size = regular_file_size(path)
        if size == 0:
            raise ImageOpenError("empty file (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(132)
            f.seek(0)
            has_preamble = head[128:132] == b"DICM"
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            except Exception as exc:  # pydicom raises many kinds on garbage
                if has_preamble and f.tell() >= size:
                    raise ImageOpenError("truncated file: it ends inside a data element") from None
                raise ImageOpenError(f"not a readable DICOM file: {_first_line(exc)}") from None
            pixel_pos = f.tell()
            ts = _transfer_syntax(ds)
            if _is_deflated(ts):  # the whole dataset is one zlib stream: look inside it
                full = pydicom.dcmread(path, force=True)
                has_pixels = any(t in full for t in PIXEL_TAGS)
            else:
                has_pixels = _has_pixel_tag_at(f, little_endian=ts != ExplicitVRBigEndian)
    except OSError as exc:
        raise ImageOpenError(f"cannot read file: {exc.strerror or _first_line(exc)}") from None
    has_meta = bool(getattr(ds, "file_meta", None))
    if not has_preamble and not has_meta and "SOPClassUID" not in ds and "Rows" not in ds:
        raise ImageOpenError("not a DICOM file (no DICOM header found)")
    if not has_pixels:
        sop = ds.get("SOPClassUID")
        kind = UID(str(sop)).name if sop else "unknown SOP class"
        if pixel_pos >= size and not _is_deflated(ts) and (not sop or "Rows" in ds or "Image Storage" in kind):
            # the header stopped at the end of the file where an image needs its pixel data
            raise ImageOpenError(f"truncated file: it ends before the pixel data ({kind})")
        if str(sop or "").startswith(PRESENTATION_STATE_PREFIX):
            raise PresentationStateFile(f"presentation state ({kind}): annotations of other images")
        raise ImageOpenError(f"DICOM object without pixel data ({kind}): nothing to display")
    meta = meta_of(ds, ts)
    _check_size(meta.rows, meta.cols)
    _check_decodable(ts)
    if not ts.is_compressed and not _is_deflated(ts):
        expected = expected_pixel_bytes(ds, meta.rows, meta.cols, meta.frames)
        # the element header: tag and length (implicit VR), plus VR and 2 reserved bytes (explicit)
        available = size - pixel_pos - (8 if ts == ImplicitVRLittleEndian else 12)
        if available < expected and expected > 0:
            raise ImageOpenError(
                f"truncated file: pixel data has at most {max(available, 0):,} of {expected:,} bytes"
            )
    try:
        number = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    ref = ImageRef(path=path, kind="dicom", meta=meta,
                   sop_instance_uid=_text(ds, "SOPInstanceUID"), instance_number=number)
    return ref, keys_of(ds, path)


@dataclass(frozen=True)
class DicomKeys:
    patient_key: str
    study_uid: str
    study_date: str
    study_description: str
    series_uid: str
    series_description: str
    modality: str


def keys_of(ds: Dataset, path: str) -> DicomKeys:
    """The Patient/Study/Series grouping keys of a DICOM header."""
    pid, name = _text(ds, "PatientID"), _text(ds, "PatientName")
    return DicomKeys(
        patient_key=f"{pid}|{name}",
        study_uid=_text(ds, "StudyInstanceUID") or f"no-study-uid:{os.path.dirname(path)}",
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        series_uid=_text(ds, "SeriesInstanceUID") or f"no-series-uid:{os.path.dirname(path)}",
        series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality"),
    )


# --- decoding ------------------------------------------------------------------------------

_FRAME_ATTRS = (
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction", "VOILUTSequence",
)


def frame_attributes(ds: Dataset, frame: int) -> Dataset:
    """The modality and VOI attributes that apply to one frame.

    Top-level attributes, overridden by the Shared and then the Per-frame Functional Groups
    (Pixel Value Transformation, Frame VOI LUT) of enhanced multi-frame objects.
    """
    out = Dataset()
    if getattr(ds, "file_meta", None) is not None:
        out.file_meta = ds.file_meta  # byte order of OW LUT Data (Modality and VOI LUT Sequences)
    for kw in ("PixelRepresentation", "BitsStored", "BitsAllocated", "PhotometricInterpretation"):
        if kw in ds:
            setattr(out, kw, ds[kw].value)

    def take(src: Dataset) -> None:
        for kw in _FRAME_ATTRS:
            if kw in src:
                out[kw] = src[kw]

    take(ds)
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    for group in groups:
        for seq_kw in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            seq = group.get(seq_kw)
            if seq:
                take(seq[0])
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


#: Window centres and widths beyond this are ignored (float32 display data cannot use them).
MAX_WINDOW_VALUE = 1e30


def header_windows(attrs: Dataset) -> tuple[Window, ...]:
    """Every WindowCenter/WindowWidth pair in the header, named by its explanation."""
    centers = _as_list(attrs.get("WindowCenter"))
    widths = _as_list(attrs.get("WindowWidth"))
    names = _as_list(attrs.get("WindowCenterWidthExplanation"))
    function = str(attrs.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    out = []
    for i, (c, w) in enumerate(zip(centers, widths)):
        try:
            c, w = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if not (math.isfinite(c) and math.isfinite(w)) or w <= 0 or max(abs(c), w) > MAX_WINDOW_VALUE:
            continue  # NaN, infinite or absurd: the next window (or auto levels) is used
        name = str(names[i]).strip() if i < len(names) and str(names[i]).strip() else f"Header window {i + 1}"
        out.append(Window(c, w, function, name))  # type: ignore[arg-type]
    return tuple(out)


def header_voi_luts(attrs: Dataset) -> tuple[VoiLut, ...]:
    """The VOI LUT Sequence items as tables (parsed by pydicom's own apply_voi)."""
    seq = attrs.get("VOILUTSequence")
    out = []
    for i, item in enumerate(seq or []):
        try:
            n, first, bits = (int(v) for v in item.LUTDescriptor)
            n = n or 65536
            if attrs.get("PixelRepresentation", 0) == 1 and first > 32767:
                first -= 65536
            probe = np.arange(first, first + n, dtype=np.int64)
            table = apply_voi(probe, attrs, index=i)
        except Exception:
            continue  # a malformed table is skipped; the windows and auto levels remain
        name = str(item.get("LUTExplanation", "") or f"VOI LUT {i + 1}")
        out.append(VoiLut(first, np.asarray(table), max(1, min(bits, 16)), name))
    return tuple(out)


def padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """True where stored values are PixelPaddingValue (..PixelPaddingRangeLimit)."""
    if stored.ndim != 2:
        return None
    pad = _single_int(ds, "PixelPaddingValue")
    if pad is None:  # absent, or unusable (two values, raw bytes): the mask only helps auto levels
        return None
    limit = _single_int(ds, "PixelPaddingRangeLimit")
    if limit is None:
        mask = stored == pad
    else:
        lo, hi = sorted((pad, limit))
        mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _single_int(ds: Dataset, keyword: str) -> int | None:
    """One integer value of an element, or None when absent, multi-valued or not a number."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None or isinstance(value, (bytes, bytearray, list, tuple)) or type(value).__name__ == "MultiValue":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True, eq=False)
class DicomFrame:
    stored: np.ndarray
    modality: np.ndarray
    monochrome1: bool
    windows: tuple[Window, ...]
    voi_luts: tuple[VoiLut, ...]
    padding: np.ndarray | None
    value_unit: str


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array, as float32."""
    rgb = rgb.astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def decode_frame(path: str, frame: int = 0) -> DicomFrame:
    """Decode one frame: stored values, the Modality LUT output and the VOI choices.

    Every failure is an ImageOpenError with a one-line reason; NaN or infinite values (float
    pixel data, a NaN or huge RescaleSlope) are refused, never passed on.
    """
    try:
        return _decode_frame(path, frame)
    except (ImageOpenError, MemoryError):
        raise
    except Exception as exc:  # last line of defence: a value pydicom or numpy could not handle
        raise ImageOpenError(f"cannot decode this DICOM file: {_first_line(exc)}") from None


def _decode_frame(path: str, frame: int) -> DicomFrame:
    try:
        regular_file_size(path)
        ds = pydicom.dcmread(path, force=True)
    except ImageOpenError:
        raise
    except OSError as exc:
        raise ImageOpenError(f"cannot read file: {exc.strerror or _first_line(exc)}") from None
    except Exception as exc:
        raise ImageOpenError(f"not a readable DICOM file: {_first_line(exc)}") from None
    ts = _transfer_syntax(ds)
    if not getattr(ds, "file_meta", None):
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ts
    if not any(t in ds for t in PIXEL_TAGS):
        if "Rows" in ds or not len(ds):  # pydicom could not read the pixel data to its end
            raise ImageOpenError(f"truncated file: pixel data missing or cut short ({ts.name})")
        raise ImageOpenError("DICOM object without pixel data: nothing to display")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    _check_size(rows, cols)
    _check_decodable(ts)
    frames = max(1, _int(ds, "NumberOfFrames", 1))
    if not 0 <= frame < frames:
        raise ImageOpenError(f"frame {frame} out of range (the image has {frames} frames)")
    index = frame if frames > 1 else None
    try:
        if ts.is_transfer_syntax and ts.is_encapsulated:
            arr = codecs.decode_compressed(ds, ts, path, index, frames)
        else:
            arr = pixel_array(ds, index=index)
    except (ImageOpenError, MemoryError) as exc:
        if isinstance(exc, MemoryError):
            raise ImageOpenError(f"not enough memory to decode {cols} x {rows} px") from None
        raise
    except Exception as exc:
        raise ImageOpenError(f"cannot decode pixel data ({ts.name}): {_first_line(exc)}") from None
    photometric = _text(ds, "PhotometricInterpretation").upper()
    attrs = frame_attributes(ds, frame)
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        try:
            arr = apply_color_lut(arr, ds)  # indices -> RGB, shown as grey below
        except Exception as exc:
            raise ImageOpenError(f"cannot apply the palette colour lookup table: {_first_line(exc)}") from None
    if arr.shape == (rows, cols, 3):  # colour: show as grey
        stored = luma(arr)
        modality = stored
    elif arr.shape == (rows, cols):
        stored = arr
        _check_rescale(attrs)
        try:
            modality = apply_modality_lut(arr, attrs) if photometric.startswith("MONOCHROME") else arr
        except Exception:
            modality = arr  # malformed Modality LUT: show stored values rather than nothing
    else:
        raise ImageOpenError(
            f"decoded pixel data has shape {arr.shape}, not the {rows} x {cols} image the header describes"
        )
    _check_finite(stored, "pixel values")
    with np.errstate(over="ignore", invalid="ignore"):
        modality = np.ascontiguousarray(modality, dtype=np.float32)
    _check_finite(modality, "values after the Modality LUT (RescaleSlope/Intercept)")
    return DicomFrame(
        stored=stored,
        modality=modality,
        monochrome1=photometric == "MONOCHROME1",
        windows=header_windows(attrs),
        voi_luts=header_voi_luts(attrs),
        padding=padding_mask(ds, stored),
        value_unit=_text(attrs, "RescaleType"),
    )


def _check_rescale(attrs: Dataset) -> None:
    for kw in ("RescaleSlope", "RescaleIntercept"):
        if kw not in attrs:
            continue
        try:
            value = float(attrs[kw].value)
        except (TypeError, ValueError):
            continue  # not a number at all: apply_modality_lut fails and stored values are shown
        if not math.isfinite(value):
            raise ImageOpenError(f"{kw} is {value}: the pixel values cannot be computed")


def _check_finite(values: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values (float pixel data, a huge rescale)."""
    if values.dtype.kind != "f":
        return
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ImageOpenError(f"{bad:,} {what} are NaN or infinite: the image cannot be shown or scored")
