"""Scoring time of the lung-cancer association head (the nodule/mass model: anatomy model for the
lung box, crop, ResNet50 at 512 px) per image, side by side with the pneumonia head (ResNet50 at
224 px with its Grad-CAM), in one run on the same device and precision, with the ratio.

    python bench/nodule_bench.py [--model models/default.safetensors] [--nodule models/nodule.safetensors]
                                 [--images 12] [--device auto]

Images: real adult radiographs from ../shared/data (JSRT 1024 px, NIH 512 px). Medians of 3 runs per
image after a warm-up. Research use only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_viewer.ai.inference import Scorer
from cxr_viewer.ai.model_store import default_model_path
from cxr_viewer.ai.nodule import Companion, nodule_unit
from cxr_viewer.io.image import open_image

SHARED = REPO.parent / "shared" / "data"


def median_ms(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--nodule", default=str(REPO / "models" / "nodule.safetensors"))
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    os.environ["CXR_VIEWER_NODULE"] = args.nodule
    scorer = Scorer.from_file(args.model, device=args.device)
    comp = scorer.nodule
    if comp.model is None:
        print(f"no usable nodule model at {args.nodule}: {comp.note or 'not found'}", file=sys.stderr)
        return 2
    bare = Scorer(scorer.model, scorer.meta, scorer.choice, scorer.path, checks=scorer.checks, nodule=Companion())
    files = sorted((SHARED / "jsrt" / "images").glob("*.png"))[: args.images // 2]
    files += sorted((SHARED / "nih" / "images").glob("*.png"))[: args.images - len(files)]
    if not files:
        print("../shared/data is missing: no JSRT or NIH images to time", file=sys.stderr)
        return 2
    rows = []
    for f in files:
        img = open_image(str(f))
        scorer.score(img, score_anyway=True)  # warm-up (oneDNN primitives, caches)
        anatomy = comp.anatomy
        lungs = anatomy.segment(img.values).lungs if anatomy is not None else None
        unit, _, _ = nodule_unit(img.values, img.monochrome1, img.padding, lungs, comp.model.meta.preprocessing)
        rows.append({
            "image": f.name, "size": list(img.values.shape),
            "pneumonia_head_ms": median_ms(lambda: bare.score(img, score_anyway=True)),
            "nodule_head_ms": median_ms(lambda: comp.find(img.values, img.monochrome1, img.padding)),
            "anatomy_ms": median_ms(lambda: anatomy.segment(img.values)) if anatomy is not None else None,
            "nodule_network_only_ms": median_ms(lambda: comp.model.logit_maps(unit[None])),
            "both_heads_ms": median_ms(lambda: scorer.score(img, score_anyway=True)),
        })
    keys = [k for k in rows[0] if k.endswith("_ms")]
    summary = {k: round(statistics.median([r[k] for r in rows if r[k] is not None]), 1) for k in keys}
    summary["nodule_over_pneumonia"] = round(summary["nodule_head_ms"] / summary["pneumonia_head_ms"], 2)
    summary["both_over_pneumonia"] = round(summary["both_heads_ms"] / summary["pneumonia_head_ms"], 2)
    print(json.dumps({"device": scorer.choice.label, "images": len(rows), "median": summary,
                      "per_image": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}
                                    for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
