"""De-identification for export: DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile, applied with Kitware's dicom-anonymizer (``dicomanonymizer``), which carries the
profile's action table (D/Z/X/U/... per attribute) for several editions of the standard.

What this module adds around the library:

* **UIDs per export session.** The library keeps its old->new UID map in one module-level
  dictionary (``simpledicomanonymizer.dictionary``) shared by everything in the process. Here a
  :class:`Deidentifier` owns its own map: every action of the table that would replace a UID (U,
  X/Z/U*, and D on UI elements or on sequences holding them) is passed to the library as an
  ``extra_anonymization_rules`` override that uses the instance's map, so the library's global
  dictionary is never touched. Within one Deidentifier the same original UID always maps to the
  same new UID (an SR about a de-identified image copy keeps valid references); two
  Deidentifiers give unrelated UIDs (new ones are random ``2.25.`` UUID-derived UIDs).
* **Nested sequences.** The library applies the table to the top-level data set only; here the
  profile is applied again to every item of every sequence that survives (PS3.15 E.1: the
  attributes inside a retained sequence are treated by the same rules). Sequences with X/Z/U*
  (Referenced/Source Image Sequence) are kept with their instance UIDs replaced (the "U*"
  choice), so references stay valid instead of being emptied. Sequences whose action is X are
  removed; those with Z or X/Z (e.g. Referenced Study Sequence) become empty sequences (no
  items): an item with its Type 1 Referenced SOP Class/Instance UIDs emptied would be invalid.
* **A pseudonymous Patient ID** (and the same as the family name of Patient's Name), consistent
  within a session. A Study ID the source had is replaced by one made from the new Study
  Instance UID (a dummy value, which the profile's Z allows).
* **A last scrub:** any remaining text value, at any depth, that contains the original patient
  name components, IDs, accession number, institution or other identifying text of the source
  has those substrings masked.
* **Dates shifted, not removed**: the PS3.15 option "Retain Longitudinal Temporal Information
  with Modified Dates" (E.3.6). Each patient (by original Patient ID, else name) gets one random
  offset of whole days, 1 to 10 years back (``MIN_SHIFT_DAYS``..``MAX_SHIFT_DAYS``), kept by the
  Deidentifier next to its UID map, so two studies of one patient exported together keep their
  order and their interval in days, and the Birth Date moves with them (the age is kept). Every
  DA and DT value, found by walking the data set by VR (sequences included; only the versions
  of coding resources, Context Group (Local) Version, are left alone), is shifted before
  the profile runs, and the profile then leaves DA/DT/TM elements alone. Times (TM, and the time
  part of DT) are kept unchanged: a shift in whole days does not move them. A value that cannot
  be read as a date, or that would fall before 1900, is emptied rather than kept or guessed.
  The original dates are also masked out of any free text (e.g. "CXR 20040826").
* Patient Identity Removed = YES, Longitudinal Temporal Information Modified = MODIFIED,
  De-identification Method (text) and its code sequence (113100, DCM, "Basic Application
  Confidentiality Profile"; 113107, DCM, "Retain Longitudinal Temporal Information Modified
  Dates Option"); private attributes removed.
* **File meta information** keeps only File Meta Information Version, Media Storage SOP Class
  UID, Media Storage SOP Instance UID (the new SOP Instance UID), Transfer Syntax UID and the
  implementation's class UID and version name, which are rewritten as pydicom's (the software
  that writes the copy). Everything else goes: source/sending/receiving AE titles, Private
  Information Creator UID and Private Information (which can carry names and IDs).

Pixel data are never changed: text burnt into the pixels (Burned In Annotation = YES) is not
removed by the Basic profile (that is the Clean Pixel Data option, not implemented). Such a
copy would still show the identifiers, so :func:`burned_in_identifiers` tells the export layer
to refuse a de-identified export of those pixels; :meth:`Deidentifier.dataset` itself does not
refuse (a header-only copy, e.g. for an SR, is still fine).
"""

from __future__ import annotations

import copy
import datetime
import functools
import re
import secrets
import threading
from collections.abc import Callable
from importlib import metadata

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import PersonName

from cxr_viewer import __version__
from cxr_viewer.common.fileio import atomic_path

