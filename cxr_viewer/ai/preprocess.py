"""The one preprocessing function used by inference, training and evaluation alike.

From the modality-corrected pixel values (never the screen's windowed picture):
1. MONOCHROME1 is made MONOCHROME2 (negated, so that bone is bright for every input);
2. robust intensity normalisation: the 0.5 and 99.5 percentiles of the non-padding pixels map to
   0 and 1, values beyond are clipped (the same percentiles the viewer's Auto window uses);
3. resized to the model's square input (``squash``: the aspect ratio is not kept, because the
   Kermany training images were squashed to 224 x 224 by their redistributor);
4. the grey channel is repeated to 3 channels and standardised with ``mean``/``std``.

The parameters live in :class:`PreprocessSpec`, which is stored in every model's metadata so a
model is always fed the way it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from cxr_viewer.io.display import percentile_window


@dataclass(frozen=True)
class PreprocessSpec:
    """The preprocessing parameters; a model file's are read and checked by ``ai.model.read_meta``."""

    input_size: int = 224
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    resize: str = "squash"
    channels: int = 3
    mean: float = 0.5
    std: float = 0.25
    version: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def normalise_intensity(values: np.ndarray, monochrome1: bool, padding: np.ndarray | None,
                        spec: PreprocessSpec) -> np.ndarray:
    """Steps 1-2: a float32 image in [0, 1], MONOCHROME2 sense."""
    v = np.asarray(values, dtype=np.float32)
    if monochrome1:
        v = -v
    win = percentile_window(v, padding, spec.low_percentile, spec.high_percentile)
    lo, hi = win.center - win.width / 2.0, win.center + win.width / 2.0
    out = (v - np.float32(lo)) / np.float32(max(hi - lo, 1e-6))
    np.clip(out, 0.0, 1.0, out=out)
    if padding is not None:
        out[padding] = 0.0
    return out


def resize_square(img01: np.ndarray, size: int) -> np.ndarray:
    """Step 3: antialiased bilinear resize (Pillow, float mode) to ``size`` x ``size``."""
    if img01.shape == (size, size):
        return np.ascontiguousarray(img01, dtype=np.float32)
    pil = Image.fromarray(np.ascontiguousarray(img01, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def preprocess_unit(values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None,
                    spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """Steps 1-3: modality values -> (size, size) float32 in [0, 1].

    Training caches this output on disk and augments it; inference goes straight on.
    """
    return resize_square(normalise_intensity(values, monochrome1, padding, spec), spec.input_size)


def standardise(unit: np.ndarray, spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """Step 4: (..., size, size) in [0, 1] -> (..., channels, size, size) standardised float32."""
    x = (np.asarray(unit, dtype=np.float32) - np.float32(spec.mean)) / np.float32(spec.std)
    x = np.expand_dims(x, -3)
    return np.ascontiguousarray(np.repeat(x, spec.channels, axis=-3), dtype=np.float32)


def preprocess(values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None,
               spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """Modality values -> model input, float32 (channels, size, size)."""
    return standardise(preprocess_unit(values, monochrome1, padding, spec), spec)


def preprocess_image(image, spec: PreprocessSpec = PreprocessSpec()) -> np.ndarray:
    """:func:`preprocess` for a :class:`~cxr_viewer.io.image.LoadedImage`."""
    return preprocess(image.values, image.monochrome1, image.padding, spec)
