"""Measurements and annotations on one image, as plain data (Qt-free): rulers, angles, rectangle and
ellipse regions of interest, arrows and text, with what each one measures.

Coordinates are image pixel coordinates ``(x, y)`` = (column, row) with the origin at the top-left
corner of the top-left pixel, so the centre of pixel ``[r, c]`` is ``(c + 0.5, r + 0.5)``. That is
both pyqtgraph's ImageItem convention and DICOM's PIXEL annotation units (PS3.3 C.10.5.1.2), so a
GSPS (:mod:`cxr_viewer.clinical.gsps`) stores these numbers unchanged.

- Lengths are in mm only with a valid pixel spacing (:class:`~cxr_viewer.io.study.Spacing`; RG1's
  bogus [0, 0] is already None) and say where they hold: PixelSpacing "mm", ImagerPixelSpacing
  "mm at the detector", or magnification-corrected. Without one they are in px with a note.
- An angle uses physical directions when the spacing is known (rows and columns may differ).
- A region's statistics are numpy's mean, SD (population, ddof=0), min and max over the pixels whose
  centres lie inside the shape (:func:`roi_mask`), in stored values and in modality units (after
  the Rescale), and its area is that pixel count times the pixel area (mm² or px²).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from cxr_viewer.io.study import Spacing

Point = tuple[float, float]

#: What a length says without a spacing.
NO_SPACING_NOTE = "no valid pixel spacing"


def new_uid() -> str:
    """A DICOM UID (2.25 + a random UUID): the tracking UID of one annotation."""
    return f"2.25.{uuid.uuid4().int}"


def _points(points) -> tuple[Point, ...]:
    """As float32 values (what a GSPS's Graphic Data, VR FL, holds): a saved annotation reads back equal."""
    return tuple((float(np.float32(x)), float(np.float32(y))) for x, y in points)


@dataclass(frozen=True)
class Annotation:
    """One annotation: its kind, its points in image pixel coordinates and a tracking UID (kept
    through a GSPS round trip, so the same annotation is recognised again)."""

    points: tuple[Point, ...]
    uid: str = field(default_factory=new_uid)

    kind: ClassVar[str] = ""
    n_points: ClassVar[int] = 0
    title: ClassVar[str] = ""

    def __post_init__(self) -> None:
        pts = _points(self.points)
        if len(pts) != self.n_points:
            raise ValueError(f"a {self.title} needs {self.n_points} points, got {len(pts)}")
        if not all(math.isfinite(v) for p in pts for v in p):
            raise ValueError(f"a {self.title}'s points must be finite numbers")
        object.__setattr__(self, "points", pts)

    def with_points(self, points) -> Annotation:
        """The same annotation (same UID) moved to ``points``."""
        return replace(self, points=_points(points))

    def moved(self, dx: float, dy: float) -> Annotation:
        return self.with_points((x + dx, y + dy) for x, y in self.points)


@dataclass(frozen=True)
class Ruler(Annotation):
    kind: ClassVar[str] = "ruler"
    n_points: ClassVar[int] = 2
    title: ClassVar[str] = "ruler"


@dataclass(frozen=True)
class Angle(Annotation):
    """Three points; the angle is at the middle one (the vertex)."""

    kind: ClassVar[str] = "angle"
    n_points: ClassVar[int] = 3
    title: ClassVar[str] = "angle"


@dataclass(frozen=True)
class RectRoi(Annotation):
    """Two opposite corners of an axis-aligned rectangle."""

    kind: ClassVar[str] = "rect"
    n_points: ClassVar[int] = 2
    title: ClassVar[str] = "rectangle ROI"

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) with x0 <= x1, y0 <= y1."""
        (ax, ay), (bx, by) = self.points
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


@dataclass(frozen=True)
class EllipseRoi(RectRoi):
    """The ellipse inscribed in the rectangle of two opposite corners (axis-aligned)."""

    kind: ClassVar[str] = "ellipse"
    title: ClassVar[str] = "ellipse ROI"


@dataclass(frozen=True)
class Arrow(Annotation):
    """From the tail (first point) to the head (second point)."""

    kind: ClassVar[str] = "arrow"
    n_points: ClassVar[int] = 2
    title: ClassVar[str] = "arrow"


@dataclass(frozen=True)
class Text(Annotation):
    """A text anchored at one point (its top-left corner)."""

    text: str = ""
    kind: ClassVar[str] = "text"
    n_points: ClassVar[int] = 1
    title: ClassVar[str] = "text"


#: measurement text made plain ASCII, for DICOM short texts and for fonts without these signs
ASCII_TEXT = str.maketrans({"\u00b0": " deg", "\u00b2": "2", "\u00b1": "+/-", "\u2014": "-", "\u2013": "-"})

KINDS: dict[str, type[Annotation]] = {c.kind: c for c in (Ruler, Angle, RectRoi, EllipseRoi, Arrow, Text)}


def make(kind: str, points, **kwargs) -> Annotation:
    """An annotation of ``kind`` ("ruler", "angle", "rect", "ellipse", "arrow", "text")."""
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown annotation kind {kind!r}") from None
    return cls(points=points, **kwargs)


# --- measurements ---------------------------------------------------------------------------


def spacing_words(spacing: Spacing | None) -> str:
    """"mm", "mm at the detector", "mm (magnification-corrected)": where a length in mm holds."""
    if spacing is None:
        return "px"
    if spacing.source == "ImagerPixelSpacing":
        return "mm at the detector"
    return spacing.label


@dataclass(frozen=True)
class Length:
    px: float
    mm: float | None
    text: str


def length(p0: Point, p1: Point, spacing: Spacing | None) -> Length:
    """The distance between two points: mm with a valid spacing (worded by :func:`spacing_words`),
    else px with a note."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    px = math.hypot(dx, dy)
    if spacing is None:
        return Length(px, None, f"{px:.1f} px ({NO_SPACING_NOTE})")
    mm = spacing.length_mm(dy, dx)
    return Length(px, mm, f"{mm:.1f} {spacing_words(spacing)}")


