"""AI results as DICOM objects, with highdicom: a Comprehensive SR (TID 1500 Measurement Report)
with the scores, and a Secondary Capture with the heatmap and scores burnt in.

Both join the source image's study (same Patient and Study modules, same Study Instance UID)
in a new series, name the model (a device observer whose serial number is the weights' SHA-256)
and carry the research-use notice. An untrained head never appears as a number: the SR says
"not available" and why, and the SC's burnt-in text says "not available".

SR content tree (see ``build_sr``)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")          TID 1500
      HAS CONCEPT MOD  Language of Content Item and Descendants    (en-US)
      HAS OBS CONTEXT  Observer Type = (121007, DCM, "Device")     TID 1002/1004
                       Device Observer UID = 2.25.<first 128 bits of the model SHA-256>
                       Name / Manufacturer / Model Name / Serial Number (= full SHA-256)
      HAS CONCEPT MOD  Procedure reported = (413815006, SCT, "Chest imaging")
      CONTAINS         Image Library (the source image)            TID 1600, when highdicom can
                                                                   describe the source
      CONTAINS         CONTAINER Imaging Measurements
        CONTAINS       CONTAINER Measurement Group, one per AVAILABLE head   TID 1501
                         Tracking Identifier / Tracking Unique Identifier
                         Finding = e.g. (233604007, SCT, "Pneumonia")
                         NUM (122157, DCM, "Probability") = p, unit (1, UCUM, "no units")
                           with Algorithm Name / Version / Parameters (sha256, threshold, calibration)
                         CODE Pneumonia = (52101004, SCT, "Present") | (272519000, SCT, "Absent")
                         TEXT (121106, DCM, "Comment") = operating point, "not a diagnosis"
                         IMAGE Source of Measurement = the source image (frame if multi-frame)
        CONTAINS       CONTAINER Measurement Group, instead, for a positive head that marks where
                         (the nodule/mass model's lung-cancer association)   TID 1410 (planar ROI)
                         the same items, but instead of the IMAGE item:
                         SCOORD Image Region = POLYLINE, the finding's box as 5 closed (column,
                           row) points, SELECTED FROM the source image (frame if multi-frame)
      CONTAINS         CONTAINER (C0034375, UMLS, "Qualitative Evaluations")  (TID 1500 row)
                         TEXT Comment = "Research use only. Not for diagnostic use."
                         TEXT Comment = "<head>: not available: <reason>" per unavailable head
                         TEXT Comment = the model; the nodule/mass model too when it scored

A result without any available head still gets one measurement group (source image and a
comment, no measurement), since TID 1500 needs at least one.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from cxr_viewer import RESEARCH_NOTICE, __version__
from cxr_viewer.ai.inference import HeadScore, ScoreResult
from cxr_viewer.ai.overlay import model_line
from cxr_viewer.clinical.finding_marks import companion_line, finding_marks, marked_lines
from cxr_viewer.common.errors import UserError
from cxr_viewer.common.fileio import atomic_path

MANUFACTURER = "cxr_viewer project"
SOFTWARE_VERSIONS = f"cxr_viewer {__version__}"
SR_SERIES_DESCRIPTION = f"CXR AI scores - {RESEARCH_NOTICE}"
SC_SERIES_DESCRIPTION = f"CXR AI heatmap - {RESEARCH_NOTICE}"

#: What each head is about (finding type and the name of its present/absent evaluation).
#: Pneumonia (SCT 233604007) is not in pydicom's code dictionary; the others are.
FINDING_CODES = {
    "pneumonia": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
    "lung_cancer_association": hd.sr.CodedConcept(*codes.SCT.Nodule[:3]),  # "nodule or mass"
}
PROBABILITY = codes.DCM.Probability  # (122157, DCM, "Probability")
#: A probability is dimensionless: UCUM "1" ("no units", CID 7181), the usual unit for ratios
#: and scores in DICOM SR. ("{probability}" would be valid UCUM too, but is in no context group.)
PROBABILITY_UNIT = codes.UCUM.NoUnits
PRESENT, ABSENT = codes.SCT.Present, codes.SCT.Absent  # (52101004, SCT) / (272519000, SCT)
COMMENT = codes.DCM.Comment  # (121106, DCM, "Comment")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
PROCEDURE_REPORTED = codes.SCT.ChestImaging  # (413815006, SCT, "Chest imaging")
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation  # (121322, DCM)

_RASTER_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
                 (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))
#: Type 2 attributes that highdicom reads from the source (present, possibly empty, in the output).
_TYPE2_FROM_SOURCE = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                      "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_PUNCTUATION = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u2018": "'", "\u2019": "'",
                              "\u201c": '"', "\u201d": '"', "\u2026": "...", "\u00a0": " "})


#: The UIDs a derived object references: never cleaned away (the references must match the source).
_KEY_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: Enumerated values of attributes copied from the source (PS3.3 C.7.1.1, C.7.6.1.1.5, C.12.1);
#: highdicom itself refuses a Patient's Sex outside M/F/O.
_ENUMERATED = {"PatientSex": ("M", "F", "O"), "PatientIdentityRemoved": ("YES", "NO"),
               "QualityControlSubject": ("YES", "NO"), "LossyImageCompression": ("00", "01")}
#: What an empty first value of Specific Character Set means when code extensions follow
#: (PS3.3 C.12.1.1.2): the default repertoire, which highdicom only accepts by this name.
_DEFAULT_REPERTOIRE_EXTENSIONS = "ISO 2022 IR 6"

#: Type 2 attributes of the modules every image IOD has (Patient C.7.1.1, General Study C.7.2.1,
#: General Series C.7.3.1, General Image C.7.6.1): present, empty when unknown.
_TYPE2_EVERY_IMAGE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                      "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "InstanceNumber")
#: Spacings, ratios and the CR sensitivity: meaningless unless every value is > 0 (RG1's Pixel
#: Spacing is [0, 0] and its Sensitivity 0).
_POSITIVE = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing", "PixelAspectRatio", "Sensitivity")
#: Secondary Capture storage SOP classes (single and multi-frame): their SC Equipment module needs
#: Conversion Type (Type 1).
_SC_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
               "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4")
#: Conversion Type given to a Secondary Capture copy that has none: "WSD" (workstation), what the
#: software that turned a PNG/JPEG into DICOM was.
DEFAULT_CONVERSION_TYPE = "WSD"
#: The values of Laterality (0020,0060) (PS3.3 C.7.3.1).
_LATERALITY = ("R", "L")

_STRING_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")


class ExportError(UserError):
    """A result that cannot be exported as DICOM; ``str(err)`` is one line for the user."""


# --- source --------------------------------------------------------------------------------


def read_source_header(path: str | os.PathLike) -> Dataset:
    """The header (no pixel data) of the DICOM image a result was computed from.

    Raises ExportError for a PNG/JPEG or any other non-DICOM file, and for a DICOM object
    without the UIDs a derived object must reference. A file with "DICM" at offset 128 is DICOM
    whatever its preamble: dual-format files (e.g. a TIFF header in the preamble, PS3.10 7.5)
    are valid DICOM.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from None
    is_part10 = len(head) == 132 and head[128:] == b"DICM"
    kind = None if is_part10 else next((name for magic, name in _RASTER_MAGIC if head.startswith(magic)), None)
    if kind is not None:
        raise ExportError(f"A DICOM SR or Secondary Capture needs a DICOM source image; {path} is a {kind}")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:  # no preamble / file meta: a bare data set, as some archives write them
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - whatever a forced parse of a non-DICOM file raises
            ds = None
        if ds is None or "SOPClassUID" not in ds:
            raise ExportError(f"A DICOM SR or Secondary Capture needs a DICOM source image; "
                              f"{path} is not a DICOM file") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line for the user
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"cannot read the DICOM header of {path}: {first}") from None
    _check_source(ds, path)
    return ds


