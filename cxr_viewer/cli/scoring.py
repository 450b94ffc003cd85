"""``predict``: score images with a model, one record per image (JSON or CSV)."""

from __future__ import annotations

import argparse
import json
import sys

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.cli.common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, ProgressBar, load_scorer


def _predict(args: argparse.Namespace) -> int:
    import csv

    from cxr_viewer.ai.inference import score_many_task
    from cxr_viewer.ai.model import HEADS
    from cxr_viewer.io.index import index

    scorer = load_scorer("predict", args.model, args.device)
    if scorer is None:
        return EXIT_BAD_INPUT
    model_path = scorer.path
    found = index(args.paths)
    refs = list(found.images())
    records: list[dict] = []
    for err in found.errors:
        records.append({"path": err.path, "error": err.reason})
    bar = ProgressBar(len(refs), "scoring")
    heads = {h: scorer.meta.heads[h] for h in scorer.head_names}
    gen = score_many_task(scorer, refs, batch_size=args.batch_size)
    while True:
        try:
            row = next(gen)
        except StopIteration:
            break
        rec: dict = {"path": row.path}
        for h in HEADS:
            p = row.probabilities.get(h) if h in heads else None
            rec[f"{h}_probability"] = None if p is None else round(p, 6)
            rec[f"{h}_label"] = None if p is None else ("positive" if p >= heads[h].threshold else "negative")
        rec.update(model_sha256=scorer.meta.weights_sha256, device=scorer.choice.label)
        if row.error:
            rec["error"] = row.error
        records.append(rec)
        bar.step()
    failed = [r for r in records if r.get("error")]
    if args.csv:
        cols = ["path", *[f"{h}_{k}" for h in HEADS for k in ("probability", "label")], "model_sha256", "device", "error"]
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    else:
        doc = {"notice": RESEARCH_NOTICE, "model": {"path": model_path, "name": scorer.meta.name,
               "version": scorer.meta.version, "sha256": scorer.meta.weights_sha256,
               "trained_heads": scorer.trained}, "device": scorer.choice.label, "results": records}
        json.dump(doc, sys.stdout, indent=2 if args.json else None)
        sys.stdout.write("\n")
    for r in failed:
        print(f"cxr-viewer predict: {r['path']}: {r['error']}", file=sys.stderr)
    if not [r for r in records if not r.get("error")]:
        return EXIT_BAD_INPUT
    return EXIT_FAIL if failed else EXIT_OK


def add_parsers(sub) -> None:
    p_pred = sub.add_parser("predict", help="score images with a model (research use only)")
    p_pred.add_argument("paths", nargs="+", help="files or folders (recursive)")
    p_pred.add_argument("--model", help="model .safetensors (default: models/default.safetensors)")
    p_pred.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p_pred.add_argument("--batch-size", type=int, default=8)
    fmt = p_pred.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="indented JSON on stdout (JSON is the default)")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    p_pred.set_defaults(func=_predict)
