"""The one preprocessing function used by inference, training and evaluation alike.

From the modality-corrected pixel values (never the screen's windowed picture):
1. MONOCHROME1 is made MONOCHROME2 (negated, so that bone is bright for every input);
2. robust intensity normalisation: the 0.5 and 99.5 percentiles of the non-padding pixels map to
   0 and 1, values beyond are clipped (the same percentiles the viewer's Auto window uses);
3. resized to the model's square input (``squash``: the aspect ratio is not kept, because the
   Kermany training images were squashed to 224 x 224 by their redistributor); with
   ``crop="lungs"`` instead the square box around both lungs (found by the anatomy model, padded)
   is cut out and resized, and its own 0.5-99.5 percentiles are stretched to 0-1 again, so that the
   field of view, collimation and what lies outside the chest (markers, text, arms) stop mattering;
   with ``intensity="equalize"`` each pixel of the resized image then becomes the share of its
   pixels darker than it (histogram equalisation, 1,024 levels), which no monotone change of the
   grey scale (exposure, gamma, a vendor's processing curve) alters; done at the model's size, as
   on the 224 px training images, it costs a fraction of a millisecond;
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
    crop: str = "none"  # "none": the whole image; "lungs": the lung box (needs the lung mask)
    crop_pad: float = 0.1  # the lung box grows by this share of its side on each side
    intensity: str = "percentile"  # or "equalize": histogram equalisation after the percentile window

    @property
    def version(self) -> int:
        """2 for the lung box or equalisation: readers that know only version 1 refuse such a file
        instead of feeding the model whole, unequalised images (also part of the training cache's key)."""
        return 1 if (self.crop, self.intensity) == ("none", "percentile") else 2

    def to_dict(self) -> dict:
        d = {**asdict(self), "version": self.version}
        if self.crop == "none":  # files written before the lung box existed read the same
            del d["crop"], d["crop_pad"]
        if self.intensity == "percentile":  # and before equalisation existed
            del d["intensity"]
        return d


LUNG_PAD = 0.06  # the lung box grows by this share of its side on each side
MIN_LUNG_SHARE = 0.04  # lungs smaller than this share of the image: none found


@dataclass(frozen=True)
class LungBox:
    """The square region (image pixels, may reach outside the image) a model sees, and whether
    it came from the lungs (False: the whole image, no lungs found)."""

    x0: float
    y0: float
    side: float
    from_lungs: bool

    def to_image(self, u: float, v: float, size: int) -> tuple[float, float]:
        """Model-input pixel (u, v) of a ``size`` input -> image pixel (x, y)."""
        s = self.side / size
        return self.x0 + u * s, self.y0 + v * s


def lung_box(lungs: np.ndarray | None, shape: tuple[int, int], pad: float = LUNG_PAD) -> LungBox:
    """The square box around both lungs (bool mask at the image's size), padded by ``pad`` of its
    side on each side; the whole image (squared) where the mask is missing or too small to be lungs."""
    h, w = shape
    if lungs is not None and lungs.shape == (h, w) and lungs.sum() >= MIN_LUNG_SHARE * h * w:
        ys, xs = np.nonzero(lungs)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        side = max(x1 - x0, y1 - y0) * (1 + 2 * pad)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return LungBox(float(cx - side / 2), float(cy - side / 2), float(side), True)
    side = float(max(h, w))
    return LungBox((w - side) / 2, (h - side) / 2, side, False)


def crop_resize(img: np.ndarray, box: LungBox, size: int) -> np.ndarray:
    """The box of a float image as (size, size) float32 (bilinear; area-averaged first when the box
    is more than 1.5 x larger); outside the image is 0."""
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    x0, y0, side = box.x0, box.y0, box.side
    if side > 1.5 * size:
        shrink = side / (2 * size)
        pil = pil.resize((max(1, round(pil.width / shrink)), max(1, round(pil.height / shrink))), Image.Resampling.BOX)
        x0, y0, side = x0 / shrink, y0 / shrink, side / shrink
    # Pillow's EXTENT transform maps the box (x0, y0, x1, y1) onto the output
    out = pil.transform((size, size), Image.Transform.EXTENT, (x0, y0, x0 + side, y0 + side),
                        Image.Resampling.BILINEAR, fillcolor=0.0)
    return np.asarray(out, dtype=np.float32)


def map_over_image(box_map: np.ndarray, box: LungBox, shape: tuple[int, int], size: int) -> np.ndarray:
    """A map over the box (n x n, e.g. a heatmap at the model's resolution) placed on the whole image
    and squashed to (size, size), as the viewer stretches heatmaps over the image; 0 outside the box."""
    h, w = shape
    n = box_map.shape[0]
    xs = (np.arange(size) + 0.5) * w / size
    ys = (np.arange(size) + 0.5) * h / size
    u = np.floor((xs - box.x0) / box.side * n).astype(int)
    v = np.floor((ys - box.y0) / box.side * n).astype(int)
    okx, oky = (u >= 0) & (u < n), (v >= 0) & (v < n)
    out = np.zeros((size, size), np.float32)
    out[np.ix_(oky, okx)] = box_map[np.ix_(v[oky], u[okx])]
    return out


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


EQUALISE_LEVELS = 1024


def equalise(img01: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
    """Histogram equalisation of a [0, 1] image: each pixel -> the share of the (non-padding)
    pixels below its level plus half of those at it (1,024 levels), float32 in [0, 1]."""
    x = np.asarray(img01, dtype=np.float32)
    levels = np.minimum((x * EQUALISE_LEVELS).astype(np.int32), EQUALISE_LEVELS - 1)
    counted = levels if padding is None else levels[~padding]
    hist = np.bincount(counted.ravel(), minlength=EQUALISE_LEVELS).astype(np.float64)
    total = max(hist.sum(), 1.0)
    mid = (np.cumsum(hist) - hist / 2) / total
    return mid.astype(np.float32)[levels]


def resize_square(img01: np.ndarray, size: int) -> np.ndarray:
    """Step 3: antialiased bilinear resize (Pillow, float mode) to ``size`` x ``size``."""
    if img01.shape == (size, size):
        return np.ascontiguousarray(img01, dtype=np.float32)
    pil = Image.fromarray(np.ascontiguousarray(img01, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def restretch(unit: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The percentile stretch of step 2 again, on an already normalised [0, 1] image (the lung box)."""
    lo, hi = np.percentile(unit, (spec.low_percentile, spec.high_percentile))
    out = (unit - np.float32(lo)) / np.float32(max(hi - lo, 1e-6))
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def unit_and_box(norm: np.ndarray, spec: PreprocessSpec, lungs: np.ndarray | None = None,
                 box: LungBox | None = None, padding: np.ndarray | None = None
                 ) -> tuple[np.ndarray, LungBox | None]:
    """Step 3 from the normalised image (steps 1-2): the (size, size) unit and, for
    ``crop="lungs"``, the lung box it was cut from: ``box`` (``ai.anatomy.AnatomyModel.lung_box``)
    or the box of ``lungs`` (the anatomy model's mask at the image's size); neither: no lungs found,
    the whole image squared. Equalised last where the spec says so: padding pixels are not counted
    and stay 0; a dark surround, and the part of a lung box beyond the image, count like any pixel."""
    size = spec.input_size
    if spec.crop == "lungs" and box is None:
        box = lung_box(lungs, norm.shape[:2], spec.crop_pad)
    elif spec.crop != "lungs":
        box = None

    def cut(a: np.ndarray) -> np.ndarray:  # the image and its padding mask alike
        return resize_square(a, size) if box is None else crop_resize(a, box, size)

    unit = cut(norm) if box is None else restretch(cut(norm), spec)
    if spec.intensity == "equalize":
        pad = None if padding is None else cut(padding.astype(np.float32)) > 0.5
        unit = equalise(unit, pad)
        if pad is not None:
            unit[pad] = 0.0
    return unit, box


def preprocess_unit(values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None,
                    spec: PreprocessSpec = PreprocessSpec(), anatomy=None) -> np.ndarray:
    """Steps 1-3: modality values -> (size, size) float32 in [0, 1].

    Training caches this output on disk and augments it; inference goes straight on. A
    ``crop="lungs"`` spec needs ``anatomy`` (``ai.anatomy.AnatomyModel``) to find the lung box.
    """
    box = None
    if spec.crop == "lungs":
        if anatomy is None:
            raise ValueError("a lung-box spec needs the anatomy model to find the lung box")
        box = anatomy.lung_box(values, monochrome1, padding, spec.crop_pad)
    return unit_and_box(normalise_intensity(values, monochrome1, padding, spec), spec, box=box, padding=padding)[0]


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
