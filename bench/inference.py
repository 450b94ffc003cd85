"""Inference benchmark: batch-1 latency (open -> scores + heatmap) and folder throughput end to end
(decode + preprocess + model) beside model-only throughput, same device and precision, as a ratio;
what the input checks (header, image check, feature distance) add to scoring, side by side
with the same model without them; and, for a model that reads the lung box, what finding the box
costs beside the whole score.

    python bench/inference.py [--model models/default.safetensors] [--images 256] [--batch 16]

Uses the real images in ../shared/data (Kermany 224 px, full-size JPEGs, DICOM). Research use only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_viewer.ai.inference import Scorer, choose_device, model_input, score_many_task  # noqa: E402
from cxr_viewer.ai.model_store import default_model_path  # noqa: E402
from cxr_viewer.common.tasks import run_to_completion  # noqa: E402
from cxr_viewer.io.image import open_image  # noqa: E402
from cxr_viewer.io.index import read_any  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def images(n: int) -> list[Path]:
    k = sorted((SHARED / "kermany" / "train" / "PNEUMONIA").iterdir())[: n // 2]
    k += sorted((SHARED / "kermany" / "train" / "NORMAL").iterdir())[: n - len(k)]
    return k


def latency(scorer: Scorer, files: list[Path], repeats: int = 3) -> dict:
    out = {}
    for f in files:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            scorer.score(open_image(str(f)), heatmaps=True)
            times.append(time.perf_counter() - t0)
        out[f.name] = round(statistics.median(times) * 1000, 1)
    return out


def throughput(scorer: Scorer, files: list[Path], batch: int) -> dict:
    refs = [read_any(str(f))[0] for f in files]
    t0 = time.perf_counter()
    n = run_to_completion(score_many_task(scorer, refs, batch_size=batch))
    end_to_end = n / (time.perf_counter() - t0)
    x = np.stack([model_input(open_image(str(f)), scorer) for f in files[: batch * 4]])
    scorer.probabilities(x[:batch])  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < len(files):
        scorer.probabilities(x[(done // batch * batch) % len(x):][:batch])
        done += batch
    model_only = done / (time.perf_counter() - t0)
    return {"end_to_end_img_s": round(end_to_end, 1), "model_only_img_s": round(model_only, 1),
            "ratio": round(end_to_end / model_only, 3)}


def checks_overhead(scorer: Scorer, files: list[Path], batch: int, rounds: int = 5) -> dict:
    """Scoring with the input checks vs the same model without them (children's images: every
    head is scored either way, so the difference is the checks' cost alone). The two run in turn,
    ``rounds`` times, and the medians are compared: a busy machine slows both alike."""
    from cxr_viewer.ai.gate import InputChecks

    bare = Scorer(scorer.model, scorer.meta, scorer.choice, scorer.path, checks=InputChecks({}))
    imgs = [open_image(str(f)) for f in files[:32]]
    refs = [read_any(str(f))[0] for f in files]
    single: dict[str, list[float]] = {"with_checks": [], "without_checks": []}
    batched: dict[str, list[float]] = {"with_checks": [], "without_checks": []}
    for s in (scorer, bare):
        s.score(imgs[0])
    for _ in range(rounds):
        for name, s in (("with_checks", scorer), ("without_checks", bare)):
            t0 = time.perf_counter()
            for im in imgs:
                s.score(im, heatmaps=True)
            single[name].append((time.perf_counter() - t0) / len(imgs) * 1000)
            t0 = time.perf_counter()
            n = len(list(score_many_task(s, refs, batch_size=batch)))
            batched[name].append(n / (time.perf_counter() - t0))
    out = {}
    for name in single:
        out[f"{name}_ms_per_image"] = round(statistics.median(single[name]), 1)
        out[f"{name}_batch_img_s"] = round(statistics.median(batched[name]), 1)
    out["single_image_overhead"] = round(out["with_checks_ms_per_image"] / out["without_checks_ms_per_image"] - 1, 3)
    out["batch_overhead"] = round(out["without_checks_batch_img_s"] / out["with_checks_batch_img_s"] - 1, 3)
    gate = scorer.checks.gate
    if gate is not None:
        unit = np.zeros((1, gate.meta.preprocessing.input_size, gate.meta.preprocessing.input_size), np.float32)
        gate.classify_units(unit)
        t0 = time.perf_counter()
        for _ in range(50):
            gate.classify_units(unit)
        out["image_check_alone_ms"] = round((time.perf_counter() - t0) / 50 * 1000, 2)
    return out


def lung_box_cost(scorer: Scorer, files: list[Path]) -> dict:
    """For a model that reads the lung box: the anatomy model's box alone per image (ms, median),
    beside the whole score of the same image."""
    if scorer.anatomy is None:
        return {}
    out = {}
    for f in files:
        im = open_image(str(f))
        box, whole = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            scorer.lung_box_of(im)
            box.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            scorer.score(im, heatmaps=True)
            whole.append(time.perf_counter() - t0)
        out[f.name] = {"lung_box_ms": round(statistics.median(box) * 1000, 1),
                       "score_ms": round(statistics.median(whole) * 1000, 1)}
    return out


def devices_wanted(text: str) -> list[str]:
    """--devices: cpu and/or cuda; asking for CUDA alone where there is none is an error, not an empty report."""
    wanted = [d for d in text.split(",") if d]
    if not wanted or set(wanted) - {"cpu", "cuda"}:
        sys.exit(f"--devices: cpu and/or cuda, not {text!r}")
    if wanted == ["cuda"] and not torch.cuda.is_available():
        sys.exit("--devices cuda: no CUDA device here")
    return wanted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model_path())
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda only where present)")
    args = ap.parse_args()
    if not args.model or not SHARED.is_dir():
        sys.exit("needs a model (models/default.safetensors or --model) and ../shared/data")
    files = images(args.images)
    big = sorted((SHARED / "kermany_fullres" / "train" / "PNEUMONIA").iterdir())[:2]
    dcm = [SHARED / "dicom" / "pydicom-data_RG1" / f"RG1_{kind}.dcm" for kind in ("J2KR", "UNCR")]
    dcm = [p for p in dcm if p.exists()]  # a partial copy of the data (a GPU machine's) may lack them
    report = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "runs": []}
    wanted = devices_wanted(args.devices)
    combos = [("cpu", "fp32"), ("cpu", "bf16")] if "cpu" in wanted else []
    if torch.cuda.is_available() and "cuda" in wanted:
        combos += [("cuda", "auto")]
    for device, precision in combos:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        choice = choose_device(device, precision)
        scorer = Scorer.from_file(args.model, device, precision)
        scorer.score(open_image(str(files[0])))  # warm-up
        run = {"device": choice.label,
               "latency_ms_open_to_scores_and_heatmap": latency(scorer, [files[0], *big, *dcm]),
               **throughput(scorer, files, args.batch),
               "input_checks": checks_overhead(scorer, files[:64], args.batch),
               "lung_box": lung_box_cost(scorer, [files[0], *big, *dcm])}
        if device == "cuda":
            run["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