#: Editions of the Annex E table shipped with dicom-anonymizer, newest first.
PROFILE_TABLES = ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023")
PROFILE_NAME = "Basic Application Level Confidentiality Profile (PS3.15 Annex E)"
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
#: PS3.15 E.3.6 option, CID 7050.
MODIFIED_DATES_CODE = ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")
#: One sentence for the user (export dialog, --deidentify help, PDF).
DATES_NOTE = ("dates shifted back by one random whole-day offset per patient (PS3.15 'Retain Longitudinal "
              "Temporal Information with Modified Dates'): order and intervals kept, times unchanged")
#: The range of the per-patient date offset, in days back.
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = 365, 3652
#: No shifted date earlier than this is written (an earlier one is emptied).
EARLIEST_DATE = datetime.date(1900, 1, 1)
_DATE_VRS = ("DA", "DT")
#: DT attributes that date a coding resource, not the patient: never shifted.
_CODING_VERSIONS = (0x00080106, 0x00080107)  # Context Group Version / Local Version
_TEMPORAL_VRS = ("DA", "DT", "TM")
#: The library's categories, as the action codes of PS3.15 Table E.1-1.
_ACTION_CODES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
#: Value representations holding free text or names (what the final scrub searches).
_TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE")
#: Identifying strings shorter than this are not searched for (they would match everywhere).
_MIN_SCRUB_LEN = 3
#: UIDs defined by the standard (SOP classes, transfer syntaxes...) identify nothing: kept.
_STANDARD_UID_ROOT = "1.2.840.10008."
#: File meta attributes copied to a de-identified copy (all others are dropped; the Media
#: Storage SOP Instance UID is then set to the new SOP Instance UID, and the implementation's
#: class UID and version name are written anew).
_FILE_META_KEPT = (0x00020001, 0x00020002, 0x00020003, 0x00020010)
#: The implementation that writes de-identified copies: pydicom (what it writes by default).
IMPLEMENTATION_VERSION_NAME = f"PYDICOM {pydicom.__version__}"[:16]


def library_version() -> str:
    try:
        return metadata.version("dicom-anonymizer")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def _profile_table() -> tuple[str, dict[tuple, str]]:
    """(edition, {tag tuple: action code}) from dicom-anonymizer's own table.

    A tag tuple is (group, element) or, for repeating groups such as curves and overlays,
    (group, element, group mask, element mask).
    """
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    for edition in PROFILE_TABLES:
        try:
            tables = dicom_anonymization_database_selector(edition)
        except (ValueError, AttributeError):
            continue
        actions: dict[tuple, str] = {}
        for category, code in _ACTION_CODES.items():
            for tag in tables.get(category, ()):
                actions[tuple(tag)] = code
        return edition, actions
    raise RuntimeError("dicom-anonymizer has no known Annex E table")


def profile_edition() -> str:
    """The edition of the Annex E table in use, e.g. ``dicomfields_2026c``."""
    return _profile_table()[0]


def action_for(tag) -> str | None:
    """The Annex E action (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*) for ``tag``, or None (kept).

    Private tags (odd groups) are X.
    """
    tag = pydicom.tag.Tag(tag)
    if tag.is_private:
        return "X"
    table = _profile_table()[1]
    code = table.get((tag.group, tag.element))
    if code is not None:
        return code
    for key, value in _repeating_groups():
        if tag.group & key[2] == key[0] & key[2] and tag.element & key[3] == key[1] & key[3]:
            return value
    return None


@functools.lru_cache(maxsize=1)
def _repeating_groups() -> tuple[tuple[tuple, str], ...]:
    return tuple((key, value) for key, value in _profile_table()[1].items() if len(key) == 4)


def _describe(elem) -> str:
    if elem.VR == "SQ":
        return f"<sequence of {len(elem.value)} item(s)>"
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _is_empty(elem) -> bool:
    value = elem.value
    if value is None:
        return True
    if isinstance(value, (bytes, bytearray, list, MultiValue, Sequence)):
        return len(value) == 0
    if isinstance(value, (str, PersonName)):
        return not str(value).strip()
    return False


