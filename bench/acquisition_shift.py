"""Acquisition shift: do patients acquired apart from the training images score like those among them?

    python bench/acquisition_shift.py ROOT MODEL [MODEL ...]

ROOT is a Kaggle-style folder whose ``train/`` a model was trained on with ``--split-by earliest``
and whose ``test/`` holds patients drawn at random from the same series, none trained on (e.g. a
shipped model's own validation split, so that it can be measured there too). For every MODEL:
on ``test/`` (random patients) and, for a model trained on ROOT, on its validation split re-derived
from its metadata (the earliest patients of each id series), each as they are and with three
shifted copies of every image (``training.shift``, seed 0): AUROC with a 95% bootstrap interval,
sensitivity / specificity at the model's own threshold, the specificity a threshold chosen on that
very set would give at sensitivity >= 0.95 (an oracle, for the ranking alone) and the median
probability of the normal images. A gap between the two sets of one model is what a random split
hides about new acquisitions. Needs the images under ROOT. Research use only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sklearn.metrics import roc_auc_score  # noqa: E402
from tta_ensemble import VIEWS, logits, spec_at_sensitivity  # noqa: E402

from cxr_viewer.ai.inference import Scorer  # noqa: E402
from cxr_viewer.common.tasks import NEVER_CANCELLED, run_to_completion  # noqa: E402
from cxr_viewer.training.evaluation import _units, select_samples  # noqa: E402
from cxr_viewer.training.metrics import bootstrap_auroc_ci  # noqa: E402
from cxr_viewer.training.shift import shifted_set, whole_spec  # noqa: E402


def row(name: str, y: np.ndarray, z: np.ndarray, threshold: float) -> str:
    a = float(roc_auc_score(y, z))
    lo, hi = bootstrap_auroc_ci(y, z)  # resampling images, 1,000 times, seed 0: as every report here
    t = np.log(threshold / (1 - threshold))
    sens, spec = float((z[y == 1] >= t).mean()), float((z[y == 0] < t).mean())
    med = float(1 / (1 + np.exp(-np.median(z[y == 0]))))
    return (f"| {name} | {int((y == 0).sum())} / {int((y == 1).sum())} | {a:.4f} ({lo:.4f}-{hi:.4f}) | "
            f"{sens:.3f} / {spec:.3f} | {spec_at_sensitivity(y, z):.3f} | {med:.3f} |")


def main() -> None:
    if len(sys.argv) < 3 or not (Path(sys.argv[1]) / "test").is_dir():
        sys.exit(__doc__)
    root = Path(sys.argv[1]).resolve()
    print("| model, set | normal / pneumonia | AUROC (95% CI) | sens / spec at its threshold | "
          "oracle spec at sens >= 0.95 | median p(normal) |\n|---|---|---|---|---|---|")
    for path in sys.argv[2:]:
        scorer = Scorer.from_file(path, "cpu", "auto")
        thr = scorer.meta.heads["pneumonia"].threshold
        whole = whole_spec(scorer.meta.preprocessing)
        cfg = (scorer.meta.training or {}).get("config") or {}
        sets = {"random patients (test/)": select_samples(str(root), "test")[0]}
        if Path(cfg.get("data_dir") or "/nonexistent").resolve() == root:
            sets[f"its validation ({cfg.get('split_by', 'patient')})"] = \
                select_samples(str(root), "validation", scorer.meta.training)[0]
        for set_name, samples in sets.items():
            units, kept, _bad = run_to_completion(_units(samples, whole, NEVER_CANCELLED))
            y = np.array([s.labels[0] for s in kept])
            sh, src, _kinds = run_to_completion(shifted_set(units, whole, per_image=3, seed=0))
            z = logits(scorer, np.concatenate([units, sh]), VIEWS["as it is"])
            label = f"{Path(path).name}, {set_name}"
            print(row(label, y, z[:len(y)], thr))
            print(row(label + " + 3 shifted copies", np.concatenate([y, y[src]]), z, thr), flush=True)


if __name__ == "__main__":
    main()
