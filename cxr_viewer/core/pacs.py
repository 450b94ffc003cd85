"""PACS access without Qt: DIMSE (pynetdicom) and DICOMweb (dicomweb-client).

Everything long is a task generator (see :mod:`cxr_viewer.core.tasks`): it yields
:class:`~cxr_viewer.core.tasks.Progress`, checks the cancel token between instances / responses
and returns its result. Every network operation is bounded by ``PacsNode.timeout_s``.

Every failure a user can meet is a :class:`PacsError` whose ``str()`` is one line saying what
went wrong and where. Passwords never appear in a node, its ``repr``/``to_dict``, a message or a
log line; patient names are never logged or put in messages (identifiers/UIDs only at debug).
Passwords live in the OS keyring (service ``"cxr_viewer"``) when one exists, see
:func:`set_password`.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .fileio import atomic_path
from .tasks import NEVER_CANCELLED, Cancelled, CancelToken, Progress

log = logging.getLogger(__name__)

# pynetdicom logs whole identifiers (patient names) at INFO/DEBUG, dicomweb-client and urllib3
# log query URLs (search terms) at DEBUG: keep them quiet unless the application explicitly
# configured those loggers.
for _name in ("pynetdicom", "dicomweb_client", "urllib3.connectionpool"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

KEYRING_SERVICE = "cxr_viewer"
KINDS = ("dimse", "dicomweb")
RETRIEVE_METHODS = ("get", "move")


# --- errors --------------------------------------------------------------------------------------


class PacsError(Exception):
    """A PACS operation failed; ``str(err)`` is one line for a user."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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


# --- cache paths -----------------------------------------------------------------------------------

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _safe_name(uid: str) -> str:
    uid = str(uid).strip().rstrip("\x00")
    if _UID_RE.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()


class _CacheWriter:
    """Writes instances of one study atomically; remembers what it created (thread-safe)."""

    def __init__(self, cache_dir: str, study_uid: str) -> None:
        self.folder = os.path.join(cache_dir, _safe_name(study_uid))
        self.written: list[str] = []
        self.created: list[str] = []  # did not exist before this retrieve
        self.closed = False
        self._lock = threading.Lock()

    def path_for(self, sop_instance_uid: str) -> str:
        return os.path.join(self.folder, _safe_name(sop_instance_uid) + ".dcm")

    def write(self, sop_instance_uid: str, fill: Callable[[str], None]) -> str:
        os.makedirs(self.folder, exist_ok=True)
        path = self.path_for(sop_instance_uid)
        commit = atomic_path(path)
        tmp = commit.__enter__()
        try:
            fill(tmp)
        except BaseException:
            if not commit.__exit__(*sys.exc_info()):
                raise
        with self._lock:  # commit under the lock so that discard() never misses a file
            if self.closed:
                commit.__exit__(Cancelled, Cancelled(), None)
                raise Cancelled()
            existed = os.path.exists(path)
            commit.__exit__(None, None, None)
            if path not in self.written:
                self.written.append(path)
                if not existed:
                    self.created.append(path)
        return path

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def discard(self) -> None:
        """Close and remove the files this retrieve created (used on cancel)."""
        self.close()
        with self._lock:
            for path in self.created:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            try:
                os.rmdir(self.folder)
            except OSError:
                pass


# --- DIMSE ------------------------------------------------------------------------------------------

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


def _dimse_where(node: PacsNode) -> str:
    return f"PACS '{node.name}' ({node.host}:{node.port})"




def _uids():
    from pydicom import uid as u

    uncompressed = [u.ExplicitVRLittleEndian, u.ImplicitVRLittleEndian]
    compressed = [u.JPEG2000Lossless, u.JPEG2000, u.JPEGBaseline8Bit, u.JPEGExtended12Bit,
                  u.JPEGLosslessSV1, u.JPEGLossless, u.JPEGLSLossless, u.JPEGLSNearLossless,
                  u.RLELossless]
    return u, uncompressed, compressed


def _retrieve_storage_contexts():
    """Storage contexts we offer as C-GET SCU (each kept under pynetdicom's 128 limit).

    Image classes a chest X-ray viewer shows get one context per compressed transfer syntax so
    the PACS can send the original encoding; other classes get uncompressed only.
    """
    from pynetdicom import build_context
    from pynetdicom import sop_class as sc

    _u, uncompressed, compressed = _uids()
    image_classes = [sc.ComputedRadiographyImageStorage, sc.DigitalXRayImageStorageForPresentation,
                     sc.DigitalXRayImageStorageForProcessing, sc.SecondaryCaptureImageStorage]
    other = [sc.DigitalMammographyXRayImageStorageForPresentation,
             sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
             sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
             sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
             sc.BasicTextSRStorage, sc.EnhancedSRStorage, sc.ComprehensiveSRStorage,
             sc.Comprehensive3DSRStorage, sc.ExtensibleSRStorage, sc.ChestCADSRStorage,
             sc.KeyObjectSelectionDocumentStorage, sc.XRayRadiationDoseSRStorage,
             sc.GrayscaleSoftcopyPresentationStateStorage, sc.EncapsulatedPDFStorage,
             sc.CTImageStorage, sc.MRImageStorage, sc.UltrasoundImageStorage,
             sc.UltrasoundMultiFrameImageStorage, sc.XRayAngiographicImageStorage,
             sc.XRayRadiofluoroscopicImageStorage, sc.SegmentationStorage]
    contexts = []
    for cls in image_classes:
        contexts.extend(build_context(cls, ts) for ts in uncompressed + compressed)
    for cls in other:
        contexts.append(build_context(cls, uncompressed))
    return contexts