def _check_source(ds: Dataset, where: str = "the source") -> None:
    try:
        missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
                   if not str(ds.get(k, "") or "").strip()]
    except Exception:  # noqa: BLE001 - a malformed element raises whatever its parser raises
        raise ExportError(f"{where} is not a readable DICOM data set") from None
    if missing:
        raise ExportError(f"{where} cannot be referenced: it has no {', '.join(missing)}")
    if not ds.get("Rows") or not ds.get("Columns"):
        raise ExportError(f"{where} is not a DICOM image (no Rows/Columns)")


def _check_result(result: ScoreResult | None) -> ScoreResult:
    if result is None or not getattr(result, "heads", None):
        raise ExportError("there is no AI result to export: score the image first")
    return result


def _source_for_highdicom(source: Dataset) -> Dataset:
    """A header-only copy with the Type 2 patient/study attributes present (possibly empty),
    cleaned (see ``_clean_source``) so that highdicom accepts it; ``source`` is not changed."""
    _check_source(source)
    src = Dataset()
    for elem in source:
        if elem.tag.group > 0x0002 and elem.tag < 0x7FE00000:
            src.add(copy.deepcopy(elem))
    _clean_source(src)
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in src or src[keyword].value is None:
            setattr(src, keyword, "")
    return src


def _invalid_value(elem) -> bool:
    """True when ``elem`` (a string VR) breaks its VR's rules or its enumerated values."""
    probe = Dataset()
    probe.add(elem)
    if vr_problems(probe):
        return True
    allowed = _ENUMERATED.get(elem.keyword)
    if allowed is None or elem.value is None:
        return False
    values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
    return any(str(v) and str(v) not in allowed for v in values)


