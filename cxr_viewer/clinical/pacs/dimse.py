"""DIMSE (pynetdicom): C-ECHO, C-FIND, C-GET / C-MOVE into the cache, C-STORE.

pynetdicom is imported lazily inside the functions. Every association is bounded by the node's
timeout; failures become one-line :class:`~.nodes.PacsError` messages that tell connection,
rejection, timeout and non-DICOM answers apart.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from cxr_viewer.clinical.pacs.cache import _CacheWriter
from cxr_viewer.clinical.pacs.nodes import (
    PacsError,
    PacsNode,
    QueryFilter,
    SendResult,
    StudyMatch,
    _fmt_s,
    _match_from_dataset,
    _status_text,
)
from cxr_viewer.clinical.pacs.resolve import _resolve_host
from cxr_viewer.common.tasks import Cancelled, CancelToken, Progress

log = logging.getLogger("cxr_viewer.clinical.pacs")  # the package's logger, as before the split


def _dimse_where(node: PacsNode) -> str:
    return f"PACS '{node.name}' ({node.host}:{node.port})"


def _uids():
    from pydicom import uid as u

    uncompressed = [u.ExplicitVRLittleEndian, u.ImplicitVRLittleEndian]
    compressed = [u.JPEG2000Lossless, u.JPEG2000, u.JPEGBaseline8Bit, u.JPEGExtended12Bit,
                  u.JPEGLosslessSV1, u.JPEGLossless, u.JPEGLSLossless, u.JPEGLSNearLossless,
                  u.RLELossless]
    return uncompressed, compressed


def _retrieve_storage_contexts():
    """Storage contexts we offer as C-GET SCU (each kept under pynetdicom's 128 limit).

    Image classes a chest X-ray viewer shows get one context per compressed transfer syntax so
    the PACS can send the original encoding; other classes get uncompressed only.
    """
    from pynetdicom import build_context
    from pynetdicom import sop_class as sc

    uncompressed, compressed = _uids()
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


def _connect_error(node: PacsNode, address: str, elapsed: float) -> PacsError:
    """Why the TCP connection failed (``address`` probed again to learn the errno when it failed
    fast; the name was already looked up, within the timeout, by :func:`_resolve`)."""
    where = f"{node.host}:{node.port}"
    if elapsed >= 0.8 * node.timeout_s:
        return PacsError(f"{_dimse_where(node)} did not answer within {_fmt_s(node.timeout_s)} "
                         "(no TCP connection; host down or blocked by a firewall?)")
    try:
        with socket.create_connection((address, node.port), timeout=min(3.0, node.timeout_s)):
            pass
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
    return _resolve_host(node, node.host, node.port)


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
        raise _connect_error(node, address, elapsed)
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


QUERY_CHARSET = "ISO_IR 192"  # UTF-8: any search term can be encoded


def _dimse_query(node: PacsNode, flt: QueryFilter, dates: str, cancel: CancelToken):
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    ident = Dataset()
    # UTF-8, so that a non-Latin search term reaches the PACS as typed (without it pydicom would
    # send "山田*" as "??*", which matches other patients); answers use the charset they declare.
    ident.SpecificCharacterSet = QUERY_CHARSET
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
                    if not identifier.get("SpecificCharacterSet", None):
                        # no charset in the answer: it may only be the default repertoire (ASCII),
                        # and a PACS that omits it answers in the charset we asked in
                        identifier.SpecificCharacterSet = QUERY_CHARSET
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


def _run_retrieve(node, assoc, responses, model, stored, cancel, what):
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
        final = yield from _run_retrieve(node, assoc, responses, GET, stored, cancel, "C-GET")
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
    # Only the PACS may store into our cache during the move: associations must come from its AE
    # title and be addressed to ours (pynetdicom rejects the others at association time).
    scp_ae.require_calling_aet = [node.called_ae]
    scp_ae.require_called_aet = True
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
            final = yield from _run_retrieve(node, assoc, responses, MOVE, stored, cancel, "C-MOVE")
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

    uncompressed, _compressed = _uids()
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
    # batches that fit in one association (at most 127 presentation contexts, counted as
    # _send_contexts makes them: one per (class, syntax), plus an uncompressed fallback per class)
    uncompressed, _compressed = _uids()
    batches: list[list[tuple[str, tuple[str, str]]]] = []
    in_batch: set[tuple[str, str]] = set()
    for item in keyed:
        sop, ts = item[1]
        needs = {(sop, ts)} | ({(sop, "*")} if ts not in uncompressed else set())
        if batches and len(in_batch | needs) <= 127:
            batches[-1].append(item)
            in_batch |= needs
        else:
            batches.append([item])
            in_batch = set(needs)
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