class _Watch:
    """What happened on one association's transport, to tell failures apart."""

    def __init__(self) -> None:
        self.connected = False
        self.received = 0
        self.first_bytes = b""
        self.pdus = 0
        self.peer_abort: tuple[int, int] | None = None

    def handlers(self) -> list:
        from pynetdicom import evt

        def on_open(event):
            self.connected = True
            # pynetdicom reports received bytes only for PDUs it could decode; to tell "answered
            # garbage" from "closed the connection" we note the raw bytes as they are read.
            try:
                sock = event.assoc.dul.socket
                original = sock.recv

                def recv(nr_bytes, _original=original):
                    data = _original(nr_bytes)
                    if data:
                        if not self.first_bytes:
                            self.first_bytes = bytes(data[:16])
                        self.received += len(data)
                    return data

                sock.recv = recv
            except AttributeError:  # pragma: no cover - other pynetdicom internals
                pass

        def on_pdu(event):
            from pynetdicom.pdu import A_ABORT_RQ

            self.pdus += 1
            if isinstance(event.pdu, A_ABORT_RQ):
                self.peer_abort = (event.pdu.source, event.pdu.reason_diagnostic)

        return [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_PDU_RECV, on_pdu)]


def _new_ae(node: PacsNode):
    from pynetdicom import AE

    ae = AE(ae_title=node.calling_ae)
    t = float(node.timeout_s)
    ae.acse_timeout = t
    ae.dimse_timeout = t
    ae.network_timeout = t
    ae.connection_timeout = t
    ae.maximum_associations = 4
    return ae


def _connect_error(node: PacsNode, elapsed: float) -> PacsError:
    """Why the TCP connection failed (probed again to learn the errno when it failed fast)."""
    where = f"{node.host}:{node.port}"
    if elapsed >= 0.8 * node.timeout_s:
        return PacsError(f"{_dimse_where(node)} did not answer within {_fmt_s(node.timeout_s)} "
                         "(no TCP connection; host down or blocked by a firewall?)")
    try:
        with socket.create_connection((node.host, node.port), timeout=min(3.0, node.timeout_s)):
            pass
    except socket.gaierror:
        return PacsError(f"cannot resolve host name '{node.host}' of PACS '{node.name}'")
    except ConnectionRefusedError:
        return PacsError(f"connection refused by {where} (is the PACS running?)")
    except TimeoutError:
        return PacsError(f"{_dimse_where(node)} did not answer within {_fmt_s(node.timeout_s)} "
                         "(no TCP connection; host down or blocked by a firewall?)")
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return PacsError(f"no route to {where} (network unreachable)")
        return PacsError(f"cannot connect to {where}: {exc.strerror or exc.__class__.__name__}")
    return PacsError(f"cannot connect to {where} (connection failed, then worked on retry; try again)")


def _failure_after_connect(node: PacsNode, watch: _Watch, elapsed: float, during: str) -> PacsError:
    where = _dimse_where(node)
    if watch.peer_abort is not None:
        return PacsError(f"{where} aborted the association{during} (source {watch.peer_abort[0]}, "
                         f"reason {watch.peer_abort[1]}); check the AE titles and the PACS log")
    if watch.received and watch.first_bytes.startswith(b"HTTP/"):
        return PacsError(f"{where} answered with HTTP, not DICOM: is {node.port} the web port "
                         "instead of the DICOM port?")
    if watch.received and watch.pdus == 0:
        return PacsError(f"{where} answered something that is not DICOM (is {node.port} a DICOM port?)")
    if elapsed >= 0.8 * node.timeout_s:
        return PacsError(f"{where} did not answer within {_fmt_s(node.timeout_s)}{during}")
    return PacsError(f"{where} closed the connection{during} without a DICOM answer")


