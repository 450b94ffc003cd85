"""Training benchmark: images/s of the full pipeline (decoded-and-resized cache, augmentation in a
DataLoader worker, forward/backward/step) beside the model-only step on in-memory tensors, same
device and precision; first (uncached: JPEG decode) and cached epochs; Kermany 224 px and
full-size JPEGs. The augmentation is the recipe's (the shipped model's shift-robust by default:
strong, equalised, aspect jitter; the lung masks of lung guidance are not made here).

    python bench/training.py [--images 128] [--batch 16] [--steps 6] [--devices cpu,cuda]
                             [--workers 1,8] [--recipe shift-robust|basic]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_viewer.ai.inference import autocast, choose_device  # noqa: E402
from cxr_viewer.ai.model import CxrNet  # noqa: E402
from cxr_viewer.ai.preprocess import PreprocessSpec  # noqa: E402
from cxr_viewer.common.tasks import NEVER_CANCELLED, run_to_completion  # noqa: E402
from cxr_viewer.training.data import PreprocessCache, Sample  # noqa: E402
from cxr_viewer.training.engine import ArrayDataset, masked_bce, prepare_images  # noqa: E402

from bench.inference import devices_wanted  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def step_rate(model, opt, loader_iter, steps, choice) -> float:
    seen, t0 = 0, None
    for i in range(steps + 1):
        x, y = next(loader_iter)
        x = x.to(choice.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(choice.device, non_blocking=True)
        with autocast(choice):
            loss = masked_bce(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:
            t0 = time.perf_counter()  # the first step warms up
        else:
            seen += len(x)
    if choice.device.startswith("cuda"):
        torch.cuda.synchronize()  # the GPU's queued steps count too
    return seen / (time.perf_counter() - t0)


def run(files: list[Path], label: str, batch: int, steps: int, choice, workers: int = 1,
        recipe: str = "shift-robust") -> dict:
    from cxr_viewer.training.recipes import RECIPES

    r = RECIPES[recipe].fields
    spec = PreprocessSpec(intensity=r["intensity"]) if r["intensity"] else PreprocessSpec()
    cache_dir = tempfile.mkdtemp(prefix="cxr-bench-cache-")
    samples = [Sample(str(f), (int("PNEUMONIA" in str(f)), None), f.stem, "x") for f in files]
    try:
        t0 = time.perf_counter()
        imgs, samples, _ = run_to_completion(prepare_images(samples, PreprocessCache(cache_dir, spec), NEVER_CANCELLED, "p"))
        first_decode = len(samples) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_to_completion(prepare_images(samples, PreprocessCache(cache_dir, spec), NEVER_CANCELLED, "p"))
        cached_load = len(samples) / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    labels = np.array([[float(s.labels[0]), -1.0] for s in samples], dtype=np.float32)
    model = CxrNet().to(choice.device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    model.train()
    # the recipe's augmentation (strength, equalisation, aspect jitter); lung masks are not made here
    ds = ArrayDataset(imgs, labels, spec, r["augment"], r["augment_strength"], None, r["aspect_jitter"])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)

    def forever(dl):
        while True:
            yield from dl

    pipeline = step_rate(model, opt, forever(loader), steps, choice)
    x = torch.randn(batch, 3, spec.input_size, spec.input_size)
    y = torch.from_numpy(np.resize(labels, (batch, labels.shape[1])))

    def same():
        while True:
            yield x, y

    model_only = step_rate(model, opt, same(), steps, choice)
    out = {"images": label, "n": len(samples), "device": choice.label, "batch": batch, "loader_workers": workers,
           "recipe": recipe,
            "first_epoch_decode_img_s": round(first_decode, 1), "cached_load_img_s": round(cached_load, 1),
            "cached_pipeline_step_img_s": round(pipeline, 2), "model_only_step_img_s": round(model_only, 2),
            "cached_vs_model_only": round(pipeline / model_only, 3),
            "first_epoch_estimate_img_s": round(1 / (1 / first_decode + 1 / pipeline), 2)}
    if choice.device.startswith("cuda"):
        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--devices", default="cpu,cuda", help="cpu and/or cuda (cuda only where present)")
    ap.add_argument("--workers", default="1", help="DataLoader workers for the augmentation, e.g. 1,8 "
                    "(the training engine's default is 1)")
    ap.add_argument("--recipe", default="shift-robust", help="the augmentation of this training recipe "
                    "(shift-robust, the shipped model's, or basic)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit("needs ../shared/data")
    wanted = devices_wanted(args.devices)
    kermany = sorted((SHARED / "kermany/train/PNEUMONIA").iterdir())[: args.images // 2]
    kermany += sorted((SHARED / "kermany/train/NORMAL").iterdir())[: args.images // 2]
    fullres = sorted((SHARED / "kermany_fullres/train/PNEUMONIA").iterdir())
    runs = []
    combos = [("cpu", "bf16"), ("cpu", "fp32")] if "cpu" in wanted else []
    combos += [("cuda", "auto")] if torch.cuda.is_available() and "cuda" in wanted else []
    for device, precision in combos:
        choice = choose_device(device, precision)
        for workers in (int(w) for w in args.workers.split(",")):
            for files, label in ((kermany, "kermany 224 px JPEG"), (fullres, "full-size JPEG (1693-2772 px)")):
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                r = run(files, label, args.batch, args.steps, choice, workers, args.recipe)
                runs.append(r)
                print(json.dumps(r), flush=True)
    print(json.dumps({"cpus": os.cpu_count(), "torch": torch.__version__, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
