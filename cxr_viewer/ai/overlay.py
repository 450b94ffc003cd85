"""Burnt-in renderings of a scored image: the grey picture as the viewer shows it, the heatmap
blended over it in the viewer's colours, and a text box with the scores.

This is what a DICOM Secondary Capture carries (:mod:`cxr_viewer.clinical.dicom_results`) and what
a PDF report may embed. Qt-free: the colours are matplotlib's "inferno" (the same table as
pyqtgraph's "inferno" that the GUI uses) and the alpha ramp is the GUI's
(:func:`cxr_viewer.gui.findings_panel.heatmap_lut`: 0 at the cold end rising linearly to 80%
opaque at 5/8 of the range and above). No patient identifier is ever drawn.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.ai.inference import ScoreResult
from cxr_viewer.ai.model import short_title
from cxr_viewer.io.display import Voi, display_mapping, render_uint8
from cxr_viewer.io.image import LoadedImage

HEATMAP_COLORMAP = "inferno"
DEJAVU_SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
#: The text box never spans more than this fraction of the image width.
MAX_BOX_WIDTH = 0.40
#: Nor (after wrapping, shrinking the font down to ``MIN_FONT``) more than this of its height.
MAX_BOX_HEIGHT = 0.60
MIN_FONT = 7


def heatmap_alpha(n: int = 256) -> np.ndarray:
    """The heatmap's opacity ramp (uint8, ``n`` entries): 0 at the cold end, rising linearly to
    204 (80%) at 5/8 of the range and above. The GUI's overlay uses the same ramp."""
    return (np.clip(np.linspace(0.0, 1.6, n), 0, 1) * 204).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def heatmap_rgba_lut() -> np.ndarray:
    """256 x 4 uint8 RGBA: inferno colours; alpha 0 at 0 rising to 204 (80%) at the hot end.

    Same table as the GUI's ``heatmap_lut`` (pyqtgraph's inferno with 256 points equals
    matplotlib's 256-entry inferno; one alpha ramp, :func:`heatmap_alpha`).
    """
    from matplotlib import colormaps

    cmap = colormaps[HEATMAP_COLORMAP].resampled(256)
    lut = np.clip(np.rint(cmap(np.linspace(0.0, 1.0, 256)) * 255.0), 0, 255).astype(np.uint8)
    lut[:, 3] = heatmap_alpha(256)
    lut.setflags(write=False)
    return lut


def render_grey(image: LoadedImage, voi: Voi | None = None) -> np.ndarray:
    """The 8-bit grey picture exactly as the viewer shows it (MONOCHROME1 shown inverted)."""
    mapping = display_mapping(image.values, voi if voi is not None else image.default_voi(), image.monochrome1)
    return np.ascontiguousarray(render_uint8(mapping))


def resize_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a [0, 1] map to ``shape`` (rows, cols), stretched over the whole image."""
    heat = np.ascontiguousarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D, got shape {heat.shape}")
    rows, cols = int(shape[0]), int(shape[1])
    if heat.shape != (rows, cols):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((cols, rows), Image.Resampling.BILINEAR),
                          dtype=np.float32)
    return np.nan_to_num(np.clip(heat, 0.0, 1.0), nan=0.0)


def blend_heatmap(grey: np.ndarray, heatmap: np.ndarray | None, opacity: float = 0.5) -> np.ndarray:
    """(H, W) uint8 grey + optional heatmap -> (H, W, 3) uint8 RGB, C-contiguous."""
    grey = np.asarray(grey, dtype=np.uint8)
    if heatmap is None or opacity <= 0:
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    heat = resize_heatmap(heatmap, grey.shape)
    lut = heatmap_rgba_lut()
    # the viewer's lookup: levels (0, 1) over 256 entries, truncated to an index
    idx = np.clip(heat * np.float32(256.0), 0, 255).astype(np.intp)
    rgba = lut[idx]
    alpha = rgba[:, :, 3:4].astype(np.float32) * np.float32(min(max(float(opacity), 0.0), 1.0) / 255.0)
    out = grey[:, :, None].astype(np.float32) * (1.0 - alpha) + rgba[:, :, :3].astype(np.float32) * alpha
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def composite_rgb(image: LoadedImage, heatmap: np.ndarray | None, voi: Voi | None = None,
                  opacity: float = 0.5) -> np.ndarray:
    """The viewer's grey picture with ``heatmap`` (any resolution, or None) blended over it.

    Returns (H, W, 3) uint8, C-contiguous, the size of the image.
    """
    return blend_heatmap(render_grey(image, voi), heatmap, opacity)


# --- text ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (needs FreeType), else DejaVu Sans, else the bitmap default."""
    makers = [lambda: ImageFont.load_default(size=size)]
    if os.path.exists(DEJAVU_SANS):
        makers.append(lambda: ImageFont.truetype(DEJAVU_SANS, size))
    for make in makers:
        try:
            font = make()
        except (OSError, ValueError, ImportError):  # no FreeType, or an unreadable font file
            continue
        if isinstance(font, ImageFont.FreeTypeFont):
            return font
    return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return float(font.getlength(text)) if hasattr(font, "getlength") else float(font.getbbox(text)[2])


