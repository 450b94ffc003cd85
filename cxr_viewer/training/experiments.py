"""The source paper's experiment grid (optimizers x validation splits), run with our engine and
reported honestly: validation metrics beside the always-majority baseline, plus AUROC."""

from __future__ import annotations

import csv
import io
import json
import os

from cxr_viewer.ai.model import read_meta
from cxr_viewer.common.fileio import write_bytes_atomic
from cxr_viewer.training.data import DataError
from cxr_viewer.training.engine import OPTIMIZERS, train


def run_grid(args, make_config, runner) -> tuple[str, str]:
    optimizers = [o.strip().lower() for o in args.optimizers.split(",") if o.strip()]
    for o in optimizers:
        if o not in OPTIMIZERS:
            raise DataError(f"unknown optimizer {o!r}; choose from {', '.join(OPTIMIZERS)}")
    try:
        splits = [float(v) for v in str(args.val_splits).split(",") if v.strip()]
    except ValueError:
        raise DataError("--val-split takes fractions such as 0.1,0.2") from None
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for vs in splits:
        for opt in optimizers:
            args.out = os.path.join(args.out_dir, f"{opt}_val{int(round(vs * 100))}.safetensors")
            cfg = make_config(args)
            cfg.optimizer, cfg.val_split = opt, vs
            done = runner(train(cfg))
            meta = read_meta(done.model_path)
            for head, m in meta.metrics.get("validation", {}).items():
                ci = m.get("auroc_ci95") or (None, None)
                rows.append({
                    "optimizer": opt, "val_split": vs, "head": head, "best_epoch": done.best_epoch + 1,
                    "n_val": m["n"], "accuracy": m["accuracy"], "majority_accuracy": m["majority_class_accuracy"],
                    "sensitivity": m["sensitivity"], "specificity": m["specificity"], "f1": m["f1"],
                    "auroc": m["auroc"], "auroc_ci_low": ci[0], "auroc_ci_high": ci[1],
                    "threshold": m["threshold"], "model": done.model_path,
                })
    out_csv = os.path.join(args.out_dir, "experiment.csv")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["optimizer"])
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(out_csv, buf.getvalue().encode())

    def f(v, d=4):
        return "n/a" if v is None else f"{v:.{d}f}"

    lines = ["| optimizer | val split | head | best epoch | n val | accuracy | always-majority | sensitivity | "
             "specificity | F1 | AUROC (95% CI) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['val_split']:.0%} | {r['head']} | {r['best_epoch']} | {r['n_val']} | "
                     f"{f(r['accuracy'])} | {f(r['majority_accuracy'])} | {f(r['sensitivity'])} | "
                     f"{f(r['specificity'])} | {f(r['f1'])} | {f(r['auroc'])} ({f(r['auroc_ci_low'], 3)}-"
                     f"{f(r['auroc_ci_high'], 3)}) |")
    md = "\n".join(lines) + "\n\nValidation split only (carved from train, grouped by patient). Research use only."
    write_bytes_atomic(os.path.join(args.out_dir, "experiment.md"), md.encode())
    write_bytes_atomic(os.path.join(args.out_dir, "experiment.json"), json.dumps(rows, indent=2).encode())
    return md, out_csv
