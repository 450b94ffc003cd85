"""The display pipeline: VOI (window/level or VOI LUT) and presentation (MONOCHROME1) for grey images.

The viewer hands pyqtgraph's ImageItem ``data`` with ``levels`` and a uint8 ``lut`` (256 entries,
the fast path of ImageItem; 4096 for SIGMOID, whose steep middle needs finer steps);
:func:`render_uint8` applies the very same mapping in numpy, so
``cxr-viewer render`` writes exactly what the window shows. Stored values are never rewritten:
MONOCHROME1 and the user's invert flip the LUT only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
LUT_SIZE = 256
#: SIGMOID spans +-2 widths: 256 steps would leave errors of up to 2.5 grey levels at the centre.
SIGMOID_LUT_SIZE = 4096


@dataclass(frozen=True)
class Window:
    """A DICOM window (PS3.3 C.11.2.1.2): centre, width and VOI LUT function."""

    center: float
    width: float
    function: VoiFunction = "LINEAR"
    name: str = ""

    def bounds(self) -> tuple[float, float]:
        """Values at and below ``lo`` map to black, at and above ``hi`` to white."""
        c, w = float(self.center), float(self.width)
        if self.function == "LINEAR_EXACT":
            w = max(w, 1e-6)
            return c - w / 2.0, c + w / 2.0
        if self.function == "SIGMOID":
            w = max(w, 1e-6)
            # The sigmoid is within 1/(1+e^8) < 0.0004 of its limits at +-2 widths.
            return c - 2.0 * w, c + 2.0 * w
        w = max(w, 1.0)  # LINEAR requires width >= 1
        return c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0

    def with_center_width(self, center: float, width: float) -> "Window":
        return Window(center, width, self.function, "Custom")

    def describe(self) -> str:
        fn = "" if self.function == "LINEAR" else f", {self.function.lower()}"
        label = f"{self.name}: " if self.name else ""
        return f"{label}C {self.center:g} / W {self.width:g}{fn}"


@dataclass(frozen=True, eq=False)
class VoiLut:
    """A VOI LUT Sequence item: a table applied to modality values (PS3.3 C.11.2.1.1)."""

    first_mapped: int
    table: np.ndarray  # output values, one per input from first_mapped
    bits: int
    name: str = ""

    def apply(self, values: np.ndarray) -> np.ndarray:
        idx = np.clip(np.rint(values).astype(np.int64) - self.first_mapped, 0, len(self.table) - 1)
        return self.table[idx].astype(np.float32)

    def describe(self) -> str:
        return f"{self.name or 'VOI LUT'} (table, {len(self.table)} entries)"


Voi = Union[Window, VoiLut]


@dataclass(frozen=True, eq=False)
class DisplayMapping:
    """What the view draws: ``data`` through ``levels`` into the ``lut`` (256 or 4096 entries)."""

    data: np.ndarray  # 2-D float32, C-contiguous
    levels: tuple[float, float]
    lut: np.ndarray  # (256,) uint8


def _ramp(function: str) -> np.ndarray:
    """The LUT entries between the levels for a VOI function (increasing)."""
    if function == "SIGMOID":
        # bin centres over [c-2w, c+2w], in units of the width: t in [-2, 2]
        t = (np.arange(SIGMOID_LUT_SIZE) + 0.5) / SIGMOID_LUT_SIZE * 4.0 - 2.0
        y = 255.0 / (1.0 + np.exp(-4.0 * t))
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return np.arange(LUT_SIZE, dtype=np.uint8)


def display_mapping(values: np.ndarray, voi: Voi, inverted: bool) -> DisplayMapping:
    """Build the mapping for modality ``values`` (float32 2-D), a VOI and the presentation.

    ``inverted`` is True for MONOCHROME1 (XOR the user's invert toggle).
    """
    if isinstance(voi, VoiLut):
        data = np.ascontiguousarray(voi.apply(values))
        levels = (0.0, float(2 ** voi.bits))
        lut = _ramp("LINEAR")
    else:
        data = values
        levels = voi.bounds()
        lut = _ramp(voi.function)
    if inverted:
        lut = (255 - lut).astype(np.uint8)
    return DisplayMapping(np.ascontiguousarray(data, dtype=np.float32), levels, lut)


def render_uint8(mapping: DisplayMapping) -> np.ndarray:
    """Apply a mapping exactly as pyqtgraph's ImageItem does for float data with levels and a LUT.

    pyqtgraph rescales ``(x - lo) * n / (hi - lo)``, clips to ``[0, n-1]``, truncates to an
    index and looks it up (``functions.rescaleData`` then ``applyLookupTable``).
    """
    lo, hi = (float(v) for v in mapping.levels)
    n = len(mapping.lut)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0  # never reached through header_windows, which drops such windows
    span = hi - lo if hi != lo else 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (mapping.data - np.float32(lo)) * np.float32(n / span)
        idx = np.clip(scaled, 0, n - 1)
        idx[np.isnan(idx)] = 0  # NaN data (refused by load_image) must not index out of the LUT
    return mapping.lut[idx.astype(np.intp)]


def percentile_window(values: np.ndarray, mask: np.ndarray | None, low: float = 0.5, high: float = 99.5,
                      name: str = "Auto") -> Window:
    """A LINEAR_EXACT window spanning the ``low``..``high`` percentiles of the unmasked pixels.

    ``mask`` is True for pixels to ignore (PixelPaddingValue). Works on a subsample of at most
    about a million pixels, so it stays fast for large detectors.
    """
    sample = values if mask is None else values[~mask]
    sample = np.asarray(sample).ravel()
    if sample.size == 0:
        sample = np.asarray(values).ravel()
    if low <= 0.0 and high >= 100.0:
        lo, hi = float(np.min(sample)), float(np.max(sample))
    else:
        sample = sample[:: max(1, sample.size // 1_000_000)]
        lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if not math.isfinite(lo) or not math.isfinite(hi):
        finite = sample[np.isfinite(sample)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return Window((lo + hi) / 2.0, hi - lo, "LINEAR_EXACT", name)


def full_range_window(values: np.ndarray, mask: np.ndarray | None) -> Window:
    """A LINEAR_EXACT window from the smallest to the largest unmasked value."""
    return percentile_window(values, mask, 0.0, 100.0, "Full range")
