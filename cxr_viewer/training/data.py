"""Training data: scanning Kaggle-style folders and label CSVs, patient-grouped splits, a cache.

What trains which head:
- ``pneumonia``: class folders NORMAL (0) and PNEUMONIA (1) (names case-insensitive; BACTERIA,
  VIRUS and BACTERIAL/VIRAL PNEUMONIA count as 1).
- ``lung_cancer_association``: positive = a nodule or mass is present, whatever its pathology
  (folders NODULE, MASS, MALIGNANT, BENIGN, LUNG_CANCER); negative = no nodule (NON_NODULE,
  NO_NODULE). In a labels CSV (JSRT's ``jsrt_metadata.csv``), ``state`` malignant or benign is
  positive and non-nodule negative. The head scores the finding, not its pathology.
- An image has no label for a head it was not annotated for (a Kermany NORMAL image says
  nothing about nodules); it does not contribute to that head's loss.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from cxr_viewer.ai.model import HEADS
from cxr_viewer.ai.preprocess import PreprocessSpec, preprocess_unit
from cxr_viewer.common.errors import UserError
from cxr_viewer.io.image import open_image
from cxr_viewer.io.study import OpenError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
SPLIT_NAMES = ("train", "val", "test")
MIN_VAL_IMAGES = 100  # a val/ folder smaller than this is not used for model selection

_FOLDER_LABELS: dict[str, tuple[str, int]] = {
    "normal": ("pneumonia", 0),
    "pneumonia": ("pneumonia", 1),
    "bacteria": ("pneumonia", 1),
    "virus": ("pneumonia", 1),
    "bacterial_pneumonia": ("pneumonia", 1),
    "viral_pneumonia": ("pneumonia", 1),
    "nodule": ("lung_cancer_association", 1),
    "mass": ("lung_cancer_association", 1),
    "malignant": ("lung_cancer_association", 1),
    "benign": ("lung_cancer_association", 1),
    "lung_cancer": ("lung_cancer_association", 1),
    "non_nodule": ("lung_cancer_association", 0),
    "no_nodule": ("lung_cancer_association", 0),
}
_CSV_STATES = {"malignant": 1, "benign": 1, "non-nodule": 0, "non_nodule": 0, "nodule": 1, "mass": 1,
               "normal": 0, "none": 0}


class DataError(UserError):
    """The data cannot train a model; ``str(err)`` says why, before any training starts."""


@dataclass(frozen=True)
class Sample:
    path: str
    labels: tuple[int | None, ...]  # one per head in HEADS order; None = not labelled
    patient: str
    source: str  # the class folder or CSV it came from

    def label(self, head: str) -> int | None:
        return self.labels[HEADS.index(head)]


@dataclass
class DatasetScan:
    root: str
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    skipped: list[OpenError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(Counter(s.source for s in samples).items())) for name, samples in self.splits.items()}

    def summary(self) -> str:
        lines = [f"{self.root}"]
        for name, counts in self.counts().items():
            lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.I),           # Kermany PNEUMONIA: person123_bacteria_456
    re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.I),  # Kermany NORMAL: IM-0115-0001, NORMAL2-IM-0123-0001
)


def patient_id(path: str) -> str:
    """Patient id parsed from a file name; the file's stem when no known pattern matches."""
    name = os.path.basename(path)
    for pattern in _PATIENT_PATTERNS:
        m = pattern.match(name)
        if m:
            return m.group(1).upper()
    return os.path.splitext(name)[0].upper()


def _labels_for(head: str, value: int) -> tuple[int | None, ...]:
    return tuple(value if h == head else None for h in HEADS)


def _list_images(folder: Path) -> Iterable[Path]:
    for dirpath, _dirs, files in os.walk(folder, followlinks=False):
        for f in sorted(files):
            if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."):
                yield Path(dirpath) / f


def _scan_class_folders(split_dir: Path, scan: DatasetScan) -> list[Sample]:
    samples: list[Sample] = []
    try:
        entries = sorted(p for p in split_dir.iterdir() if p.is_dir())
    except OSError as exc:
        scan.skipped.append(OpenError(str(split_dir), f"cannot open folder: {exc.strerror}"))
        return samples
    for class_dir in entries:
        key = class_dir.name.lower().replace(" ", "_").replace("-", "_")
        if key not in _FOLDER_LABELS:
            scan.notes.append(f"folder {class_dir.name!r} in {split_dir.name} is not a known class; ignored")
            continue
        head, value = _FOLDER_LABELS[key]
        for path in _list_images(class_dir):
            samples.append(Sample(str(path), _labels_for(head, value), patient_id(str(path)), class_dir.name.upper()))
    return samples


