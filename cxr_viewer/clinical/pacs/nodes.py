"""PACS data model and shared helpers: errors, node settings, query keys, results.

No network code here: :mod:`.dimse` and :mod:`.dicomweb` build on these. A :class:`PacsError`'s
``str()`` is one line for a user; :func:`_error` / :func:`_scrub` take the password out of a
message. A :class:`PacsNode` never holds a password (see :mod:`.credentials`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cxr_viewer.common.errors import UserError

KINDS = ("dimse", "dicomweb")
RETRIEVE_METHODS = ("get", "move")


# --- errors --------------------------------------------------------------------------------------


class PacsError(UserError):
    """A PACS operation failed; ``str(err)`` is one line for a user. ``paths``: files a partial
    retrieve did store (complete, kept in the cache)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
        self.paths: list[str] = []
        self.cause: str = "other"  # DICOMweb: what kind of failure (see dicomweb._web_error)
        self.http_status: int | None = None


class CredentialStoreUnavailable(PacsError):
    """No OS keyring backend exists (typical on headless Linux): keep the password in memory."""


def _scrub(message: str, password: str | None) -> str:
    if password:
        message = message.replace(password, "***")
    return message


def _error(message: str, password: str | None = None) -> PacsError:
    return PacsError(_scrub(message, password))


# --- configuration --------------------------------------------------------------------------------

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


def _check_ae(label: str, value: str) -> None:
    if not value.strip():
        raise ValueError(f"{label} is empty")
    if len(value) > 16:
        raise ValueError(f"{label} '{value}' is longer than 16 characters")
    if not _AE_RE.match(value) or "\\" in value:
        raise ValueError(f"{label} '{value}' may only contain printable ASCII characters (no backslash)")


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment (safe for messages)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"


@dataclass(frozen=True)
class PacsNode:
    """One configured PACS. The password is never a field: see :func:`get_password`."""

    name: str
    kind: str
    host: str = ""
    port: int = 104
    called_ae: str = ""
    calling_ae: str = "CXR_VIEWER"
    retrieve_method: str = "get"
    move_port: int = 0
    url: str = ""
    username: str = ""
    timeout_s: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PacsNode:
        """Build and validate a node; ``ValueError`` with a clear message when something is wrong.

        Missing, ``None`` or empty optional values take their defaults; numbers may be strings
        (as settings files give them back). A ``password`` key is refused.
        """
        if not isinstance(d, dict):
            raise ValueError("PACS settings must be a mapping")
        if "password" in d:
            raise ValueError("a password must not be stored in the PACS settings (it goes to the keyring)")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown PACS setting(s): {', '.join(map(str, unknown))}")
        values: dict[str, Any] = {}
        for key in known:
            raw = d.get(key)
            if raw is None or (isinstance(raw, str) and not raw.strip() and key not in ("name", "kind")):
                if key in ("name", "kind"):
                    raise ValueError(f"PACS setting '{key}' is missing")
                continue  # default
            if key in ("port", "move_port"):
                try:
                    if isinstance(raw, float) and not raw.is_integer():
                        raise ValueError
                    values[key] = int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"{key.replace('_', ' ')} must be a whole number, not {raw!r}") from None
            elif key == "timeout_s":
                try:
                    values[key] = float(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"timeout must be a number of seconds, not {raw!r}") from None
            else:
                if not isinstance(raw, str):
                    raise ValueError(f"PACS setting '{key}' must be text")
                values[key] = raw.strip()
        if isinstance(values.get("kind"), str):
            values["kind"] = values["kind"].lower()
        if isinstance(values.get("retrieve_method"), str):
            values["retrieve_method"] = values["retrieve_method"].lower()
        node = cls(**values)
        node.validate()
        return node

    def validate(self) -> None:
        """Raise ``ValueError`` (one line) when the settings cannot work."""
        if not self.name or not self.name.strip():
            raise ValueError("the PACS needs a name")
        if self.kind not in KINDS:
            raise ValueError(f"PACS kind must be 'dimse' or 'dicomweb', not {self.kind!r}")
        if not isinstance(self.timeout_s, (int, float)) or not (0 < self.timeout_s <= 3600):
            raise ValueError("timeout must be between 0 and 3600 seconds")
        if self.kind == "dimse":
            if not self.host.strip():
                raise ValueError("the DIMSE PACS needs a host name or IP address")
            if any(c.isspace() for c in self.host) or "/" in self.host:
                raise ValueError(f"host '{self.host}' is not a host name or IP address")
            if not isinstance(self.port, int) or not (1 <= self.port <= 65535):
                raise ValueError(f"port must be between 1 and 65535, not {self.port!r}")
            _check_ae("called AE title", self.called_ae)
            _check_ae("calling AE title", self.calling_ae)
            if self.retrieve_method not in RETRIEVE_METHODS:
                raise ValueError(f"retrieve method must be 'get' or 'move', not {self.retrieve_method!r}")
            if not isinstance(self.move_port, int) or not (0 <= self.move_port <= 65535):
                raise ValueError(f"C-MOVE port must be between 0 (any) and 65535, not {self.move_port!r}")
        else:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("the DICOMweb URL must start with http:// or https:// and name a host")
            if parts.username is not None or parts.password is not None or "@" in parts.netloc:
                raise ValueError("the DICOMweb URL must not contain a user name or password "
                                 "(use the user name field; the password goes to the keyring)")
            try:
                _ = parts.port
            except ValueError:
                raise ValueError("the DICOMweb URL has an invalid port") from None
            if parts.query or parts.fragment:
                raise ValueError("the DICOMweb URL must not contain a query (?...) or fragment (#...)")

    def describe(self) -> str:
        if self.kind == "dicomweb":
            return _safe_url(self.url)
        return f"{self.called_ae}@{self.host}:{self.port}"


