"""The feature-distance input check that ``cxr-viewer train`` now fits for every model it trains
(``engine.fit_input_check``: on the run's own training children, at most 2,000, each as it is and
once shifted; the limit lets 99% of its validation children through), side by side with the one
the default model ships (fitted by ``train-input-check`` on the image check's split of all the
children): the time it adds to a training run, and what each refuses on its own, distance alone,
of the validation children, the JSRT and NIH adults and the shared DICOMs (distances from one
pass of features per image, the real scoring path).

    python bench/input_check_fit.py [--model models/default.safetensors] [--data ../shared/data]

Research use only.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_viewer.ai.gate import FeatureDistance, ood_path  # noqa: E402
from cxr_viewer.ai.inference import Scorer  # noqa: E402
from cxr_viewer.common.tasks import NEVER_CANCELLED, run_to_completion  # noqa: E402
from cxr_viewer.training.data import choose_validation, scan_dataset  # noqa: E402
from cxr_viewer.training.engine import TrainConfig  # noqa: E402
from cxr_viewer.training.intended_use import _distance_features, fit_distance_on  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "default.safetensors"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    data = Path(args.data)
    cfg = TrainConfig(data_dir=str(data / "kermany"), out="")  # the engine's defaults: the split, the limits
    scorer = Scorer.from_file(args.model, "cpu")
    train_s, val_s, note = choose_validation(scan_dataset(cfg.data_dir), cfg.val_split, cfg.seed, cfg.split_by)
    rng = np.random.default_rng(cfg.seed)
    kids = sorted(rng.choice([s.path for s in train_s], cfg.input_check_max_images, replace=False).tolist())
    val = [s.path for s in val_s]
    t0 = time.perf_counter()
    fitted = run_to_completion(fit_distance_on(scorer, kids, val, rng=rng))
    fit_s = time.perf_counter() - t0
    shipped = FeatureDistance.from_file(ood_path(args.model))
    sets = {"validation children (as they are)": val,
            "JSRT adults": sorted(glob.glob(str(data / "jsrt" / "images" / "*"))),
            "NIH adults": sorted(glob.glob(str(data / "nih" / "images" / "*.png"))),
            "shared DICOMs": sorted(p for p in glob.glob(str(data / "dicom" / "**" / "*"), recursive=True)
                                    if Path(p).is_file() and not p.endswith((".md", ".txt", ".json")))}
    rows = {}
    for name, paths in sets.items():
        feats = []
        for p in paths:  # one pass, file by file: a DICOM without pixels or any unreadable file is left out
            try:
                feats.append(run_to_completion(_distance_features(scorer, [p], 0, name, rng, NEVER_CANCELLED))[0])
            except Exception:  # noqa: BLE001 - counted as not an image
                pass
        f = np.concatenate(feats)
        rows[name] = {"images": len(feats),
                      "refused_by_the_shipped_check": round(float((shipped.distance(f) > shipped.threshold).mean()), 4),
                      "refused_by_train_s_check": round(float((fitted.distance(f) > fitted.threshold).mean()), 4)}
    print(json.dumps({"model": args.model, "validation": note, "fitted_on_training_children": len(kids),
                      "fit_seconds": round(fit_s, 1), "limits": {"shipped": round(shipped.threshold, 3),
                                                                  "train_s": round(fitted.threshold, 3)},
                      "sets": rows}, indent=2))


if __name__ == "__main__":
    main()