def _clean_source(ds: Dataset, depth: int = 0) -> list[str]:
    """Make the copy given to highdicom conformant, in place; returns the keywords changed.

    highdicom validates some of the values it copies (Patient's Sex, dates and times through
    pydicom's DA/TM) and raises on a non-conformant one, e.g. Patient's Sex "m" or "X", Patient's
    Birth Date "1960-01-01", Study Time "25:99". A non-conformant value cannot be repaired
    without guessing, so, at any depth:

    * a value that breaks its VR (format, characters, length: ``vr_problems``) or, for the
      attributes in ``_ENUMERATED``, is not one of the enumerated values is emptied when the
      attribute is one of the Type 2 attributes highdicom copies (``_TYPE2_FROM_SOURCE``: present
      and empty means "unknown"), and removed otherwise;
    * the four UIDs that the new object references (``_KEY_UIDS``) are never touched, nor is
      Specific Character Set beyond what follows (without it the source's text could not be
      encoded: an unknown one makes highdicom refuse, and the error names it);
    * Specific Character Set: an empty first value followed by code extensions (the usual
      Japanese ``['', 'ISO 2022 IR 87']``) becomes "ISO 2022 IR 6", its name in the standard's
      table of code extensions, which highdicom requires; an empty single value (the default
      repertoire) is removed, which means the same.
    """
    changed: list[str] = []
    charset = ds.get("SpecificCharacterSet") if depth == 0 else None
    if isinstance(charset, (list, MultiValue)) and len(charset) > 1 and not str(charset[0]).strip():
        ds.SpecificCharacterSet = [_DEFAULT_REPERTOIRE_EXTENSIONS, *[str(v) for v in charset[1:]]]
    elif charset is not None and not isinstance(charset, (list, MultiValue)) and not str(charset).strip():
        del ds.SpecificCharacterSet
    for elem in list(ds):
        if elem.VR == "SQ":
            if depth < 32:
                for item in elem.value or []:
                    changed += _clean_source(item, depth + 1)
            continue
        if elem.VR not in _STRING_VRS or elem.value is None or (
                depth == 0 and elem.keyword in (*_KEY_UIDS, "SpecificCharacterSet")):
            continue
        if _invalid_value(copy.deepcopy(elem)):
            changed.append(elem.keyword or str(elem.tag))
            if elem.keyword in _TYPE2_FROM_SOURCE:
                ds[elem.tag].value = ""
            else:
                del ds[elem.tag]
    return changed


def _not_positive(elem) -> bool:
    values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
    try:
        return not values or any(not (np.isfinite(float(v)) and float(v) > 0) for v in values)
    except (TypeError, ValueError):
        return True


def _drop_not_positive(ds: Dataset, depth: int = 0) -> list[str]:
    changed: list[str] = []
    for elem in list(ds):
        if elem.VR == "SQ" and depth < 32:
            for item in elem.value or []:
                changed += _drop_not_positive(item, depth + 1)
        elif elem.keyword in _POSITIVE and elem.value is not None and not _is_blank(elem) and _not_positive(elem):
            changed.append(elem.keyword)
            del ds[elem.tag]
    return changed


def _is_blank(elem) -> bool:
    value = elem.value
    return value is None or (isinstance(value, (str, bytes, list, MultiValue)) and len(value) == 0)


