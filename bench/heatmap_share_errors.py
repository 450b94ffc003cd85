"""Does a heatmap's share in the lungs flag wrong answers? (If it did, the viewer could warn when a
score's evidence lies outside the lungs.) The Kermany validation split re-derived from MODEL's
metadata, each image as it is and with the shifts that keep the geometry (edge enhancement, blur,
noise, JPEG, high-contrast curve): per image and shift, the pneumonia probability, the Grad-CAM share
inside the lungs the anatomy model finds on the unshifted image, and whether the answer at the
model's threshold was right; then how well a low share picks out the wrong answers (AUROC; 0.5 =
not at all). Images of one patient and shifts of one image are not independent: read it coarsely.

    python bench/heatmap_share_errors.py MODEL [KERMANY_ROOT]

Needs ../shared/data/kermany (or KERMANY_ROOT). Research use only.
"""
from __future__ import annotations

import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
from cxr_viewer.ai.inference import Scorer
from cxr_viewer.ai.preprocess import preprocess_unit, standardise
from cxr_viewer.common.tasks import NEVER_CANCELLED, run_to_completion
from cxr_viewer.training.evaluation import _units, select_samples
from cxr_viewer.training.shift import shifted, whole_spec

SHIFTS_KEEPING_GEOMETRY = (None, "edge enhancement", "blur", "noise", "JPEG q25", "high-contrast curve")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    model = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/kermany"
    sc = Scorer.from_file(model, "cpu")
    an = AnatomyModel.from_file(default_anatomy_path())
    spec = sc.meta.preprocessing
    thr = sc.meta.heads["pneumonia"].threshold
    samples, _ = select_samples(root, "validation", sc.meta.training)
    whole, kept, _bad = run_to_completion(_units(samples, whole_spec(spec), NEVER_CANCELLED))
    y = np.array([s.labels[0] for s in kept])
    size = spec.input_size
    idx, prob, share = [], [], []
    for i in range(0, len(whole), 16):
        w = whole[i:i + 16]
        lungs = an.lungs_of_units(w, size)
        for sh in SHIFTS_KEEPING_GEOMETRY:
            units = np.stack([preprocess_unit(x, spec=spec) if sh is None else shifted(x, sh, spec, 7 + i + j)
                              for j, x in enumerate(w)])
            p, cams, _ = sc.probabilities_cams_distances(standardise(units, spec))
            for j, (cam, lu) in enumerate(zip(cams[:, 0], lungs)):
                idx.append(i + j)
                prob.append(float(p[j, 0]))
                share.append(float((cam * lu).sum() / max(cam.sum(), 1e-9)))
    idx, prob, share = np.array(idx), np.array(prob), np.array(share)
    yy = y[idx]
    wrong = (prob >= thr) != (yy == 1)
    print(f"{model}: {len(idx)} images x shifts, {int(wrong.sum())} wrong at threshold {thr:.3f} "
          f"({int((wrong & (yy == 1)).sum())} missed pneumonia, {int((wrong & (yy == 0)).sum())} false alarms)")
    for name, m in (("pneumonia (missed vs found)", yy == 1), ("normal (false alarm vs not)", yy == 0),
                    ("all", np.ones_like(wrong))):
        if wrong[m].any() and (~wrong[m]).any():
            a = roc_auc_score(wrong[m], -share[m])
            print(f"{name}: AUROC of a low share for a wrong answer {a:.3f}; median share wrong "
                  f"{np.median(share[m & wrong]):.3f}, right {np.median(share[m & ~wrong]):.3f} "
                  f"({int(wrong[m].sum())} wrong)")


if __name__ == "__main__":
    main()