def _resolve(node: PacsNode) -> str:
    """The host's IP address, looked up within the node's timeout (the system resolver may hang)."""
    try:
        ipaddress.ip_address(node.host)
        return node.host
    except ValueError:
        pass
    result: list = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(node.host, node.port, type=socket.SOCK_STREAM))
        except OSError as exc:
            result.append(exc)

    worker = threading.Thread(target=lookup, daemon=True, name="pacs-dns")
    worker.start()
    worker.join(node.timeout_s)
    if not result:
        raise PacsError(f"looking up host name '{node.host}' of PACS '{node.name}' took longer than "
                        f"{_fmt_s(node.timeout_s)}")
    if isinstance(result[0], OSError) or not result[0]:
        raise PacsError(f"cannot resolve host name '{node.host}' of PACS '{node.name}' (check the host name "
                        "and the network)")
    infos = result[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return info[4][0]
    return infos[0][4][0]


_SERVICE_NAMES = {
    "1.2.840.10008.1.1": "C-ECHO (verification)",
    "1.2.840.10008.5.1.4.1.2.2.1": "C-FIND (study root query)",
    "1.2.840.10008.5.1.4.1.2.2.2": "C-MOVE (study root retrieve)",
    "1.2.840.10008.5.1.4.1.2.2.3": "C-GET (study root retrieve)",
}


def _associate(node: PacsNode, ae, *, ext_neg=None, evt_handlers=None, required: str | None = None):
    """An established association or a clear PacsError (connection, rejection, timeout, garbage).

    ``required``: an abstract syntax the peer must accept, else the association is released and
    a PacsError says the PACS does not offer that service.
    """
    assoc = _associate_any(node, ae, ext_neg=ext_neg, evt_handlers=evt_handlers)
    if required and not any(cx.abstract_syntax == required for cx in assoc.accepted_contexts):
        _release(assoc)
        service = _SERVICE_NAMES.get(str(required), str(required))
        hint = ""
        if "C-GET" in service:
            hint = "; choose C-MOVE as the retrieve method"
        elif "C-MOVE" in service:
            hint = "; choose C-GET as the retrieve method"
        raise PacsError(f"{_dimse_where(node)} does not offer {service} to AE title '{node.calling_ae}'{hint}")
    return assoc


def _associate_any(node: PacsNode, ae, *, ext_neg=None, evt_handlers=None):
    watch = _Watch()
    handlers = watch.handlers() + list(evt_handlers or [])
    t0 = time.monotonic()
    address = _resolve(node)
    try:
        assoc = ae.associate(address, node.port, ae_title=node.called_ae, ext_neg=ext_neg,
                             evt_handlers=handlers)
    except (OSError, ValueError) as exc:
        raise PacsError(f"cannot connect to {node.host}:{node.port}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    elapsed = time.monotonic() - t0
    if assoc.is_established:
        assoc._cxr_watch = watch
        return assoc
    if assoc.is_rejected:
        rsp = getattr(assoc.acceptor, "primitive", None)
        reason = getattr(rsp, "reason_str", "") or "no reason given"
        reason = reason[:1].lower() + reason[1:]
        if getattr(rsp, "result", None) == 0x02:
            reason += " (transient: try again later)"
        hint = ""
        if "calling ae" in reason:
            hint = f"; the PACS must know our AE title '{node.calling_ae}'"
        raise PacsError(f"association rejected by '{node.called_ae}' ({node.host}:{node.port}): "
                        f"{reason}{hint}")
    if not watch.connected:
        raise _connect_error(node, elapsed)
    if watch.pdus and not watch.peer_abort and not assoc.accepted_contexts:
        raise PacsError(f"{_dimse_where(node)} accepted none of the proposed services "
                        "(presentation contexts); it may not support this operation")
    raise _failure_after_connect(node, watch, elapsed, " while negotiating the association")


def _operation_failed(node: PacsNode, assoc, t_last: float, what: str) -> PacsError:
    """A DIMSE operation got no status: timeout or abort."""
    watch: _Watch = getattr(assoc, "_cxr_watch", _Watch())
    elapsed = time.monotonic() - t_last
    if watch.peer_abort is not None:
        return PacsError(f"{_dimse_where(node)} aborted the association during {what}")
    if elapsed >= 0.8 * node.timeout_s:
        return PacsError(f"{_dimse_where(node)} did not answer {what} within {_fmt_s(node.timeout_s)}")
    return PacsError(f"{_dimse_where(node)} closed the connection during {what}")


def _release(assoc) -> None:
    try:
        if assoc.is_established:
            assoc.release()
    except Exception:  # pragma: no cover - best effort
        try:
            assoc.abort()
        except Exception:
            pass


def _abort(assoc) -> None:
    try:
        if assoc.is_established:
            assoc.abort()
    except Exception:  # pragma: no cover - best effort
        pass


def _dimse_echo(node: PacsNode) -> float:
    from pynetdicom.sop_class import Verification

    ae = _new_ae(node)
    ae.add_requested_context(Verification)
    t0 = time.monotonic()
    assoc = _associate(node, ae, required=Verification)
    try:
        t_op = time.monotonic()
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None) if status is not None else None
        if code is None:
            raise _operation_failed(node, assoc, t_op, "the C-ECHO")
        if code != 0x0000:
            raise PacsError(f"{_dimse_where(node)} answered C-ECHO with {_status_text(code)}")
        return time.monotonic() - t0
    finally:
        _release(assoc)


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


def _dimse_query(node: PacsNode, flt: QueryFilter, dates: str, cancel: CancelToken):
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.PatientID = flt.patient_id
    ident.PatientName = flt.patient_name
    ident.StudyDate = dates
    ident.StudyTime = ""
    ident.StudyDescription = ""
    ident.ModalitiesInStudy = flt.modality
    ident.AccessionNumber = flt.accession
    ident.NumberOfStudyRelatedSeries = ""
    ident.NumberOfStudyRelatedInstances = ""

    ae = _new_ae(node)
    ae.add_requested_context(FIND)
    assoc = _associate(node, ae, required=FIND)
    matches: list[StudyMatch] = []
    ok = False
    try:
        t_last = time.monotonic()
        for status, identifier in assoc.send_c_find(ident, FIND):
            if cancel.cancelled:
                _abort(assoc)
                raise Cancelled()
            code = getattr(status, "Status", None) if status is not None else None
            if code is None:
                raise _operation_failed(node, assoc, t_last, "the C-FIND query")
            t_last = time.monotonic()
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    match = _match_from_dataset(identifier)
                    if match.study_uid:
                        matches.append(match)
                yield Progress("query", len(matches), 0, f"{len(matches)} studies")
                cancel.raise_if_cancelled()
            elif code == 0x0000:
                ok = True
            elif code == 0xFE00:
                raise Cancelled()
            else:
                raise PacsError(f"{_dimse_where(node)} refused the query: {_status_text(code)}")
        if not ok:
            raise _operation_failed(node, assoc, t_last, "the C-FIND query")
    finally:
        _release(assoc)
    return matches


def _study_identifier(study_uid: str):
    from pydicom.dataset import Dataset

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study_uid
    return ident


def _encoded_dataset(event) -> bytes:
    return event.encoded_dataset(include_meta=True)


def _store_handler(writer: _CacheWriter, cancel: CancelToken, stored: list, failures: list):
    def handle(event):
        if cancel.cancelled or writer.closed:
            return 0xA700
        try:
            sop = str(event.request.AffectedSOPInstanceUID)
            data = _encoded_dataset(event)

            def fill(tmp: str) -> None:
                with open(tmp, "wb") as f:
                    f.write(data)

            writer.write(sop, fill)
            stored.append(sop)
            log.debug("stored instance %s", sop)
            return 0x0000
        except Cancelled:
            return 0xA700
        except OSError as exc:
            failures.append(f"cannot write to the cache folder: {exc.strerror or exc}")
            return 0xA700
        except Exception as exc:  # a bad data set must not kill the association
            failures.append(f"cannot store a received instance: {exc.__class__.__name__}")
            return 0xC000

    return handle


def _subop_counts(status) -> tuple[int, int, int, int]:
    def n(keyword):
        try:
            return int(status.get(keyword, 0) or 0)
        except (TypeError, ValueError):
            return 0

    return (n("NumberOfRemainingSuboperations"), n("NumberOfCompletedSuboperations"),
            n("NumberOfFailedSuboperations"), n("NumberOfWarningSuboperations"))


def _run_retrieve(node, assoc, responses, model, writer, stored, failures, cancel, what):
    """Drive C-GET/C-MOVE responses; yields Progress; returns on success, raises otherwise."""
    t_last = time.monotonic()
    final = None
    for status, _identifier in responses:
        if cancel.cancelled:
            try:
                assoc.send_c_cancel(1, query_model=model)
            except Exception:
                pass
            _abort(assoc)
            raise Cancelled()
        code = getattr(status, "Status", None) if status is not None else None
        if code is None:
            raise _operation_failed(node, assoc, t_last, f"the {what}")
        t_last = time.monotonic()
        remaining, completed, failed, warning = _subop_counts(status)
        if code in (0xFF00, 0xFF01):
            total = completed + warning + remaining + failed
            done = max(completed + warning, len(stored))
            done = min(done, total) if total else done
            yield Progress("retrieve", done, total, f"{done} of {total} instances" if total else "")
            continue
        comment = " ".join(str(status.get("ErrorComment", "") or "").split())[:120]
        final = (code, remaining, completed, failed, warning, comment)
    if final is None:
        raise _operation_failed(node, assoc, t_last, f"the {what}")
    return final


def _check_final(node: PacsNode, final, stored: list, failures: list, what: str) -> None:
    code, _remaining, _completed, failed, _warning, comment = final
    comment = f" ({comment})" if comment else ""
    if code == 0xFE00:
        raise Cancelled()
    if failures:
        raise PacsError(f"{what} from {_dimse_where(node)}: {failures[0]}")
    if code == 0xA801:
        raise PacsError(f"{_dimse_where(node)} does not know the C-MOVE destination '{node.calling_ae}': "
                        f"add AE title '{node.calling_ae}' with this computer's address and port "
                        f"{node.move_port or '(the configured C-MOVE port)'} to the PACS")
    if code not in (0x0000, 0xB000):
        hint = ""
        if what == "C-MOVE" and not stored:
            hint = (f"; check that the PACS knows AE title '{node.calling_ae}' as a C-MOVE destination "
                    f"(this computer, port {node.move_port or 'of the C-MOVE listener'}) and has the study")
        elif not stored:
            hint = "; does the PACS have the study?"
        raise PacsError(f"{_dimse_where(node)} refused the {what}: {_status_text(code)}{comment}{hint}")
    if failed or code == 0xB000:
        n_ok = len(stored)
        raise PacsError(f"{what} from {_dimse_where(node)} incomplete: {n_ok} instance(s) received, "
                        f"{failed or 'some'} failed on the PACS side (unsupported SOP class or transfer "
                        "syntax?)")
    if not stored:
        raise PacsError(f"{_dimse_where(node)} has no instances of the requested study")


def _dimse_get(node: PacsNode, study_uid: str, writer: _CacheWriter, cancel: CancelToken):
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

    ae = _new_ae(node)
    ae.add_requested_context(GET)
    storage = _retrieve_storage_contexts()
    for cx in storage:
        ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
    roles = [build_role(uid, scp_role=True) for uid in dict.fromkeys(cx.abstract_syntax for cx in storage)]
    stored: list[str] = []
    failures: list[str] = []
    handler = _store_handler(writer, cancel, stored, failures)
    assoc = _associate(node, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)], required=GET)
    try:
        yield Progress("retrieve", 0, 0, "C-GET started")
        responses = assoc.send_c_get(_study_identifier(study_uid), GET, msg_id=1)
        final = yield from _run_retrieve(node, assoc, responses, GET, writer, stored, failures, cancel, "C-GET")
        _check_final(node, final, stored, failures, "C-GET")
    finally:
        _release(assoc)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dimse_move(node: PacsNode, study_uid: str, writer: _CacheWriter, cancel: CancelToken):
    from pydicom.uid import AllTransferSyntaxes
    from pynetdicom import AllStoragePresentationContexts, build_context, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    stored: list[str] = []
    failures: list[str] = []
    handler = _store_handler(writer, cancel, stored, failures)
    scp_ae = _new_ae(node)
    scp_ae.supported_contexts = [build_context(cx.abstract_syntax, AllTransferSyntaxes)
                                 for cx in AllStoragePresentationContexts]
    bind = "127.0.0.1" if _is_loopback(node.host) else ""
    try:
        server = scp_ae.start_server((bind, node.move_port), block=False,
                                     evt_handlers=[(evt.EVT_C_STORE, handler)])
    except OSError as exc:
        raise PacsError(f"cannot listen on port {node.move_port} for C-MOVE: "
                        f"{exc.strerror or exc} (port in use? choose another C-MOVE port)") from None
    try:
        ae = _new_ae(node)
        ae.add_requested_context(MOVE)
        assoc = _associate(node, ae, required=MOVE)
        try:
            yield Progress("retrieve", 0, 0, "C-MOVE started")
            responses = assoc.send_c_move(_study_identifier(study_uid), node.calling_ae, MOVE, msg_id=1)
            final = yield from _run_retrieve(node, assoc, responses, MOVE, writer, stored, failures, cancel,
                                             "C-MOVE")
            _check_final(node, final, stored, failures, "C-MOVE")
        finally:
            _release(assoc)
    finally:
        server.shutdown()


