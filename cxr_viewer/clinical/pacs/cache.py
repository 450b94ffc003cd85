"""The retrieve cache: one folder per study, one atomically written Part 10 file per instance."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable

from cxr_viewer.common.fileio import atomic_path
from cxr_viewer.common.tasks import Cancelled

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _safe_name(uid: str) -> str:
    uid = str(uid).strip().rstrip("\x00")
    if _UID_RE.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()


# Commits (rename into place) and discards of every writer are serialised, so that a discard
# never removes a file another writer of the same study has just put in place (the GUI can run a
# cancelled retrieve, still stuck in a network read, next to a new retrieve of the same study).
_COMMIT_LOCK = threading.Lock()


def _identity(path: str) -> tuple[int, int, int, int] | None:
    """Which file is at ``path`` now (device, inode, mtime, size); None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class _CacheWriter:
    """Writes instances of one study atomically; remembers what it created (thread-safe).

    :meth:`discard` removes only the files this writer created that are still the very files it
    wrote: a newer retrieve of the same study that rewrote a path keeps its file.
    """

    def __init__(self, cache_dir: str, study_uid: str) -> None:
        self.folder = os.path.join(cache_dir, _safe_name(study_uid))
        self.created: list[str] = []  # did not exist before this retrieve
        self.closed = False
        self._lock = threading.Lock()
        self._ours: dict[str, tuple[int, int, int, int] | None] = {}  # path -> identity we wrote

    @property
    def written(self) -> list[str]:
        """The files this writer stored, in order."""
        with self._lock:
            return list(self._ours)

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
        with self._lock, _COMMIT_LOCK:  # commit under the locks so that discard() never misses a file
            if self.closed:
                commit.__exit__(Cancelled, Cancelled(), None)
                raise Cancelled()
            before = _identity(path)
            commit.__exit__(None, None, None)
            if path not in self._ours:
                if before is None:
                    self.created.append(path)
            elif path in self.created and before != self._ours.get(path):
                # another retrieve rewrote it since we did: it is that retrieve's file too
                self.created.remove(path)
            self._ours[path] = _identity(path)
        return path

    def close(self) -> None:
        with self._lock:
            self.closed = True

    def discard(self) -> None:
        """Close and remove the files this retrieve created (used on cancel).

        A file that another writer has replaced since (same path, other inode/mtime) is left.
        """
        self.close()
        with self._lock, _COMMIT_LOCK:
            for path in self.created:
                if _identity(path) != self._ours.get(path):
                    continue  # no longer the file we wrote
                try:
                    os.unlink(path)
                except OSError:
                    pass
            try:
                os.rmdir(self.folder)
            except OSError:
                pass
