"""The one preprocessing function's cost with the percentile window alone and with histogram
equalisation after it (the default model since v3), side by side on the same decoded images, and
what the scoring model itself costs on the result (batch of 1, heatmap off).

    python bench/preprocess.py

Uses ../shared/data (a Kermany 224 px image, two full-size Kermany JPEGs, the RG1 DICOM). Medians
of 7 runs per image. Research use only.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_viewer.ai.inference import Scorer  # noqa: E402
from cxr_viewer.ai.model_store import default_model_path  # noqa: E402
from cxr_viewer.ai.preprocess import preprocess  # noqa: E402
from cxr_viewer.io.image import open_image  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def median_ms(fn, runs: int = 7) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def main() -> None:
    if not SHARED.is_dir():
        sys.exit("needs ../shared/data")
    files = [sorted((SHARED / "kermany" / "train" / "NORMAL").iterdir())[0],
             *sorted((SHARED / "kermany_fullres" / "train" / "PNEUMONIA").iterdir())[:2],
             SHARED / "dicom" / "pydicom-data_RG1" / "RG1_UNCR.dcm"]
    scorer = Scorer.from_file(default_model_path(), "cpu", "auto")
    spec = scorer.meta.preprocessing
    pct, eq = replace(spec, intensity="percentile"), replace(spec, intensity="equalize")
    rows = {}
    for f in files:
        im = open_image(str(f))
        x = preprocess(im.values, im.monochrome1, im.padding, eq)[None]
        rows[f.name] = {"pixels": int(im.values.size),
                        "percentile_ms": median_ms(lambda: preprocess(im.values, im.monochrome1, im.padding, pct)),
                        "equalize_ms": median_ms(lambda: preprocess(im.values, im.monochrome1, im.padding, eq)),
                        "model_ms": median_ms(lambda: scorer.probabilities(x))}
        r = rows[f.name]
        r["equalize_extra_vs_model"] = round((r["equalize_ms"] - r["percentile_ms"]) / r["model_ms"], 3)
        print(json.dumps({f.name: r}), flush=True)


if __name__ == "__main__":
    main()