def read_labels_csv(csv_path: str, images_dir: str | None = None) -> list[Sample]:
    """A labels CSV with a file column (``study_id``/``file``/``path``/``image``) and ``state``
    (JSRT: malignant / benign / non-nodule) or ``label`` (0/1) for the lung-cancer association head."""
    base = Path(images_dir) if images_dir else Path(csv_path).parent / "images"
    if not base.is_dir():
        base = Path(csv_path).parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return _read_labels(csv.DictReader(f), csv_path, base)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise DataError(f"cannot read the labels CSV {csv_path}: {reason}") from None


def _read_labels(reader: csv.DictReader, csv_path: str, base: Path) -> list[Sample]:
    samples = []
    cols = {c.lower(): c for c in reader.fieldnames or []}
    file_col = next((cols[c] for c in ("study_id", "file", "path", "image", "filename") if c in cols), None)
    state_col = next((cols[c] for c in ("state", "label", "nodule") if c in cols), None)
    if file_col is None or state_col is None:
        raise DataError(f"{csv_path}: needs a file column (study_id/file/path/image) and a state or label column")
    for row in reader:
        raw = str(row[state_col] or "").strip().lower()
        value = _CSV_STATES.get(raw)
        if value is None and raw in ("0", "1"):
            value = int(raw)
        if value is None:
            continue
        if not row.get(file_col):
            continue
        path = base / row[file_col]
        source = "NODULE" if value else "NON_NODULE"
        samples.append(Sample(str(path), _labels_for("lung_cancer_association", value),
                              patient_id(str(path)), source))
    return samples


def scan_dataset(root: str, labels_csv: str | None = None) -> DatasetScan:
    """Scan a Kaggle-style root (split folders with class folders) or a single split folder."""
    rootp = Path(root)
    scan = DatasetScan(str(rootp))
    if not rootp.is_dir():
        raise DataError(f"{root}: not a folder")
    try:
        children = {p.name.lower(): p for p in rootp.iterdir() if p.is_dir()}
    except OSError as exc:
        raise DataError(f"{root}: cannot open folder: {exc.strerror}") from None
    split_dirs = {name: children[name] for name in SPLIT_NAMES if name in children}
    if split_dirs:
        for name, d in split_dirs.items():
            scan.splits[name] = _scan_class_folders(d, scan)
    else:
        scan.splits["train"] = _scan_class_folders(rootp, scan)
    if labels_csv:
        scan.splits.setdefault("train", []).extend(read_labels_csv(labels_csv))
    return scan


def validate_for_training(samples: list[Sample]) -> dict[str, Counter]:
    """Per head, the count of each label; raises DataError when nothing can train."""
    if not samples:
        raise DataError("no images found: expected class folders such as NORMAL and PNEUMONIA")
    per_head = {h: Counter(s.label(h) for s in samples if s.label(h) is not None) for h in HEADS}
    trainable = {h: c for h, c in per_head.items() if c}
    if not trainable:
        raise DataError("no labelled images found")
    for head, counts in trainable.items():
        for cls in (0, 1):
            if counts.get(cls, 0) == 0:
                missing = "negative" if cls == 0 else "positive"
                raise DataError(f"the {head} head has only one class: no {missing} images "
                                f"(an empty class folder?); both classes are needed to train")
    return per_head