@dataclass(frozen=True)
class QueryFilter:
    """Study-level search keys. Empty = any. Names accept DICOM wildcards ``*`` and ``?``.

    Dates are ``YYYYMMDD``; ``date_from`` only or ``date_to`` only give an open range.
    """

    patient_id: str = ""
    patient_name: str = ""
    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    accession: str = ""

    def date_range(self) -> str:
        for label, value in (("from", self.date_from), ("to", self.date_to)):
            if value and not re.fullmatch(r"\d{8}", value):
                raise ValueError(f"date {label} must be YYYYMMDD, not {value!r}")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date from is after date to")
        if self.date_from and self.date_to and self.date_from == self.date_to:
            return self.date_from
        if self.date_from or self.date_to:
            return f"{self.date_from}-{self.date_to}"
        return ""

    def check_text(self) -> None:
        """Raise ``ValueError`` when a search term cannot be sent as UTF-8 (e.g. a lone surrogate).

        Better than the "?" a DICOM encoder silently puts in its place, which matches any
        character and so other patients. The message never contains the term itself.
        """
        for label, value in (("patient ID", self.patient_id), ("patient name", self.patient_name),
                             ("modality", self.modality), ("accession number", self.accession)):
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"the {label} contains a character that cannot be sent to a PACS "
                                 f"(character {exc.start + 1}, U+{ord(str(value)[exc.start]):04X}); "
                                 "retype it") from None


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    description: str
    modalities: str
    accession: str
    n_series: int | None
    n_instances: int | None


@dataclass(frozen=True)
class SendResult:
    sent: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]


def _check_node(node: PacsNode, password: str | None) -> None:
    try:
        node.validate()
    except ValueError as exc:
        raise _error(f"PACS '{node.name}' settings: {exc}", password) from None


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"

# --- DICOM helpers shared by DIMSE and DICOMweb -----------------------------------------------------

_DIMSE_STATUS = {
    0x0105: "no such attribute", 0x0106: "invalid attribute value", 0x0110: "processing failure",
    0x0111: "duplicate SOP instance", 0x0117: "invalid object instance", 0x0118: "no such SOP class",
    0x0119: "class-instance conflict", 0x0122: "SOP class not supported", 0x0124: "not authorised",
    0x0210: "duplicate invocation", 0x0211: "unrecognised operation", 0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xA700: "refused: out of resources", 0xA701: "refused: out of resources (cannot count matches)",
    0xA702: "refused: out of resources (cannot perform sub-operations)",
    0xA801: "move destination unknown", 0xA900: "identifier does not match SOP class",
    0xB000: "some sub-operations failed", 0xB006: "elements discarded", 0xB007: "data set does not match SOP class",
    0xC000: "unable to process", 0xFE00: "cancelled",
}


def _status_text(status: int) -> str:
    if status in _DIMSE_STATUS:
        text = _DIMSE_STATUS[status]
    elif 0xA700 <= status <= 0xA7FF:
        text = "refused: out of resources"
    elif 0xA900 <= status <= 0xA9FF:
        text = "data set does not match SOP class"
    elif 0xC000 <= status <= 0xCFFF:
        text = "cannot understand / unable to process"
    else:
        text = "failed"
    return f"{text} (status 0x{status:04X})"
def _str(ds, keyword: str) -> str:
    value = ds.get(keyword, "") if ds is not None else ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int_or_none(ds, keyword: str) -> int | None:
    try:
        value = ds.get(keyword, None)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _match_from_dataset(ds) -> StudyMatch:
    return StudyMatch(
        study_uid=_str(ds, "StudyInstanceUID"), patient_id=_str(ds, "PatientID"),
        patient_name=_str(ds, "PatientName"), study_date=_str(ds, "StudyDate"),
        description=_str(ds, "StudyDescription"), modalities=_str(ds, "ModalitiesInStudy"),
        accession=_str(ds, "AccessionNumber"), n_series=_int_or_none(ds, "NumberOfStudyRelatedSeries"),
        n_instances=_int_or_none(ds, "NumberOfStudyRelatedInstances"))


# --- patient name matching (the client-side safety net for non-ASCII searches) ----------------------


def _is_ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)


def _pn_norm(text: str) -> str:
    """A person name folded for comparison: NFC, case-folded, ``^`` as space, spaces collapsed."""
    text = unicodedata.normalize("NFC", str(text)).casefold().replace("^", " ")
    return " ".join(text.split())


def _pn_regex(pattern: str) -> re.Pattern:
    parts = []
    for ch in _pn_norm(pattern):
        if ch == "*":
            if not parts or parts[-1] != ".*":
                parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _pn_matches(pattern: str, name: str) -> bool:
    """Does ``name`` match the DICOM person-name search ``pattern``?

    DICOM PN wildcard semantics: ``*`` any run of characters, ``?`` one character,
    case-insensitive, ``^`` and space equivalent. The whole name and each of its component groups
    (``alphabetic=ideographic=phonetic``) are tried. An empty pattern matches everything.
    """
    if not _pn_norm(pattern):
        return True
    rx = _pn_regex(pattern)
    name = str(name or "")
    candidates = [name] + (name.split("=") if "=" in name else [])
    return any(rx.fullmatch(_pn_norm(c)) for c in candidates)


def _filter_by_name(pattern: str, matches: list[StudyMatch]) -> list[StudyMatch]:
    """The matches whose patient name really matches a non-ASCII ``pattern`` (ASCII: all of them).

    Servers that cannot match non-ASCII text (or that got it substituted with ``?``) answer
    studies of other patients; this keeps only what the user asked for.
    """
    if not pattern or _is_ascii(pattern):
        return list(matches)
    return [m for m in matches if _pn_matches(pattern, m.patient_name)]
