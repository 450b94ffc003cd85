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
* **A pseudonymous Patient ID** (and the same as Patient's Name), consistent within a session.
* **A last scrub:** any remaining text value, at any depth, that contains the original patient
  name components, IDs, accession number, institution or other identifying text of the source
  has those substrings masked.
* Patient Identity Removed = YES, De-identification Method (text) and its code sequence
  (113100, DCM, "Basic Application Confidentiality Profile"); private attributes removed.
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
Dates and times take the library's dummy values (0001-01-01, 00:00).
"""

from __future__ import annotations

import copy
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


class Deidentifier:
    """One export session: de-identified copies with consistent UIDs and a pseudonymous patient.

    ``dataset(ds)`` returns a de-identified deep copy; ``uid(original)`` the session's new UID
    for an original one. Thread-safe.
    """

    def __init__(self) -> None:
        self._uids: dict[str, str] = {}
        self._patients: dict[str, str] = {}
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
                else:
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
        return rules

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
            secrets_found = _identifying_strings(out)
            original_pid = str(out.get("PatientID", "") or "").strip() or str(out.get("PatientName", "") or "")
            self._apply_profile(out)
            self._remap_leftover_uids(out, set(self._uids))
            self._scrub(out, secrets_found)
            pseudonym = self.patient_id(original_pid)
            out.PatientID = pseudonym
            out.PatientName = pseudonym
            out.PatientIdentityRemoved = "YES"
            out.DeidentificationMethod = [
                PROFILE_NAME[:64],
                f"dicom-anonymizer {library_version()} ({self._edition})"[:64],
                f"cxr_viewer {__version__}: session UIDs, pseudonymous patient ID"[:64],
            ]
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
            out.DeidentificationMethodCodeSequence = Sequence([code])
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
    ds = pydicom.dcmread(src)
    out = (deidentifier or Deidentifier()).dataset(ds)
    with atomic_path(dst) as tmp:
        out.save_as(tmp, enforce_file_format=True)
    return out
