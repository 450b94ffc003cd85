"""DICOMweb (dicomweb-client + requests): QIDO-RS query, WADO-RS retrieve, STOW-RS send.

dicomweb-client and requests are imported lazily. Every request is bounded by the node's
timeout; HTTP Basic credentials go on the session only and are scrubbed from every message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from cxr_viewer.clinical.pacs.cache import _CacheWriter
from cxr_viewer.clinical.pacs.nodes import (
    PacsError,
    PacsNode,
    QueryFilter,
    SendResult,
    StudyMatch,
    _error,
    _filter_by_name,
    _fmt_s,
    _is_ascii,
    _match_from_dataset,
    _safe_url,
    _status_text,
)
from cxr_viewer.clinical.pacs.resolve import _resolve_host
from cxr_viewer.common.tasks import Cancelled, CancelToken, Progress

log = logging.getLogger("cxr_viewer.clinical.pacs")  # the package's logger, as before the split



def _web_where(node: PacsNode) -> str:
    return f"DICOMweb server at {_safe_url(node.url)}"


def _web_client(node: PacsNode, password: str | None):
    import requests
    from dicomweb_client.api import DICOMwebClient

    _resolve_url_host(node)
    session = requests.Session()
    if node.username or password:
        session.auth = (node.username, password or "")
    t = float(node.timeout_s)
    client = DICOMwebClient(url=node.url.rstrip("/"), session=session, timeout=(t, t))
    client.set_http_retry_params(retry=False)
    return client, session


def _resolve_url_host(node: PacsNode) -> None:
    """Look the URL's host name up within the node's timeout (requests does not bound DNS).

    A PacsError when the lookup fails or hangs; when it works, the system resolver has just
    answered, so requests' own lookup right after is answered as quickly.
    """
    import requests

    try:
        parts = urlsplit(node.url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # an invalid URL: requests says so
    if requests.utils.get_environ_proxies(node.url):
        return  # through an HTTP(S) proxy: the proxy looks the name up, and it may be unknown here
    if host:
        _resolve_host(node, host, port)


_HTTP_HINTS = {401: " (check the user name and password)", 403: " (this user may not do that)",
               404: " (check the DICOMweb URL)", 406: " (the server cannot send that format)"}


def _web_error(node: PacsNode, exc: BaseException, password: str | None, what: str = "") -> PacsError:
    """Map a requests / dicomweb-client / pydicom exception to one clear line. The error also
    says what kind of failure it was, for callers deciding whether to go on: ``cause`` (http,
    tls, timeout, refused, dns, disconnected, connect, garbage, other) and ``http_status``."""
    import requests

    def fail(message: str, cause: str, status: int | None = None) -> PacsError:
        err = _error(message, password)
        err.cause, err.http_status = cause, status
        return err

    where = _web_where(node)
    if isinstance(exc, PacsError):
        return fail(str(exc), getattr(exc, "cause", "other"), getattr(exc, "http_status", None))
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        reason = r.reason or ""
        if isinstance(reason, bytes):
            reason = reason.decode("latin-1", "replace")
        msg = f"{where}: HTTP {r.status_code} {reason}".rstrip() + _HTTP_HINTS.get(r.status_code, "")
        return fail(msg, "http", r.status_code)
    if isinstance(exc, requests.exceptions.SSLError):
        return fail(f"{where}: TLS/SSL error (certificate not trusted or not an https server?)", "tls")
    if isinstance(exc, (requests.exceptions.ConnectTimeout,)):
        return fail(f"{where} did not answer within {_fmt_s(node.timeout_s)} (no connection)", "timeout")
    if isinstance(exc, (requests.exceptions.Timeout,)) or "timed out" in str(exc).lower():
        return fail(f"{where} did not answer within {_fmt_s(node.timeout_s)}", "timeout")
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        parts = urlsplit(node.url)
        hostport = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        if "Connection refused" in text or "Errno 111" in text:
            return fail(f"connection refused by {hostport} (is the DICOMweb server running?)", "refused")
        if "Name or service not known" in text or "getaddrinfo" in text or "NameResolution" in text:
            return fail(f"cannot resolve host name '{parts.hostname}' of {where}", "dns")
        if "RemoteDisconnected" in text or "Connection aborted" in text or "reset" in text.lower():
            return fail(f"{where} closed the connection without an answer", "disconnected")
        return fail(f"cannot connect to {where}", "connect")
    if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, IndexError, EOFError)):
        kind = what or "DICOM JSON"
        return fail(f"{where} answered something that is not {kind}", "garbage")
    return fail(f"{where}: {exc.__class__.__name__}", "other")


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
    single-character wildcard, which every server understands. Non-ASCII characters are
    percent-encoded UTF-8 (RFC 3986; servers that decode match them exactly).
    """
    return quote(value.replace(" ", "?").replace("^", "?"), safe="*?-._~,:/@!$'()")


