"""Fetch a patient's prior studies from a PACS: query by PatientID, keep the studies dated before
the current one, retrieve the most recent of them into the cache.

:func:`choose_priors` is the pure choice (tested without a network); :func:`fetch_priors_task` is
the task generator the viewer runs off the GUI thread (query, then one retrieve a study, each
progress point a place to cancel).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

from cxr_viewer.clinical.pacs.nodes import PacsError, PacsNode, QueryFilter, StudyMatch
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress


@dataclass(frozen=True)
class FetchedPriors:
    """What a fetch got: the studies retrieved (newest first) and the files of each."""

    studies: tuple[StudyMatch, ...]
    paths: tuple[str, ...]
    #: how many earlier studies the PACS has (more than ``studies`` when ``count`` limited them)
    available: int


def choose_priors(matches: Sequence[StudyMatch], patient_id: str, current_study_uid: str, current_date: str,
                  count: int = 1) -> list[StudyMatch]:
    """The ``count`` most recent studies of ``patient_id`` dated strictly before ``current_date``,
    newest first; never the current study, never an undated one or another patient's (a PACS
    that matched the ID loosely). Without a current date, nothing can be called a prior."""
    if not patient_id or not current_date:
        return []
    earlier = [m for m in matches if m.patient_id == patient_id and m.study_uid != current_study_uid
               and m.study_date and m.study_date < current_date]
    unique = {m.study_uid: m for m in earlier}  # a PACS may answer a study twice
    return sorted(unique.values(), key=lambda m: (m.study_date, m.study_uid), reverse=True)[:max(count, 0)]


def fetch_priors_task(node: PacsNode, patient_id: str, current_study_uid: str, current_date: str, cache_dir: str,
                      password: str | None = None, count: int = 1,
                      cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, FetchedPriors]:
    """Query ``node`` for the patient's studies and retrieve the ``count`` most recent earlier ones.

    Raises :class:`PacsError` (one line) when there is no PatientID or date to search by, or
    when the PACS fails; an empty result (no earlier study on the PACS) is not an error.
    """
    from cxr_viewer.clinical.pacs import query_task, retrieve_task

    patient_id = str(patient_id or "").strip()
    if not patient_id:
        raise PacsError("fetch priors: the image has no PatientID to search by")
    if not current_date:
        raise PacsError("fetch priors: the study has no date, so which studies are earlier is unknown")
    yield Progress("query", 0, 0, node.describe())
    matches = yield from query_task(node, QueryFilter(patient_id=patient_id), password, cancel)
    cancel.raise_if_cancelled()
    everything = choose_priors(matches, patient_id, current_study_uid, current_date, count=len(matches))
    chosen = everything[:max(count, 0)]
    paths: list[str] = []
    for i, study in enumerate(chosen):
        yield Progress("retrieve", i, len(chosen), study.study_date)
        got = yield from retrieve_task(node, study.study_uid, cache_dir, password, cancel)
        paths.extend(got)
    yield Progress("retrieve", len(chosen), len(chosen), "")
    return FetchedPriors(tuple(chosen), tuple(paths), len(everything))
