"""Evaluate a model on labelled images: the same preprocessing and scoring as the viewer."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Generator

import numpy as np

from cxr_viewer.ai.inference import Scorer
from cxr_viewer.ai.model import HEADS
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.io.study import OpenError
from cxr_viewer.training.data import DataError, Sample, choose_validation, scan_dataset
from cxr_viewer.training.engine import CLASS_NAMES
from cxr_viewer.training.metrics import binary_report, format_report


@dataclass(frozen=True)
class EvaluationResult:
    split: str
    heads: dict  # head -> binary_report dict
    per_image: list  # dicts: path, labels, probabilities
    skipped: tuple[OpenError, ...]

    def text(self) -> str:
        return "\n\n".join(format_report(h, r) for h, r in self.heads.items())

    def to_json(self, per_image: bool = False) -> str:
        doc = {"notice": "Research use only. Not for diagnostic use.", "split": self.split,
               "heads": {h: {k: v for k, v in r.items() if k not in ("roc_curve",)} for h, r in self.heads.items()},
               "skipped": [vars(e) for e in self.skipped]}
        if per_image:
            doc["images"] = self.per_image
        return json.dumps(doc, indent=2)


def select_samples(data_dir: str, split: str, model_training: dict | None = None,
                   labels_csv: str | None = None) -> tuple[list[Sample], str]:
    """``split``: ``test`` (a Kaggle root's test/ folder, or the folder itself when it holds class
    folders), or ``validation``: the split the model was chosen on, re-derived from its metadata
    (ratio and seed), so the model card's numbers can be reproduced."""
    scan = scan_dataset(data_dir, labels_csv)
    if split == "validation":
        cfg = (model_training or {}).get("config") or {}
        ratio, seed = float(cfg.get("val_split", 0.1)), int(cfg.get("seed", 0))
        if labels_csv is None and cfg.get("labels_csv"):
            scan = scan_dataset(data_dir, cfg["labels_csv"])
        _, val, note = choose_validation(scan, ratio, seed)
        return val, note
    if "test" in scan.splits:
        return scan.splits["test"], "the test/ split"
    if set(scan.splits) & {"val"} or os.path.isdir(os.path.join(data_dir, "train")):
        raise DataError(f"{data_dir} has no test/ split; pass --split validation for the model's validation split")
    return scan.splits.get("train", []), f"all labelled images under {data_dir}"


def evaluate_task(scorer: Scorer, samples: list[Sample], split_note: str, batch_size: int = 16,
                  bootstrap: int = 1000, cancel: CancelToken = NEVER_CANCELLED
                  ) -> Generator[Progress, None, EvaluationResult]:
    from cxr_viewer.ai.inference import score_many_task
    from cxr_viewer.io.index import read_any

    if not samples:
        raise DataError("no labelled images to evaluate")
    refs, labels, skipped = [], {}, []
    for s in samples:
        try:
            refs.append(read_any(s.path)[0])
            labels[s.path] = s.labels
        except Exception as exc:  # noqa: BLE001 - listed, never fatal
            skipped.append(OpenError(s.path, str(exc)))
    rows = []
    gen = score_many_task(scorer, refs, batch_size=batch_size, cancel=cancel)
    done = 0
    while True:
        try:
            row = next(gen)
        except StopIteration:
            break
        done += 1
        if row.error:
            skipped.append(OpenError(row.path, row.error))
        else:
            rows.append(row)
        if done % 20 == 0 or done == len(refs):
            yield Progress("evaluating", done, len(refs), row.path)
    reports = {}
    per_image = []
    for row in rows:
        per_image.append({"path": row.path, "labels": dict(zip(HEADS, labels[row.path])),
                          "probabilities": row.probabilities})
    for j, h in enumerate(HEADS):
        if h not in scorer.trained:
            continue
        pairs = [(labels[r.path][j], r.probabilities[h]) for r in rows if labels[r.path][j] is not None]
        if not pairs:
            continue
        y = np.array([a for a, _ in pairs])
        p = np.array([b for _, b in pairs])
        reports[h] = binary_report(y, p, scorer.meta.heads[h].threshold, CLASS_NAMES[h], bootstrap=bootstrap)
    if not reports:
        raise DataError("none of the images has a label for a head this model has trained")
    return EvaluationResult(split_note, reports, per_image, tuple(skipped))
