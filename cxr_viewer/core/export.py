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


def export_dicom_task(image: LoadedImage, result: ScoreResult, request: ExportRequest, deidentifier=None,
                      cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[str, ...]]:
    """Write the requested DICOM objects; returns the paths written (each written atomically)."""
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
    header = source_header(image, deidentifier)
    written: list[str] = []
    for i, step in enumerate(steps):
        cancel.raise_if_cancelled()
        yield Progress("export", i, len(steps), step)
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
    return build_page(image, result, meta, header_ds=header, deidentified=deidentify, voi=voi,
                      heatmap_head=heatmap_head)


def outbox_name(image: LoadedImage, kind: str) -> str:
    """A file name for an exported object: ``<source stem>[_f<frame>]_<kind>.dcm``."""
    stem = os.path.splitext(os.path.basename(image.ref.path))[0] or "image"
    frame = f"_f{image.frame + 1}" if image.ref.frames > 1 else ""
    return f"{stem}{frame}_{kind}.dcm"
