"""PACS access without Qt: query, retrieve and send studies over DIMSE or DICOMweb.

Protocols:

* DIMSE (:mod:`.dimse`, pynetdicom): C-ECHO, C-FIND (study root), C-GET or C-MOVE, C-STORE;
* DICOMweb (:mod:`.dicomweb`, dicomweb-client + requests): QIDO-RS, WADO-RS, STOW-RS.

The public tasks :func:`echo`, :func:`query_task`, :func:`retrieve_task` and :func:`send_task`
(defined here) validate the node and dispatch on ``PacsNode.kind``; :func:`fetch_priors_task`
(:mod:`.priors`) builds on the query and retrieve to fetch a patient's earlier studies. The other modules:
:mod:`.nodes` (errors, :class:`PacsNode`, :class:`QueryFilter`, :class:`StudyMatch`,
:class:`SendResult`), :mod:`.cache` (atomic writes into the retrieve cache) and
:mod:`.credentials` (passwords in the OS keyring).

Rules:

* Everything long is a task generator (see :mod:`cxr_viewer.common.tasks`): run it off the GUI
  thread. It yields :class:`~cxr_viewer.common.tasks.Progress`, checks the cancel token between
  instances / responses and returns its result; on cancel it raises
  :class:`~cxr_viewer.common.tasks.Cancelled` (a cancelled retrieve removes the files it created).
* Every network operation is bounded by ``PacsNode.timeout_s``.
* Every failure a user can meet is a :class:`PacsError` whose ``str()`` is one line saying what
  went wrong and where.
* Passwords never appear in a node, its ``repr``/``to_dict``, a message or a log line. They live
  in the OS keyring (service ``"cxr_viewer"``) when one exists, see :func:`set_password`.
* Patient names are never logged or put in messages (identifiers/UIDs only at debug); importing
  this package quietens the pynetdicom, dicomweb_client and urllib3 loggers, which would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Sequence

from cxr_viewer.clinical.pacs.cache import _CacheWriter
from cxr_viewer.clinical.pacs.credentials import KEYRING_SERVICE, delete_password, get_password, set_password
from cxr_viewer.clinical.pacs.dicomweb import _web_echo, _web_query, _web_retrieve, _web_send
from cxr_viewer.clinical.pacs.dimse import _dimse_echo, _dimse_get, _dimse_move, _dimse_query, _dimse_send
from cxr_viewer.clinical.pacs.nodes import (
    KINDS,
    RETRIEVE_METHODS,
    CredentialStoreUnavailable,
    PacsError,
    PacsNode,
    QueryFilter,
    SendResult,
    StudyMatch,
    _check_node,
    _filter_by_name,
    _scrub,
)
from cxr_viewer.clinical.pacs.priors import FetchedPriors, choose_priors, fetch_priors_task
from cxr_viewer.common.tasks import NEVER_CANCELLED, Cancelled, CancelToken, Progress

__all__ = [
    "KEYRING_SERVICE",
    "KINDS",
    "RETRIEVE_METHODS",
    "CredentialStoreUnavailable",
    "FetchedPriors",
    "PacsError",
    "PacsNode",
    "QueryFilter",
    "SendResult",
    "StudyMatch",
    "choose_priors",
    "delete_password",
    "echo",
    "fetch_priors_task",
    "get_password",
    "query_task",
    "retrieve_task",
    "send_task",
    "set_password",
]

log = logging.getLogger(__name__)

# pynetdicom logs whole identifiers (patient names) at INFO/DEBUG, dicomweb-client and urllib3
# log query URLs (search terms) at DEBUG: keep them quiet unless the application explicitly
# configured those loggers.
for _name in ("pynetdicom", "dicomweb_client", "urllib3.connectionpool"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)




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
        flt.check_text()
    except ValueError as exc:
        raise PacsError(f"query: {exc}") from None
    log.debug("query %s", node.describe())
    if node.kind == "dimse":
        matches = yield from _dimse_query(node, flt, dates, cancel)
    else:
        matches = yield from _web_query(node, flt, dates, password, cancel)
    # safety net: a PACS that cannot match non-ASCII names answers other patients' studies
    return _filter_by_name(flt.patient_name, matches)


def retrieve_task(node: PacsNode, study_uid: str, cache_dir: str, password: str | None = None,
                  cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, list[str]]:
    """Fetch every instance of a study into ``cache_dir/<study_uid>/<sop_instance_uid>.dcm``.

    Files are complete Part 10 files written atomically, in the transfer syntax the PACS sends
    (the original where it allows). On cancel, the files this call created are removed and
    :class:`Cancelled` is raised. A partial retrieve raises :class:`PacsError` and keeps the
    complete files it got (their paths in the error's ``paths``).
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
    except PacsError as exc:
        exc.paths = sorted(writer.written)  # a partial retrieve: the complete files it did get
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

