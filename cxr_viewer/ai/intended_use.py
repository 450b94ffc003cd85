"""Each head's intended use, and the header checks made before a number is shown.

A head declares in the model file whom and what it was trained on (:class:`IntendedUse`:
population and age range, views, modalities). Before scoring, :func:`header_reason` reads the
facts a DICOM header gives (Modality, BodyPartExamined, ViewPosition, PatientAge or
PatientBirthDate with StudyDate) and returns a one-line reason when the image lies outside that
use, or None when the header does not rule it out. A PNG has no header: the image-based check
(``ai.gate``) then decides alone.

Qt-free and torch-free: plain data in, plain strings out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from cxr_viewer.io.study import ImageMeta

#: DICOM modalities that are projection radiographs (DR is not a standard code but vendors send it).
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
#: Modalities of a secondary capture or an unspecified one: the header cannot say it is not a radiograph.
NEUTRAL_MODALITIES = ("OT", "SC", "")
#: Body parts a chest radiograph is labelled with (PS3.16 CID 4031 values and common vendor terms).
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "PORT CHEST", "CHEST PA", "CHEST AP", "THORAX PA", "THORAX AP",
                    "TORAX", "TORSO", "")
FRONTAL_VIEWS = ("PA", "AP", "")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LAO", "RAO", "LPO", "RPO")


class IntendedUseError(ValueError):
    """An intended-use block in a model description that cannot be used."""


@dataclass(frozen=True)
class IntendedUse:
    """Whom and what a head was trained on; stored per head in the model's JSON description."""

    population: str  # "children" or "adults": what the words say
    min_age_years: float
    max_age_years: float  # exclusive
    views: tuple[str, ...] = ("PA", "AP")
    modalities: tuple[str, ...] = RADIOGRAPH_MODALITIES

    def __post_init__(self):
        if self.population not in ("children", "adults"):
            raise IntendedUseError(f"intended-use population must be 'children' or 'adults', not {self.population!r}")
        for v in (self.min_age_years, self.max_age_years):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 150:
                raise IntendedUseError("intended-use ages must be numbers of years between 0 and 150")
        if not self.min_age_years < self.max_age_years:
            raise IntendedUseError("intended-use min_age_years must be below max_age_years")
        for name in ("views", "modalities"):
            seq = getattr(self, name)
            if not isinstance(seq, tuple) or not seq or not all(isinstance(s, str) and s for s in seq):
                raise IntendedUseError(f"intended-use {name} must be a non-empty list of strings")

    @property
    def ages(self) -> str:
        lo, hi = self.min_age_years, self.max_age_years
        if self.population == "children":
            return f"aged {lo:g}-{hi - 1:g}" if hi == int(hi) and lo == int(lo) else f"aged {lo:g} to {hi:g}"
        return f"aged {lo:g} or older"

    def describe(self) -> str:
        """One line for the findings panel, the model card and the PDF."""
        return (f"{self.population} {self.ages}; frontal ({'/'.join(self.views)}) chest radiographs "
                f"({'/'.join(self.modalities)} and secondary captures of them)")

    def to_dict(self) -> dict:
        return {"population": self.population, "min_age_years": self.min_age_years,
                "max_age_years": self.max_age_years, "views": list(self.views), "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, d) -> "IntendedUse":
        if not isinstance(d, dict):
            raise IntendedUseError("intended_use must be an object")
        try:
            return cls(population=d["population"], min_age_years=d["min_age_years"],
                       max_age_years=d["max_age_years"],
                       views=tuple(d.get("views", ("PA", "AP"))) if isinstance(d.get("views", []), list) else None,
                       modalities=tuple(d.get("modalities", RADIOGRAPH_MODALITIES))
                       if isinstance(d.get("modalities", []), list) else None)
        except KeyError as exc:
            raise IntendedUseError(f"intended_use lacks {exc.args[0]!r}") from None


#: What the shipped heads were trained on (Kermany: children aged 1-5; JSRT and NIH: adults).
PNEUMONIA_USE = IntendedUse("children", 1, 6)
LUNG_CANCER_USE = IntendedUse("adults", 18, 150)
DEFAULT_USES = {"pneumonia": PNEUMONIA_USE, "lung_cancer_association": LUNG_CANCER_USE}

_AGE = re.compile(r"^(\d{1,3})([DWMY]?)$")  # a bare number ('81', seen in the wild) is read as years


def age_years(meta: ImageMeta) -> tuple[float, str] | None:
    """The patient's age in years from PatientAge ('081Y', '006M', '010W', '003D'), else from
    PatientBirthDate and StudyDate; with the words saying where it came from. None when unknown
    or invalid (a header that contradicts itself is not trusted either way)."""
    text = (meta.age or "").strip().upper()
    m = _AGE.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        years = {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12, "Y": float(n), "": float(n)}[unit]
        return years, f"age {_fmt_age(years)} in the header"
    born, seen = _date(meta.birth_date), _date(meta.study_date)
    if born and seen and born <= seen:
        years = (seen - born).days / 365.25
        return years, f"age {_fmt_age(years)} from the birth and study dates"
    return None


def _fmt_age(years: float) -> str:
    if years < 2:
        return f"{years * 12:.0f} months"
    return f"{int(years)}"


def _date(text: str) -> date | None:
    text = (text or "").strip().replace("-", "").replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        d = date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return d if d.year >= 1900 else None


def header_reason(meta: ImageMeta, use: IntendedUse) -> str | None:
    """Why the header puts this image outside ``use`` (one line), or None when it does not."""
    modality = (meta.modality or "").strip().upper()
    if modality and modality not in use.modalities and modality not in NEUTRAL_MODALITIES:
        return f"not a chest radiograph ({modality} in the header)"
    body = " ".join((meta.body_part or "").strip().upper().replace("_", " ").split())
    if body and body not in CHEST_BODY_PARTS and "CHEST" not in body and "THORA" not in body:
        return f"not a chest image (body part {body} in the header)"
    view = (meta.view_position or "").strip().upper()
    if view in LATERAL_VIEWS or (view and view not in use.views and view not in FRONTAL_VIEWS):
        return f"{'lateral' if view in LATERAL_VIEWS else view} view in the header; this head reads frontal " \
               f"({'/'.join(use.views)}) views"
    found = age_years(meta)
    if found is not None:
        years, where = found
        if not use.min_age_years <= years < use.max_age_years:
            who = "child" if years < 18 else "adult"
            return f"{who} radiograph ({where}); this head was trained on {use.population} {use.ages}"
    return None
