"""The retrieve cache: one folder per study, one atomically written Part 10 file per instance."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable

from ..fileio import atomic_path
from ..tasks import Cancelled

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
