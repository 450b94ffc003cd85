"""Exports of one scored image: DICOM SR, Secondary Capture, a (de-identified) copy, report pages.

One :class:`~cxr_viewer.clinical.deid.Deidentifier` serves every object of an export, so the SR and
the Secondary Capture reference the de-identified copy's UIDs, never the original ones, and every
study of one patient has its dates shifted by the same offset (order and intervals kept). An
image copy, plain or de-identified, is the source's instance with its header repaired where a
validator would refuse it (:func:`~cxr_viewer.clinical.dicom_results.conform_image`: invalid values
such as a Pixel Spacing of 0 left out, missing Type 2 attributes present and empty); its pixels
and UIDs (when not de-identified) are the source's. The PDF
itself is drawn by the Qt layer (``cxr_viewer.gui.pdf_report``) from :func:`report_page`.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from typing import Generator

import pydicom

from cxr_viewer.ai.inference import ScoreResult
from cxr_viewer.ai.model import ModelMeta
from cxr_viewer.clinical.dicom_results import (
    ExportError,
    build_secondary_capture,
    build_sr,
    conform_image,
    read_source_header,
    write_dataset,
)
from cxr_viewer.clinical.finding_marks import marked_rgb
from cxr_viewer.clinical.report import ReportPage, build_page
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.io.image import LoadedImage

__all__ = ["ExportError", "ExportRequest", "OutputSet", "export_dicom_task", "outbox_name", "remove_files",
           "report_page", "source_header", "unique_path"]


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
    from cxr_viewer.clinical.deid import Deidentifier

    return Deidentifier()


def source_header(image: LoadedImage, deidentifier=None, check_pixels: bool = False):
    """The source's DICOM header (de-identified when a Deidentifier is given), or None for PNG/JPEG.
    ``check_pixels``: with a Deidentifier, first refuse pixels with burnt-in identifiers
    (:func:`check_deidentifiable`), on the same one reading of the file."""
    if image.ref.kind != "dicom":
        return None
    ds = read_source_header(image.ref.path)
    if deidentifier is None:
        return ds
    if check_pixels:
        check_deidentifiable(image, ds)
    return deidentifier.dataset(ds)


def check_deidentifiable(image: LoadedImage, header) -> None:
    """Refuse a de-identified export of pixels that say they carry burnt-in identifying text
    (BurnedInAnnotation YES): the basic profile would need Clean Pixel Data, which we do not do."""
    from cxr_viewer.clinical.deid import burned_in_identifiers

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


class OutputSet:
    """The files of one export: all of them or none. A failed or cancelled export also never costs
    the files an earlier export left under the same names: they are moved aside before being
    replaced and put back on rollback (removed on commit)."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self._aside: list[tuple[str, str]] = []

    def before_write(self, path: str) -> None:
        if os.path.isfile(path):
            fd, aside = tempfile.mkstemp(prefix=".replaced-", dir=os.path.dirname(os.path.abspath(path)))
            os.close(fd)
            os.replace(path, aside)
            self._aside.append((path, aside))

    def wrote(self, path: str) -> None:
        self.written.append(path)

    def commit(self) -> None:
        remove_files(aside for _path, aside in self._aside)
        self._aside.clear()

    def rollback(self) -> None:
        remove_files(self.written)
        for path, aside in reversed(self._aside):
            try:
                os.replace(aside, path)
            except OSError:
                pass
        self.written.clear()
        self._aside.clear()


def unique_path(path: str, used: set) -> str:
    """``path``, or ``<stem>_2<ext>``, ``_3``... when this export already chose it (two inputs
    with one file name in different folders, or one SOP Instance UID opened twice)."""
    stem, ext = os.path.splitext(path)
    candidate, n = path, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}{ext}"
    used.add(candidate)
    return candidate


def export_dicom_task(image: LoadedImage, result: ScoreResult, request: ExportRequest, deidentifier=None,
                      outputs: OutputSet | None = None, annotations=(),
                      cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[str, ...]]:
    """Write the requested DICOM objects; returns the paths written. The Secondary Capture shows the
    user's ``annotations`` (rulers, ROIs... of this image) too. All or nothing: each file is
    written atomically, and on an error or cancel the ones already written are removed again (and
    files they replaced restored). A caller exporting more than this passes its own ``outputs``
    and commits or rolls it back itself."""
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
    header = source_header(image, deidentifier, check_pixels="sc" in steps or "image_copy" in steps)
    own = outputs is None
    outputs = OutputSet() if own else outputs
    written: list[str] = []
    try:
        for i, step in enumerate(steps):
            yield Progress("export", i, len(steps), step)
            cancel.raise_if_cancelled()
            out = getattr(request, step)
            if step == "sr":
                ds = _mark_deidentified(build_sr(header, result), header)
            elif step == "sc":
                ds = _mark_deidentified(_secondary_capture(header, image, result, annotations), header)
            else:
                full = pydicom.dcmread(image.ref.path, force=True)
                ds = deidentifier.dataset(full) if deidentifier is not None else full
                conform_image(ds)  # invalid values left out, Type 2 present: what validators want
            outputs.before_write(out)
            write_dataset(ds, out)
            outputs.wrote(out)
            written.append(out)
        cancel.raise_if_cancelled()
    except BaseException:
        if own:
            outputs.rollback()
        raise
    if own:
        outputs.commit()
    yield Progress("export", len(steps), len(steps), "done")
    return tuple(written)


def _secondary_capture(header, image: LoadedImage, result: ScoreResult, annotations=()):
    rgb, lines = marked_rgb(image, result)
    if annotations:
        from cxr_viewer.clinical.annotation_render import annotation_summary, draw_annotations

        rgb = draw_annotations(rgb, annotations, image)
        lines = lines + ["User annotations: " + "; ".join(annotation_summary(annotations, image))]
    return build_secondary_capture(header, rgb, result, lines=lines)


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
                deidentifier=None, voi=None, heatmap_head: str | None = "auto", annotations=()) -> ReportPage:
    """A report page for this image, with the user's ``annotations`` drawn on it; the header is
    de-identified when asked (PS3.15 basic profile)."""
    if deidentify and deidentifier is None:
        deidentifier = _deidentifier(True)
    header = source_header(image, deidentifier if deidentify else None, check_pixels=True)
    return build_page(image, result, meta, header_ds=header, deidentified=deidentify, voi=voi,
                      heatmap_head=heatmap_head, annotations=annotations)


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