def _source_laterality(source: Dataset) -> str:
    """The source's Laterality (or Image Laterality) when it is R or L; else "" (unknown)."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in _LATERALITY:
            return value
    return ""


def _laterality_unknown(ds: Dataset) -> bool:
    """True when Laterality (Type 2C) should be sent empty: no laterality is sent and the body
    part is not known (a known unpaired part such as CHEST needs none; dciodvfy wants it absent)."""
    if any(k in ds for k in ("Laterality", "ImageLaterality", "FrameLaterality")):
        return False
    return not str(ds.get("BodyPartExamined", "") or "").strip()


def conform_image(ds: Dataset) -> list[str]:
    """Repair, in place, what an image copy (plain or de-identified) needs to pass an IOD
    validator such as dciodvfy; returns the keywords changed. Nothing is guessed that matters:

    * values breaking their VR or enumerated values (``_clean_source``: e.g. Patient's Age "81")
      are removed, or emptied for the Type 2 attributes;
    * spacings, aspect ratios and Sensitivity with a value <= 0 (RG1's Pixel Spacing [0, 0])
      are removed, so that no tool measures with them;
    * the Type 2 attributes of the Patient, General Study, General Series and General Image
      modules are added empty (unknown) when missing, and so are Laterality (Type 2C: sent
      empty when no laterality is sent and the body part is unknown; a known one such as CHEST
      needs none) and Patient Orientation (Type 2C when the image has no Image Orientation
      (Patient));
    * a Secondary Capture without its Type 1 Conversion Type gets ``DEFAULT_CONVERSION_TYPE``.

    Pixel data, UIDs and the SOP class are never touched: the copy stays the same instance.
    """
    changed = _clean_source(ds) + _drop_not_positive(ds)
    for keyword in _TYPE2_EVERY_IMAGE:
        if keyword not in ds:
            setattr(ds, keyword, None)
            changed.append(keyword)
    if _laterality_unknown(ds):
        ds.Laterality = None
        changed.append("Laterality")
    if "PatientOrientation" not in ds and "ImageOrientationPatient" not in ds:
        ds.PatientOrientation = None
        changed.append("PatientOrientation")
    if str(ds.get("SOPClassUID", "")) in _SC_CLASSES and not str(ds.get("ConversionType", "") or "").strip():
        ds.ConversionType = DEFAULT_CONVERSION_TYPE
        changed.append("ConversionType")
    return changed


def _refused(what: str, exc: Exception, src: Dataset) -> ExportError:
    """The one-line error for a data set highdicom refused. The exception's text is not quoted:
    it may hold a source value (a birth date, a name) that would reach stderr or the status bar.
    The attributes it concerns are named instead, when they can be told: those the message
    names or quotes, and those whose value breaks its VR or enumerated values."""
    message = str(exc)
    named: list[str] = []
    for elem in src:
        if not elem.keyword or elem.VR == "SQ":
            continue
        text = str(elem.value if elem.value is not None else "")
        if re.search(rf"(?<![A-Za-z]){elem.keyword}(?![a-z])", message) or (
                text.strip() and (f"'{text}'" in message or f'"{text}"' in message)):
            named.append(elem.keyword)
        elif elem.VR in _STRING_VRS and _invalid_value(copy.deepcopy(elem)):
            named.append(elem.keyword)  # e.g. a date highdicom could not convert
    if named:
        return ExportError(f"cannot build the DICOM {what}: the source's {', '.join(sorted(set(named)))} "
                           f"cannot be copied ({type(exc).__name__})")
    return ExportError(f"cannot build the DICOM {what} from this source ({type(exc).__name__})")


def _ascii(text: str) -> str:
    """Our own text as plain ASCII (fits any source's character set)."""
    text = unicodedata.normalize("NFKD", str(text).translate(_PUNCTUATION))
    return text.encode("ascii", "ignore").decode("ascii")


def _frames(source: Dataset, result: ScoreResult) -> list[int] | None:
    try:
        n = int(source.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return [int(result.frame) + 1] if n > 1 else None


def vr_problems(ds: Dataset) -> list[str]:
    """Values that break their VR's rules (length, characters, format), at any depth: a cheap
    stand-in for part of what dciodvfy checks. Empty when all is well."""
    problems: list[str] = []

    def visit(dataset: Dataset, elem) -> None:
        if elem.VR not in _STRING_VRS or elem.value is None:
            return
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for v in values:
            text = getattr(v, "original_string", None) or str(v)
            try:
                validate_value(elem.VR, text, pydicom.config.RAISE)
            except (ValueError, TypeError) as exc:
                problems.append(f"{elem.keyword or elem.tag}: {exc}")

    ds.walk(visit)
    return problems


def _drop_invalid_copies(out: Dataset, src: Dataset) -> None:
    """Attributes copied from the source whose value breaks its VR (e.g. Patient's Age "81"):
    emptied when Type 2 here, removed otherwise, so that the new object is valid."""
    for elem in list(out):
        if elem.VR == "SQ" or elem.tag.group <= 0x0002 or elem.tag not in src:
            continue
        if src[elem.tag].value != elem.value:
            continue
        probe = Dataset()
        probe.add(copy.deepcopy(elem))
        if vr_problems(probe):
            if elem.keyword in _TYPE2_FROM_SOURCE:
                out[elem.tag].value = ""
            else:
                del out[elem.tag]


@contextlib.contextmanager
def _quiet_highdicom():
    """Silence highdicom's advice on single-component person names copied from the source
    (and pseudonyms such as ANON-...): they are the source's, not ours to rewrite."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


# --- the model as a device ------------------------------------------------------------------


def device_uid(sha256: str) -> str:
    """``2.25.<integer of the first 32 hex digits of the weights' SHA-256>``: the same model
    always gets the same Device Observer UID."""
    return f"2.25.{int(sha256[:32], 16)}"


def device_name(result: ScoreResult) -> str:
    name = result.model_name or "model"
    return _ascii(name if name.startswith("cxr_viewer") else f"cxr_viewer {name}")


def _check_model(result: ScoreResult) -> str:
    sha = (result.model_sha256 or "").strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ExportError("the result does not name its model's SHA-256, so its source cannot be recorded")
    return sha


def _device_observer(result: ScoreResult, sha: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(sha),
        name=device_name(result),
        manufacturer_name=MANUFACTURER,
        model_name=_ascii(f"{result.model_name} {result.model_version}".strip())[:64],
        serial_number=sha,  # 64 hex digits: fits LO
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device))


def _algorithm(result: ScoreResult, score: HeadScore, sha: str) -> hd.sr.AlgorithmIdentification:
    params = [f"sha256={sha}", f"head={score.head}", "calibration=temperature"]
    if score.threshold is not None:
        params.insert(1, f"threshold={score.threshold:.6g}")
    return hd.sr.AlgorithmIdentification(name=_ascii(result.model_name or "cxr_viewer model"),
                                         version=_ascii(result.model_version or "unknown"),
                                         parameters=params, manufacturer=MANUFACTURER)


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=COMMENT, value=_ascii(text),
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def unavailable_note(score: HeadScore) -> str:
    if score.status == "outside_intended_use":
        return f"{score.title}: {score.reason}"
    reason = score.reason or "not available"
    if not reason.lower().startswith("not available"):
        reason = f"not available: {reason}"
    return f"{score.title}: {reason}"


def _operating_point_note(score: HeadScore) -> str:
    text = f"{score.title}: calibrated probability {score.probability:.4f}"
    if score.threshold is not None and score.positive is not None:
        text += f"; {'positive' if score.positive else 'negative'} at threshold {score.threshold:.4f}"
        if score.sensitivity is not None and score.specificity is not None:
            text += f" (sensitivity {score.sensitivity:.3f} / specificity {score.specificity:.3f} on validation)"
    if score.status == "scored_outside_intended_use":
        text = f"OUTSIDE INTENDED USE ({score.reason}). {text}"
    return text + ". Not a diagnosis. " + RESEARCH_NOTICE


# --- SR ------------------------------------------------------------------------------------


def _shape(source: Dataset) -> tuple[int, int] | None:
    """(Rows, Columns) of the source, None where it does not say."""
    try:
        return int(source.Rows), int(source.Columns)
    except (AttributeError, TypeError, ValueError):
        return None


def box_polyline(box: tuple[float, float, float, float]) -> np.ndarray:
    """The box (x0, y0, x1, y1) as a closed SCOORD polyline: 5 (column, row) points, the last the first."""
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _box_region(source: Dataset, result: ScoreResult, box) -> hd.sr.ImageRegion:
    """The finding's box on the source image (PS3.3 C.18.6.1.2: column\\row, 0\\0 the top-left corner of
    the top-left pixel, the image pixel convention of the viewer and of ``HeadScore.location``)."""
    ref = hd.sr.SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID), _frames(source, result))
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=box_polyline(box),
                             source_image=ref)


def build_measurement_report(source: Dataset, result: ScoreResult) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree for ``result`` on ``source`` (see the module docstring)."""
    result = _check_result(result)
    sha = _check_model(result)
    images = [hd.sr.SourceImageForMeasurementGroup(str(source.SOPClassUID), str(source.SOPInstanceUID),
                                                   _frames(source, result))]
    marks = {m.head: m for m in finding_marks(result, _shape(source))}
    groups = []
    for score in result.heads:
        if not score.available or score.probability is None:
            continue
        finding = FINDING_CODES.get(score.head) or hd.sr.CodedConcept(score.head, "99CXRV", score.title)
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=_ascii(f"{score.title} (AI score)")[:64])
        measurement = hd.sr.Measurement(name=PROBABILITY, value=float(score.probability), unit=PROBABILITY_UNIT,
                                        algorithm_id=_algorithm(result, score, sha))
        evaluations = []
        if score.positive is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(name=finding, value=PRESENT if score.positive else ABSENT))
        mark = marks.get(score.head)
        if mark is not None:  # where: a planar ROI group (TID 1410) whose region is the finding's box
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=_box_region(source, result, mark.box),
                finding_type=finding, measurements=[measurement], qualitative_evaluations=evaluations)
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=finding, measurements=[measurement],
                qualitative_evaluations=evaluations, source_images=images)
        group[0].ContentSequence.append(_comment(_operating_point_note(score)))
        groups.append(group)
    if not groups:
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="AI scores (none available)")
        group = hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, source_images=images)
        group[0].ContentSequence.append(_comment("No score: no head of this model is available. " + RESEARCH_NOTICE))
        groups.append(group)

    try:
        library = [source] if "Rows" in source else None
        report = hd.sr.MeasurementReport(observation_context=_device_observer(result, sha),
                                         procedure_reported=PROCEDURE_REPORTED, imaging_measurements=groups,
                                         referenced_images=library)
    except (ValueError, KeyError, AttributeError, TypeError):
        # highdicom could not describe this source in an Image Library (optional in TID 1500):
        # for CR/DX it needs PatientOrientation and ImagerPixelSpacing, which many radiographs
        # lack (RG1, the NIH file). The groups still reference the source, and so does the
        # evidence sequence.
        report = hd.sr.MeasurementReport(observation_context=_device_observer(result, sha),
                                         procedure_reported=PROCEDURE_REPORTED, imaging_measurements=groups)
    notes = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    notes.ContentSequence = hd.sr.ContentSequence([_comment(RESEARCH_NOTICE)])
    for score in result.heads:
        if not score.available or score.probability is None:
            notes.ContentSequence.append(_comment(unavailable_note(score)))
    notes.ContentSequence.append(_comment(model_line(result)))
    if result.companion:
        notes.ContentSequence.append(_comment(companion_line(result)))
    report[0].ContentSequence.append(notes)
    return report


