"""What a reading viewport writes around the image, as plain data: the four corner texts, the
orientation markers on its edges and the scale bar. The GUI only places these strings; tests and
other front ends get the same words without Qt.

- Corners: top-left the patient (name, ID, sex and age), top-right the study (date, description,
  modality and view, institution), bottom-left the display (window, zoom, frame, size),
  bottom-right the research notice. A value the file does not have is left out, never "-".
- Orientation markers come from PatientOrientation (0020,0020) only. ImageLaterality and
  ViewPosition do not say which way the rows run (a PA film may be stored flipped), so no marker
  is guessed from them.
- The scale bar has a round length (1, 2 or 5 times a power of ten, in mm) and exists only with a
  valid spacing (``spacing_of`` already drops RG1's [0, 0]); ImagerPixelSpacing lengths are said
  to be at the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.io.display import Voi, Window
from cxr_viewer.io.study import ImageMeta, Spacing, iso_date

#: the patient directions of PatientOrientation and their opposites (PS3.3 C.7.6.1.1.1)
OPPOSITE = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}


@dataclass(frozen=True)
class CornerTexts:
    """Lines of text for each corner of the viewport (empty tuple: nothing there)."""

    top_left: tuple[str, ...] = ()
    top_right: tuple[str, ...] = ()
    bottom_left: tuple[str, ...] = ()
    bottom_right: tuple[str, ...] = (RESEARCH_NOTICE,)


@dataclass(frozen=True)
class OrientationMarkers:
    """The patient direction shown at each edge of the image, e.g. left "R", right "L"."""

    left: str
    right: str
    top: str
    bottom: str


@dataclass(frozen=True)
class ScaleBar:
    """A bar ``length_mm`` long, ``screen_px`` screen pixels wide at the current zoom."""

    length_mm: float
    screen_px: float
    text: str


dicom_date = iso_date  # "20040826" -> "2004-08-26"; anything else as written


def age_text(value: str) -> str:
    """DICOM age string ("062Y", "003M") or a bare number ("81") -> "62 y", "3 mo", "81 y"."""
    v = value.strip().upper()
    if not v:
        return ""
    units = {"Y": "y", "M": "mo", "W": "wk", "D": "d"}
    number, unit = (v[:-1], units.get(v[-1])) if v[-1] in units else (v, "y")
    if number.isdigit():
        return f"{int(number)} {unit}"
    return value.strip()


def person_name(value: str) -> str:
    """DICOM PN "FAMILY^GIVEN^MIDDLE" -> "FAMILY, GIVEN MIDDLE" (one component group)."""
    parts = [p.strip() for p in value.split("=")[0].split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:4] if p)
    return f"{family}, {rest}" if family and rest else (family or rest)


def voi_text(voi: Voi | None) -> str:
    if voi is None:
        return ""
    if isinstance(voi, Window):
        return f"W {voi.width:g}  L {voi.center:g}"
    return voi.describe()


def corner_texts(meta: ImageMeta, *, voi: Voi | None = None, zoom: float | None = None, frame: int = 0,
                 frames: int = 1, shape: tuple[int, int] | None = None) -> CornerTexts:
    """The corner texts of one shown frame; ``zoom`` is screen pixels per image pixel (1.0 = 100%)."""
    top_left = []
    name = person_name(meta.patient_name)
    if name:
        top_left.append(name)
    if meta.patient_id:
        top_left.append(f"ID {meta.patient_id}")
    who = ", ".join(t for t in (f"sex {meta.sex}" if meta.sex else "",
                                f"age {age_text(meta.age)}" if meta.age else "") if t)
    if who:
        top_left.append(who[:1].upper() + who[1:])

    top_right = []
    if meta.study_date:
        top_right.append(dicom_date(meta.study_date))
    if meta.study_description:
        top_right.append(meta.study_description)
    modality_view = " ".join(t for t in (meta.modality, meta.view_position) if t)
    if modality_view:
        top_right.append(modality_view)
    if meta.institution:
        top_right.append(meta.institution)

    bottom_left = []
    if voi is not None:
        bottom_left.append(voi_text(voi))
    if zoom is not None and zoom > 0:
        bottom_left.append(f"Zoom {zoom * 100:.0f}%")
    bottom_left.append(f"Frame {frame + 1}/{max(frames, 1)}")
    rows, cols = shape if shape is not None else (meta.rows, meta.cols)
    if rows and cols:
        bottom_left.append(f"{cols} x {rows} px")
    return CornerTexts(tuple(top_left), tuple(top_right), tuple(bottom_left), (RESEARCH_NOTICE,))


def orientation_markers(patient_orientation: str) -> OrientationMarkers | None:
    """Edge markers from PatientOrientation ("L\\F": rows run toward the patient's left, columns
    toward the feet -> left edge "R", right "L", top "H", bottom "F"); None when absent or not
    two valid direction strings."""
    parts = [p.strip().upper() for p in patient_orientation.replace("/", "\\").split("\\")]
    if len(parts) != 2 or not all(parts) or not all(c in OPPOSITE for p in parts for c in p):
        return None
    row_dir, col_dir = parts

    def opposite(d: str) -> str:
        return "".join(OPPOSITE[c] for c in d)

    return OrientationMarkers(left=opposite(row_dir), right=row_dir, top=opposite(col_dir), bottom=col_dir)


def nice_length_mm(max_mm: float) -> float:
    """The largest 1, 2 or 5 x 10^k mm not above ``max_mm`` (> 0)."""
    exponent = math.floor(math.log10(max_mm))
    for step in (5.0, 2.0, 1.0):
        value = step * 10.0 ** exponent
        if value <= max_mm * (1 + 1e-9):
            return value
    return 10.0 ** exponent  # unreachable: 1 x 10^floor(log10) <= max_mm


def length_text(mm: float) -> str:
    if mm >= 10 and abs(mm / 10 - round(mm / 10)) < 1e-9:
        return f"{mm / 10:g} cm"
    return f"{mm:g} mm"


def scale_bar(spacing: Spacing | None, screen_px_per_image_px: float, max_screen_px: float) -> ScaleBar | None:
    """A round-length horizontal bar at most ``max_screen_px`` long; None without a valid spacing."""
    if spacing is None or not (spacing.col_mm > 0) or not math.isfinite(spacing.col_mm):
        return None
    if not (screen_px_per_image_px > 0) or not (max_screen_px > 0):
        return None
    mm_per_screen_px = spacing.col_mm / screen_px_per_image_px
    length = nice_length_mm(max_screen_px * mm_per_screen_px)
    text = length_text(length)
    if spacing.source == "ImagerPixelSpacing":
        text += " at the detector"
    elif "magnification" in spacing.label:
        text += " (magnification-corrected)"
    return ScaleBar(length, length / mm_per_screen_px, text)


# --- display orientation: flips and quarter turns of the picture, never of the stored pixels ------
Matrix = tuple[tuple[int, int], tuple[int, int]]
IDENTITY: Matrix = ((1, 0), (0, 1))
#: screen operations (x right, y down): each maps a direction on screen to where it goes
FLIP_H: Matrix = ((-1, 0), (0, 1))
FLIP_V: Matrix = ((1, 0), (0, -1))
ROTATE_RIGHT: Matrix = ((0, -1), (1, 0))  # clockwise: the top goes to the right
ROTATE_LEFT: Matrix = ((0, 1), (-1, 0))


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)) for i in range(2))  # type: ignore[return-value]


@dataclass(frozen=True)
class DisplayOrientation:
    """How the picture is turned on screen: ``matrix`` maps image directions (x right, y down) to
    screen directions; one of the eight flips and quarter turns. Operations compose as the user
    sees them: "flip horizontal" always flips what is on screen left-right."""

    matrix: Matrix = IDENTITY

    def then(self, op: Matrix) -> DisplayOrientation:
        return DisplayOrientation(_mul(op, self.matrix))

    @property
    def is_identity(self) -> bool:
        return self.matrix == IDENTITY

    def display_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the picture on screen."""
        h, w = shape
        return (w, h) if self.matrix[0][0] == 0 else (h, w)

    def affine(self, shape: tuple[int, int]) -> tuple[float, float, float, float, float, float]:
        """(m11, m12, m21, m22, dx, dy): display = M @ image + d, with the picture on screen
        spanning [0, cols] x [0, rows] of :meth:`display_shape`."""
        h, w = shape
        dh, dw = self.display_shape(shape)
        (a, b), (c, d) = self.matrix
        cx, cy = w / 2, h / 2
        return (a, b, c, d, dw / 2 - (a * cx + b * cy), dh / 2 - (c * cx + d * cy))

    def orient(self, array):
        """``array`` (rows, cols[, ...]) as it appears on screen: a numpy view, never a copy."""
        (a, b), (c, _d) = self.matrix
        if a == 0:  # rows and columns swap: display = a.T[::c, ::b]
            return array.swapaxes(0, 1)[::c, ::b]
        return array[::self.matrix[1][1], ::a]

    def markers(self, markers: OrientationMarkers | None) -> OrientationMarkers | None:
        """The edge markers once the picture is turned: each screen edge shows the patient
        direction of the image edge that now lies there."""
        if markers is None:
            return None
        by_direction = {(-1, 0): markers.left, (1, 0): markers.right, (0, -1): markers.top, (0, 1): markers.bottom}
        (a, b), (c, d) = self.matrix

        def at(dx: int, dy: int) -> str:  # image direction = M^T @ screen direction (M is orthogonal)
            return by_direction[(a * dx + c * dy, b * dx + d * dy)]

        return OrientationMarkers(left=at(-1, 0), right=at(1, 0), top=at(0, -1), bottom=at(0, 1))

    def describe(self) -> str:
        """Short words for the overlay ("" when not turned)."""
        names = {IDENTITY: "", FLIP_H: "Flip H", FLIP_V: "Flip V", ROTATE_RIGHT: "Rot 90° R",
                 ROTATE_LEFT: "Rot 90° L", ((-1, 0), (0, -1)): "Rot 180°",
                 ((0, 1), (1, 0)): "Rot 90° R, flip H", ((0, -1), (-1, 0)): "Rot 90° L, flip H"}
        return names[self.matrix]