def burned_in_identifiers(ds: Dataset) -> bool:
    """True when ``ds`` says that its pixels carry burnt-in identifying text: Burned In
    Annotation (0028,0301) is "YES" (case and padding ignored).

    De-identification here never touches pixel data, so a de-identified copy of such pixels (an
    image copy, a Secondary Capture or a PDF rendering of them) would still show the identifiers;
    the export layer refuses those when this is True.

    Known gap: Burned In Annotation is Type 3 in many IODs. A source without it, including a
    Secondary Capture or Modality "OT" image (where burnt-in text is common), counts as unknown,
    which returns False: it is not refused. Only an explicit "YES" is.
    """
    value = ds.get("BurnedInAnnotation") if ds is not None else None
    if value is None:
        return False
    values = value if isinstance(value, (list, MultiValue)) else [value]
    return any(str(v).strip().upper() == "YES" for v in values)


def identifying_attributes(ds: Dataset) -> dict[str, str]:
    """Top-level attributes of ``ds`` that the Annex E basic profile acts on (any action but
    keep), present with a non-empty value: keyword (or "Private (gggg,eeee)") -> value as text.

    This is what de-identification removes or replaces: for tests, and to show the user.
    """
    out: dict[str, str] = {}
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag == 0x7FE00010 or _is_empty(elem):
            continue
        if action_for(elem.tag) is None:
            continue
        key = elem.keyword or f"{'Private' if elem.tag.is_private else 'Tag'} ({elem.tag.group:04X},{elem.tag.element:04X})"
        out[key] = _describe(elem)
    return out


def _identifying_strings(ds: Dataset) -> list[str]:
    """Text to hunt down after the profile ran: name components, IDs, institution, descriptions..."""
    found: set[str] = set()

    def add(text) -> None:
        text = str(text).strip()
        if len(text) >= _MIN_SCRUB_LEN:
            found.add(text)

    def visit(dataset: Dataset, elem) -> None:
        if elem.VR not in _TEXT_VRS or _is_empty(elem) or action_for(elem.tag) is None:
            return
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for value in values:
            add(value)
            if elem.VR == "PN":
                for part in re.split(r"[\^=]", str(value)):
                    add(part)

    ds.walk(visit)
    # longest first, so that a name is masked before its parts
    return sorted(found, key=len, reverse=True)


def _parse_da(text: str) -> datetime.date | None:
    """A DA value (YYYYMMDD, or the retired YYYY.MM.DD) as a date; None when it is not one."""
    text = text.strip()
    if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text):
        text = text.replace(".", "")
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _shift(day: datetime.date, days: int) -> datetime.date | None:
    try:
        new = day + datetime.timedelta(days=days)
    except OverflowError:
        return None
    return new if new >= EARLIEST_DATE else None


def shift_da(text: str, days: int) -> str:
    """A DA value moved by ``days``: ``YYYYMMDD``, a range ``A-B`` (either end may be open)
    moved end by end, or ``""`` when it is not a valid date or would fall before 1900."""
    text = str(text).strip()
    if not text:
        return ""
    if "-" in text:
        parts = text.split("-")
        if len(parts) != 2:
            return ""
        moved = [shift_da(p, days) if p.strip() else "" for p in parts]
        if any(p.strip() and not m for p, m in zip(parts, moved)) or not any(moved):
            return ""
        return "-".join(moved)
    day = _parse_da(text)
    new = _shift(day, days) if day is not None else None
    return new.strftime("%Y%m%d") if new is not None else ""


def shift_dt(text: str, days: int) -> str:
    """A DT value (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]) with its date part moved by ``days`` and
    the rest (time, fraction, UTC offset) kept. A value of reduced precision (YYYY or YYYYMM) is
    moved as its first day and written back at its own precision. ``""`` when invalid or before
    1900."""
    text = str(text).strip()
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{0,6}(?:\.\d{1,6})?)([+-]\d{4})?", text)
    if not text or m is None:
        return ""
    year, month, day_part, rest, zone = m.groups()
    if rest and day_part is None:
        return ""
    try:
        day = datetime.date(int(year), int(month or 1), int(day_part or 1))
    except ValueError:
        return ""
    new = _shift(day, days)
    if new is None:
        return ""
    out = new.strftime("%Y%m%d")[:len(year) + len(month or "") + len(day_part or "")]
    return out + (rest or "") + (zone or "")


