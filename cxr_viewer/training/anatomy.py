"""Training and cross-validating the anatomy model (``ai.anatomy``) on the SCR masks of JSRT.

Data: ``jsrt/images/*.png`` (1024 px) and ``jsrt/masks/{right_lung,left_lung,heart}/*.png`` at the
same size (van Ginneken et al., Med Image Anal 2006). Every JSRT image is a different patient, so
splitting by image is splitting by patient. Dice and the cardiothoracic ratio are measured at the
masks' own 1024 px, on the images of a fold the model did not see.

Augmentation is what lets a model trained on one hospital's adults hold on other images:
affine changes (scale 0.7-1.15, rotation, shift, aspect), zoom-out with black borders
(collimation), gamma, contrast, blur, noise. No horizontal flip (the heart is on the left).
Qt-free; the tasks are generators of :class:`~cxr_viewer.common.tasks.Progress`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Generator

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from cxr_viewer.ai.anatomy import (
    ANATOMY_SPEC,
    STRUCTURES,
    AnatomyMeta,
    AnatomyModel,
    AnatomyNet,
    clean_masks,
    measure_ctr,
    resize_probabilities,
)
from cxr_viewer.ai.preprocess import PreprocessSpec, preprocess_unit
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress


@dataclass
class AnatomyData:
    ids: list[str]
    units: np.ndarray  # (N, S, S) float32 in [0, 1]: the one preprocessing function's output
    targets: np.ndarray  # (N, 3, S, S) float32 in [0, 1]: masks area-resized to S
    folder: str
    spec: PreprocessSpec = ANATOMY_SPEC


def _mask_path(folder: str, structure: str, name: str) -> str:
    return os.path.join(folder, "masks", structure, name)


def read_full_masks(folder: str, name: str) -> np.ndarray:
    """(3, H, W) bool reference masks at their own size."""
    return np.stack([np.asarray(Image.open(_mask_path(folder, s, name)).convert("L")) > 127 for s in STRUCTURES])


def load_jsrt(folder: str, size: int = ANATOMY_SPEC.input_size,
              cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, AnatomyData]:
    """Images with all three masks; others are skipped."""
    img_dir = os.path.join(folder, "images")
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(f"no images folder in {folder} (expected images/ and masks/)")
    names = sorted(n for n in os.listdir(img_dir) if n.lower().endswith(".png")
                   and all(os.path.exists(_mask_path(folder, s, n)) for s in STRUCTURES))
    if not names:
        raise FileNotFoundError(f"no image in {img_dir} has right_lung, left_lung and heart masks")
    spec = ANATOMY_SPEC if size == ANATOMY_SPEC.input_size else PreprocessSpec(input_size=size, channels=1)
    units = np.empty((len(names), size, size), np.float32)
    targets = np.empty((len(names), len(STRUCTURES), size, size), np.float32)
    for i, n in enumerate(names):
        cancel.raise_if_cancelled()
        values = np.asarray(Image.open(os.path.join(img_dir, n)).convert("L"), np.float32)
        units[i] = preprocess_unit(values, spec=spec)
        for j, s in enumerate(STRUCTURES):
            m = Image.open(_mask_path(folder, s, n)).convert("L")
            targets[i, j] = np.asarray(m.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0
        if i % 16 == 0:
            yield Progress("reading", i + 1, len(names))
    return AnatomyData(names, units, targets, folder, spec)


@dataclass
class AnatomyConfig:
    epochs: int = 60
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    base: int = 16
    depth: int = 5
    folds: int = 5
    seed: int = 0
    name: str = "cxr_viewer anatomy (lungs, heart)"
    version: str = "1"


def augment_batch(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 1, S, S) in [0, 1], y (B, 3, S, S): the same random affine for both, intensity for x."""
    b = x.shape[0]

    def u(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    scale = u(0.7, 1.15)
    aspect = u(0.9, 1.1)
    angle = u(-10, 10) * np.pi / 180
    tx, ty = u(-0.1, 0.1), u(-0.1, 0.1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output coords to input coords: zoom out (scale < 1) shows more, with black borders
    theta = torch.stack([torch.stack([cos / (scale * aspect), -sin / scale, tx], 1),
                         torch.stack([sin / (scale * aspect), cos / scale, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # intensity: gamma, contrast and brightness, blur, noise; then renormalise to [0, 1]
    gamma = torch.exp(u(-0.5, 0.5)).view(b, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    x = (x - 0.5) * u(0.7, 1.3).view(b, 1, 1, 1) + 0.5 + u(-0.1, 0.1).view(b, 1, 1, 1)
    blur = torch.rand(b, generator=gen) < 0.3
    if blur.any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
        kk = (k[:, None] * k[None, :]).view(1, 1, 5, 5)
        x[blur] = F.conv2d(F.pad(x[blur], (2, 2, 2, 2), mode="replicate"), kk)
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.04).view(b, 1, 1, 1)
    return x.clamp(0, 1), y


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * y).sum((2, 3))
    return (1 - (2 * inter + 1) / (p.sum((2, 3)) + y.sum((2, 3)) + 1)).mean()


def train_net(data: AnatomyData, train: np.ndarray, cfg: AnatomyConfig, stage: str = "training",
              cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, AnatomyNet]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = AnatomyNet(cfg.base, cfg.depth).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    units = torch.from_numpy(data.units)
    targets = torch.from_numpy(data.targets)
    mean, std = data.spec.mean, data.spec.std
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        total = 0.0
        for i in range(steps):
            cancel.raise_if_cancelled()
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x, y = augment_batch(units[idx][:, None].clone(), targets[idx].clone(), gen)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(x).float()
            loss = F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        yield Progress(stage, epoch + 1, cfg.epochs,
                       f"loss {total / steps:.4f}, {time.perf_counter() - t0:.0f} s")
    return net.eval()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def evaluate(model: AnatomyModel, data: AnatomyData, idx: np.ndarray,
             cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, list[dict]]:
    """Per image: Dice of each structure and of both lungs together at the reference masks' size,
    and the CTR from the model and from the reference masks."""
    rows = []
    for k, i in enumerate(idx):
        cancel.raise_if_cancelled()
        ref = read_full_masks(data.folder, data.ids[i])
        probs = model.probabilities_units(data.units[i][None])[0]
        pred = clean_masks(resize_probabilities(probs, ref.shape[1:]) >= model.meta.threshold)
        row = {"image": data.ids[i]}
        for j, s in enumerate(STRUCTURES):
            row[f"dice_{s}"] = dice(pred[j], ref[j])
        row["dice_lungs"] = dice(pred[0] | pred[1], ref[0] | ref[1])
        c_pred, c_ref = measure_ctr(*pred), measure_ctr(*ref)
        row["ctr_model"] = c_pred.ratio if c_pred else float("nan")
        row["ctr_reference"] = c_ref.ratio if c_ref else float("nan")
        rows.append(row)
        if k % 8 == 0:
            yield Progress("measuring", k + 1, len(idx))
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {"images": len(rows)}
    for key in ("dice_right_lung", "dice_left_lung", "dice_lungs", "dice_heart"):
        v = np.array([r[key] for r in rows])
        out[key] = {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()),
                    "median": float(np.median(v))}
    err = np.array([r["ctr_model"] - r["ctr_reference"] for r in rows])
    ok = np.isfinite(err)
    out["ctr_abs_error"] = {"mean": float(np.abs(err[ok]).mean()) if ok.any() else float("nan"),
                            "median": float(np.median(np.abs(err[ok]))) if ok.any() else float("nan"),
                            "p90": float(np.percentile(np.abs(err[ok]), 90)) if ok.any() else float("nan"),
                            "bias": float(err[ok].mean()) if ok.any() else float("nan"),
                            "missing": int((~ok).sum())}
    return out


def folds_of(n: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def cross_validate(data: AnatomyData, cfg: AnatomyConfig, cancel: CancelToken = NEVER_CANCELLED
                   ) -> Generator[Progress, None, tuple[dict, list[dict]]]:
    """k-fold cross-validation (one image per patient in JSRT, so folds are patient-grouped)."""
    rows: list[dict] = []
    for f, val in enumerate(folds_of(len(data.ids), cfg.folds, cfg.seed)):
        train = np.setdiff1d(np.arange(len(data.ids)), val)
        net = yield from train_net(data, train, cfg, f"fold {f + 1}/{cfg.folds}", cancel)
        model = AnatomyModel(net, AnatomyMeta(cfg.name, cfg.version, data.spec, base=cfg.base, depth=cfg.depth))
        fold_rows = yield from evaluate(model, data, val, cancel)
        for r in fold_rows:
            r["fold"] = f
        rows += fold_rows
    return summarise(rows), rows


def train_anatomy(folder: str, out: str, cfg: AnatomyConfig, cross_validation: bool = True,
                  cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, dict]:
    """Cross-validate the recipe (optional), then train it on every image and save it to ``out``."""
    data = yield from load_jsrt(folder, cancel=cancel)
    report: dict = {"data": {"source": "JSRT + SCR masks", "images": len(data.ids)}, "config": asdict(cfg)}
    if cross_validation:
        summary, rows = yield from cross_validate(data, cfg, cancel)
        report["cross_validation"] = summary
        report["per_image"] = rows
    net = yield from train_net(data, np.arange(len(data.ids)), cfg, "final model", cancel)
    meta = AnatomyMeta(cfg.name, cfg.version, data.spec, base=cfg.base, depth=cfg.depth,
                       training={"data": "JSRT (247 adult PA radiographs, research use only) with the SCR "
                                         "lung and heart masks", "images": len(data.ids), "epochs": cfg.epochs,
                                 "seed": cfg.seed, "augmentation": "affine, zoom-out, gamma, contrast, blur, noise"},
                       metrics={k: v for k, v in report.get("cross_validation", {}).items()})
    model = AnatomyModel(net, meta, out)
    model.save(out)
    return report
