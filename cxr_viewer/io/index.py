"""Indexing files, folders and DICOMDIRs into a Patient -> Study -> Series -> Image tree.

Headers only (no pixel decoding), so a folder of a thousand files lists quickly. Every file
that cannot be opened is reported with a one-line reason; nothing raises out of here except
:class:`~cxr_viewer.common.tasks.Cancelled`.
"""

from __future__ import annotations

import os
import stat
import warnings
from typing import Generator, Iterable

from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress, run_to_completion
from cxr_viewer.io import dicom as dicom_io
from cxr_viewer.io import raster as raster_io
from cxr_viewer.io.hanging import natural_key
from cxr_viewer.io.study import ImageRef, OpenError, PatientNode, SeriesNode, StudyIndex, StudyNode

#: Files with these names are never images (DICOMDIR itself is read as a directory).
_SKIP_NAMES = {"dicomdir", "license", "readme", "thumbs.db", ".ds_store"}
_SKIP_SUFFIXES = (".txt", ".md", ".csv", ".json", ".xml", ".html", ".pdf", ".py", ".zip", ".ini")


def _is_dicomdir(path: str) -> bool:
    return os.path.basename(path).upper() == "DICOMDIR"


def _dicomdir_files(path: str) -> tuple[list[str], list[OpenError]]:
    import pydicom
    from pydicom.fileset import FileSet

    try:
        ds = pydicom.dcmread(path, force=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing files are reported below, not warned about
            fs = FileSet(ds)
    except Exception as exc:
        return [], [OpenError(path, f"not a readable DICOMDIR: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]
    files, errors = [], []
    for instance in fs:
        p = instance.path
        if os.path.isfile(p):
            files.append(p)
        else:
            errors.append(OpenError(p, "listed in the DICOMDIR but missing on disk"))
    # FileSet drops records whose file is missing (with a warning only): report them here.
    reported = {os.path.abspath(e.path) for e in errors}
    for record in ds.get("DirectoryRecordSequence") or []:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(v) for v in file_id]
        p = os.path.join(os.path.dirname(os.path.abspath(path)), *parts)
        if not os.path.isfile(p) and p not in reported:
            reported.add(p)
            errors.append(OpenError(p, "listed in the DICOMDIR but missing on disk"))
    return files, errors


def collect_files(paths: Iterable[str], cancel: CancelToken = NEVER_CANCELLED
                  ) -> Generator[Progress, None, tuple[list[str], list[OpenError]]]:
    """Expand files, folders (recursively, following links once) and DICOMDIRs to image files."""
    files: list[str] = []
    errors: list[OpenError] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def add_file(p: str) -> None:
        real = os.path.realpath(p)
        if real not in seen_files:
            seen_files.add(real)
            files.append(p)

    def walk(folder: str):
        try:
            st = os.stat(folder)
        except OSError as exc:
            errors.append(OpenError(folder, f"cannot open folder: {exc.strerror}"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return  # a symlink loop or a folder reached twice
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: natural_key(e.name))
        except OSError as exc:
            errors.append(OpenError(folder, f"cannot open folder: {exc.strerror}"))
            return
        before = len(pending)
        for entry in entries:
            cancel.raise_if_cancelled()
            visit(entry.path, from_folder=True)
            if len(files) % 200 == 0:
                yield Progress("listing", len(files), 0, folder)
        # depth first, in name order, as a file manager's tree lists them: ``pending`` is a stack, so
        # this folder's subfolders (pushed in name order, reversed here) come off it before the folders
        # that were waiting beside it; each folder costs its own subfolders, not the whole stack
        pending[before:] = pending[before:][::-1]

    def visit(p: str, from_folder: bool):
        try:
            st = os.stat(p)
        except OSError as exc:
            reason = "symbolic link loop" if exc.errno == 40 else f"cannot open: {exc.strerror}"
            errors.append(OpenError(p, reason))
            return
        if stat.S_ISDIR(st.st_mode):
            pending.append(p)
            return
        name = os.path.basename(p).lower()
        if not stat.S_ISREG(st.st_mode):
            skipped = from_folder and (name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES) or name.startswith("."))
            if not skipped:  # never opened (a FIFO would block), but reported like any bad file
                errors.append(OpenError(p, "not a regular file (device, pipe or socket)"))
            return
        if _is_dicomdir(p):
            dd_files, dd_errors = _dicomdir_files(p)
            errors.extend(dd_errors)
            for f in dd_files:
                add_file(f)
            dicomdir_folders.add(os.path.realpath(os.path.dirname(p)))
            return
        if from_folder and (name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES) or name.startswith(".")):
            return
        add_file(p)

    pending: list[str] = []
    dicomdir_folders: set[str] = set()
    for p in paths:
        visit(os.fspath(p), from_folder=False)
    pending.reverse()  # the first path given is walked first
    while pending:
        cancel.raise_if_cancelled()
        folder = pending.pop()
        yield from walk(folder)
    return files, errors


def read_any(path: str) -> tuple[ImageRef, dicom_io.DicomKeys | None]:
    """Index one file as DICOM or a raster image, by its first bytes (a JPEG without a suffix,
    a DICOM named .png); when they say neither, by suffix (raster) or else DICOM."""
    kind = raster_io.sniff_kind(path)
    if kind == "raster" or (kind is None and path.lower().endswith(raster_io.RASTER_SUFFIXES)):
        return raster_io.read_header(path), None
    return dicom_io.read_header(path)


def _sort_key(ref: ImageRef):
    return (ref.instance_number is None, ref.instance_number or 0, natural_key(os.path.basename(ref.path)))


def build_tree(entries: list[tuple[ImageRef, dicom_io.DicomKeys | None]]) -> tuple[PatientNode, ...]:
    """Group indexed images by PatientID/Name, StudyInstanceUID and SeriesInstanceUID.

    Raster images have no UIDs or patient data: they sit under one patient node, and each
    folder of them is one study with one series.
    """
    patients: dict[str, dict] = {}
    for ref, keys in entries:
        if keys is None:
            folder = os.path.dirname(os.path.abspath(ref.path))
            pkey, pname, pid = "raster:", "", ""  # one node for all files without patient data
            skey, sdate, sdesc = "folder:" + folder, "", os.path.basename(folder)
            sekey, sedesc, modality = "folder:" + folder, ref.meta.series_description, "OT"
        else:
            pkey, pname, pid = keys.patient_key, ref.meta.patient_name, ref.meta.patient_id
            skey, sdate, sdesc = keys.study_uid, keys.study_date, keys.study_description
            sekey, sedesc, modality = keys.series_uid, keys.series_description, keys.modality
        p = patients.setdefault(pkey, {"name": pname, "id": pid, "studies": {}})
        s = p["studies"].setdefault(skey, {"date": sdate, "desc": sdesc, "series": {}})
        se = s["series"].setdefault(sekey, {"desc": sedesc, "modality": modality, "images": []})
        se["images"].append(ref)
    out = []
    for pkey, p in patients.items():
        studies = []
        for skey, s in sorted(p["studies"].items(), key=lambda kv: (kv[1]["date"], natural_key(kv[0]))):
            series = tuple(
                SeriesNode(sekey, se["desc"], se["modality"], tuple(sorted(se["images"], key=_sort_key)))
                for sekey, se in s["series"].items()
            )
            studies.append(StudyNode(skey, s["date"], s["desc"], series))
        out.append(PatientNode(pkey, p["name"], p["id"], tuple(studies)))
    return tuple(out)


def merge_indexes(old: StudyIndex, new: StudyIndex) -> StudyIndex:
    """``old`` with ``new`` added ("Open" that adds to the list): patients, studies and series with
    the same keys merge, an image already listed is not listed twice; studies by date again."""
    patients: dict[str, dict] = {}
    for index in (old, new):
        for p in index.patients:
            pe = patients.setdefault(p.key, {"node": p, "studies": {}})
            for st in p.studies:
                se = pe["studies"].setdefault(st.uid, {"node": st, "series": {}})
                for sr in st.series:
                    images = se["series"].setdefault(sr.uid, {"node": sr, "images": {}})["images"]
                    for img in sr.images:
                        images.setdefault(img.path, img)
    out = []
    for pe in patients.values():
        studies = []
        for se in sorted(pe["studies"].values(), key=lambda s: (s["node"].date, natural_key(s["node"].uid))):
            series = tuple(SeriesNode(sr["node"].uid, sr["node"].description, sr["node"].modality,
                                      tuple(sorted(sr["images"].values(), key=_sort_key)))
                           for sr in se["series"].values())
            studies.append(StudyNode(se["node"].uid, se["node"].date, se["node"].description, series))
        p = pe["node"]
        out.append(PatientNode(p.key, p.name, p.patient_id, tuple(studies)))
    listed = {img.path for node in out for st in node.studies for sr in st.series for img in sr.images}
    errors = {e.path: e for e in (*old.errors, *new.errors) if e.path not in listed}
    states = tuple(dict.fromkeys((*old.presentation_states, *new.presentation_states)))
    return StudyIndex(tuple(out), tuple(errors.values()), states)


def index_paths(paths: Iterable[str], cancel: CancelToken = NEVER_CANCELLED
                ) -> Generator[Progress, None, StudyIndex]:
    """Task: index files/folders/DICOMDIRs. Yields progress; returns the :class:`StudyIndex`."""
    files, errors = yield from collect_files(paths, cancel)
    entries = []
    states: list[str] = []
    total = len(files)
    for i, path in enumerate(files):
        cancel.raise_if_cancelled()
        try:
            entries.append(read_any(path))
        except dicom_io.PresentationStateFile:
            states.append(path)  # annotations: read when the image they reference is shown
        except ImageOpenError as exc:
            errors.append(OpenError(path, str(exc)))
        except MemoryError:
            errors.append(OpenError(path, "not enough memory to read the header"))
        except Exception as exc:  # last line of defence: one bad file never stops the rest
            errors.append(OpenError(path, f"unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
        if i % 10 == 0 or i + 1 == total:
            yield Progress("reading headers", i + 1, total, path)
    return StudyIndex(build_tree(entries), tuple(errors), tuple(states))


def index(paths: Iterable[str]) -> StudyIndex:
    """Blocking form of :func:`index_paths`."""
    return run_to_completion(index_paths(paths))
