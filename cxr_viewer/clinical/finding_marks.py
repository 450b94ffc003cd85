"""Where a positive finding is: the box a head marks on the image (the nodule/mass model's), as
plain data, burnt into a picture (Pillow, Qt-free), and the words that go with it.

Chest X-ray AI products mark a finding only when its score is at or above the operating point:
here a head's :attr:`~cxr_viewer.ai.inference.HeadScore.location` is set exactly then, in image
pixel coordinates (x = column, y = row, 0 at the top-left corner of the top-left pixel: the
convention of DICOM SCOORD and of the viewer's scene). The viewer draws the same marks with Qt
(:mod:`cxr_viewer.gui.image_view`); the Secondary Capture and the PDF page burn them in with
:func:`draw_finding_boxes`; the SR carries the box as an image region
(:mod:`cxr_viewer.clinical.dicom_results`).

Also here: the Secondary Capture's picture and text (:func:`marked_rgb`, :func:`marked_lines`), the
heatmap rendering of :mod:`cxr_viewer.ai.overlay` with the marks and the second model's name added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cxr_viewer.ai.inference import HeadScore, ScoreResult
from cxr_viewer.ai.model import short_title
from cxr_viewer.ai.overlay import burn_in_text, composite_rgb, load_font, pick_heatmap_head, result_lines
from cxr_viewer.io.display import Voi
from cxr_viewer.io.image import LoadedImage

#: the mark's outline: orange (the user's annotations are yellow, the heatmap's hot end is yellow)
MARK_COLOUR = (255, 140, 0)
MARK_HEX = "#ff8c00"
HALO = (0, 0, 0)
#: what a mark says of its head (the finding, not the head's long title)
MARK_TITLES = {"lung_cancer_association": "Nodule/mass"}


@dataclass(frozen=True)
class FindingMark:
    """One positive finding's box (image pixels, x0 < x1, y0 < y1) and its short label."""

    head: str
    label: str  # "Nodule/mass 73%"
    box: tuple[float, float, float, float]
    probability: float


def percent_text(p: float) -> str:
    """73% (whole percent; ">99%" rather than a "100%" a calibrated model never means)."""
    return ">99%" if p >= 0.995 else "<1%" if p < 0.005 else f"{round(p * 100)}%"


def mark_label(score: HeadScore) -> str:
    title = MARK_TITLES.get(score.head, short_title(score.head))
    return f"{title} {percent_text(score.probability)}" if score.probability is not None else title


def clipped_box(box, shape: tuple[int, int] | None) -> tuple[float, float, float, float]:
    """``box`` as ordered floats, clipped to an image of ``shape`` (rows, cols) when given."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if shape is not None:
        rows, cols = shape
        x0, x1 = float(np.clip(x0, 0, cols)), float(np.clip(x1, 0, cols))
        y0, y1 = float(np.clip(y0, 0, rows)), float(np.clip(y1, 0, rows))
    return x0, y0, x1, y1


def finding_marks(result: ScoreResult | None, shape: tuple[int, int] | None = None) -> tuple[FindingMark, ...]:
    """The marks of ``result``: every available, positive head with a location (none for a negative,
    unavailable or unlocated head). ``shape`` (rows, cols) clips the boxes to the image."""
    if result is None:
        return ()
    out = []
    for hs in result.heads:
        if not (hs.available and hs.positive and hs.location is not None and hs.probability is not None):
            continue
        box = clipped_box(hs.location, shape)
        if box[2] - box[0] <= 0 or box[3] - box[1] <= 0 or not all(np.isfinite(box)):
            continue
        out.append(FindingMark(hs.head, mark_label(hs), box, float(hs.probability)))
    return tuple(out)


def mark_line(mark: FindingMark) -> str:
    """"Nodule/mass 73%: marked on the image (box x 812-1004, y 640-832 px)"."""
    x0, y0, x1, y1 = mark.box
    return f"{mark.label}: marked on the image (box x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} px)"


def companion_line(result: ScoreResult) -> str:
    """The second network's name, version and SHA-256 (empty when none scored)."""
    if not result.companion:
        return ""
    name, version, sha = result.companion
    sha = f" sha256:{sha[:12]}" if sha else ""
    return f"Nodule/mass model: {name} {version}".rstrip() + sha


