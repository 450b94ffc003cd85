"""Exports of one scored image: DICOM SR, Secondary Capture, a (de-identified) copy, report pages.

One :class:`~cxr_viewer.core.deid.Deidentifier` serves every object of an export, so the SR and
the Secondary Capture reference the de-identified copy's UIDs, never the original ones. The PDF
itself is drawn by the Qt layer (``cxr_viewer.gui.pdf_report``) from :func:`report_page`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Generator

import pydicom

from .dicom_results import ExportError, build_secondary_capture, build_sr, read_source_header, write_dataset
from .image import LoadedImage
from .inference import ScoreResult
from .model import ModelMeta
from .overlay import annotated_rgb
from .report import ReportPage, build_page
from .tasks import NEVER_CANCELLED, CancelToken, Progress

__all__ = ["ExportError", "ExportRequest", "export_dicom_task", "report_page", "source_header", "outbox_name"]


@dataclass(frozen=True)
class ExportRequest:
    sr: str | None = None  # output paths; None = not wanted
    sc: str | None = None
    image_copy: str | None = None
    deidentify: bool = False

    @property
    def wants_dicom(self) -> bool:
        return bool(self.sr or self.sc or self.image_copy)


def _deidentifier(deidentify: bool):
    if not deidentify:
        return None
    from .deid import Deidentifier

    return Deidentifier()


def source_header(image: LoadedImage, deidentifier=None):
    """The source's DICOM header (de-identified when a Deidentifier is given), or None for PNG/JPEG."""
    if image.ref.kind != "dicom":
        return None
    ds = read_source_header(image.ref.path)
    return deidentifier.dataset(ds) if deidentifier is not None else ds


def check_deidentifiable(image: LoadedImage, header) -> None:
    """Refuse a de-identified export of pixels that say they carry burnt-in identifying text
    (BurnedInAnnotation YES): the basic profile would need Clean Pixel Data, which we do not do."""
    from .deid import burned_in_identifiers

    if header is not None and burned_in_identifiers(header):
        raise ExportError(f"{os.path.basename(image.ref.path)} says it has identifying text burnt into its pixels "
                          f"(BurnedInAnnotation YES); cxr_viewer does not clean pixel data, so it makes no "
                          f"de-identified copy, Secondary Capture or PDF of it")


def remove_files(paths) -> None:
    """Best-effort removal of files an export wrote before it failed or was cancelled."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def export_dicom_task(image: LoadedImage, result: ScoreResult, request: ExportRequest, deidentifier=None,
                      cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[str, ...]]:
    """Write the requested DICOM objects; returns the paths written. All or nothing: each file is
    written atomically, and on an error or cancel the ones already written are removed again."""
    if (result.path, result.frame) != (image.ref.path, image.frame):
        raise ExportError("the scores belong to another image; score this image first")
    if not request.wants_dicom:
        return ()
    if image.ref.kind != "dicom":
        raise ExportError(f"a DICOM SR, Secondary Capture or image copy needs a DICOM source image; "
                          f"{os.path.basename(image.ref.path)} is a {image.ref.kind} file (export a PDF instead)")
    if deidentifier is None:
        deidentifier = _deidentifier(request.deidentify)
    steps = [s for s in ("sr", "sc", "image_copy") if getattr(request, s)]
    if deidentifier is not None and ("sc" in steps or "image_copy" in steps):
        check_deidentifiable(image, read_source_header(image.ref.path))
    header = source_header(image, deidentifier)
    written: list[str] = []
    try:
        for i, step in enumerate(steps):
            yield Progress("export", i, len(steps), step)
            cancel.raise_if_cancelled()
            out = getattr(request, step)
            if step == "sr":
                write_dataset(_mark_deidentified(build_sr(header, result), header), out)
            elif step == "sc":
                sc = build_secondary_capture(header, annotated_rgb(image, result), result)
                write_dataset(_mark_deidentified(sc, header), out)
            else:
                full = pydicom.dcmread(image.ref.path, force=True)
                write_dataset(deidentifier.dataset(full) if deidentifier is not None else full, out)
            written.append(out)
        cancel.raise_if_cancelled()
    except BaseException:
        remove_files(written)
        raise
    yield Progress("export", len(steps), len(steps), "done")
    return tuple(written)


DEID_KEYWORDS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                 "LongitudinalTemporalInformationModified")


def _mark_deidentified(ds, header):
    """Objects made from a de-identified header say so too (PS3.15 E.1.1: Patient Identity Removed)."""
    if str(header.get("PatientIdentityRemoved", "")).upper() == "YES":
        for keyword in DEID_KEYWORDS:
            if keyword in header:
                setattr(ds, keyword, copy.deepcopy(header[keyword].value))
    return ds


def report_page(image: LoadedImage, result: ScoreResult, meta: ModelMeta | None, deidentify: bool = False,
                deidentifier=None, voi=None, heatmap_head: str | None = "auto") -> ReportPage:
    """A report page for this image; the header is de-identified when asked (PS3.15 basic profile)."""
    if deidentify and deidentifier is None:
        deidentifier = _deidentifier(True)
    header = source_header(image, deidentifier if deidentify else None)
    if deidentify and image.ref.kind == "dicom":
        check_deidentifiable(image, read_source_header(image.ref.path))
    return build_page(image, result, meta, header_ds=header, deidentified=deidentify, voi=voi,
                      heatmap_head=heatmap_head)


def outbox_name(image: LoadedImage, kind: str, deidentifier=None) -> str:
    """A file name for an exported object: ``<source stem>[_f<frame>]_<kind>.dcm``. De-identified
    exports never use the source's name (it may be a patient's name or an original UID): they are
    named after the image's de-identified SOP Instance UID (or a fresh UID for PNG/JPEG sources)."""
    if deidentifier is not None:
        original = image.ref.sop_instance_uid or f"file:{os.path.abspath(image.ref.path)}"
        stem = "deid_" + deidentifier.uid(original)
    else:
        stem = os.path.splitext(os.path.basename(image.ref.path))[0] or "image"
    frame = f"_f{image.frame + 1}" if image.ref.frames > 1 else ""
    return f"{stem}{frame}_{kind}.dcm"