def _wrap(lines: list[str], font, max_width: float) -> list[str]:
    """Word-wrap each line to ``max_width`` pixels (a word longer than that is cut by characters)."""
    out: list[str] = []
    for line in lines:
        words = line.split(" ")
        current = ""
        for word in words:
            candidate = word if not current else f"{current} {word}"
            if _text_width(font, candidate) <= max_width:
                current = candidate
                continue
            if current:
                out.append(current)
            current = ""
            while _text_width(font, word) > max_width and len(word) > 1:
                cut = len(word) - 1
                while cut > 1 and _text_width(font, word[:cut]) > max_width:
                    cut -= 1
                out.append(word[:cut])
                word = word[cut:]
            current = word
        out.append(current)
    return out


def burn_in_text(rgb: np.ndarray, lines: list[str], *, font_size: int | None = None,
                 box_alpha: float = 0.7) -> np.ndarray:
    """Draw ``lines`` in white on a dark semi-transparent box in the top-left corner.

    The font scales with the image (about 1/55 of its smaller side); lines are wrapped so that
    the box never covers more than 40% of the width, and the font shrinks if the wrapped box
    would be taller than 60% of the image. Returns a new (H, W, 3) uint8 C-contiguous array.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    lines = [str(line) for line in lines if str(line)]
    if not lines or h < 8 or w < 8:
        return rgb.copy()
    size = font_size or int(np.clip(round(min(h, w) / 55.0), 9, 72))
    while True:
        font = load_font(size)
        pad = max(2, size // 3)
        spacing = max(1, size // 4)
        wrapped = _wrap(lines, font, MAX_BOX_WIDTH * w - 2 * pad)
        ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (size, 0)
        line_h = ascent + descent
        box_w = int(min(MAX_BOX_WIDTH * w, max(_text_width(font, t) for t in wrapped) + 2 * pad + 1))
        box_h = int(len(wrapped) * line_h + (len(wrapped) - 1) * spacing + 2 * pad)
        if box_h <= MAX_BOX_HEIGHT * h or size <= MIN_FONT or font_size is not None:
            break
        size -= 1
    box_h = min(box_h, h)
    region = Image.fromarray(rgb[:box_h, :box_w]).convert("RGBA")
    layer = Image.new("RGBA", region.size, (0, 0, 0, round(255 * box_alpha)))
    draw = ImageDraw.Draw(layer)
    y = pad
    for text in wrapped:
        draw.text((pad, y), text, font=font, fill=(255, 255, 255, 255))
        y += line_h + spacing
    region = Image.alpha_composite(region, layer).convert("RGB")
    out = rgb.copy()
    out[:box_h, :box_w] = np.asarray(region)
    return out


# --- what the text says ----------------------------------------------------------------------


def pick_heatmap_head(result: ScoreResult, head: str | None = "auto") -> str | None:
    """The head whose heatmap is shown: "auto" = the first available (trained) head with one.

    Raises ValueError for a named head that is not available or has no heatmap: an untrained
    head's map is never shown.
    """
    if head is None:
        return None
    if head == "auto":
        return next((h.head for h in result.heads if h.available and h.head in result.heatmaps), None)
    score = next((h for h in result.heads if h.head == head), None)
    if score is None or not score.available:
        raise ValueError(f"no heatmap for {head}: the head is not available in this result")
    if head not in result.heatmaps:
        raise ValueError(f"no heatmap for {head}: the result was scored without heatmaps")
    return head


def score_line(score) -> str:
    """One head's line: "Pneumonia: 0.87 (positive at threshold 0.19; sens 0.97 / spec 0.96 on
    validation)", or "Lung-cancer association: not available"."""
    title = short_title(score.head)
    if not score.available or score.probability is None:
        if getattr(score, "status", "") == "outside_intended_use":
            return f"{title}: not scored (outside intended use)"
        return f"{title}: not available"
    text = f"{title}: {score.probability:.2f}"
    if getattr(score, "status", "") == "scored_outside_intended_use":
        text += " [OUTSIDE INTENDED USE]"
    if score.threshold is not None and score.positive is not None:
        detail = f"{'positive' if score.positive else 'negative'} at threshold {score.threshold:.2f}"
        if score.sensitivity is not None and score.specificity is not None:
            detail += f"; sens {score.sensitivity:.2f} / spec {score.specificity:.2f} on validation"
        text += f" ({detail})"
    return text


def model_line(result: ScoreResult) -> str:
    sha = f" sha256:{result.model_sha256[:12]}" if result.model_sha256 else ""
    return f"Model: {result.model_name} {result.model_version}".rstrip() + sha


def result_lines(result: ScoreResult, heatmap_head: str | None = "auto") -> list[str]:
    """The burnt-in text: one line per head, the heatmap shown, the model and the research notice.

    Never a patient identifier; an unavailable head says "not available", never a number.
    """
    lines = [score_line(s) for s in result.heads]
    shown = pick_heatmap_head(result, heatmap_head)
    lines.append(f"Heatmap: {short_title(shown)} (Grad-CAM)" if shown else "Heatmap: none")
    lines.append(model_line(result))
    lines.append(RESEARCH_NOTICE)
    return lines


def annotated_rgb(image: LoadedImage, result: ScoreResult, head: str | None = "auto", voi: Voi | None = None,
                  opacity: float = 0.5) -> np.ndarray:
    """The Secondary Capture picture: the viewer's grey image, the heatmap of ``head`` ("auto":
    first available head with a heatmap; None: no heatmap) and the burnt-in score text."""
    shown = pick_heatmap_head(result, head)
    rgb = composite_rgb(image, result.heatmaps[shown] if shown else None, voi, opacity)
    return burn_in_text(rgb, result_lines(result, shown))
