"""Hanging protocols and the sort orders a reading room uses, as plain functions (no Qt).

- :func:`natural_key`: "person99" before "person998", "img2" before "img10".
- :func:`patient_studies`: one patient's studies (by PatientID, across patient nodes whose names
  differ), oldest first.
- :func:`compare_with_prior`: the chest protocol "Compare with prior": the current study's PA (or
  the image shown) on the left, the PA of the most recent earlier study of the same PatientID on
  the right.
- :func:`linked_range`: where a linked viewport looks, given where another one looks: the same
  place and the same zoom relative to each image, so images of different sizes move together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cxr_viewer.io.study import ImageRef, StudyIndex, StudyNode

_DIGITS = re.compile(r"(\d+)")
#: view positions in the order a chest protocol prefers them
CHEST_VIEWS = ("PA", "AP", "")


def natural_key(text: str) -> tuple:
    """Sort key comparing runs of digits as numbers, the rest case-insensitively."""
    parts = _DIGITS.split(text)
    return tuple((0, int(p), p) if i % 2 else (1, p.casefold(), p) for i, p in enumerate(parts) if p != "")


def study_of(index: StudyIndex, ref: ImageRef) -> StudyNode | None:
    """The study holding ``ref`` (by path)."""
    for patient in index.patients:
        for study in patient.studies:
            if any(img.path == ref.path for series in study.series for img in series.images):
                return study
    return None


def patient_studies(index: StudyIndex, patient_id: str) -> list[StudyNode]:
    """Every study of ``patient_id`` in the index, oldest first (undated ones first, by UID)."""
    if not patient_id:
        return []
    studies = [s for p in index.patients if p.patient_id == patient_id for s in p.studies]
    return sorted(studies, key=lambda s: (s.date, natural_key(s.uid)))


def chest_image(study: StudyNode) -> ImageRef | None:
    """The study's image a chest protocol hangs: a PA, else an AP, else the first image."""
    images = [img for series in study.series for img in series.images]
    if not images:
        return None
    for view in CHEST_VIEWS:
        for img in images:
            if img.meta.view_position.strip().upper() == view or not view:
                return img
    return images[0]


def prior_study(index: StudyIndex, ref: ImageRef) -> StudyNode | None:
    """The most recent study of the same PatientID dated strictly before the study of ``ref``;
    None without a PatientID, a date, or an earlier study."""
    current = study_of(index, ref)
    if current is None or not current.date or not ref.meta.patient_id:
        return None
    earlier = [s for s in patient_studies(index, ref.meta.patient_id) if s.date and s.date < current.date
               and s.uid != current.uid]
    return earlier[-1] if earlier else None


@dataclass(frozen=True)
class Hanging:
    """What goes in which viewport (left to right, top to bottom); ``reason`` says why not when
    there is nothing to compare with."""

    images: tuple[ImageRef, ...]
    reason: str = ""


def compare_with_prior(index: StudyIndex, ref: ImageRef) -> Hanging:
    """Current left, prior right; a single image (with the reason) when there is no prior."""
    current = study_of(index, ref)
    left = ref
    if current is not None and ref.meta.view_position.strip().upper() != "PA":
        pa = chest_image(current)
        left = pa if pa is not None and pa.meta.view_position.strip().upper() == "PA" else ref
    if not ref.meta.patient_id:
        return Hanging((left,), "this image has no PatientID: its priors cannot be found")
    if current is None or not current.date:
        return Hanging((left,), "this study has no date: which study is earlier is unknown")
    prior = prior_study(index, ref)
    if prior is None:
        return Hanging((left,), "no earlier study of this patient is open")
    right = chest_image(prior)
    return Hanging((left, right) if right is not None else (left,), "" if right is not None else "the prior has no image")


Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def linked_range(source_view: Rect, source_bounds: Rect, target_bounds: Rect) -> Rect:
    """The rectangle a linked viewport shows: the centre at the same fraction of its image, the
    size scaled by the images' size ratio (the geometric mean of the width and height ratios, so
    that linking A to B and B to A agree, and "fit" stays about "fit")."""
    sx0, sy0, sx1, sy1 = source_bounds
    tx0, ty0, tx1, ty1 = target_bounds
    sw, sh = max(sx1 - sx0, 1e-9), max(sy1 - sy0, 1e-9)
    tw, th = tx1 - tx0, ty1 - ty0
    vx0, vy0, vx1, vy1 = source_view
    fx, fy = ((vx0 + vx1) / 2 - sx0) / sw, ((vy0 + vy1) / 2 - sy0) / sh
    scale = math.sqrt(max(tw, 0.0) / sw * max(th, 0.0) / sh)
    cx, cy = tx0 + fx * tw, ty0 + fy * th
    hw, hh = (vx1 - vx0) / 2 * scale, (vy1 - vy0) / 2 * scale
    return cx - hw, cy - hh, cx + hw, cy + hh
