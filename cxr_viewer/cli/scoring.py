"""``predict``: score images with a model, one record per image (JSON or CSV)."""

from __future__ import annotations

import argparse
import json
import sys

from cxr_viewer import RESEARCH_NOTICE
from cxr_viewer.cli.common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, ProgressBar, load_scorer


def _predict(args: argparse.Namespace) -> int:
    """Every input is either scored or listed with its reason; stdout is always one complete JSON
    document (strict: no NaN or infinity) or CSV table. Exit 0 all scored, 1 some failed, 2 nothing
    could run (no model, bad model file, no image could be scored)."""
    import csv

    from cxr_viewer.ai.model import HEADS
    from cxr_viewer.io.index import index
    from cxr_viewer.training.evaluation import one_line, score_rows

    try:
        scorer = load_scorer("predict", args.model, args.device)
    except Exception as exc:  # noqa: BLE001 - a model file that fails in a way the loader did not foresee
        print(f"cxr-viewer predict: cannot use model {args.model or 'default'}: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if scorer is None:
        return EXIT_BAD_INPUT
    found = index(args.paths)
    refs = list(found.images())
    heads = {h: scorer.meta.heads[h] for h in scorer.head_names}

    def record(path: str, row=None, error: str = "") -> dict:
        """Every record has the same fields. Per head: ``status`` (scored | outside_intended_use |
        not_available | scored_outside_intended_use; null for a file that failed), ``reason`` (one
        line, null when simply scored) and ``probability`` (null unless scored)."""
        rec: dict = {"path": path}
        for h in HEADS:
            p = None if error or row is None or h not in heads else row.probabilities.get(h)
            if error or row is None:
                status = None
            elif h not in heads:
                status = "not_available"
            else:
                status = row.statuses.get(h, "scored" if p is not None else "not_available")
            rec[f"{h}_status"] = status
            rec[f"{h}_reason"] = (None if error or row is None else
                                  row.reasons.get(h) or ("this model has no such head" if h not in heads else None))
            rec[f"{h}_probability"] = None if p is None else round(p, 6)
            rec[f"{h}_label"] = None if p is None else ("positive" if row.positives.get(h) else "negative")
            box = None if p is None else row.locations.get(h)
            if box is not None:  # where the finding is (image pixels x0, y0, x1, y1), when positive
                rec[f"{h}_box"] = [round(float(v), 1) for v in box]
        rec.update(model_sha256=scorer.meta.weights_sha256, device=scorer.choice.label)
        if scorer.nodule.available:
            rec["nodule_model_sha256"] = scorer.nodule.model.meta.weights_sha256
        if error:
            rec["error"] = error
        return rec

    records = [record(err.path, None, err.reason) for err in found.errors]
    bar = ProgressBar(len(refs), "scoring")
    by_path: dict[str, list] = {}
    for row in score_rows(scorer, refs, batch_size=args.batch_size, score_anyway=args.score_anyway):
        by_path.setdefault(row.path, []).append(row)
        bar.step()
    for ref in refs:  # in the order found; an input the scorer never reported is listed, not dropped
        rows = by_path.get(ref.path)
        row = rows.pop(0) if rows else None
        if row is None:
            records.append(record(ref.path, None, "not scored (the scorer returned no result for it)"))
        else:
            records.append(record(ref.path, row, row.error))
    failed = [r for r in records if r.get("error")]
    if args.csv:
        cols = ["path", *[f"{h}_{k}" for h in HEADS for k in ("status", "probability", "label", "reason")],
                "model_sha256", "device", "error"]
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    else:
        doc = {"notice": RESEARCH_NOTICE, "model": {"path": scorer.path, "name": scorer.meta.name,
               "version": scorer.meta.version, "sha256": scorer.meta.weights_sha256,
               "trained_heads": scorer.trained}, "device": scorer.choice.label, "results": records}
        sys.stdout.write(json.dumps(doc, indent=2 if args.json else None, allow_nan=False) + "\n")
    sys.stdout.flush()
    if not records:
        print("cxr-viewer predict: no images found in " + " ".join(args.paths), file=sys.stderr)
    for r in failed:
        print(f"cxr-viewer predict: {r['path']}: {r['error']}", file=sys.stderr)
    if len(failed) == len(records):
        return EXIT_BAD_INPUT
    return EXIT_FAIL if failed else EXIT_OK


def add_parsers(sub) -> None:
    p_pred = sub.add_parser("predict", help="score images with a model (research use only)")
    p_pred.add_argument("paths", nargs="+", help="files or folders (recursive)")
    p_pred.add_argument("--model", help="model .safetensors (default: models/default.safetensors)")
    p_pred.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p_pred.add_argument("--batch-size", type=int, default=8)
    p_pred.add_argument("--score-anyway", action="store_true",
                        help="also score images outside a head's intended use; their numbers are marked "
                             "scored_outside_intended_use")
    fmt = p_pred.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="indented JSON on stdout (JSON is the default)")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    p_pred.set_defaults(func=_predict)
