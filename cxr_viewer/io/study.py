"""The study model: Patient -> Study -> Series -> Image, as plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

SourceKind = Literal["dicom", "raster"]


def iso_date(value: str) -> str:
    """DICOM DA "20040826" -> "2004-08-26"; anything else as written."""
    v = value.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:]}" if len(v) == 8 and v.isdigit() else v


@dataclass(frozen=True)
class Spacing:
    """Physical size of one pixel, row then column, in mm, and how to label lengths.

    ``label`` is ``"mm"`` for PixelSpacing (at the patient), ``"mm (detector)"`` for
    ImagerPixelSpacing, and ``"mm (magnification-corrected)"`` when ImagerPixelSpacing was
    divided by EstimatedRadiographicMagnificationFactor.
    """

    row_mm: float
    col_mm: float
    label: str
    source: str

    def length_mm(self, d_rows: float, d_cols: float) -> float:
        return float(((d_rows * self.row_mm) ** 2 + (d_cols * self.col_mm) ** 2) ** 0.5)


@dataclass(frozen=True)
class ImageMeta:
    patient_name: str = ""
    patient_id: str = ""
    sex: str = ""
    age: str = ""
    birth_date: str = ""
    study_date: str = ""
    study_description: str = ""
    series_description: str = ""
    modality: str = ""
    view_position: str = ""
    laterality: str = ""
    body_part: str = ""
    rows: int = 0
    cols: int = 0
    frames: int = 1
    photometric: str = ""
    bits_stored: int = 0
    transfer_syntax: str = ""
    spacing: Spacing | None = None
    sop_class: str = ""
    institution: str = ""
    #: PatientOrientation (0020,0020) as written, e.g. "L\\F": the patient directions of the rows
    #: (left to right on screen) and of the columns (top to bottom); "" when absent
    patient_orientation: str = ""

    def display_items(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a metadata panel, in reading order."""
        sp = self.spacing
        spacing = (
            f"{sp.row_mm:.4g} x {sp.col_mm:.4g} {sp.label} ({sp.source})" if sp else "unknown (lengths in px)"
        )
        return [
            ("Patient name", self.patient_name),
            ("Patient ID", self.patient_id),
            ("Sex", self.sex),
            ("Age", self.age),
            ("Birth date", iso_date(self.birth_date)),
            ("Study date", iso_date(self.study_date)),
            ("Study", self.study_description),
            ("Series", self.series_description),
            ("Modality", self.modality),
            ("View position", self.view_position),
            ("Laterality", self.laterality),
            ("Body part", self.body_part),
            ("Institution", self.institution),
            ("Patient orientation", self.patient_orientation),
            ("Size", f"{self.cols} x {self.rows} px" + (f", {self.frames} frames" if self.frames > 1 else "")),
            ("Pixel spacing", spacing),
            ("Photometric", self.photometric),
            ("Bits stored", str(self.bits_stored) if self.bits_stored else ""),
            ("Transfer syntax", self.transfer_syntax),
        ]


@dataclass(frozen=True)
class ImageRef:
    """One image file (possibly multi-frame) found by indexing; pixels are decoded on demand."""

    path: str
    kind: SourceKind
    meta: ImageMeta
    sop_instance_uid: str = ""
    instance_number: int | None = None

    @property
    def frames(self) -> int:
        return self.meta.frames


@dataclass(frozen=True)
class SeriesNode:
    uid: str
    description: str
    modality: str
    images: tuple[ImageRef, ...]


@dataclass(frozen=True)
class StudyNode:
    uid: str
    date: str
    description: str
    series: tuple[SeriesNode, ...]


@dataclass(frozen=True)
class PatientNode:
    key: str
    name: str
    patient_id: str
    studies: tuple[StudyNode, ...]


@dataclass(frozen=True)
class OpenError:
    """A file or folder that could not be opened, with a one-line reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class StudyIndex:
    patients: tuple[PatientNode, ...] = ()
    errors: tuple[OpenError, ...] = field(default_factory=tuple)
    #: DICOM presentation states found (GSPS: annotations of the images, not images themselves)
    presentation_states: tuple[str, ...] = field(default_factory=tuple)

    def images(self) -> Iterator[ImageRef]:
        for p in self.patients:
            for st in p.studies:
                for se in st.series:
                    yield from se.images

    @property
    def image_count(self) -> int:
        return sum(1 for _ in self.images())

    def to_dict(self) -> dict:
        return asdict(self)