def angle_degrees(a: Point, vertex: Point, c: Point, spacing: Spacing | None = None) -> float:
    """The angle at ``vertex`` between the arms to ``a`` and ``c``, in [0, 180] degrees; in physical
    directions when the spacing is known (non-square pixels), else in pixels."""
    sx, sy = (spacing.col_mm, spacing.row_mm) if spacing is not None else (1.0, 1.0)
    u = np.array([(a[0] - vertex[0]) * sx, (a[1] - vertex[1]) * sy])
    v = np.array([(c[0] - vertex[0]) * sx, (c[1] - vertex[1]) * sy])
    nu, nv = float(np.hypot(*u)), float(np.hypot(*v))
    if nu == 0 or nv == 0:
        return 0.0
    cos = float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))
    return math.degrees(math.acos(cos))


def _roi_box(roi: RectRoi, shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray] | None:
    """(rows, cols, inside): the bounding box of the pixels whose centres can be inside ``roi`` and
    which of them are (edges included); None when none can be. Only the box is computed, so a
    dragged ROI on a large image costs its own size, not the image's."""
    rows, cols = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = roi.bounds()
    # only the pixels whose centres can be inside: columns c with x0 <= c + 0.5 <= x1
    c0, c1 = max(0, math.ceil(x0 - 0.5)), min(cols - 1, math.floor(x1 - 0.5))
    r0, r1 = max(0, math.ceil(y0 - 0.5)), min(rows - 1, math.floor(y1 - 0.5))
    if c1 < c0 or r1 < r0:
        return None
    yc = (np.arange(r0, r1 + 1, dtype=np.float64) + 0.5)[:, None]
    xc = (np.arange(c0, c1 + 1, dtype=np.float64) + 0.5)[None, :]
    if isinstance(roi, EllipseRoi):
        rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
        if rx <= 0 or ry <= 0:
            return None
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inside = ((xc - cx) / rx) ** 2 + ((yc - cy) / ry) ** 2 <= 1.0
    else:
        inside = (xc >= x0) & (xc <= x1) & (yc >= y0) & (yc <= y1)
    return slice(r0, r1 + 1), slice(c0, c1 + 1), inside


