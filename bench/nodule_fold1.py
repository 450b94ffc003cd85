"""A nodule/mass recipe on fold 1 of the cross-validation split, with a learning curve.

    python bench/nodule_fold1.py '{"iterations": 2000, "mine_top": 4, "mine_known": true,
        "hard_share": 0.35, "mine_negatives": 250, "init": "MODEL.safetensors"}' [--at 500,1000,1500]
        [--cache /tmp/nodule_cases.npz]

Trains ``NoduleConfig(**JSON)`` on folds 2-5 of the split ``train-nodule`` uses (seed 0) and prints,
at each ``--at`` iteration and at the end: out-of-fold AUROC on fold 1's JSRT and NIH images, the
share of fold 1's JSRT nodules whose map peak lies within the nodule (radius + 10 mm), and the
same two JSRT figures on every 4th training image (whether the recipe fits its own images). The
rows of models/NODULE_CARD.md's "What was tried" table came from this. Needs ../shared/data/jsrt and
../shared/data/nih; about 20 s per 100 iterations plus 75 s per mining pass on 2 CPU cores.
Research use only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sklearn.metrics import roc_auc_score  # noqa: E402

from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path  # noqa: E402
from cxr_viewer.ai.inference import cpu_supports_bf16  # noqa: E402
from cxr_viewer.common.tasks import run_to_completion  # noqa: E402
from cxr_viewer.training import nodule  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def figures(net, data: nodule.NoduleData, idx: np.ndarray, bf16: bool) -> dict:
    rows = nodule.evaluate_fold(net, data, idx, bf16)
    out = {}
    for source in ("jsrt", "nih"):
        r = [x for x in rows if x["source"] == source]
        if len({x["label"] for x in r}) == 2:
            out[f"{source} AUROC"] = round(roc_auc_score([x["label"] for x in r], [x["logit"] for x in r]), 3)
    hits = [x["peak_hit"] for x in rows if "peak_hit" in x]
    out["peaks on the nodule"] = round(float(np.mean(hits)), 3) if hits else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="NoduleConfig fields as JSON")
    ap.add_argument("--at", default="", help="iterations at which to measure on the way, comma-separated")
    ap.add_argument("--cache", default="", help="the lung boxes' .npz cache (as train-nodule --cache)")
    args = ap.parse_args()
    if not (DATA / "jsrt").is_dir() or not (DATA / "nih").is_dir():
        sys.exit("needs ../shared/data/jsrt and ../shared/data/nih")
    cfg = nodule.NoduleConfig(**{"bf16": cpu_supports_bf16(), **json.loads(args.config)})
    anatomy = AnatomyModel.from_file(default_anatomy_path())
    data = run_to_completion(nodule.load_cases(str(DATA / "jsrt"), str(DATA / "nih"), anatomy, args.cache))
    held = nodule.stratified_group_folds(data, 5, 0)[0]
    train = np.setdiff1d(np.arange(len(data.ids)), held)
    marks = sorted(int(m) for m in args.at.split(",") if m)

    captured = {}
    real_net = nodule.NoduleNet

    class Captured(real_net):  # the network being trained, to measure it on the way
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured["net"] = self

    nodule.NoduleNet = Captured

    def measure(net, tag: str) -> None:
        print(tag, "held-out fold 1:", figures(net, data, held, cfg.bf16),
              "| training images (every 4th):", figures(net, data, train[::4], cfg.bf16),
              f"| {time.time() - t0:.0f} s", flush=True)

    t0 = time.time()
    gen = nodule.train_net(data, train, cfg)
    try:
        while True:
            p = next(gen)
            if p.done % 100 == 1 or "mined" in p.detail:
                print(p.done, p.detail, f"{time.time() - t0:.0f} s", flush=True)
            if marks and "loss" in p.detail and p.done - 1 >= marks[0]:
                measure(captured["net"], f"at {marks.pop(0)}:")
    except StopIteration as stop:
        net = stop.value
    finally:
        nodule.NoduleNet = real_net
    measure(net, f"at {cfg.iterations} (end):")


if __name__ == "__main__":
    main()
