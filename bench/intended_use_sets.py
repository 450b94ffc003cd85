"""What the input checks let through, end to end: every image goes the real scoring path
(``score_many_task``: decode, header, image check, feature distance) and the pneumonia head's
status is counted per set. Sets from ../shared/data and made here:

- the validation children (the patients the image check and the feature distance never trained on;
  their thresholds were set on them, so these are not held-out figures),
- 240 of them changed each way of ``training.shift`` (at their own resolution, saved as PNG: what
  another hospital's children might look like; the thresholds saw other shifted copies of the same
  children, so these too are validation, not held-out, figures),
- adults (NIH, JSRT, the shared DICOMs), SCR masks, and generated non-radiographs (text pages,
  noise, gradients, shapes, cross-sections, photographs; a seed the training never used).

    python bench/intended_use_sets.py [--model models/default.safetensors] [--out report.json]

The image check is ``$CXR_VIEWER_GATE`` or ``models/intended_use.safetensors``. Research use only.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_viewer.ai.inference import Scorer, score_many_task  # noqa: E402
from cxr_viewer.ai.model_store import default_model_path  # noqa: E402
from cxr_viewer.ai.preprocess import PreprocessSpec, normalise_intensity  # noqa: E402
from cxr_viewer.io.image import open_image  # noqa: E402
from cxr_viewer.io.index import read_any  # noqa: E402
from cxr_viewer.training import intended_use as ti  # noqa: E402
from cxr_viewer.training.shift import SHIFTS  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def validation_children() -> list[str]:
    """The validation children of ``train-input-check`` (same folders, same patient split)."""
    files = [p for f in ("kermany/train", "kermany_fullres/train") for p in ti._files(str(SHARED / f))]
    data = ti.GateData(np.zeros((len(files), 1, 1), np.uint8), np.array(["child"] * len(files)),
                       np.array(["children"] * len(files)), np.array([ti.kermany_group(p) for p in files]),
                       np.array(files))
    _, val = ti._split(data, ti.GateConfig())
    return list(data.paths[val])


def sets(work: str) -> dict[str, list[str]]:
    out = {"validation children": validation_children()}
    r = np.random.default_rng(0)
    pick = r.choice(out["validation children"], min(240, len(out["validation children"])), replace=False)
    spec = PreprocessSpec()
    for name, shift in SHIFTS.items():
        folder = os.path.join(work, "shift_" + name.replace(" ", "_"))
        os.makedirs(folder, exist_ok=True)
        out[f"validation children, {name}"] = files = []
        for i, p in enumerate(pick):
            im = open_image(str(p))
            x = normalise_intensity(im.values, im.monochrome1, im.padding, spec)
            y = np.clip(shift(x, np.random.default_rng(i)), 0, 1)
            files.append(os.path.join(folder, f"{i}.png"))
            Image.fromarray((y * 255 + 0.5).astype(np.uint8)).save(files[-1])
    out["NIH adults"] = sorted(glob.glob(str(SHARED / "nih" / "images" / "*.png")))
    out["JSRT adults"] = sorted(glob.glob(str(SHARED / "jsrt" / "images" / "*.png")))
    out["DICOM adults"] = sorted(glob.glob(str(SHARED / "dicom" / "**" / "*.dcm"), recursive=True))
    out["SCR masks (every 10th)"] = sorted(glob.glob(str(SHARED / "jsrt" / "masks" / "*" / "*.png")))[::10]
    gen = ti.Negatives(np.random.default_rng(777))
    for kind in gen.KINDS:
        folder = os.path.join(work, "generated_" + kind)
        os.makedirs(folder, exist_ok=True)
        out[f"generated {kind}"] = files = []
        for i in range(40):
            files.append(os.path.join(folder, f"{i}.png"))
            Image.fromarray(gen.make(kind)).save(files[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--out", help="write the report (JSON) here too")
    args = ap.parse_args()
    if not args.model or not SHARED.is_dir():
        sys.exit("needs a model (models/default.safetensors or --model) and ../shared/data")
    scorer = Scorer.from_file(args.model, "cpu", "auto")
    report = {"model": os.path.basename(args.model), "image_check": scorer.checks.gate.path if scorer.checks.gate else None,
              "child_min": scorer.checks.gate.meta.child_min if scorer.checks.gate else None,
              "feature_distance_threshold": scorer.checks.distance.threshold if scorer.checks.distance else None,
              "sets": {}}
    with tempfile.TemporaryDirectory() as work:
        for name, files in sets(work).items():
            if not files:
                continue
            rows = list(score_many_task(scorer, [read_any(f)[0] for f in files], batch_size=16))
            statuses = collections.Counter("error" if r.error else r.statuses.get("pneumonia", "?") for r in rows)
            why = [r.reasons["pneumonia"] for r in rows if not r.error and r.reasons.get("pneumonia")]
            by = collections.Counter((w.partition(":")[2] or w).split("(")[0].strip() for w in why)
            report["sets"][name] = {"images": len(rows), "scored": round(statuses["scored"] / len(rows), 4),
                                    "statuses": dict(statuses), "reasons": dict(by.most_common(4))}
            print(f"{name:45s} {len(rows):5d} images, pneumonia head scored {statuses['scored'] / len(rows):7.1%}",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