def roi_mask(roi: RectRoi, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (rows, cols) mask of the pixels whose centres lie inside the rectangle or ellipse
    (edges included)."""
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    box = _roi_box(roi, shape)
    if box is not None:
        mask[box[0], box[1]] = box[2]
    return mask


@dataclass(frozen=True)
class Stats:
    mean: float
    sd: float
    min: float
    max: float


@dataclass(frozen=True)
class RoiStats:
    """What a region measures; ``stored``/``values`` are None when no pixel centre lies inside."""

    n_pixels: int
    area: float  # mm² with a spacing, else px²
    area_unit: str  # "mm²", "mm² at the detector", "px²"
    stored: Stats | None
    values: Stats | None
    value_unit: str = ""

    def lines(self) -> list[str]:
        """The label: area, then mean ± SD [min, max] in modality units, and the stored values when
        they differ (a Rescale)."""
        out = [f"Area {self.area:.1f} {self.area_unit} ({self.n_pixels} px)"]
        if self.values is None or self.stored is None:
            return out + ["no pixel centre inside"]
        unit = f" {self.value_unit}" if self.value_unit else ""
        v = self.values
        out.append(f"Mean {v.mean:.1f} SD {v.sd:.1f}{unit}")
        out.append(f"Min {v.min:g} Max {v.max:g}{unit}")
        if self.stored != self.values:
            s = self.stored
            out.append(f"Stored: mean {s.mean:.1f} SD {s.sd:.1f}, min {s.min:g} max {s.max:g}")
        return out


def _stats(values: np.ndarray) -> Stats:
    v = values.astype(np.float64, copy=False)
    return Stats(float(v.mean()), float(v.std()), float(v.min()), float(v.max()))


def roi_stats(roi: RectRoi, stored: np.ndarray, values: np.ndarray, spacing: Spacing | None,
              value_unit: str = "") -> RoiStats:
    """Statistics of ``roi`` on one frame: ``stored`` pixel values and ``values`` (modality units)."""
    box = _roi_box(roi, stored.shape)
    n = 0 if box is None else int(np.count_nonzero(box[2]))
    if spacing is None:
        area, unit = float(n), "px²"
    else:
        area = n * spacing.row_mm * spacing.col_mm
        unit = "mm² at the detector" if spacing.source == "ImagerPixelSpacing" else spacing.label.replace("mm", "mm²", 1)
    if n == 0:
        return RoiStats(0, area, unit, None, None, value_unit)
    rows, cols, inside = box
    return RoiStats(n, area, unit, _stats(stored[rows, cols][inside]), _stats(values[rows, cols][inside]),
                    value_unit)


def measure_lines(ann: Annotation, spacing: Spacing | None, stored: np.ndarray | None = None,
                  values: np.ndarray | None = None, value_unit: str = "") -> list[str]:
    """What the annotation's label says (empty for an arrow; the text itself for a text)."""
    if isinstance(ann, Ruler):
        return [length(*ann.points, spacing).text]
    if isinstance(ann, Angle):
        return [f"{angle_degrees(*ann.points, spacing):.1f}°"]
    if isinstance(ann, RectRoi):
        if stored is None or values is None:
            return []
        return roi_stats(ann, stored, values, spacing, value_unit).lines()
    if isinstance(ann, Text):
        return [ann.text]
    return []


def label_text(ann: Annotation, image=None) -> str:
    """The label of ``ann`` on a :class:`~cxr_viewer.io.image.LoadedImage` (None: geometry only)."""
    if image is None:
        return "\n".join(measure_lines(ann, None))
    return "\n".join(measure_lines(ann, image.ref.meta.spacing, image.stored, image.values, image.value_unit))


def label_anchor(ann: Annotation) -> Point:
    """Where a label goes: past the ruler's/arrow's second end, at the angle's vertex, at a region's
    top-right corner, at a text's anchor."""
    if isinstance(ann, RectRoi):
        _x0, y0, x1, _y1 = ann.bounds()
        return x1, y0
    if isinstance(ann, Angle):
        return ann.points[1]
    return ann.points[-1]


def arrow_head(tail: Point, head: Point, size: float | None = None) -> tuple[Point, Point]:
    """The two ends of an arrowhead's wings at ``head``: ``size`` long (default a fifth of the
    arrow, at least 4 px), 25 degrees off the shaft."""
    dx, dy = head[0] - tail[0], head[1] - tail[1]
    n = math.hypot(dx, dy)
    if n == 0:
        return head, head
    size = size if size is not None else max(n / 5.0, 4.0)
    ux, uy = dx / n, dy / n
    out = []
    for sign in (1.0, -1.0):
        a = math.radians(25.0) * sign
        rx, ry = ux * math.cos(a) - uy * math.sin(a), ux * math.sin(a) + uy * math.cos(a)
        out.append((head[0] - rx * size, head[1] - ry * size))
    return out[0], out[1]


def ellipse_points(roi: RectRoi, n: int = 72) -> list[Point]:
    """``n + 1`` points around the ellipse inscribed in ``roi`` (closed: the first point again)."""
    x0, y0, x1, y1 = roi.bounds()
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    t = np.linspace(0.0, 2 * math.pi, n + 1)
    return [(float(cx + rx * math.cos(a)), float(cy + ry * math.sin(a))) for a in t]


def outline_paths(ann: Annotation) -> list[list[Point]]:
    """The polylines that draw ``ann`` (image pixel coordinates): what the viewer's draft and the
    exports draw. A text has none (only its label)."""
    if isinstance(ann, EllipseRoi):
        return [ellipse_points(ann)]
    if isinstance(ann, RectRoi):
        x0, y0, x1, y1 = ann.bounds()
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    if isinstance(ann, Arrow):
        tail, head = ann.points
        w1, w2 = arrow_head(tail, head)
        return [[tail, head], [w1, head, w2]]
    if isinstance(ann, (Ruler, Angle)):
        return [list(ann.points)]
    return []


# --- the annotations of a session: per image, with undo ---------------------------------------

ImageKey = tuple[str, int]  # (path, frame)


class AnnotationStore:
    """The annotations of every image seen in a session, by (path, frame), with an undo history
    of adds, moves and deletes per image. Plain Python: the GUI keeps one and redraws from it."""

    def __init__(self) -> None:
        self._items: dict[ImageKey, tuple[Annotation, ...]] = {}
        self._undo: dict[ImageKey, list[tuple[Annotation, ...]]] = {}

    def get(self, key: ImageKey) -> tuple[Annotation, ...]:
        return self._items.get(key, ())

    def __contains__(self, key: ImageKey) -> bool:
        return key in self._items

    def image_keys(self) -> list[ImageKey]:
        return [k for k, v in self._items.items() if v]

    def _set(self, key: ImageKey, items: tuple[Annotation, ...], undoable: bool = True) -> None:
        if undoable:
            self._undo.setdefault(key, []).append(self._items.get(key, ()))
        self._items[key] = tuple(items)

    def set_all(self, key: ImageKey, items, undoable: bool = False) -> None:
        """Replace the image's annotations (a GSPS loaded: not undoable by default)."""
        self._set(key, tuple(items), undoable)

    def add(self, key: ImageKey, ann: Annotation) -> None:
        self._set(key, (*self.get(key), ann))

    def index_of(self, key: ImageKey, uid: str) -> int:
        for i, ann in enumerate(self.get(key)):
            if ann.uid == uid:
                return i
        raise KeyError(uid)

    def replace(self, key: ImageKey, ann: Annotation) -> None:
        """The annotation with ``ann.uid`` becomes ``ann`` (moved or edited)."""
        items = list(self.get(key))
        i = self.index_of(key, ann.uid)
        if items[i] == ann:
            return
        items[i] = ann
        self._set(key, tuple(items))

    def remove(self, key: ImageKey, uid: str) -> Annotation:
        items = list(self.get(key))
        ann = items.pop(self.index_of(key, uid))
        self._set(key, tuple(items))
        return ann

    def undo(self, key: ImageKey) -> bool:
        """Back to before the last add, move or delete on this image; False when there is none."""
        history = self._undo.get(key)
        if not history:
            return False
        self._items[key] = history.pop()
        return True


__all__ = [
    "KINDS",
    "Angle",
    "Annotation",
    "AnnotationStore",
    "Arrow",
    "EllipseRoi",
    "Length",
    "RectRoi",
    "RoiStats",
    "Ruler",
    "Stats",
    "Text",
    "angle_degrees",
    "arrow_head",
    "ellipse_points",
    "label_anchor",
    "label_text",
    "length",
    "make",
    "measure_lines",
    "outline_paths",
    "roi_mask",
    "roi_stats",
    "spacing_words",
]
