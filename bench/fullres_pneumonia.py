"""Score the full-resolution Kermany training pneumonia images (``../shared/data/kermany_fullres``)
and the bundled children's samples with each MODEL given, at full size through the real scoring
path (``Scorer.score``, input checks bypassed for the score and reported), side by side.

    python bench/fullres_pneumonia.py models/default.safetensors [OLD_MODEL ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from cxr_viewer.ai.inference import Scorer
from cxr_viewer.io.image import open_image

REPO = Path(__file__).resolve().parents[1]
FULLRES = REPO.parent / "shared" / "data" / "kermany_fullres" / "train" / "PNEUMONIA"
SAMPLES = REPO / "resources" / "samples" / "children_kermany"


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    files = sorted(FULLRES.glob("*.jpeg")) if FULLRES.is_dir() else []
    if not files:
        print(f"note: {FULLRES} is missing: only the bundled samples are scored")
    files += sorted(SAMPLES.glob("*/*.jpeg"))
    scorers = [Scorer.from_file(m, "cpu") for m in sys.argv[1:]]
    thresholds = [s.meta.heads["pneumonia"].threshold for s in scorers]
    heads = (f"v{s.meta.version} (threshold {t:.3f})" for s, t in zip(scorers, thresholds))
    print("| image | " + " | ".join(heads) + " |")
    print("|---" * (len(scorers) + 1) + "|")
    below = [0] * len(scorers)
    for f in files:
        img = open_image(str(f))
        cells = []
        for k, s in enumerate(scorers):
            head = s.score(img, heatmaps=False, score_anyway=True).head("pneumonia")
            if head.probability is None:  # not scored at all (the head's reason says why)
                cells.append(f"no score: {head.reason}")
                continue
            if f.parent == FULLRES:
                below[k] += head.probability < thresholds[k]
            mark = "" if head.status == "scored" else " (outside intended use, scored anyway)"
            cells.append(f"{head.probability:.3f}{mark}")
        label = "fullres" if f.parent == FULLRES else f"sample {f.parent.name}"
        print(f"| {label} {f.name} | " + " | ".join(cells) + " |")
    if files and FULLRES.is_dir():
        n = len(list(FULLRES.glob("*.jpeg")))
        print("full-resolution pneumonia images below the threshold (those outside intended use counted with "
              "their scores-anyway): "
              + ", ".join(f"v{s.meta.version}: {b} of {n}" for s, b in zip(scorers, below)))


if __name__ == "__main__":
    main()
