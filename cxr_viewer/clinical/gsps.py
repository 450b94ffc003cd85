"""Annotations saved as a DICOM Grayscale Softcopy Presentation State (GSPS), with highdicom, and
read back: how viewers such as Weasis and Horos keep measurements beside an image without
touching its pixels.

What a GSPS written here holds:

- the source image's patient and study, a new series; the image (and frame) it annotates in the
  Referenced Series Sequence and in each Graphic Annotation;
- the viewer's window as the Softcopy VOI LUT (when it is a linear window), and the Presentation
  LUT Shape that shows the image as it was on screen (INVERSE for a MONOCHROME1 image shown as
  usual, or for a MONOCHROME2 image the user inverted);
- three graphic layers: ``MEASUREMENTS`` (rulers, angles, regions: polylines and ellipses in PIXEL
  units), ``ANNOTATIONS`` (arrows and text) and ``MEASURED VALUES`` (the values as text beside
  each measurement, for viewers that do not measure; recomputed from the pixels when read back);
- each object's Tracking ID names its kind ("cxr_viewer ruler", ...) and its Tracking UID is the
  annotation's UID, so a round trip gives the same annotations.

A GSPS written elsewhere is read as well as it can be: an open 2-point polyline is a ruler, a
3-point one an angle, a closed axis-aligned 4-corner polyline a rectangle, an axis-aligned ELLIPSE
or a CIRCLE an ellipse, text objects texts; anything else (DISPLAY units, other shapes) is counted
as skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.clinical.annotations import (
    ASCII_TEXT,
    Angle,
    Annotation,
    Arrow,
    EllipseRoi,
    RectRoi,
    Ruler,
    Text,
    label_anchor,
)
from cxr_viewer.clinical.dicom_results import (
    MANUFACTURER,
    SOFTWARE_VERSIONS,
    ExportError,
    _drop_invalid_copies,
    _laterality_unknown,
    _quiet_highdicom,
    _source_for_highdicom,
    _source_laterality,
)
from cxr_viewer.io.display import Window

GSPS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
LAYER_MEASUREMENTS = "MEASUREMENTS"
LAYER_ANNOTATIONS = "ANNOTATIONS"
LAYER_VALUES = "MEASURED VALUES"
CONTENT_LABEL = "CXR_ANNOTATIONS"
SERIES_DESCRIPTION = f"CXR measurements - {RESEARCH_NOTICE}"
TRACKING_PREFIX = "cxr_viewer "
#: a GSPS is small; files above this size in a folder are images, never read when looking for one
MAX_GSPS_BYTES = 2_000_000


@dataclass(frozen=True)
class GspsContent:
    """What a GSPS says about one image frame."""

    annotations: tuple[Annotation, ...]
    referenced_sop_instance_uids: tuple[str, ...]
    window: Window | None = None
    inverse: bool | None = None  # Presentation LUT Shape INVERSE (None: not stated)
    skipped: int = 0  # graphic or text objects that could not be read as annotations
    path: str = ""





def _ascii(text: str) -> str:
    """Text for the default character repertoire: degrees as " deg", mm² as "mm2"."""
    return text.translate(ASCII_TEXT).encode("ascii", "replace").decode("ascii")


def _tracking(ann: Annotation) -> dict:
    return {"tracking_id": f"{TRACKING_PREFIX}{ann.kind}", "tracking_uid": ann.uid}


def _ellipse_axes(roi: EllipseRoi) -> np.ndarray:
    """The four ELLIPSE points: the ends of the major axis, then of the minor axis."""
    x0, y0, x1, y1 = roi.bounds()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    horizontal = [[x0, cy], [x1, cy]]
    vertical = [[cx, y0], [cx, y1]]
    pts = horizontal + vertical if (x1 - x0) >= (y1 - y0) else vertical + horizontal
    return np.array(pts, dtype=np.float64)


def _graphic(ann: Annotation) -> hd.pr.GraphicObject:
    pixel = hd.pr.AnnotationUnitsValues.PIXEL
    if isinstance(ann, EllipseRoi):
        return hd.pr.GraphicObject(hd.pr.GraphicTypeValues.ELLIPSE, _ellipse_axes(ann), pixel, **_tracking(ann))
    if isinstance(ann, RectRoi):
        x0, y0, x1, y1 = ann.bounds()
        data = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
        return hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, data, pixel, **_tracking(ann))
    return hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, np.array(ann.points, dtype=np.float64), pixel,
                               **_tracking(ann))


def _text_object(text: str, anchor, tracking: dict | None = None) -> hd.pr.TextObject:
    value = _ascii(" ".join(text.split()) if "\n" not in text else "; ".join(text.splitlines()))[:1024] or "-"
    return hd.pr.TextObject(value, hd.pr.AnnotationUnitsValues.PIXEL, anchor_point=(float(anchor[0]), float(anchor[1])),
                            anchor_point_visible=False, text_justification=hd.pr.TextJustificationValues.LEFT,
                            **(tracking or {}))


def build_gsps(source: Dataset, annotations, *, frame: int = 0, labels: dict[str, str] | None = None,
               window: Window | None = None, inverse: bool | None = None, series_number: int = 9903,
               instance_number: int = 1) -> Dataset:
    """A GSPS with ``annotations`` on frame ``frame`` of the image ``source`` (its DICOM header).

    ``labels``: the measured value of each annotation by UID (drawn as text in the MEASUREMENT
    VALUES layer); ``window``: the shown window (kept as the presentation's VOI); ``inverse``: whether
    the image was shown inverted (white = low values), None = as its photometric interpretation says.
    """
    annotations = tuple(annotations)
    if not annotations:
        raise ExportError("there are no annotations on this image to save")
    src = _source_for_highdicom(source)
    frames = int(src.get("NumberOfFrames", 1) or 1)
    ref_frame = frame + 1 if frames > 1 else None
    layers = [hd.pr.GraphicLayer(LAYER_MEASUREMENTS, 1, "rulers, angles and regions of interest"),
              hd.pr.GraphicLayer(LAYER_ANNOTATIONS, 2, "arrows and text"),
              hd.pr.GraphicLayer(LAYER_VALUES, 3, "measured values (recomputed from the pixels by cxr_viewer)")]
    measurements = [a for a in annotations if isinstance(a, (Ruler, Angle, RectRoi))]
    arrows = [a for a in annotations if isinstance(a, Arrow)]
    texts = [a for a in annotations if isinstance(a, Text)]
    labels = labels or {}
    value_texts = [_text_object(labels[a.uid], label_anchor(a)) for a in measurements if labels.get(a.uid)]
    groups = []

    def annotation(layer, graphics=(), text=()):
        if graphics or text:
            groups.append(hd.pr.GraphicAnnotation([src], layer, referenced_frame_number=ref_frame,
                                                  graphic_objects=list(graphics) or None,
                                                  text_objects=list(text) or None))

    annotation(layers[0], [_graphic(a) for a in measurements])
    annotation(layers[1], [_graphic(a) for a in arrows], [_text_object(a.text, a.points[0], _tracking(a)) for a in texts])
    annotation(layers[2], (), value_texts)
    voi = None
    if window is not None and np.isfinite(window.width) and window.width > 0:
        explanation = _ascii(window.name or "cxr_viewer window")[:64] or "cxr_viewer window"
        voi = [hd.pr.SoftcopyVOILUTTransformation(
            window_center=float(window.center), window_width=float(window.width),
            voi_lut_function=None if window.function == "LINEAR" else window.function)]
        voi[0].WindowCenterWidthExplanation = explanation  # (highdicom splits a str into characters)
    mono1 = str(src.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
    shown_inverse = mono1 if inverse is None else bool(inverse)
    shape = hd.PresentationLUTShapeValues.INVERSE if shown_inverse else hd.PresentationLUTShapeValues.IDENTITY
    try:
        with _quiet_highdicom():
            gsps = hd.pr.GrayscaleSoftcopyPresentationState(
                referenced_images=[src], series_instance_uid=hd.UID(), series_number=series_number,
                sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
                manufacturer_model_name="cxr_viewer", software_versions=SOFTWARE_VERSIONS,
                device_serial_number="1", content_label=CONTENT_LABEL,
                content_description=_ascii(f"cxr_viewer measurements. {RESEARCH_NOTICE}")[:64],
                graphic_annotations=groups, graphic_layers=layers, voi_lut_transformations=voi,
                presentation_lut_transformation=hd.PresentationLUTTransformation(presentation_lut_shape=shape),
                transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"cannot make a presentation state of this image: {first}") from None
    gsps.SeriesDescription = _ascii(SERIES_DESCRIPTION)[:64]
    _drop_invalid_copies(gsps, src)
    body_part = str(src.get("BodyPartExamined", "") or "").strip()
    if body_part:
        gsps.BodyPartExamined = body_part
    laterality = _source_laterality(src)
    if laterality:
        gsps.Laterality = laterality
    elif _laterality_unknown(gsps):
        gsps.Laterality = ""  # Type 2C (General Series): unknown body part, unknown laterality
    return gsps


# --- reading ------------------------------------------------------------------------------------


def _pairs(data) -> list[tuple[float, float]]:
    values = [float(v) for v in data]
    return [(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]


def _kind_of(item: Dataset) -> str:
    tid = str(item.get("TrackingID", "") or "")
    return tid[len(TRACKING_PREFIX):] if tid.startswith(TRACKING_PREFIX) else ""


def _uid_kwargs(item: Dataset) -> dict:
    uid = str(item.get("TrackingUID", "") or "")
    return {"uid": uid} if uid else {}


def _graphic_annotation(item: Dataset) -> Annotation | None:
    if str(item.get("GraphicAnnotationUnits", "")).upper() != "PIXEL":
        return None
    gtype = str(item.get("GraphicType", "")).upper()
    pts = _pairs(item.get("GraphicData") or [])
    kind, kw = _kind_of(item), _uid_kwargs(item)
    if gtype == "ELLIPSE" and len(pts) == 4:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        (a, b), (c, d) = (pts[0], pts[1]), (pts[2], pts[3])
        axis_aligned = all(abs(p[0] - q[0]) < 1e-6 or abs(p[1] - q[1]) < 1e-6 for p, q in ((a, b), (c, d)))
        return EllipseRoi(((min(xs), min(ys)), (max(xs), max(ys))), **kw) if axis_aligned else None
    if gtype == "CIRCLE" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = float(np.hypot(px - cx, py - cy))
        return EllipseRoi(((cx - r, cy - r), (cx + r, cy + r)), **kw)
    if gtype != "POLYLINE":
        return None
    if kind == "arrow" and len(pts) == 2:
        return Arrow(tuple(pts), **kw)
    if len(pts) == 2:
        return Ruler(tuple(pts), **kw)
    if len(pts) == 3:
        return Angle(tuple(pts), **kw)
    if len(pts) == 5 and np.allclose(pts[0], pts[4]):
        xs, ys = sorted({round(p[0], 6) for p in pts}), sorted({round(p[1], 6) for p in pts})
        if len(xs) == 2 and len(ys) == 2:
            return RectRoi(((xs[0], ys[0]), (xs[1], ys[1])), **kw)
    return None


def _text_annotation(item: Dataset) -> Annotation | None:
    text = str(item.get("UnformattedTextValue", "") or "")
    if "AnchorPoint" in item and str(item.get("AnchorPointAnnotationUnits", "")).upper() == "PIXEL":
        return Text((tuple(float(v) for v in item.AnchorPoint),), text=text, **_uid_kwargs(item))
    if ("BoundingBoxTopLeftHandCorner" in item
            and str(item.get("BoundingBoxAnnotationUnits", "")).upper() == "PIXEL"):
        return Text((tuple(float(v) for v in item.BoundingBoxTopLeftHandCorner),), text=text, **_uid_kwargs(item))
    return None


def _frames_of(item: Dataset) -> set[int] | None:
    """The frame numbers (1-based) a Graphic Annotation applies to; None = all."""
    out: set[int] = set()
    for ref in item.get("ReferencedImageSequence") or []:
        value = ref.get("ReferencedFrameNumber")
        if value is None:
            return None
        out |= {int(v) for v in (value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value])}
    return out or None


def referenced_instances(ds: Dataset) -> tuple[str, ...]:
    return tuple(str(img.ReferencedSOPInstanceUID) for series in ds.get("ReferencedSeriesSequence") or []
                 for img in series.get("ReferencedImageSequence") or [] if "ReferencedSOPInstanceUID" in img)


def read_gsps(ds: Dataset | str | os.PathLike, sop_instance_uid: str | None = None, frame: int = 0) -> GspsContent:
    """The annotations a GSPS puts on one image (``sop_instance_uid``; None: any) and frame."""
    path = ""
    if not isinstance(ds, Dataset):
        path = os.fspath(ds)
        ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != GSPS_SOP_CLASS:
        raise ExportError(f"{path or 'this object'} is not a Grayscale Softcopy Presentation State")
    anns: list[Annotation] = []
    skipped = 0
    for group in ds.get("GraphicAnnotationSequence") or []:
        refs = {str(r.get("ReferencedSOPInstanceUID", "")) for r in group.get("ReferencedImageSequence") or []}
        if sop_instance_uid is not None and refs and sop_instance_uid not in refs:
            continue
        frames = _frames_of(group)
        if frames is not None and frame + 1 not in frames:
            continue
        for item in group.get("GraphicObjectSequence") or []:
            ann = _graphic_annotation(item)
            skipped += ann is None
            if ann is not None:
                anns.append(ann)
        if str(group.get("GraphicLayer", "")) == LAYER_VALUES:
            continue  # our measured values: recomputed from the pixels
        for item in group.get("TextObjectSequence") or []:
            ann = _text_annotation(item)
            skipped += ann is None
            if ann is not None:
                anns.append(ann)
    window = None
    for voi in ds.get("SoftcopyVOILUTSequence") or []:
        if "WindowCenter" in voi and "WindowWidth" in voi:
            center = voi.WindowCenter[0] if isinstance(voi.WindowCenter, pydicom.multival.MultiValue) else voi.WindowCenter
            width = voi.WindowWidth[0] if isinstance(voi.WindowWidth, pydicom.multival.MultiValue) else voi.WindowWidth
            name = str(voi.get("WindowCenterWidthExplanation", "") or "Presentation state")
            if isinstance(voi.get("WindowCenterWidthExplanation"), pydicom.multival.MultiValue):
                name = str(voi.WindowCenterWidthExplanation[0])
            window = Window(float(center), float(width), str(voi.get("VOILUTFunction", "LINEAR") or "LINEAR"), name)
            break
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    inverse = True if shape == "INVERSE" else False if shape == "IDENTITY" else None
    return GspsContent(tuple(anns), referenced_instances(ds), window, inverse, skipped, path)


def gsps_name(source_path: str, frame: int = 0, frames: int = 1) -> str:
    """``<source stem>[_f<frame>]_gsps.dcm``."""
    stem = os.path.splitext(os.path.basename(source_path))[0] or "image"
    return f"{stem}{f'_f{frame + 1}' if frames > 1 else ''}_gsps.dcm"


def gsps_in_folder(folder: str) -> dict[str, list[str]]:
    """The presentation states in ``folder`` (not its subfolders) by the SOP Instance UID of each
    image they reference, newest file first. Only small files are read, and only their headers:
    one scan serves every image of the folder."""
    found: dict[str, list[tuple[float, str]]] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return {}
    for entry in entries:
        try:
            if not entry.is_file() or entry.name.startswith("."):
                continue
            st = entry.stat()
            if st.st_size > MAX_GSPS_BYTES:
                continue
            with open(entry.path, "rb") as f:
                head = f.read(132)
            if head[128:] != b"DICM":
                continue
            ds = pydicom.dcmread(entry.path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - an unreadable file is not a presentation state of ours
            continue
        if str(ds.get("SOPClassUID", "")) == GSPS_SOP_CLASS:
            for uid in set(referenced_instances(ds)):
                found.setdefault(uid, []).append((st.st_mtime, entry.path))
    return {uid: [p for _t, p in sorted(v, reverse=True)] for uid, v in found.items()}


def load_image_and_gsps_task(ref, frame: int, folders: dict[str, dict[str, list[str]]],
                             cancel=None):
    """:func:`~cxr_viewer.io.image.load_image_task`, then, for a DICOM whose folder is not yet in
    ``folders``, :func:`gsps_in_folder` of that folder stored there: the folder scan runs in the
    loading worker, never on the GUI thread, and before the image is shown."""
    from cxr_viewer.common.tasks import NEVER_CANCELLED
    from cxr_viewer.io.image import load_image_task

    cancel = cancel or NEVER_CANCELLED
    image = yield from load_image_task(ref, frame, cancel)
    if ref.kind == "dicom":
        folder = os.path.dirname(os.path.abspath(ref.path))
        if folder not in folders:
            folders[folder] = gsps_in_folder(folder)  # one key set: atomic for the GUI thread's reads
    return image


def find_gsps(folder: str, sop_instance_uid: str) -> list[str]:
    """The presentation states in ``folder`` that reference the image, newest file first."""
    if not sop_instance_uid:
        return []
    return gsps_in_folder(folder).get(sop_instance_uid, [])


__all__ = ["GSPS_SOP_CLASS", "GspsContent", "build_gsps", "find_gsps", "gsps_in_folder", "gsps_name", "read_gsps",
           "referenced_instances"]