def build_sr(source: Dataset, result: ScoreResult, *, series_number: int = 9901,
             instance_number: int = 1) -> Dataset:
    """A Comprehensive SR (TID 1500) with ``result``'s scores on ``source`` (a DICOM header).

    Same patient and study as the source, a new series and instance; the source is referenced
    by the measurement groups, the Image Library and CurrentRequestedProcedureEvidenceSequence.
    """
    src = _source_for_highdicom(source)
    report = build_measurement_report(src, result)
    try:
        with _quiet_highdicom():
            sr = hd.sr.ComprehensiveSR(
                evidence=[src], content=report[0], series_instance_uid=hd.UID(), series_number=series_number,
                sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
                is_complete=True, is_final=False, is_verified=False, transfer_syntax_uid=ExplicitVRLittleEndian,
                series_description=SR_SERIES_DESCRIPTION, software_versions=SOFTWARE_VERSIONS,
                manufacturer_model_name="cxr_viewer",
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise _refused("SR", exc, src) from None
    _drop_invalid_copies(sr, src)
    return sr


# --- Secondary Capture ------------------------------------------------------------------------


def _pixel_spacing(source: Dataset, rgb: np.ndarray) -> tuple[float, float] | None:
    """The source's Pixel Spacing when the picture has the source's size and the value is sane."""
    if (int(source.Rows), int(source.Columns)) != tuple(rgb.shape[:2]):
        return None
    try:
        spacing = [float(v) for v in source.get("PixelSpacing") or []]
    except (TypeError, ValueError):
        return None
    if len(spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing):
        return None  # RG1's is a bogus [0, 0]
    return spacing[0], spacing[1]


def _orientation(source: Dataset) -> tuple[str, str] | None:
    values = source.get("PatientOrientation")
    if not values or isinstance(values, str) or len(values) != 2:
        return None
    try:
        for v in values:
            hd.enum.PatientOrientationValuesBiped(str(v))
    except ValueError:
        return None
    return str(values[0]), str(values[1])


def build_secondary_capture(source: Dataset, rgb: np.ndarray, result: ScoreResult, *, series_number: int = 9902,
                            instance_number: int = 1, lines: Iterable[str] | None = None,
                            derivation: str | None = None) -> Dataset:
    """A Secondary Capture of ``rgb`` (the annotated picture, see ``finding_marks.marked_rgb``).

    ``lines`` is the burnt-in text (default ``finding_marks.marked_lines(result)``), repeated in Image
    Comments; Burned In Annotation is YES. Same study as ``source``, a new series; the source is
    referenced in SourceImageSequence; Pixel Spacing is copied when the picture has the source's
    size and the source knows it.
    """
    result = _check_result(result)
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ExportError(f"a Secondary Capture needs an (H, W, 3) uint8 RGB picture, got {rgb.dtype} {rgb.shape}")
    src = _source_for_highdicom(source)
    orientation = _orientation(src)
    try:
        with _quiet_highdicom():
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=src, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
                coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=series_number,
                sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
                pixel_spacing=_pixel_spacing(src, rgb), patient_orientation=orientation or ("L", "F"),
                transfer_syntax_uid=ExplicitVRLittleEndian, series_description=SC_SERIES_DESCRIPTION,
                software_versions=SOFTWARE_VERSIONS, manufacturer_model_name="cxr_viewer",
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise _refused("Secondary Capture", exc, src) from None
    _drop_invalid_copies(sc, src)
    if orientation is None:
        sc.PatientOrientation = ""  # Type 2C: unknown (highdicom needs a value to build with)
    body_part = str(src.get("BodyPartExamined", "") or "").strip()
    if body_part:
        sc.BodyPartExamined = body_part  # (already checked against its VR by _clean_source)
    laterality = _source_laterality(src)
    if laterality:
        sc.Laterality = laterality
    elif _laterality_unknown(sc):
        sc.Laterality = ""  # Type 2C (General Series): unknown body part, unknown laterality
    text = [_ascii(t) for t in (lines if lines is not None else marked_lines(result))]
    marked = bool(finding_marks(result))
    sc.BurnedInAnnotation = "YES"
    what = "AI scores, heatmap and finding boxes" if marked else "AI scores and heatmap"
    sc.ImageComments = _ascii(f"{RESEARCH_NOTICE} {what} burnt into the pixels: " + "; ".join(text))
    models = "; ".join(filter(None, (model_line(result), companion_line(result))))
    boxes = ", the positive finding's box (orange) drawn" if marked else ""
    sc.DerivationDescription = _ascii(
        derivation or (f"Source image rendered with its display window, AI heatmap (Grad-CAM, inferno colours) "
                       f"blended{boxes} and scores burnt in by {SOFTWARE_VERSIONS}; {models}. "
                       f"{RESEARCH_NOTICE}"))[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    frames = _frames(src, result)
    if frames:
        ref.ReferencedFrameNumber = frames[0]
    ref.PurposeOfReferenceCodeSequence = Sequence([hd.sr.CodedConcept(*SOURCE_PURPOSE[:3])])
    sc.SourceImageSequence = Sequence([ref])
    if str(src.get("LossyImageCompression", "")) == "01":  # lossy once, lossy forever (PS3.3 C.7.6.1.1.5)
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in src:
                setattr(sc, keyword, src[keyword].value)
    return sc


# --- writing ----------------------------------------------------------------------------------


def write_dataset(ds: Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a DICOM file (preamble, file meta) atomically: all or nothing."""
    path = os.fspath(path)
    try:
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExportError(f"cannot write {path}: {exc}") from None


__all__ = [
    "ExportError",
    "build_measurement_report",
    "build_secondary_capture",
    "build_sr",
    "conform_image",
    "device_name",
    "device_uid",
    "read_source_header",
    "unavailable_note",
    "vr_problems",
    "write_dataset",
]