def draw_finding_boxes(rgb: np.ndarray, result: ScoreResult | None, scale: float = 1.0) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with each positive finding's box and label drawn on it: an orange
    outline over a dark halo, the label on a dark box above it (below it at the image's top).

    ``scale``: picture pixels per image pixel (the picture may be a resized rendering). Line width and
    font grow with the picture so the mark reads when a page shrinks it. Returns a new array.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    marks = finding_marks(result, (round(h / scale), round(w / scale)) if scale > 0 else None)
    if not marks or scale <= 0:
        return rgb.copy()
    size = min(h, w)
    width = max(2, round(size / 400))
    halo = width + 2 * max(1, round(size / 800))
    font = load_font(int(np.clip(round(size / 45.0), 10, 72)))
    pad = max(2, round(width * 1.5))
    canvas = Image.fromarray(rgb).convert("RGBA")
    draw = ImageDraw.Draw(canvas)
    for mark in marks:
        x0, y0, x1, y1 = (v * scale for v in mark.box)
        x1, y1 = max(x1 - 1, x0), max(y1 - 1, y0)  # the box's last pixels are inside it
        draw.rectangle((x0, y0, x1, y1), outline=HALO, width=halo)
        inset = (halo - width) // 2
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), outline=MARK_COLOUR, width=width)
    labels = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    text_draw = ImageDraw.Draw(labels)
    for mark in marks:
        x0, y0, _x1, y1 = (v * scale for v in mark.box)
        left, top, right, bottom = text_draw.textbbox((0, 0), mark.label, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        bx = float(np.clip(x0, 0, max(0, w - tw)))
        by = y0 - th - width if y0 - th - width >= 0 else min(y1 + width, h - th)
        text_draw.rectangle((bx, by, bx + tw, by + th), fill=(0, 0, 0, 190))
        text_draw.text((bx + pad - left, by + pad - top), mark.label, font=font, fill=MARK_COLOUR + (255,))
    canvas = Image.alpha_composite(canvas, labels).convert("RGB")
    return np.ascontiguousarray(np.asarray(canvas, dtype=np.uint8))


def marked_lines(result: ScoreResult, heatmap_head: str | None = "auto") -> list[str]:
    """The Secondary Capture's burnt-in text: :func:`~cxr_viewer.ai.overlay.result_lines` with the
    marks and the nodule/mass model's name before the research notice."""
    lines = result_lines(result, heatmap_head)
    if pick_heatmap_head(result, heatmap_head) in MARK_TITLES:  # a dense map, not a Grad-CAM
        lines = [t.replace("(Grad-CAM)", "(nodule/mass model, per-cell probability)") for t in lines]
    extra = [mark_line(m) for m in finding_marks(result)] + [companion_line(result)]
    return lines[:-1] + [t for t in extra if t] + lines[-1:]


def marked_rgb(image: LoadedImage, result: ScoreResult, head: str | None = "auto", voi: Voi | None = None,
               opacity: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """(the Secondary Capture's picture, its text): the viewer's grey image, the heatmap of ``head``
    ("auto": the first available head with one; None: none), the scores burnt in and the finding
    boxes drawn last (a box is never hidden under the text)."""
    shown = pick_heatmap_head(result, head)
    lines = marked_lines(result, shown)
    rgb = burn_in_text(composite_rgb(image, result.heatmaps[shown] if shown else None, voi, opacity), lines)
    return draw_finding_boxes(rgb, result), lines


__all__ = ["FindingMark", "companion_line", "draw_finding_boxes", "finding_marks", "mark_label", "mark_line",
           "marked_lines", "marked_rgb"]
