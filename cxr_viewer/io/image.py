"""Decoded images and their display choices, whatever the source format."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Generator

import numpy as np

from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.io import dicom as dicom_io
from cxr_viewer.io import raster as raster_io
from cxr_viewer.io.display import Voi, VoiLut, Window, full_range_window, percentile_window
from cxr_viewer.io.study import ImageRef


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One decoded frame.

    ``stored`` holds the stored pixel values (never rewritten); ``values`` the output of the
    Modality LUT as float32, which is what VOI windows apply to and what a model reads.
    """

    ref: ImageRef
    frame: int
    stored: np.ndarray
    values: np.ndarray
    monochrome1: bool
    header_windows: tuple[Window, ...] = ()
    header_luts: tuple[VoiLut, ...] = ()
    padding: np.ndarray | None = None
    value_unit: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    # Computed once (the GUI's loader warms them in the worker thread, so window/level drags on
    # the GUI thread never rescan the pixels).
    @cached_property
    def _auto(self) -> Window:
        return percentile_window(self.values, self.padding, name="Auto (0.5-99.5 percentile)")

    @cached_property
    def _full(self) -> Window:
        if self.ref.kind == "raster" and self.stored.dtype == np.uint8:
            return Window(128.0, 256.0, "LINEAR_EXACT", "Full range (8-bit)")
        return full_range_window(self.values, self.padding)

    def auto_window(self) -> Window:
        return self._auto

    def full_window(self) -> Window:
        return self._full

    def presets(self) -> list[Voi]:
        """Header windows and VOI LUTs first (in file order), then auto and full range."""
        return [*self.header_windows, *self.header_luts, self.auto_window(), self.full_window()]

    def default_voi(self) -> Voi:
        """What a radiology viewer shows first: the file's first window or VOI LUT, else full range."""
        if self.header_windows:
            return self.header_windows[0]
        if self.header_luts:
            return self.header_luts[0]
        return self.full_window()

    def pixel_report(self, row: int, col: int) -> tuple[float, float] | None:
        """(stored, modality) value at a pixel, or None outside the image."""
        if 0 <= row < self.values.shape[0] and 0 <= col < self.values.shape[1]:
            return float(self.stored[row, col]), float(self.values[row, col])
        return None


def load_image(ref: ImageRef, frame: int = 0) -> LoadedImage:
    """Decode one frame of an indexed image. Raises ImageOpenError with a one-line reason."""
    try:
        if ref.kind == "dicom":
            f = dicom_io.decode_frame(ref.path, frame)
            image = LoadedImage(ref, frame, f.stored, f.modality, f.monochrome1, f.windows, f.voi_luts,
                                f.padding, f.value_unit)
        else:
            stored = raster_io.decode_frame(ref.path, frame)
            image = LoadedImage(ref, frame, stored, np.ascontiguousarray(stored, dtype=np.float32), False)
    except ImageOpenError:
        raise
    except MemoryError:
        raise ImageOpenError("not enough memory to decode this image") from None
    except OSError as exc:
        raise ImageOpenError(f"cannot read file: {exc.strerror or exc}") from None
    except Exception as exc:  # last line of defence: one line, never a traceback
        text = str(exc).strip().splitlines()
        raise ImageOpenError(f"cannot decode this image: {text[0][:300] if text else type(exc).__name__}") from None
    if image.values.ndim != 2 or 0 in image.values.shape:
        raise ImageOpenError(f"decoded image has shape {image.values.shape}, not one 2-D frame")
    bad = int(image.values.size - np.count_nonzero(np.isfinite(image.values)))
    if bad:  # NaN/inf must never reach the display or a model
        raise ImageOpenError(f"{bad:,} pixel values are NaN or infinite: the image cannot be shown or scored")
    return image


def load_image_task(ref: ImageRef, frame: int = 0,
                    cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, LoadedImage]:
    """Task form of :func:`load_image` for the GUI's worker (decoding is one step)."""
    yield Progress("decoding", 0, 1, ref.path)
    cancel.raise_if_cancelled()
    image = load_image(ref, frame)
    image.auto_window(), image.full_window()  # computed here, off the GUI thread
    cancel.raise_if_cancelled()
    yield Progress("decoding", 1, 1, ref.path)
    return image


def open_image(path: str, frame: int = 0) -> LoadedImage:
    """Index and decode one file in one call (command line, tests)."""
    from cxr_viewer.io.index import read_any

    return load_image(read_any(path)[0], frame)
