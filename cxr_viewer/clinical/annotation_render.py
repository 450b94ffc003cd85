"""Annotations burnt into a picture of the image (Pillow, Qt-free): what a Secondary Capture and a
PDF page show of the user's rulers, angles, regions, arrows and texts, in the viewer's colours.

The picture must have the image's size (the annotations are in image pixel coordinates). Lines are
drawn over a dark halo so that they read on white and black alike; each measurement's label is the
one the viewer shows (:func:`cxr_viewer.clinical.annotations.label_text`), on a dark box.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr_viewer.ai.overlay import DEJAVU_SANS, load_font
from cxr_viewer.clinical.annotations import (
    ASCII_TEXT,
    Arrow,
    RectRoi,
    Text,
    arrow_head,
    label_anchor,
    label_text,
    outline_paths,
    roi_stats,
)

COLOUR = (255, 210, 31)  # the viewer's annotation yellow (gui.measure_layer.COLOUR)
HALO = (0, 0, 0)


@functools.lru_cache(maxsize=16)
def _font(size: int):
    """DejaVu Sans (it has ° and ²) where installed; else the overlay's font, whose labels are then
    written in plain ASCII (" deg", "mm2")."""
    if os.path.exists(DEJAVU_SANS):
        try:
            return ImageFont.truetype(DEJAVU_SANS, size), False
        except OSError:
            pass
    return load_font(size), True


def draw_annotations(rgb: np.ndarray, annotations, image=None) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with ``annotations`` drawn on it; ``image`` (a LoadedImage of the same
    size) gives the labels their measured values. Returns a new C-contiguous array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    annotations = tuple(annotations)
    if not annotations:
        return rgb.copy()
    h, w = rgb.shape[:2]
    if image is not None and tuple(image.shape) != (h, w):
        raise ValueError(f"the picture is {w} x {h} px but the image is {image.shape[1]} x {image.shape[0]} px")
    scale = max(1.0, min(h, w) / 512.0)
    width = max(2, round(2 * scale))
    font, plain = _font(int(np.clip(round(min(h, w) / 60.0), 9, 64)))
    canvas = Image.fromarray(rgb).convert("RGBA")
    lines = ImageDraw.Draw(canvas)
    for ann in annotations:
        for path in outline_paths(ann):
            pts = [(float(x), float(y)) for x, y in path]
            lines.line(pts, fill=HALO, width=width + 2 * max(1, round(scale)), joint="curve")
            lines.line(pts, fill=COLOUR, width=width, joint="curve")
        if isinstance(ann, Arrow):
            w1, w2 = arrow_head(*ann.points)
            lines.polygon([w1, ann.points[1], w2], fill=COLOUR, outline=HALO)
    boxes = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    text_draw = ImageDraw.Draw(boxes)
    pad = max(2, round(3 * scale))
    for ann in annotations:
        text = label_text(ann, image)
        if not text:
            continue
        if plain:
            text = text.translate(ASCII_TEXT)
        x, y = ann.points[0] if isinstance(ann, Text) else label_anchor(ann)
        left, top, right, bottom = text_draw.multiline_textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        # as the viewer places them: a label extends left in the image's right part, down near its top
        bx = x - tw if (not isinstance(ann, Text) and x > 0.6 * w) else x
        gap = 0 if isinstance(ann, Text) else pad  # off the point it labels, so the line's end shows
        by = y + gap if (isinstance(ann, Text) or y < 0.12 * h) else y - th - gap
        bx, by = float(np.clip(bx, 0, max(0, w - tw))), float(np.clip(by, 0, max(0, h - th)))
        text_draw.rectangle([bx, by, bx + tw, by + th], fill=(0, 0, 0, 170))
        text_draw.multiline_text((bx + pad - left, by + pad - top), text, font=font, fill=COLOUR + (255,))
    out = Image.alpha_composite(canvas, boxes).convert("RGB")
    return np.ascontiguousarray(np.asarray(out))


def annotation_summary(annotations, image=None) -> list[str]:
    """One short line per annotation for a report caption or an Image Comments: "Ruler: 84.0 mm",
    "Ellipse ROI: area 976.6 mm², mean 103.7 (SD 33.5)"."""
    out = []
    for ann in annotations:
        if isinstance(ann, RectRoi) and image is not None:
            s = roi_stats(ann, image.stored, image.values, image.ref.meta.spacing, image.value_unit)
            unit = f" {s.value_unit}" if s.value_unit else ""
            text = f"area {s.area:.1f} {s.area_unit}" + (
                f", mean {s.values.mean:.1f}{unit} (SD {s.values.sd:.1f})" if s.values is not None else "")
        else:
            text = label_text(ann, image).replace("\n", "; ")
        out.append(f"{ann.title[:1].upper()}{ann.title[1:]}" + (f": {text}" if text else ""))
    return out


__all__ = ["annotation_summary", "draw_annotations"]