# --- C-STORE --------------------------------------------------------------------------------------


def _file_keys(path: str) -> tuple[str, str]:
    """(SOP class UID, transfer syntax UID) of a DICOM file; ValueError when it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        sop = str(meta.get("MediaStorageSOPClassUID", "") or "")
        ts = str(meta.get("TransferSyntaxUID", "") or "")
        if sop and ts:
            return sop, ts
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        pass
    raise ValueError("not a DICOM Part 10 file (no file meta information)")


def _send_contexts(keys: list[tuple[str, str]]):
    from pynetdicom import build_context

    _u, uncompressed, _compressed = _uids()
    contexts, seen = [], set()
    for sop, ts in keys:
        if (sop, ts) not in seen:
            seen.add((sop, ts))
            contexts.append(build_context(sop, [ts]))
        if ts not in uncompressed and (sop, "*") not in seen:  # fallback: decompress locally
            seen.add((sop, "*"))
            contexts.append(build_context(sop, uncompressed))
    return contexts


def _accepted(assoc, sop: str, ts: str) -> bool:
    return any(cx.abstract_syntax == sop and cx.transfer_syntax and cx.transfer_syntax[0] == ts
               for cx in assoc.accepted_contexts)


def _dimse_send(node: PacsNode, paths: Sequence[str], cancel: CancelToken):
    import pydicom
    from pydicom.uid import UID

    n = len(paths)
    sent: list[str] = []
    failed: list[tuple[str, str]] = []
    keyed: list[tuple[str, tuple[str, str]]] = []
    for p in paths:
        try:
            keyed.append((p, _file_keys(p)))
        except ValueError as exc:
            failed.append((p, str(exc)))
        except OSError as exc:
            failed.append((p, f"cannot read: {exc.strerror or exc}"))
    # batches that fit in one association (at most 127 presentation contexts)
    batches: list[list[tuple[str, tuple[str, str]]]] = []
    for item in keyed:
        if batches and len(_send_contexts([k for _p, k in batches[-1] + [item]])) <= 127:
            batches[-1].append(item)
        else:
            batches.append([item])
    done = len(failed)
    yield Progress("send", done, n, "")
    for batch in batches:
        ae = _new_ae(node)
        for cx in _send_contexts([k for _p, k in batch]):
            ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
        try:
            assoc = _associate(node, ae)
        except PacsError as exc:
            if not sent and batch is batches[0]:
                raise
            failed.extend((p, str(exc)) for p, _k in batch)
            continue
        try:
            for i, (path, (sop, ts)) in enumerate(batch):
                if cancel.cancelled:
                    raise Cancelled()
                t_op = time.monotonic()
                if _accepted(assoc, sop, ts):
                    payload: Any = path
                elif any(cx.abstract_syntax == sop for cx in assoc.accepted_contexts):
                    try:
                        payload = pydicom.dcmread(path)
                        payload.decompress(generate_instance_uid=False)  # same object, new encoding
                    except Exception as exc:
                        reason = (f"the PACS does not accept {UID(ts).name} and the file could not be "
                                  f"decompressed ({exc.__class__.__name__})")
                        failed.append((path, reason))
                        done += 1
                        yield Progress("send", done, n, os.path.basename(path))
                        continue
                else:
                    failed.append((path, f"the PACS does not accept this object type ({UID(sop).name})"))
                    done += 1
                    yield Progress("send", done, n, os.path.basename(path))
                    continue
                try:
                    status = assoc.send_c_store(payload)
                except (ValueError, AttributeError, OSError) as exc:
                    failed.append((path, " ".join(f"cannot send: {exc}".split())))
                    status = False
                except RuntimeError:
                    status = None
                if status is not False:
                    code = getattr(status, "Status", None) if status is not None else None
                    if code is None:
                        exc = _operation_failed(node, assoc, t_op, "the C-STORE")
                        failed.extend((p, str(exc)) for p, _k in batch[i:])
                        done += len(batch) - i
                        yield Progress("send", done, n, "")
                        break
                    if code == 0x0000 or code in (0xB000, 0xB006, 0xB007):
                        sent.append(path)
                    else:
                        failed.append((path, f"the PACS refused it: {_status_text(code)}"))
                done += 1
                yield Progress("send", done, n, os.path.basename(path))
        except Cancelled:
            _abort(assoc)
            raise
        finally:
            _release(assoc)
    order = {p: i for i, p in enumerate(paths)}
    failed.sort(key=lambda f: order.get(f[0], 0))
    return SendResult(tuple(sent), tuple(failed))


# --- DICOMweb ---------------------------------------------------------------------------------------


def _web_where(node: PacsNode) -> str:
    return f"DICOMweb server at {_safe_url(node.url)}"


def _web_client(node: PacsNode, password: str | None):
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if node.username or password:
        session.auth = (node.username, password or "")
    t = float(node.timeout_s)
    client = DICOMwebClient(url=node.url.rstrip("/"), session=session, timeout=(t, t))
    client.set_http_retry_params(retry=False)
    return client, session


_HTTP_HINTS = {401: " (check the user name and password)", 403: " (this user may not do that)",
               404: " (check the DICOMweb URL)", 406: " (the server cannot send that format)"}


def _web_error(node: PacsNode, exc: BaseException, password: str | None, what: str = "") -> PacsError:
    """Map a requests / dicomweb-client / pydicom exception to one clear line."""
    import requests

    where = _web_where(node)
    if isinstance(exc, PacsError):
        return _error(str(exc), password)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        reason = r.reason or ""
        if isinstance(reason, bytes):
            reason = reason.decode("latin-1", "replace")
        msg = f"{where}: HTTP {r.status_code} {reason}".rstrip() + _HTTP_HINTS.get(r.status_code, "")
        return _error(msg, password)
    if isinstance(exc, requests.exceptions.SSLError):
        return _error(f"{where}: TLS/SSL error (certificate not trusted or not an https server?)", password)
    if isinstance(exc, (requests.exceptions.ConnectTimeout,)):
        return _error(f"{where} did not answer within {_fmt_s(node.timeout_s)} (no connection)", password)
    if isinstance(exc, (requests.exceptions.Timeout,)) or "timed out" in str(exc).lower():
        return _error(f"{where} did not answer within {_fmt_s(node.timeout_s)}", password)
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        parts = urlsplit(node.url)
        hostport = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        if "Connection refused" in text or "Errno 111" in text:
            return _error(f"connection refused by {hostport} (is the DICOMweb server running?)", password)
        if "Name or service not known" in text or "getaddrinfo" in text or "NameResolution" in text:
            return _error(f"cannot resolve host name '{parts.hostname}' of {where}", password)
        if "RemoteDisconnected" in text or "Connection aborted" in text or "reset" in text.lower():
            return _error(f"{where} closed the connection without an answer", password)
        return _error(f"cannot connect to {where}", password)
    if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, IndexError, EOFError)):
        kind = what or "DICOM JSON"
        return _error(f"{where} answered something that is not {kind}", password)
    return _error(f"{where}: {exc.__class__.__name__}", password)


def _parse_json_studies(node: PacsNode, items: Any) -> list[StudyMatch]:
    from pydicom.dataset import Dataset

    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PacsError(f"{_web_where(node)} answered something that is not DICOM JSON")
    out = []
    for item in items:
        try:
            ds = Dataset.from_json(item)
        except Exception:
            raise PacsError(f"{_web_where(node)} answered something that is not DICOM JSON") from None
        match = _match_from_dataset(ds)
        if match.study_uid:
            out.append(match)
    return out


def _web_echo(node: PacsNode, password: str | None) -> float:
    _client, session = _web_client(node, password)
    t0 = time.monotonic()
    try:
        with session:
            result = _qido(node, session, "studies", [("limit", "1")])
        _parse_json_studies(node, result)
    except Exception as exc:
        raise _web_error(node, exc, password) from None
    return time.monotonic() - t0


def _qido(node: PacsNode, session, path: str, params: list[tuple[str, str]]) -> Any:
    """GET a QIDO-RS resource; the decoded JSON (``[]`` for 204). Exceptions are mapped by the caller."""
    query = "&".join(f"{k}={_qido_value(v)}" for k, v in params)
    t = float(node.timeout_s)
    r = session.get(f"{node.url.rstrip('/')}/{path}" + (f"?{query}" if query else ""), timeout=(t, t),
                    headers={"Accept": "application/dicom+json"})
    r.raise_for_status()
    if r.status_code == 204 or not r.content.strip():
        return []
    return r.json()


def _qido_value(value: str) -> str:
    """Percent-encode a QIDO value, leaving the characters DICOM matching needs readable.

    Orthanc 1.10 does not percent-decode query parameters (``%2A`` is not a wildcard, ``%20``
    is not a space), so ``*``, ``?`` and friends travel as they are (RFC 3986 allows them in a
    query), and a space or ``^`` (which requests would percent-encode) becomes the ``?``
    single-character wildcard, which every server understands.
    """
    return quote(value.replace(" ", "?").replace("^", "?"), safe="*?-._~,:/@!$'()")


def _web_query(node: PacsNode, flt: QueryFilter, dates: str, password: str | None, cancel: CancelToken):
    filters = [(k, v) for k, v in (("PatientID", flt.patient_id), ("PatientName", flt.patient_name),
                                    ("StudyDate", dates), ("ModalitiesInStudy", flt.modality),
                                    ("AccessionNumber", flt.accession)) if v]
    filters += [("includefield", f) for f in ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                              "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientName")]
    _client, session = _web_client(node, password)
    yield Progress("query", 0, 0, "searching")
    try:
        with session:
            result = _qido(node, session, "studies", filters)
    except Exception as exc:
        raise _web_error(node, exc, password) from None
    cancel.raise_if_cancelled()
    matches = _parse_json_studies(node, result)
    yield Progress("query", len(matches), len(matches), f"{len(matches)} studies")
    return matches


def _web_retrieve(node: PacsNode, study_uid: str, writer: _CacheWriter, password: str | None,
                  cancel: CancelToken):
    import pydicom

    client, session = _web_client(node, password)
    with session:
        total = 0
        try:
            found = _qido(node, session, f"studies/{study_uid}/instances", [("includefield", "SOPInstanceUID")])
            if isinstance(found, list):
                total = len(found)
        except Exception as exc:
            err = _web_error(node, exc, password)
            if "HTTP 401" in str(err) or "did not answer" in str(err) or "refused" in str(err):
                raise err from None
            total = 0  # QIDO for instances is optional; WADO will say the truth
        cancel.raise_if_cancelled()
        yield Progress("retrieve", 0, total, "WADO-RS started")
        done = 0
        try:
            stream = client.iter_study(study_uid, media_types=(("application/dicom", "*"),))
            for ds in stream:
                if cancel.cancelled:
                    break
                sop = str(ds.get("SOPInstanceUID", "") or getattr(ds.get("file_meta", None), "MediaStorageSOPInstanceUID", ""))
                if not sop:
                    raise PacsError(f"{_web_where(node)} sent an instance without SOP Instance UID")

                def fill(tmp: str, ds=ds) -> None:
                    pydicom.dcmwrite(tmp, ds, enforce_file_format=True)

                writer.write(sop, fill)
                log.debug("stored instance %s", sop)
                done += 1
                yield Progress("retrieve", done, max(total, done), f"{done} of {max(total, done)} instances")
        except Cancelled:
            raise
        except Exception as exc:
            response = getattr(exc, "response", None)
            if getattr(response, "status_code", None) == 404:
                raise PacsError(f"{_web_where(node)} has no instances of the requested study (HTTP 404)") from None
            raise _web_error(node, exc, password, "DICOM (multipart/related application/dicom)") from None
        cancel.raise_if_cancelled()
        if done == 0:
            raise PacsError(f"{_web_where(node)} has no instances of the requested study")


def _web_send(node: PacsNode, paths: Sequence[str], password: str | None, cancel: CancelToken):
    import pydicom

    client, session = _web_client(node, password)
    n = len(paths)
    sent: list[str] = []
    failed: list[tuple[str, str]] = []
    with session:
        yield Progress("send", 0, n, "")
        for i, path in enumerate(paths):
            cancel.raise_if_cancelled()
            try:
                ds = pydicom.dcmread(path)
                if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                    raise ValueError
            except OSError as exc:
                failed.append((path, f"cannot read: {exc.strerror or exc}"))
                yield Progress("send", i + 1, n, os.path.basename(path))
                continue
            except Exception:
                failed.append((path, "not a DICOM Part 10 file (no file meta information)"))
                yield Progress("send", i + 1, n, os.path.basename(path))
                continue
            try:
                answer = client.store_instances(datasets=[ds])
            except Exception as exc:
                err = _web_error(node, exc, password, "a DICOM JSON STOW-RS answer")
                text = str(err)
                network = "did not answer" in text or "refused" in text or "HTTP 401" in text or \
                    "cannot connect" in text or "HTTP 403" in text or "HTTP 404" in text
                if network and not sent:
                    raise err from None
                failed.append((path, text))
                yield Progress("send", i + 1, n, os.path.basename(path))
                continue
            failed_seq = answer.get("FailedSOPSequence", None) if answer is not None else None
            if failed_seq:
                reason = ""
                try:
                    reason = _status_text(int(failed_seq[0].FailureReason))
                except Exception:
                    reason = "refused"
                failed.append((path, f"the DICOMweb server refused it: {reason}"))
            else:
                sent.append(path)
            yield Progress("send", i + 1, n, os.path.basename(path))
    return SendResult(tuple(sent), tuple(failed))


# --- public API -----------------------------------------------------------------------------------


def echo(node: PacsNode, password: str | None = None) -> float:
    """Check the PACS answers (C-ECHO, or QIDO ``/studies?limit=1``); returns seconds taken."""
    _check_node(node, password)
    if node.kind == "dimse":
        return _dimse_echo(node)
    return _web_echo(node, password)


def query_task(node: PacsNode, flt: QueryFilter, password: str | None = None,
               cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, list[StudyMatch]]:
    """Study-level search (C-FIND study root, or QIDO-RS); returns the matches."""
    _check_node(node, password)
    try:
        dates = flt.date_range()
    except ValueError as exc:
        raise PacsError(f"query: {exc}") from None
    log.debug("query %s", node.describe())
    if node.kind == "dimse":
        matches = yield from _dimse_query(node, flt, dates, cancel)
    else:
        matches = yield from _web_query(node, flt, dates, password, cancel)
    return matches


def retrieve_task(node: PacsNode, study_uid: str, cache_dir: str, password: str | None = None,
                  cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, list[str]]:
    """Fetch every instance of a study into ``cache_dir/<study_uid>/<sop_instance_uid>.dcm``.

    Files are complete Part 10 files written atomically, in the transfer syntax the PACS sends
    (the original where it allows). On cancel, the files this call created are removed and
    :class:`Cancelled` is raised. A partial retrieve raises :class:`PacsError` and keeps the
    complete files it got.
    """
    _check_node(node, password)
    study_uid = str(study_uid or "").strip()
    if not study_uid:
        raise PacsError("retrieve: no study selected (empty Study Instance UID)")
    writer = _CacheWriter(cache_dir, study_uid)
    log.debug("retrieve study %s from %s", study_uid, node.describe())
    try:
        if node.kind == "dicomweb":
            yield from _web_retrieve(node, study_uid, writer, password, cancel)
        elif node.retrieve_method == "move":
            yield from _dimse_move(node, study_uid, writer, cancel)
        else:
            yield from _dimse_get(node, study_uid, writer, cancel)
        cancel.raise_if_cancelled()
    except (Cancelled, GeneratorExit):
        writer.discard()
        raise
    finally:
        writer.close()
    return sorted(writer.written)


def send_task(node: PacsNode, paths: Sequence[str], password: str | None = None,
              cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, SendResult]:
    """Store files on the PACS (C-STORE on one association, or STOW-RS one instance a request).

    A file the PACS refuses (or that is not DICOM) lands in ``failed`` with a reason; a PACS that
    cannot be reached at all raises :class:`PacsError` before anything is sent.
    """
    _check_node(node, password)
    paths = [os.fspath(p) for p in paths]
    if node.kind == "dimse":
        result = yield from _dimse_send(node, paths, cancel)
    else:
        result = yield from _web_send(node, paths, password, cancel)
    return SendResult(result.sent, tuple((p, _scrub(r, password)) for p, r in result.failed))


# --- credentials ----------------------------------------------------------------------------------


def _key(node: PacsNode) -> str:
    return f"{node.name}::{node.username}"


def _keyring():
    try:
        import keyring
        from keyring.backends import fail
    except Exception:  # pragma: no cover - keyring is a dependency
        raise CredentialStoreUnavailable("no credential store: the 'keyring' package is missing") from None
    try:
        backend = keyring.get_keyring()
    except Exception:
        raise CredentialStoreUnavailable("no OS credential store (keyring) is available") from None
    if isinstance(backend, fail.Keyring):
        raise CredentialStoreUnavailable("no OS credential store (keyring) is available on this system; "
                                         "the password is kept for this session only")
    return keyring


def get_password(node: PacsNode) -> str | None:
    """The stored password of ``node`` (its name + user name), or None (also when no keyring exists)."""
    try:
        kr = _keyring()
        return kr.get_password(KEYRING_SERVICE, _key(node))
    except Exception:
        return None


def set_password(node: PacsNode, password: str) -> None:
    """Store the password in the OS keyring; :class:`CredentialStoreUnavailable` when there is none."""
    kr = _keyring()
    try:
        kr.set_password(KEYRING_SERVICE, _key(node), password)
    except Exception as exc:
        from keyring.errors import NoKeyringError

        if isinstance(exc, NoKeyringError):
            raise CredentialStoreUnavailable("no OS credential store (keyring) is available on this system; "
                                             "the password is kept for this session only") from None
        raise CredentialStoreUnavailable(f"the OS credential store refused to save the password "
                                         f"({exc.__class__.__name__})") from None


def delete_password(node: PacsNode) -> None:
    """Forget the stored password (nothing happens when none is stored or no keyring exists)."""
    try:
        kr = _keyring()
        kr.delete_password(KEYRING_SERVICE, _key(node))
    except Exception:
        pass
