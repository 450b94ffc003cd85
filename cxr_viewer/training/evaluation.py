"""Evaluate a model on labelled images: the same preprocessing and scoring as the viewer."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Generator, Sequence

import numpy as np

from cxr_viewer.ai.inference import Scorer, WorklistRow
from cxr_viewer.ai.model import HEADS
from cxr_viewer.common.errors import UserError
from cxr_viewer.common.tasks import NEVER_CANCELLED, Cancelled, CancelToken, Progress
from cxr_viewer.io.study import OpenError
from cxr_viewer.training.data import DataError, Sample, choose_validation, scan_dataset
from cxr_viewer.training.engine import CLASS_NAMES, one_line
from cxr_viewer.training.metrics import binary_report, format_report


@dataclass(frozen=True)
class EvaluationResult:
    split: str
    heads: dict  # head -> binary_report dict
    per_image: list  # dicts: path, labels, probabilities
    skipped: tuple[OpenError, ...]
    #: head -> {reason: count}: images the input checks set aside (outside the head's intended use)
    set_aside: dict = field(default_factory=dict)

    def text(self) -> str:
        parts = [format_report(h, r) for h, r in self.heads.items()]
        for h, reasons in self.set_aside.items():
            n = sum(reasons.values())
            lines = [f"{h}: {n} image(s) set aside as outside the head's intended use (not in the metrics):"]
            lines += [f"  {count:5d}  {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])]
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def to_json(self, per_image: bool = False) -> str:
        doc = {"notice": "Research use only. Not for diagnostic use.", "split": self.split,
               "heads": {h: {k: v for k, v in r.items() if k not in ("roc_curve",)} for h, r in self.heads.items()},
               "skipped": [vars(e) for e in self.skipped],
               "set_aside": {h: {"images": sum(r.values()), "reasons": r} for h, r in self.set_aside.items()}}
        if per_image:
            doc["images"] = self.per_image
        return json.dumps(doc, indent=2)


NON_FINITE = "the model gave no finite score for this image (NaN or infinity); it is not scored"


def _checked(row: WorklistRow) -> WorklistRow:
    """A row whose scores are all finite numbers in [0, 1] (or None), else an error row: no NaN or
    infinity ever reaches a report, a table or JSON."""
    if row.error:
        return replace(row, probabilities={h: None for h in row.probabilities})
    for p in row.probabilities.values():
        if p is not None and not (math.isfinite(p) and 0.0 <= p <= 1.0):
            return WorklistRow(row.path, {h: None for h in row.probabilities}, NON_FINITE)
    return row


def score_rows(scorer: Scorer, refs: Sequence, batch_size: int = 8, cancel: CancelToken = NEVER_CANCELLED,
               score_anyway: bool = False) -> Generator[WorklistRow, None, int]:
    """One row per input, scored or with its one-line reason: a batch never fails as a whole.

    Runs :func:`score_many_task`; should it stop on a fault it did not turn into a per-file error,
    the images not yet reported are scored one at a time, so only the file(s) at fault are listed as
    failed. Non-finite scores become errors (:func:`_checked`). Cancelled propagates. Returns the
    number of images scored.
    """
    from cxr_viewer.ai.inference import score_many_task

    seen: Counter = Counter()
    scored = 0
    try:
        for row in score_many_task(scorer, list(refs), batch_size=batch_size, cancel=cancel,
                                   score_anyway=score_anyway):
            seen[row.path] += 1
            row = _checked(row)
            scored += not row.error
            yield row
        return scored
    except Cancelled:
        raise
    except Exception:  # noqa: BLE001 - isolated below, file by file
        pass
    left = []
    for ref in refs:
        if seen[ref.path]:
            seen[ref.path] -= 1
        else:
            left.append(ref)
    for ref in left:
        cancel.raise_if_cancelled()
        try:
            rows = list(score_many_task(scorer, [ref], batch_size=1, cancel=cancel, score_anyway=score_anyway))
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - this file is listed with its reason, the batch goes on
            rows = [WorklistRow(ref.path, {h: None for h in scorer.head_names}, f"cannot score: {one_line(exc)}")]
        for row in rows:
            row = _checked(row)
            scored += not row.error
            yield row
    return scored


def select_samples(data_dir: str, split: str, model_training: dict | None = None,
                   labels_csv: str | None = None) -> tuple[list[Sample], str]:
    """``split``: ``test`` (a Kaggle root's test/ folder, or the folder itself when it holds class
    folders), or ``validation``: the split the model was chosen on, re-derived from its metadata
    (ratio and the split's seed), so the model card's numbers can be reproduced."""
    scan = scan_dataset(data_dir, labels_csv)
    if split == "validation":
        cfg = (model_training or {}).get("config") or {}
        ratio = float(cfg.get("val_split", 0.1))
        seed = int(cfg["split_seed"] if cfg.get("split_seed") is not None else cfg.get("seed", 0))
        if labels_csv is None and cfg.get("labels_csv"):
            scan = scan_dataset(data_dir, cfg["labels_csv"])
        _, val, note = choose_validation(scan, ratio, seed, cfg.get("split_by", "patient"))
        return val, note
    if "test" in scan.splits:
        return scan.splits["test"], "the test/ split"
    if set(scan.splits) & {"val"} or os.path.isdir(os.path.join(data_dir, "train")):
        raise DataError(f"{data_dir} has no test/ split; pass --split validation for the model's validation split")
    return scan.splits.get("train", []), f"all labelled images under {data_dir}"


def evaluate_task(scorer: Scorer, samples: list[Sample], split_note: str, batch_size: int = 16,
                  bootstrap: int = 1000, cancel: CancelToken = NEVER_CANCELLED, score_anyway: bool = False
                  ) -> Generator[Progress, None, EvaluationResult]:
    """Metrics per trained head on the images its input checks let through (all of them with
    ``score_anyway``); how many each check set aside, and why, is reported beside them."""
    from cxr_viewer.io.index import read_any

    if not samples:
        raise DataError("no labelled images to evaluate")
    refs, labels, skipped = [], {}, []
    for s in samples:
        try:
            refs.append(read_any(s.path)[0])
            labels[s.path] = s.labels
        except Exception as exc:  # noqa: BLE001 - listed, never fatal
            skipped.append(OpenError(s.path, str(exc) if isinstance(exc, UserError) else one_line(exc)))
    rows = []
    done = 0
    for row in score_rows(scorer, refs, batch_size=batch_size, cancel=cancel, score_anyway=score_anyway):
        done += 1
        if row.error:
            skipped.append(OpenError(row.path, row.error))
        else:
            rows.append(row)
        if done % 20 == 0 or done == len(refs):
            yield Progress("evaluating", done, len(refs), row.path)
    reports = {}
    per_image = []
    set_aside: dict = {}
    for row in rows:
        per_image.append({"path": row.path, "labels": dict(zip(HEADS, labels[row.path])),
                          "probabilities": row.probabilities, "statuses": row.statuses, "reasons": row.reasons})
    for j, h in enumerate(HEADS):
        if h not in scorer.trained:
            continue
        for r in rows:
            if labels[r.path][j] is not None and r.probabilities.get(h) is None:
                why = reason_kind(r.reasons.get(h, ""))
                set_aside.setdefault(h, Counter())[why] += 1
        pairs = [(labels[r.path][j], r.probabilities[h]) for r in rows
                 if labels[r.path][j] is not None and r.probabilities.get(h) is not None]
        if not pairs:
            continue
        y = np.array([a for a, _ in pairs])
        p = np.array([b for _, b in pairs])
        reports[h] = binary_report(y, p, scorer.meta.heads[h].threshold, CLASS_NAMES[h], bootstrap=bootstrap)
    if not reports and not set_aside:
        raise DataError("none of the images has a label for a head this model has trained")
    return EvaluationResult(split_note, reports, per_image, tuple(skipped),
                            {h: dict(c) for h, c in set_aside.items()})


def reason_kind(reason: str) -> str:
    """The kind of a set-aside reason, for counting: its words before the first parenthesis."""
    text = reason.split(": ", 1)[1] if ": " in reason else reason
    return (text.split("(")[0].split(";")[0].strip() or "outside intended use")


def evaluate_test_split_task(model_path: str, data_dir: str, device: str = "auto",
                             cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, EvaluationResult]:
    """A freshly trained model on the data's own ``test/`` split (the training dialog runs this
    when the folder has one): load it, score the test images through the input checks, report."""
    yield Progress("evaluating", 0, 1, "loading the model")
    scorer = Scorer.from_file(model_path, device)
    samples, note = select_samples(data_dir, "test", scorer.meta.training)
    result = yield from evaluate_task(scorer, samples, note, bootstrap=200, cancel=cancel)
    return result


def _units(samples: list[Sample], spec, cancel: CancelToken, anatomy=None) -> Generator[Progress, None, tuple]:
    """(units (N, S, S) float32 in [0, 1], kept samples, unreadable ones): the one preprocessing
    function's output through the training cache, as training saw these images (``anatomy``: the
    one that finds the lung box of a ``crop="lungs"`` spec)."""
    from cxr_viewer.training.data import PreprocessCache, default_cache_dir
    from cxr_viewer.training.engine import prepare_images

    stored, kept, bad = yield from prepare_images(samples, PreprocessCache(default_cache_dir(), spec, anatomy), cancel,
                                                  "reading images")
    return stored.astype(np.float32) / 65535.0, kept, bad


def evaluate_shifted_task(scorer: Scorer, samples: list[Sample], split_note: str, batch_size: int = 32,
                          cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, dict]:
    """The model's heads on ``samples`` as they are and under every shift of ``training.shift``
    (each applied before the one preprocessing function normalises the image), at the model's own
    thresholds. The heads alone are measured: the input checks are not applied."""
    from cxr_viewer.ai.preprocess import standardise
    from cxr_viewer.training.shift import shift_report, shifted_set, whole_spec

    spec = scorer.meta.preprocessing
    units, kept, bad = yield from _units(samples, spec, cancel, scorer.anatomy)
    if not kept:
        raise DataError("no readable labelled images to evaluate")
    whole = units
    if whole_spec(spec) != spec:  # the images change first; the lung box and equalisation come after
        whole, _, _ = yield from _units(kept, whole_spec(spec), cancel)
    sh, src, kinds = yield from shifted_set(whole, spec, cancel=cancel, anatomy=scorer.anatomy)

    def probs(u: np.ndarray, stage: str) -> np.ndarray:
        out = []
        for i in range(0, len(u), batch_size):
            cancel.raise_if_cancelled()
            p, _finite = scorer.batch_probabilities(standardise(u[i:i + batch_size], spec))
            out.append(p)
            yield Progress(stage, min(i + batch_size, len(u)), len(u))
        return np.concatenate(out)

    p_plain = yield from probs(units, "scoring validation images")
    p_shift = yield from probs(sh, "scoring shifted images")
    heads = {}
    for j, h in enumerate(HEADS):
        if h not in scorer.trained:
            continue
        k = scorer.head_names.index(h)
        y = np.array([s.labels[j] if s.labels[j] is not None else -1 for s in kept])
        m, ms = y >= 0, y[src] >= 0
        if len(np.unique(y[m])) < 2:
            continue
        thr = scorer.meta.heads[h].threshold
        heads[h] = {"threshold": thr,
                    "validation": shift_report(y[m], p_plain[m, k], ["none"] * int(m.sum()), thr)["all"],
                    "shifted": shift_report(y[src][ms], p_shift[ms, k], [kk for kk, ok in zip(kinds, ms) if ok], thr)}
    if not heads:
        raise DataError("none of the images has both classes for a head this model has trained")
    return {"notice": "Research use only. Not for diagnostic use.", "split": split_note, "images": len(kept),
            "shifted_images": int(len(sh)), "skipped": [vars(e) for e in bad], "heads": heads}


def heatmap_lung_share_task(scorer: Scorer, anatomy, samples: list[Sample], head: str = "pneumonia",
                            positives_only: bool = True, batch_size: int = 16,
                            cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, dict]:
    """How much of each heatmap (Grad-CAM, as the viewer shows it) lies inside the lung fields the
    anatomy model outlines: per image sum(heatmap * lungs) / sum(heatmap), on the labelled
    positives of ``head`` (all labelled images with ``positives_only=False``). A heatmap that
    lights the heart, mediastinum, markers or leads scores low. Two references come with it: the
    lungs' share of the image (what an evenly spread heatmap scores) and what a heatmap as coarse as
    Grad-CAM scores when it lights both lungs evenly and nothing else: each image's own lung outline
    averaged over the model's feature grid (7 x 7 at 224 px) and upsampled the same way (a heatmap
    on one spot deep inside a lung can score more)."""
    from cxr_viewer.ai.preprocess import map_over_image, standardise, unit_and_box
    from cxr_viewer.training.shift import whole_spec

    j = HEADS.index(head)
    chosen = [s for s in samples if s.labels[j] is not None and (s.labels[j] == 1 or not positives_only)]
    if not chosen:
        raise DataError(f"no labelled images for the {head} head")
    spec = scorer.meta.preprocessing
    # whole images (the percentile window only: what the anatomy model reads); a lung-box model's
    # input is cut from them with the lungs found here, and its heatmap put back where the box lies,
    # so that every model is measured on the whole image
    whole, _kept, _bad = yield from _units(chosen, whole_spec(spec), cancel)
    k = scorer.head_names.index(head)
    size = spec.input_size
    shares, in_lung_area, ceiling = [], [], []
    for i in range(0, len(whole), batch_size):
        cancel.raise_if_cancelled()
        w = whole[i:i + batch_size]
        lungs = anatomy.lungs_of_units(w, size)
        inputs = [unit_and_box(x, spec, lu) for x, lu in zip(w, lungs)]
        _p, cams, _d = scorer.probabilities_cams_distances(standardise(np.stack([u for u, _ in inputs]), spec))
        for cam, lu, (_u, box) in zip(cams[:, k], lungs, inputs):
            cam = cam if box is None else map_over_image(cam, box, (size, size), size)
            total = float(cam.sum())
            shares.append(float((cam * lu).sum()) / total if total > 0 else float("nan"))
            in_lung_area.append(float(lu.mean()))
            ceiling.append(_lung_shaped_share(lu, size))
        yield Progress("heatmaps", min(i + batch_size, len(whole)), len(whole))
    s = np.array(shares)
    ok = np.isfinite(s)
    return {"head": head, "images": int(ok.sum()), "positives_only": positives_only,
            "mean_share_in_lungs": float(s[ok].mean()), "median_share_in_lungs": float(np.median(s[ok])),
            "share_below_half": float((s[ok] < 0.5).mean()),
            "lung_area_fraction": float(np.mean(in_lung_area)),
            "lung_shaped_heatmap_share": float(np.nanmean(ceiling)),
            "note": "the share a heatmap spread evenly would have is the lung-area fraction; "
                    "lung_shaped_heatmap_share: a heatmap made of each image's lung outline at the "
                    "model's feature-grid resolution (both lungs lit evenly, as coarsely as Grad-CAM)"}


def _lung_shaped_share(lungs: np.ndarray, size: int) -> float:
    """The lung share of a heatmap that is the lung mask (size x size) averaged over the model's
    feature grid (the ResNet50's last block: size // 32 cells a side), peak-normalised and
    bilinearly upsampled as Grad-CAM is (``inference.grad_cam``, ``Scorer.probabilities_cams_distances``)."""
    import torch
    from torch.nn import functional as F

    grid = max(size // 32, 1)
    t = torch.from_numpy(lungs.astype(np.float32))[None, None]
    cells = F.adaptive_avg_pool2d(t, grid)
    if float(cells.max()) <= 0:
        return float("nan")
    cam = F.interpolate(cells / cells.max(), size=lungs.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return float((cam * lungs).sum() / cam.sum())
