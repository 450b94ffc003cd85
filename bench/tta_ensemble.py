"""Test-time augmentation and model ensembles, measured on the shift-mimicking validation.

    python bench/tta_ensemble.py MODEL [MODEL2 ...]

The validation split of MODEL (re-derived from its metadata, as ``evaluate --split validation``)
plus three shifted copies of each image (``training.shift``, seed 0), each shifted as a whole image
(a lung-box model's box is found after the change). Prints, for MODEL alone, MODEL with test-time
augmentation (logits averaged over the image as it is, gamma 0.8 and 1.25, a 90% centre crop and
a 10% wider field), each further model alone, and the ensemble of all models given (logits
averaged; it costs one pass per model, e.g. a seed ensemble trained with ``train --seed N
--split-seed 0``, which keeps MODEL's validation split): AUROC on the split, AUROC pooled with the
shifted copies, and the specificity at the threshold that keeps sensitivity >= 0.95 on the pooled
images (the shipped model's rule). Needs ../shared/data/kermany. Research use only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sklearn.metrics import roc_auc_score  # noqa: E402

from cxr_viewer.ai.inference import Scorer  # noqa: E402
from cxr_viewer.ai.preprocess import resize_square, standardise, unit_and_box  # noqa: E402
from cxr_viewer.common.tasks import NEVER_CANCELLED, run_to_completion  # noqa: E402
from cxr_viewer.training.evaluation import _units, select_samples  # noqa: E402
from cxr_viewer.training.shift import shifted_set, whole_spec  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "kermany"


def _zoom(u: np.ndarray, f: float) -> np.ndarray:
    n = u.shape[0]
    c = int(round(n * f))
    o = (n - c) // 2
    return resize_square(np.ascontiguousarray(u[o:o + c, o:o + c]), n)


def _wide(u: np.ndarray, f: float) -> np.ndarray:
    n = u.shape[0]
    m = int(round(n * f))
    canvas = np.zeros((m, m), np.float32)
    o = (m - n) // 2
    canvas[o:o + n, o:o + n] = u
    return resize_square(canvas, n)


VIEWS = {"as it is": lambda u: u, "gamma 0.8": lambda u: u ** 0.8, "gamma 1.25": lambda u: u ** 1.25,
         "90% centre": lambda u: _zoom(u, 0.9), "10% wider": lambda u: _wide(u, 1.1)}


def logits(scorer: Scorer, whole: np.ndarray, view) -> np.ndarray:
    """The pneumonia logit of every whole-image unit under ``view`` (the model's own preprocessing after it)."""
    spec = scorer.meta.preprocessing
    out = []
    for i in range(0, len(whole), 64):
        us = [view(u) for u in whole[i:i + 64]]
        us = [unit_and_box(u, spec, box=scorer.anatomy.lung_box(u, pad=spec.crop_pad) if spec.crop == "lungs"
                           else None)[0] for u in us]
        p, _ = scorer.batch_probabilities(standardise(np.stack(us), spec))
        out.append(p[:, scorer.head_names.index("pneumonia")])
    p = np.clip(np.concatenate(out).astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def spec_at_sensitivity(y: np.ndarray, z: np.ndarray, sens: float = 0.95) -> float:
    pos = np.sort(z[y == 1])
    t = pos[int(np.floor((1 - sens) * len(pos)))]
    return float((z[y == 0] < t).mean())


def main() -> None:
    if len(sys.argv) < 2 or not DATA.is_dir():
        sys.exit(__doc__)
    a = Scorer.from_file(sys.argv[1], "cpu", "auto")
    others = [Scorer.from_file(path, "cpu", "auto") for path in sys.argv[2:]]
    whole = whole_spec(a.meta.preprocessing)
    samples, _note = select_samples(str(DATA), "validation", a.meta.training)
    units, kept, _bad = run_to_completion(_units(samples, whole, NEVER_CANCELLED))
    y = np.array([s.labels[0] for s in kept])
    sh, src, _kinds = run_to_completion(shifted_set(units, whole, per_image=3, seed=0))
    whole, yy = np.concatenate([units, sh]), np.concatenate([y, y[src]])
    n = len(y)
    rows = {}
    za = {name: logits(a, whole, v) for name, v in VIEWS.items()}
    rows["model alone"] = za["as it is"]
    rows["model, test-time augmentation (5 views)"] = np.mean(list(za.values()), axis=0)
    if others:
        zs = [logits(b, whole, VIEWS["as it is"]) for b in others]
        for k, z in enumerate(zs, start=2):
            rows[f"model {k} alone"] = z
        rows[f"ensemble of the {len(zs) + 1} models"] = np.mean([za["as it is"], *zs], axis=0)
    print(f"{n} validation images + {len(sh)} shifted copies; specificity at sensitivity >= 0.95 on the pooled images")
    print("| variant | AUROC (split) | AUROC (pooled) | specificity |\n|---|---|---|---|")
    for name, z in rows.items():
        print(f"| {name} | {roc_auc_score(y, z[:n]):.4f} | {roc_auc_score(yy, z):.4f} | {spec_at_sensitivity(yy, z):.4f} |")


if __name__ == "__main__":
    main()
