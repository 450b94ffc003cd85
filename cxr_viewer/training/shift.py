"""A shift-mimicking validation: the validation images changed the way another hospital's images
differ (exposure and processing curve, sharpness, noise, compression, cropping, collimation,
positioning), each change applied before the one preprocessing function normalises the image, as a
new hospital's raw image would be.

Used to choose a model, its calibration and its threshold on something closer to new data than a
split of the training hospital (the held-out Kermany test split differs in exposure, contrast and
cropping). All shifts are deterministic given a seed, so the numbers can be reproduced.
Qt-free.
"""

from __future__ import annotations

import io
from typing import Callable, Generator

import numpy as np
from PIL import Image, ImageFilter

from cxr_viewer.ai.preprocess import PreprocessSpec, preprocess_unit
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.clip(x, 0, 1) * 255).astype(np.uint8))


def _gamma(g: float) -> Callable:
    return lambda x, r: np.clip(x, 0, 1) ** g


def _s_curve(x, r):  # a stronger processing (look-up) curve: more contrast in the mid-tones
    return 1 / (1 + np.exp(-8 * (np.clip(x, 0, 1) - 0.5)))


def _flat_curve(x, r):  # a flatter curve: mid-tones compressed towards grey
    return 0.5 + 0.55 * np.tanh(1.6 * (np.clip(x, 0, 1) - 0.5))


def _unsharp(x, r):  # vendor edge enhancement
    return np.asarray(_pil(x).filter(ImageFilter.UnsharpMask(radius=3, percent=120, threshold=0)), np.float32) / 255


def _blur(x, r):
    return np.asarray(_pil(x).filter(ImageFilter.GaussianBlur(1.3)), np.float32) / 255


def _noise(x, r):
    return x + r.normal(0, 0.035, x.shape).astype(np.float32)


def _jpeg(x, r):
    buf = io.BytesIO()
    _pil(x).save(buf, "JPEG", quality=25)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255


def _cropped(top_bottom: bool, sides: bool) -> Callable:
    """9% cut from each of the chosen sides: all four, a tighter field of view (the central 82%);
    two, an image of another shape once the pipeline squashes it to a square."""
    def crop(x, r):
        h, w = x.shape
        dy, dx = int(h * 0.09) if top_bottom else 0, int(w * 0.09) if sides else 0
        return x[dy:h - dy, dx:w - dx]
    return crop


def _wide(x, r):  # a wider field of view: the chest smaller, dark surround (collimation, arms out)
    h, w = x.shape
    out = np.full((int(h * 1.3), int(w * 1.3)), float(np.percentile(x, 2)), np.float32)
    y0, x0 = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    out[y0:y0 + h, x0:x0 + w] = x
    return out


def _collimation(x, r):  # hard collimator edges: bright bands on two sides
    out = x.copy()
    w = x.shape[1]
    out[:, : int(w * 0.08)] = 1.0
    out[:, w - int(w * 0.08):] = 1.0
    return out


def _rotate(x, r):
    return np.asarray(_pil(x).rotate(6, resample=Image.Resampling.BILINEAR), np.float32) / 255


SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "darker (gamma 1.6)": _gamma(1.6),
    "brighter (gamma 0.6)": _gamma(0.6),
    "high-contrast curve": _s_curve,
    "flat curve": _flat_curve,
    "edge enhancement": _unsharp,
    "blur": _blur,
    "noise": _noise,
    "JPEG q25": _jpeg,
    "tight crop": _cropped(True, True),
    "wide field": _wide,
    "collimation": _collimation,
    "rotated 6 deg": _rotate,
    # the pipeline squashes every image to a square (as the training copies were): an image of
    # another shape reaches the model with the chest's proportions changed
    "narrower field": _cropped(False, True),
    "shorter field": _cropped(True, False),
}


def shifted(unit: np.ndarray, shift: str, spec: PreprocessSpec, seed: int = 0, anatomy=None) -> np.ndarray:
    """One whole-image unit (S, S) in [0, 1] after steps 1-2 only (:func:`whole_spec`) changed by
    ``shift`` and preprocessed again by ``spec`` (for ``crop="lungs"``: the lung box that ``anatomy``
    finds after the change)."""
    r = np.random.default_rng(seed)
    # what the pipeline does to any raw image: percentile window, resize or lung box, equalisation
    return preprocess_unit(np.asarray(SHIFTS[shift](np.asarray(unit, np.float32), r), np.float32), spec=spec,
                           anatomy=anatomy)


def whole_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The spec whose units the shifts change: the whole image after the percentile window only
    (a new hospital's image before the lung box or equalisation of the model's pipeline)."""
    from dataclasses import replace

    return replace(spec, crop="none", intensity="percentile")


def shifted_set(units: np.ndarray, spec: PreprocessSpec, per_image: int | None = None, seed: int = 0,
                cancel: CancelToken = NEVER_CANCELLED, anatomy=None
                ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray, list[str]]]:
    """The shifted validation set: every shift of every unit (``per_image`` None), or ``per_image``
    shifts drawn at random per unit. ``units`` show whole images; ``spec`` and ``anatomy`` make the
    model's input of each changed one (:func:`shifted`). Returns (units (M, S, S) float32, source
    index (M,), shift names (M))."""
    names = list(SHIFTS)
    r = np.random.default_rng(seed)
    out, src, kinds = [], [], []
    for i, u in enumerate(units):
        cancel.raise_if_cancelled()
        chosen = names if per_image is None else list(r.choice(names, size=per_image, replace=False))
        for k, name in enumerate(chosen):
            out.append(shifted(u, name, spec, seed * 100003 + i * 101 + k, anatomy))
            src.append(i)
            kinds.append(name)
        if i % 50 == 0:
            yield Progress("shifting validation images", i + 1, len(units))
    return np.stack(out).astype(np.float32), np.array(src), kinds


def shift_report(y: np.ndarray, p: np.ndarray, kinds: list[str], threshold: float) -> dict:
    """Per shift: AUROC, accuracy, sensitivity, specificity at ``threshold``; and pooled."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, np.float64)
    kinds_arr = np.array(kinds)
    rows = {}
    for name in ["all"] + [k for k in SHIFTS if k in set(kinds)]:
        m = np.ones(len(y), bool) if name == "all" else kinds_arr == name
        yy, pp = y[m], p[m]
        pred = pp >= threshold
        rows[name] = {
            "n": int(m.sum()),
            "auroc": float(roc_auc_score(yy, pp)) if len(np.unique(yy)) == 2 else None,
            "accuracy": float((pred == yy).mean()),
            "sensitivity": float(pred[yy == 1].mean()) if (yy == 1).any() else None,
            "specificity": float((~pred[yy == 0]).mean()) if (yy == 0).any() else None,
        }
    return rows


def format_shift_report(rows: dict, title: str) -> str:
    lines = [title, f"{'shift':34s} {'n':>6s} {'AUROC':>7s} {'acc':>7s} {'sens':>7s} {'spec':>7s}"]
    for name, r in rows.items():
        def f(v):
            return f"{v:7.3f}" if v is not None else "      -"
        lines.append(f"{name:34s} {r['n']:6d} {f(r['auroc'])} {f(r['accuracy'])} {f(r['sensitivity'])} "
                     f"{f(r['specificity'])}")
    return "\n".join(lines)