def _date_strings(ds: Dataset) -> list[str]:
    """The dates of ``ds`` (DA, and the date part of DT) as YYYYMMDD and YYYY-MM-DD / YYYY.MM.DD,
    for the final scrub of free text."""
    found: set[str] = set()

    def visit(dataset: Dataset, elem) -> None:
        if elem.VR not in _DATE_VRS or _is_empty(elem) or elem.tag in _CODING_VERSIONS:
            return
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for value in values:
            for part in str(value).split("-") if elem.VR == "DA" else [str(value)[:8]]:
                day = _parse_da(part[:10] if "." in part else part[:8])
                if day is not None:
                    found.update({day.strftime("%Y%m%d"), day.isoformat(), day.strftime("%Y.%m.%d")})

    ds.walk(visit)
    return sorted(found)


class Deidentifier:
    """One export session: de-identified copies with consistent UIDs and a pseudonymous patient.

    ``dataset(ds)`` returns a de-identified deep copy; ``uid(original)`` the session's new UID
    for an original one. Thread-safe.
    """

    def __init__(self) -> None:
        self._uids: dict[str, str] = {}
        self._patients: dict[str, str] = {}
        self._offsets: dict[str, int] = {}
        self._lock = threading.RLock()
        self._edition = profile_edition()
        self._rules = self._make_rules()

    # --- the session's maps ---------------------------------------------------------------
    def uid(self, original: str) -> str:
        """The new UID for ``original`` (created on first use, the same ever after)."""
        original = str(original).strip().rstrip("\x00")
        if not original or original.startswith(_STANDARD_UID_ROOT):
            return original  # empty, or a UID of the standard itself (a class, a transfer syntax)
        with self._lock:
            new = self._uids.get(original)
            if new is None:
                new = self._uids[original] = generate_uid(prefix=None)
            return new

    @property
    def uid_map(self) -> dict[str, str]:
        with self._lock:
            return dict(self._uids)

    def patient_id(self, original: str) -> str:
        """The pseudonym for an original Patient ID (or name), e.g. ``ANON-3F2A9C01B7``."""
        key = str(original).strip()
        with self._lock:
            new = self._patients.get(key)
            if new is None:
                new = self._patients[key] = f"ANON-{secrets.token_hex(5).upper()}"
            return new

    @staticmethod
    def study_id(new_study_uid: str) -> str:
        """A Study ID (SH) for a de-identified study: digits of its new Study Instance UID, so every
        object of the study agrees. The profile would empty it (Z); a value keeps DICOMDIRs happy."""
        return "S" + str(new_study_uid).replace(".", "")[-15:]

    def date_offset(self, original: str) -> int:
        """The date shift, in days (negative: back), for an original Patient ID (or name):
        random on first use, the same ever after within this Deidentifier."""
        key = str(original).strip()
        with self._lock:
            days = self._offsets.get(key)
            if days is None:
                days = self._offsets[key] = -(MIN_SHIFT_DAYS + secrets.randbelow(MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1))
            return days

    @property
    def date_offsets(self) -> dict[str, int]:
        """Original patient key -> offset in days (secret: it undoes the shift)."""
        with self._lock:
            return dict(self._offsets)

    @staticmethod
    def _shift_dates(ds: Dataset, days: int) -> None:
        """Every DA and DT value, at any depth, moved by ``days`` (see ``shift_da``/``shift_dt``)."""

        def visit(dataset: Dataset, elem) -> None:
            if elem.VR not in _DATE_VRS or _is_empty(elem) or elem.tag in _CODING_VERSIONS:
                return
            shift = shift_da if elem.VR == "DA" else shift_dt
            if isinstance(elem.value, (list, MultiValue)):
                moved = [shift(v, days) for v in elem.value]
                elem.value = moved if all(moved) else ""
            else:
                elem.value = shift(elem.value, days)

        ds.walk(visit)

    # --- actions passed to the library ----------------------------------------------------
    def _map_element_uids(self, elem) -> None:
        if isinstance(elem.value, (list, MultiValue)):
            elem.value = [self.uid(v) for v in elem.value]
        elif elem.value:
            elem.value = self.uid(elem.value)

    def _replace_uid(self, dataset: Dataset, tag) -> None:
        """U, and X/Z/U* taken as U*: a UI element gets a UID consistent within the session; a
        sequence is kept, its instance UIDs replaced when the profile is applied to its items."""
        elem = dataset.get(tag)
        if elem is not None and elem.VR == "UI":
            self._map_element_uids(elem)

    def _dummy_sequence(self, items) -> None:
        from dicomanonymizer.simpledicomanonymizer import replace_element

        for item in items:
            for elem in item:  # iterating converts raw elements, so changes stick
                if elem.VR == "SQ":
                    self._dummy_sequence(elem.value)
                elif elem.VR == "UI":
                    self._map_element_uids(elem)
                elif elem.VR not in _TEMPORAL_VRS:  # dates were shifted already, times kept
                    replace_element(elem)

    @staticmethod
    def _empty_sequence_or(library_action: Callable) -> Callable:
        """Z, X/Z: a sequence becomes empty (no items; a zero-length Type 2 or Type 3 sequence is
        valid), where the library would keep its items with emptied, often Type 1, attributes.
        Other VRs: the library's action."""

        def action(dataset: Dataset, tag) -> None:
            elem = dataset.get(tag)
            if elem is None:
                return
            if elem.VR == "SQ":
                elem.value = Sequence()
            else:
                library_action(dataset, tag)

        return action

    @staticmethod
    def _remove(library_action: Callable) -> Callable:
        """X: removed, sequences included (the library removes sequences only by accident)."""

        def action(dataset: Dataset, tag) -> None:
            elem = dataset.get(tag)
            if elem is not None and elem.VR == "SQ":
                del dataset[tag]
            else:
                library_action(dataset, tag)

        return action

    def _wrap_replace(self, library_action: Callable) -> Callable:
        """D, Z/D, X/D, X/Z/D: the library's dummy value, except that UIDs (also inside sequences)
        come from the session's map rather than the library's global one."""

        def action(dataset: Dataset, tag) -> None:
            elem = dataset.get(tag)
            if elem is None:
                return
            if elem.VR == "UI":
                self._map_element_uids(elem)
            elif elem.VR == "SQ":
                self._dummy_sequence(elem.value)
            else:
                library_action(dataset, tag)

        return action

    def _make_rules(self) -> dict:
        from dicomanonymizer import simpledicomanonymizer as sda

        base = sda.initialize_actions(self._edition)
        replacing = {sda.replace, sda.empty_or_replace, sda.delete_or_replace, sda.delete_or_empty_or_replace}
        rules = {}
        for tag, fn in base.items():
            if fn is sda.replace_UID:
                rules[tag] = self._replace_uid
            elif fn is sda.delete_or_empty_or_replace_UID:
                rules[tag] = self._replace_uid
            elif fn in replacing:
                rules[tag] = self._wrap_replace(fn)
            elif fn in (sda.empty, sda.delete_or_empty):
                rules[tag] = self._empty_sequence_or(fn)
            elif fn is sda.delete:
                rules[tag] = self._remove(fn)
        # Modified Dates option: every DA/DT (already shifted) and TM (kept) is "C", cleaned by
        # the shift, whatever the basic profile's action for it (Z, D, X...)
        return {tag: self._keep_temporal(rules.get(tag, fn)) for tag, fn in base.items()}

    @staticmethod
    def _keep_temporal(action: Callable) -> Callable:
        def guarded(dataset: Dataset, tag) -> None:
            elem = dataset.get(tag)
            if elem is not None and elem.VR in _TEMPORAL_VRS:
                return
            action(dataset, tag)

        return guarded

    def _apply_profile(self, ds: Dataset, depth: int = 0) -> None:
        from dicomanonymizer import simpledicomanonymizer as sda

        sda.anonymize_dataset(ds, extra_anonymization_rules=self._rules, delete_private_tags=True,
                              base_rules_gen=functools.partial(sda.initialize_actions, self._edition))
        if depth > 32:
            return
        for elem in list(ds):
            if elem.VR == "SQ" and elem.value:
                for item in elem.value:
                    self._apply_profile(item, depth + 1)

    # --- the public step --------------------------------------------------------------------
    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified deep copy of ``ds`` (which is left untouched)."""
        with self._lock:
            out = copy.deepcopy(ds)
            # longest first, so that a name is masked before its parts
            secrets_found = sorted({*_identifying_strings(out), *_date_strings(out)}, key=len, reverse=True)
            original_pid = str(out.get("PatientID", "") or "").strip() or str(out.get("PatientName", "") or "")
            self._shift_dates(out, self.date_offset(original_pid))
            self._apply_profile(out)
            self._remap_leftover_uids(out, set(self._uids))
            self._scrub(out, secrets_found)
            pseudonym = self.patient_id(original_pid)
            out.PatientID = pseudonym
            out.PatientName = f"{pseudonym}^"  # family name = the pseudonym (no "^": a retired PN form)
            if str(ds.get("StudyID", "") or "").strip() and "StudyInstanceUID" in out:
                out.StudyID = self.study_id(out.StudyInstanceUID)
            out.PatientIdentityRemoved = "YES"
            out.LongitudinalTemporalInformationModified = "MODIFIED"
            out.DeidentificationMethod = [
                PROFILE_NAME[:64],
                f"dicom-anonymizer {library_version()} ({self._edition})"[:64],
                f"cxr_viewer {__version__}: session UIDs, pseudonymous patient ID"[:64],
                "Dates shifted by a per-patient offset (whole days), times kept"[:64],
            ]
            codes = []
            for value in (PROFILE_CODE, MODIFIED_DATES_CODE):
                code = Dataset()
                code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value
                codes.append(code)
            out.DeidentificationMethodCodeSequence = Sequence(codes)
            meta = getattr(out, "file_meta", None)
            if meta is not None and len(meta):
                out.file_meta = self._file_meta(meta, out)
            return out

    def _file_meta(self, meta: Dataset, ds: Dataset) -> FileMetaDataset:
        """The whitelisted file meta (``_FILE_META_KEPT``) with the new instance UID and this
        implementation's class UID and version name."""
        new = FileMetaDataset()
        for tag in _FILE_META_KEPT:
            if tag in meta:
                new.add(copy.deepcopy(meta[tag]))
        if "SOPInstanceUID" in ds:
            new.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in new:
            new.MediaStorageSOPInstanceUID = self.uid(new.MediaStorageSOPInstanceUID)
        new.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        new.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        return new

    def _remap_leftover_uids(self, ds: Dataset, originals: set[str]) -> None:
        """Any UI element, at any depth, still holding an original UID of this session gets the
        new one (references in attributes that the table does not list)."""

        def visit(dataset: Dataset, elem) -> None:
            if elem.VR != "UI" or _is_empty(elem):
                return
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            if any(str(v) in originals for v in values):
                self._map_element_uids(elem)

        ds.walk(visit)

    @staticmethod
    def _scrub(ds: Dataset, strings: list[str]) -> None:
        if not strings:
            return
        pattern = re.compile("|".join(re.escape(s) for s in strings), re.IGNORECASE)

        def mask(value):
            return pattern.sub("*", str(value)) if value is not None else value

        def visit(dataset: Dataset, elem) -> None:
            if elem.VR not in _TEXT_VRS or _is_empty(elem):
                return
            if isinstance(elem.value, (list, MultiValue)):
                if any(pattern.search(str(v)) for v in elem.value):
                    elem.value = [mask(v) for v in elem.value]
            elif pattern.search(str(elem.value)):
                elem.value = mask(elem.value)

        ds.walk(visit)


def deidentify_file(src: str, dst: str, deidentifier: Deidentifier | None = None) -> Dataset:
    """Read ``src``, write its de-identified copy to ``dst`` atomically; returns the copy."""
    from cxr_viewer.clinical.dicom_results import conform_image

    ds = pydicom.dcmread(src)
    out = (deidentifier or Deidentifier()).dataset(ds)
    conform_image(out)  # what the copy needs to pass a validator (invalid values out, Type 2 in)
    with atomic_path(dst) as tmp:
        out.save_as(tmp, enforce_file_format=True)
    return out
