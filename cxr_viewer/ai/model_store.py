"""Where models are found, and loading one as a task for the GUI's worker."""

from __future__ import annotations

import os
import threading
from typing import Generator

from cxr_viewer.ai.inference import ModelSummary, Scorer
from cxr_viewer.ai.model import ModelFileError, models_dir
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress

DEFAULT_MODEL_NAME = "default.safetensors"


def default_model_path() -> str | None:
    """$CXR_VIEWER_MODEL if set, else ``models/default.safetensors`` when it exists."""
    env = os.environ.get("CXR_VIEWER_MODEL")
    if env:
        return env
    path = models_dir() / DEFAULT_MODEL_NAME
    return str(path) if path.exists() else None


class ModelHolder:
    """Holds the current :class:`Scorer` for worker tasks; the GUI only sees its summary.

    A failed load leaves the previous model in place.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scorer: Scorer | None = None

    @property
    def scorer(self) -> Scorer | None:
        with self._lock:
            return self._scorer

    def summary(self) -> ModelSummary | None:
        s = self.scorer
        return s.summary() if s is not None else None

    def load_task(self, path: str, device: str = "auto", precision: str = "auto",
                  cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, ModelSummary]:
        yield Progress("loading model", 0, 1, path)
        if not os.path.exists(path):
            raise ModelFileError(f"model file not found: {path}")
        try:
            scorer = Scorer.from_file(path, device, precision)
        except ValueError as exc:  # device or precision not available here
            raise ModelFileError(str(exc)) from None
        except MemoryError:
            raise ModelFileError("out of memory while loading the model") from None
        cancel.raise_if_cancelled()
        with self._lock:
            self._scorer = scorer
        yield Progress("loading model", 1, 1, path)
        return scorer.summary()