def grouped_split(samples: list[Sample], val_ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A validation split stratified by class and grouped by patient (no patient on both sides).

    Uses scikit-learn's StratifiedGroupKFold with round(1 / val_ratio) folds and takes one fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < val_ratio < 0.5:
        raise DataError("the validation ratio must be between 0 and 0.5")
    strata = [s.source for s in samples]
    groups = [s.patient for s in samples]
    n_splits = max(2, round(1.0 / val_ratio))
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise DataError(f"too few patients ({n_groups}) for a {val_ratio:.0%} validation split")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(sgkf.split(np.zeros(len(samples)), strata, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


SPLITS_BY = ("patient", "earliest")


def _series_and_number(patient: str) -> tuple[str, int] | None:
    """``NORMAL2-IM-0123`` -> (``NORMAL2-IM-``, 123); None when the id does not end in a number."""
    m = re.match(r"^(.*?)(\d+)$", patient)
    return (m.group(1), int(m.group(2))) if m else None


def earliest_split(samples: list[Sample], val_ratio: float) -> tuple[list[Sample], list[Sample]]:
    """A validation split of the earliest patients: in each class and each numbered id series
    (Kermany: ``IM-``, ``NORMAL2-IM-``, ``PERSON``), the ``val_ratio`` share of patients with the
    lowest numbers. Sequential ids stand for acquisition order, so this validation was acquired
    apart from the training images (another batch or period, as a new hospital's images are), not
    interleaved with them as a random split is. Patients whose ids carry no number are trained on."""
    if not 0.0 < val_ratio < 0.5:
        raise DataError("the validation ratio must be between 0 and 0.5")
    series: dict[tuple[str, str], dict[int, set[str]]] = {}  # (class, id prefix) -> number -> patient ids
    for s in samples:
        sn = _series_and_number(s.patient)
        if sn is not None:
            series.setdefault((s.source, sn[0]), {}).setdefault(sn[1], set()).add(s.patient)
    # a patient held out in one class is held out in every class (no patient on both sides)
    patients: set[str] = set()
    for by_number in series.values():
        take = int(np.ceil(val_ratio * len(by_number) - 1e-9)) if len(by_number) >= 2 else 0
        for n in sorted(by_number)[:take]:
            patients |= by_number[n]
    if not patients:
        raise DataError("no numbered patient ids (such as IM-0115 or person12) to take the earliest patients from; "
                        "use the patient-grouped split")
    return [s for s in samples if s.patient not in patients], [s for s in samples if s.patient in patients]


def choose_validation(scan: DatasetScan, val_ratio: float, seed: int,
                      by: str = "patient") -> tuple[list[Sample], list[Sample], str]:
    """Use ``val/`` when it has at least MIN_VAL_IMAGES images, else carve from train: grouped by
    patient at random (``by="patient"``) or the earliest patients of each id series (``"earliest"``)."""
    train = scan.splits.get("train", [])
    val = scan.splits.get("val", [])
    if len(val) >= MIN_VAL_IMAGES:
        return train, val, f"the dataset's val/ split ({len(val)} images)"
    note = ""
    if val:
        note = f"val/ has only {len(val)} images, too few to choose a model on; "
    if by == "earliest":
        tr, va = earliest_split(train, val_ratio)
        return tr, va, note + (f"the earliest {val_ratio:.0%} of patients of each class and id series carved out "
                               f"of train (acquired apart from the training images)")
    if by != "patient":
        raise DataError(f"unknown split {by!r}: one of {', '.join(SPLITS_BY)}")
    tr, va = grouped_split(train, val_ratio, seed)
    return tr, va, note + f"{val_ratio:.0%} of train carved out, stratified by class and grouped by patient"


# --- decoded-and-resized cache ------------------------------------------------------------

def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cxr_viewer", "preprocessed")


class PreprocessCache:
    """Caches :func:`preprocess_unit` output per file as uint16 ``.npy`` (keyed by path, size,
    mtime and the preprocessing), so epochs after the first skip decoding. A ``crop="lungs"`` spec
    finds each image's lungs with ``anatomy`` (default: the bundled anatomy model), whose SHA-256
    is part of the key."""

    def __init__(self, folder: str | None, spec: PreprocessSpec, anatomy=None):
        self.spec = spec
        self.anatomy = anatomy
        key = repr(sorted(spec.to_dict().items()))
        if spec.crop == "lungs":
            if self.anatomy is None:
                from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path

                self.anatomy = AnatomyModel.from_file(default_anatomy_path())
            key += self.anatomy.meta.weights_sha256
        tag = hashlib.sha1(key.encode()).hexdigest()[:12]
        self.folder = os.path.join(folder, tag) if folder else None
        if self.folder:
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError:
                self.folder = None  # an unusable cache folder only costs speed: decode every time

    def _key(self, path: str) -> str:
        st = os.stat(path)
        raw = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
        return hashlib.sha1(raw.encode()).hexdigest()

    def load(self, path: str) -> np.ndarray:
        """(size, size) float32 in [0, 1]. Raises ImageOpenError for unreadable images."""
        cached = None
        if self.folder:
            cached = os.path.join(self.folder, self._key(path) + ".npy")
            if os.path.exists(cached):
                try:
                    return np.load(cached, allow_pickle=False).astype(np.float32) / 65535.0
                except (OSError, ValueError):
                    pass  # a damaged cache entry is recomputed
        image = open_image(path)
        unit = preprocess_unit(image.values, image.monochrome1, image.padding, self.spec, self.anatomy)
        if cached:
            tmp = f"{cached}.{os.getpid()}.tmp.npy"
            try:
                np.save(tmp, np.rint(unit * 65535.0).astype(np.uint16), allow_pickle=False)
                os.replace(tmp, cached)
            except OSError:  # a full or read-only cache disk: the image is still good, only not cached
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return unit