def _broadened_name(pattern: str) -> str:
    """``pattern`` with each run of non-ASCII characters replaced by ``*``; "" if only ``*`` is left.

    For servers that cannot match non-ASCII text over QIDO: Orthanc 1.10 answers raw UTF-8 with
    HTTP 400, does not percent-decode, and drops non-ASCII characters from the names it matches
    against (so "M?ller*" misses "Müller" but "M*ller*" finds it). The answers are a superset;
    :func:`_filter_by_name` keeps those that match what the user typed.
    """
    out: list[str] = []
    for ch in pattern:
        if ord(ch) >= 128 or ch == "*":
            if not out or out[-1] != "*":
                out.append("*")
        else:
            out.append(ch)
    broad = "".join(out)
    return "" if not broad.strip("*") else broad


def _web_query(node: PacsNode, flt: QueryFilter, dates: str, password: str | None, cancel: CancelToken):
    def filters(name: str) -> list[tuple[str, str]]:
        keys = [(k, v) for k, v in (("PatientID", flt.patient_id), ("PatientName", name),
                                     ("StudyDate", dates), ("ModalitiesInStudy", flt.modality),
                                     ("AccessionNumber", flt.accession)) if v]
        return keys + [("includefield", f) for f in ("StudyDescription", "ModalitiesInStudy",
                                                     "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                                                     "AccessionNumber", "PatientName")]

    import requests

    name = flt.patient_name
    _client, session = _web_client(node, password)
    yield Progress("query", 0, 0, "searching")
    try:
        with session:
            try:
                result = _qido(node, session, "studies", filters(name))
            except requests.HTTPError as exc:
                if _is_ascii(name) or getattr(exc.response, "status_code", None) != 400:
                    raise
                result = []  # refused non-ASCII: try the broadened search below
            matches = _filter_by_name(name, _parse_json_studies(node, result))
            broad = _broadened_name(name)
            narrowed = any((flt.patient_id, dates, flt.modality, flt.accession))
            if not matches and not _is_ascii(name) and (broad or narrowed):
                # the server could not match the name as typed (see _broadened_name): ask for a
                # superset and keep what matches; never an unfiltered search of the whole archive
                cancel.raise_if_cancelled()
                result = _qido(node, session, "studies", filters(broad))
                matches = _filter_by_name(name, _parse_json_studies(node, result))
            elif not matches and not _is_ascii(name):
                raise PacsError(f"{_web_where(node)} found no study for this name, and it may not be able to "
                                f"match names in this script: add a patient ID, date, modality or accession "
                                f"(the list is then filtered by the name here)")
    except PacsError:
        raise
    except Exception as exc:
        raise _web_error(node, exc, password) from None
    cancel.raise_if_cancelled()
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
            if err.cause in ("timeout", "refused") or err.http_status == 401:
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
                network = err.cause in ("timeout", "refused", "connect") or err.http_status in (401, 403, 404)
                if network and not sent:
                    raise err from None
                failed.append((path, str(err)))
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
