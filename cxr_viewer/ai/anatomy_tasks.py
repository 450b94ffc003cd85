"""The anatomy model as tasks for the GUI's workers: loading it once into a holder, and segmenting
one image into plain data the viewer draws (outline segments per structure, the CTR lines).

Qt-free: the results are frozen dataclasses of numpy arrays and numbers; the model itself stays in
the :class:`AnatomyHolder` and never travels through a signal.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from cxr_viewer.ai.anatomy import STRUCTURES, AnatomyModel, CtrMeasurement
from cxr_viewer.ai.model import ModelFileError
from cxr_viewer.ai.outline import mask_outline
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.io.image import LoadedImage


@dataclass(frozen=True)
class AnatomyModelSummary:
    name: str
    version: str
    path: str
    sha256: str

    @property
    def title(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class AnatomyResult:
    """The anatomy of one shown frame: what the viewer draws and the panel reports."""

    path: str
    frame: int
    shape: tuple[int, int]
    #: structure name (:data:`STRUCTURES`) -> (N, 2, 2) float32 outline segments in image pixels
    outlines: dict[str, np.ndarray]
    ctr: CtrMeasurement | None
    model: str
    seconds: float
    #: why there is no CTR (outlines missing or implausible), "" when there is one
    ctr_note: str = ""

    def structures_found(self) -> tuple[str, ...]:
        return tuple(s for s in STRUCTURES if len(self.outlines.get(s, ())))


class AnatomyHolder:
    """Holds the loaded :class:`AnatomyModel` for worker tasks; the GUI only sees its summary.
    A failed load leaves the previous model (if any) in place."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: AnatomyModel | None = None

    @property
    def model(self) -> AnatomyModel | None:
        with self._lock:
            return self._model

    def load_task(self, path: str, cancel: CancelToken = NEVER_CANCELLED
                  ) -> Generator[Progress, None, AnatomyModelSummary]:
        yield Progress("loading anatomy model", 0, 1, path)
        try:
            model = AnatomyModel.from_file(path)
        except MemoryError:
            raise ModelFileError("out of memory while loading the anatomy model") from None
        cancel.raise_if_cancelled()
        with self._lock:
            self._model = model
        yield Progress("loading anatomy model", 1, 1, path)
        return AnatomyModelSummary(model.meta.name, model.meta.version, os.fspath(path), model.meta.weights_sha256)


def segment_image_task(model: AnatomyModel, image: LoadedImage, cancel: CancelToken = NEVER_CANCELLED
                       ) -> Generator[Progress, None, AnatomyResult]:
    """Masks of one image, reduced to outlines (what is drawn) and the CTR lines."""
    yield Progress("anatomy", 0, 1, image.ref.path)
    cancel.raise_if_cancelled()
    start = time.perf_counter()
    anatomy = model.segment_image(image)
    cancel.raise_if_cancelled()
    outlines = {name: mask_outline(mask) for name, mask in zip(STRUCTURES, anatomy.masks)}
    seconds = time.perf_counter() - start
    yield Progress("anatomy", 1, 1, image.ref.path)
    return AnatomyResult(image.ref.path, image.frame, tuple(image.shape), outlines, anatomy.ctr,
                         anatomy.model_name or model.meta.name, seconds, anatomy.ctr_note)
