"""Training and cross-validating the nodule/mass model (``ai.nodule``) on JSRT and NIH.

Data (read ``../shared/data/README.md``): JSRT (247 adult PA radiographs at 1024 px, 154 with a
nodule whose centre and diameter are known; every image a different patient) and NIH ChestX-ray14
(421 adults at 512 px, 91 labelled nodule-or-mass from report text, noisy; grouped by patient).
Every image goes through the one preprocessing function and the anatomy model's lung box
(:func:`ai.nodule.nodule_unit`), as at inference.

Training is on 256 px patches of the 512 px lung box (a ResNet50 at 256 px trains about five
times faster than at 512 on a CPU), with two losses on the dense logit map:
- per cell, where the place is known (JSRT): a cell is positive where its centre lies within the
  nodule's radius plus half a cell, ignored out to the radius plus 12 mm, negative elsewhere;
  positive and negative cells weigh alike (balanced binary cross-entropy);
- per patch, multiple-instance: the highest lung cell is the patch's logit, positive when the
  patch holds a JSRT nodule or is an NIH nodule/mass image's mined place. NIH positives have no
  place: from ``mine_start`` on, the current model's highest cell in each such image is taken as
  its place (refreshed every ``mine_every`` iterations), and the highest cells of negative images
  are sampled as hard negatives.
Augmentation keeps a nodule a nodule: zoom 0.8-1.25, rotation within 10 degrees, horizontal flip,
gamma, contrast, brightness, a little blur and noise; no elastic warps, no cut-outs. The backbone
starts from the paediatric pneumonia model trained here (no ImageNet weights exist on this machine).

Cross-validation is patient-grouped and stratified by source and label; calibration (Platt) and
the threshold are fitted on out-of-fold logits. The model is shipped as available only when the
AUROC's lower 95 % bound is above ``min_auroc_lower`` on every source. Qt-free; the tasks are
generators of :class:`~cxr_viewer.common.tasks.Progress`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from cxr_viewer.ai.nodule import (
    NODULE_SPEC,
    STRIDE,
    NoduleMeta,
    NoduleModel,
    NoduleNet,
    cell_centre,
    masked_max,
    nodule_unit,
)
from cxr_viewer.common.fileio import write_bytes_atomic
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress

JSRT_MM_PER_PX = 0.35  # at 1024 px (the originals: 0.175 mm at 2048)


@dataclass
class NoduleData:
    ids: list[str]
    sources: np.ndarray  # "jsrt" | "nih"
    groups: np.ndarray  # patient
    labels: np.ndarray  # 1: nodule or mass
    units: np.ndarray  # (N, S, S) float16 in [0, 1]
    cells: np.ndarray  # (N, S/16, S/16) bool: lung cells (dilated)
    nodules: list[list[tuple[float, float, float]]]  # per image: (x, y, radius) in unit px (JSRT)
    mm_per_px: np.ndarray  # unit px -> mm (JSRT; NaN for NIH)
    spec_size: int = NODULE_SPEC.input_size


def _read_grey(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.float32)


def load_cases(jsrt: str, nih: str, anatomy, cache: str = "",
               cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, NoduleData]:
    """Every JSRT and NIH image through the anatomy model's lung box; cached in ``cache`` (.npz)
    when given (keyed by the anatomy model's SHA-256 and the data lists)."""
    rows: list[tuple[str, str, str, int, str, list]] = []  # id, source, group, label, path, raw nodules
    if jsrt:
        with open(os.path.join(jsrt, "jsrt_metadata.csv"), newline="") as fh:
            for r in csv.DictReader(fh):
                name = r["study_id"].strip()
                nod = r["state"].strip().lower() in ("malignant", "benign")
                raw = [(float(r["x"]) / 2, float(r["y"]) / 2, float(r["size"]) / 2)] if nod else []
                rows.append((name, "jsrt", "jsrt:" + name, int(nod), os.path.join(jsrt, "images", name), raw))
    if nih:
        with open(os.path.join(nih, "labels.csv"), newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append((r["file"], "nih", "nih:" + r["patient_id"], int(r["nodule_or_mass"]),
                             os.path.join(nih, "images", r["file"]), []))
    rows = [r for r in rows if os.path.exists(r[4])]
    if not rows:
        raise FileNotFoundError("no JSRT or NIH image found")
    key = hashlib.sha256(json.dumps([getattr(anatomy.meta, "weights_sha256", ""), NODULE_SPEC.to_dict(),
                                     [r[:4] for r in rows]]).encode()).hexdigest()[:16]
    if cache and os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                nod = json.loads(str(z["nodules"]))
                return NoduleData(list(z["ids"]), z["sources"], z["groups"], z["labels"], z["units"], z["cells"],
                                  [[tuple(n) for n in v] for v in nod], z["mm_per_px"])
    size = NODULE_SPEC.input_size
    n = len(rows)
    units = np.empty((n, size, size), np.float16)
    cells = np.empty((n, size // STRIDE, size // STRIDE), bool)
    nodules, mm = [], np.full(n, np.nan)
    for i, (name, source, group, label, path, raw) in enumerate(rows):
        cancel.raise_if_cancelled()
        values = _read_grey(path)
        lungs = anatomy.segment(values).lungs
        unit, c, box = nodule_unit(values, False, None, lungs)
        units[i], cells[i] = unit.astype(np.float16), c
        k = size / box.side
        nodules.append([((x - box.x0) * k, (y - box.y0) * k, r_mm / JSRT_MM_PER_PX * k) for x, y, r_mm in raw])
        if source == "jsrt":
            mm[i] = JSRT_MM_PER_PX / k
        if i % 16 == 0:
            yield Progress("reading and outlining the lungs", i + 1, n)
    data = NoduleData([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                      np.array([r[3] for r in rows]), units, cells, nodules, mm)
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        tmp = cache + ".tmp.npz"
        np.savez(tmp, key=key, ids=np.array(data.ids), sources=data.sources, groups=data.groups,
                 labels=data.labels, units=units, cells=cells, nodules=json.dumps(nodules), mm_per_px=mm)
        os.replace(tmp, cache)
    return data


@dataclass
class NoduleConfig:
    iterations: int = 400
    batch: int = 32
    patch: int = 128
    lr: float = 2e-3  # the head
    backbone_lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup: int = 30
    mine_start: int = 200
    mine_every: int = 100
    mine_negatives: int = 120
    ignore_mm: float = 12.0
    paste: float = 0.0  # share of negative patches that get a training nodule pasted in
    freeze_bn: bool = False  # tried: with the paediatric model's statistics it learned nothing in 400 iterations
    whole_iterations: int = 0  # then this many iterations on whole lung boxes (multiple-instance for NIH)
    whole_batch: int = 6
    whole_lr: float = 1e-4
    nih_positives: bool = False  # NIH nodule/mass images as multiple-instance positives (mined places)
    mine_top: int = 1  # hard places mined per image (its highest lung cells)
    hard_share: float = 0.15  # share of patches centred on a mined hard place
    mine_known: bool = False  # mine hard places in every image whose places are known (JSRT nodules too), not only negatives
    init: str = ""  # a scoring model whose backbone starts this one ("" : from scratch)
    folds: int = 5
    seed: int = 0
    threshold_sensitivity: float = 0.80
    min_auroc_lower: float = 0.70
    name: str = "cxr_viewer nodule/mass ResNet50 (lung box, 512 px)"
    version: str = "1"
    bf16: bool = True


def reading_window(cfg: NoduleConfig) -> int:
    """The window the model reads a lung box by: the patch it was trained on, or the whole box
    once it has been trained on whole boxes."""
    return NODULE_SPEC.input_size if cfg.whole_iterations else cfg.patch


def stratified_group_folds(data: NoduleData, k: int, seed: int) -> list[np.ndarray]:
    """Image indices per fold: patients (groups) dealt round-robin within each (source, label)
    stratum, in a seeded random order, so each fold has its share of every source and label."""
    rng = np.random.default_rng(seed)
    groups = {}
    for i, g in enumerate(data.groups):
        groups.setdefault(g, []).append(i)
    strata: dict[tuple, list[str]] = {}
    for g, idx in groups.items():
        strata.setdefault((data.sources[idx[0]], int(data.labels[idx].max())), []).append(g)
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        for j, g in enumerate(gs):
            folds[(start + j) % k] += groups[g]
        start += len(gs)
    return [np.array(sorted(f)) for f in folds]


def init_backbone(net: NoduleNet, path: str) -> None:
    """Copy the backbone of a trained scoring model (checked and hashed as at load) into ``net``."""
    from cxr_viewer.ai.model import load_model

    model, _ = load_model(path)
    net.backbone.load_state_dict(model.backbone.state_dict())


class _Sampler:
    """Patches and their targets, built on the fly from the cached lung-box units."""

    def __init__(self, data: NoduleData, train: np.ndarray, cfg: NoduleConfig, gen: torch.Generator):
        self.d, self.cfg, self.gen = data, cfg, gen
        self.rng = np.random.default_rng(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
        lab, src = data.labels[train], data.sources[train]
        self.jsrt_pos = train[(lab == 1) & (src == "jsrt")]
        self.nih_pos = train[(lab == 1) & (src == "nih")] if cfg.nih_positives else train[:0]
        self.known = train[~((lab == 1) & (src == "nih"))]  # images whose every place's label is known
        self.negatives = train[lab == 0]
        self.mined: dict[int, list[tuple[float, float]]] = {}  # image -> places of its highest cells
        self.bank = self._nodule_bank() if cfg.paste > 0 else []

    def _nodule_bank(self) -> list[tuple[torch.Tensor, float, float]]:
        """(residual, radius px, mm per px) of each training JSRT nodule: its square around the centre
        minus the smooth background (Gaussian, sigma = the radius), faded out by a soft disc."""
        bank = []
        for i in self.jsrt_pos:
            for (nx, ny, r) in self.d.nodules[i]:
                R = int(r * 1.6) + 4
                x0, y0 = int(round(nx)) - R, int(round(ny)) - R
                if x0 < 0 or y0 < 0 or x0 + 2 * R > self.d.spec_size or y0 + 2 * R > self.d.spec_size:
                    continue
                crop = torch.from_numpy(self.d.units[i, y0:y0 + 2 * R, x0:x0 + 2 * R].astype(np.float32))
                k = int(2 * round(2 * r) + 1)
                g = torch.exp(-0.5 * (torch.arange(k) - k // 2) ** 2 / max(r, 1.0) ** 2)
                g = g / g.sum()
                pad = F.pad(crop[None, None], (k // 2,) * 4, mode="replicate")
                bg = F.conv2d(F.conv2d(pad, g.view(1, 1, 1, k)), g.view(1, 1, k, 1))[0, 0]
                yy, xx = torch.meshgrid(torch.arange(2 * R) - R + 0.5, torch.arange(2 * R) - R + 0.5, indexing="ij")
                t = (torch.hypot(xx, yy) / (1.3 * r)).clamp(0, 1)
                bank.append(((crop - bg) * 0.5 * (1 + torch.cos(math.pi * t)), float(r), float(self.d.mm_per_px[i])))
        return bank

    def _paste(self, x, picks, lungs, target, known, label, zoom) -> None:
        """Paste a training nodule into some negative patches at a lung cell (copy-paste augmentation:
        real nodules, new places and surroundings), with its cell targets."""
        P, n = self.cfg.patch, self.cfg.patch // STRIDE
        for b in range(len(picks)):
            if label[b] > 0 or picks[b][3] or self.rng.random() >= self.cfg.paste:
                continue
            cells = torch.nonzero(lungs[b])
            if not len(cells):
                continue
            res, r, mm = self.bank[self.rng.integers(len(self.bank))]
            if self.rng.random() < 0.5:
                res = res.flip(1)
            res = res * float(self.rng.uniform(0.7, 1.2))
            rr, cc = cells[self.rng.integers(len(cells))].tolist()
            py, px = (rr + self.rng.random()) * STRIDE, (cc + self.rng.random()) * STRIDE
            R = res.shape[0] // 2
            y0, x0 = int(round(py)) - R, int(round(px)) - R
            sy0, sx0 = max(0, -y0), max(0, -x0)
            sy1, sx1 = min(2 * R, P - y0), min(2 * R, P - x0)
            if sy1 <= sy0 or sx1 <= sx0:
                continue
            x[b, y0 + sy0:y0 + sy1, x0 + sx0:x0 + sx1] += res[sy0:sy1, sx0:sx1]
            ctr = (torch.arange(n) + 0.5) * STRIDE
            dist = torch.hypot(ctr[None, :] - px, ctr[:, None] - py)
            pos = dist <= r + STRIDE / 2
            ring = (dist <= r + STRIDE / 2 + self.cfg.ignore_mm / (mm * float(zoom[b]))) & ~pos
            target[b] = torch.maximum(target[b], pos.float())
            known[b] &= ~ring
            label[b] = 1.0

    def _random_lung_point(self, i: int) -> tuple[float, float]:
        rr, cc = np.nonzero(self.d.cells[i])
        j = self.rng.integers(len(rr)) if len(rr) else None
        if j is None:
            return self.d.spec_size / 2, self.d.spec_size / 2
        return (cc[j] + self.rng.random()) * STRIDE, (rr[j] + self.rng.random()) * STRIDE

    def choose(self) -> list[tuple[int, float, float, bool]]:
        """(image, centre x, centre y, mined-positive) per patch of the batch."""
        out = []
        nih_mined = [i for i in self.nih_pos if i in self.mined]
        hard = [i for i in (self.known if self.cfg.mine_known else self.negatives) if i in self.mined]
        P = self.cfg.patch
        for _ in range(self.cfg.batch):
            u = self.rng.random()
            if u < 0.3 and len(self.jsrt_pos):
                i = int(self.rng.choice(self.jsrt_pos))
                x, y, _ = self.d.nodules[i][0]
                j = 0.35 * P
                out.append((i, x + self.rng.uniform(-j, j), y + self.rng.uniform(-j, j), False))
            elif u < 0.45 and nih_mined:
                i = int(self.rng.choice(nih_mined))
                x, y = self.mined[i][0]
                out.append((i, x + self.rng.uniform(-0.2, 0.2) * P, y + self.rng.uniform(-0.2, 0.2) * P, True))
            elif u < 0.45 + self.cfg.hard_share and hard:
                i = int(self.rng.choice(hard))
                places = self.mined[i]
                x, y = places[self.rng.integers(len(places))]
                out.append((i, x + self.rng.uniform(-0.2, 0.2) * P, y + self.rng.uniform(-0.2, 0.2) * P, False))
            else:
                i = int(self.rng.choice(self.known))
                out.append((i, *self._random_lung_point(i), False))
        return out

    def batch(self, picks) -> tuple[torch.Tensor, ...]:
        """(x (B,3,P,P), cell targets (B,n,n) 0/1, cell weights known (B,n,n) bool, lung cells (B,n,n),
        patch labels (B,), dense (B,) bool: whether the cell targets apply)."""
        d, cfg, S, P = self.d, self.cfg, self.d.spec_size, self.cfg.patch
        B = len(picks)
        zoom = torch.empty(B).uniform_(0.8, 1.25, generator=self.gen)
        ang = torch.empty(B).uniform_(-10, 10, generator=self.gen) * math.pi / 180
        flip = torch.where(torch.rand(B, generator=self.gen) < 0.5, -1.0, 1.0)
        k = P / S * zoom
        cx = torch.tensor([p[1] for p in picks], dtype=torch.float32)
        cy = torch.tensor([p[2] for p in picks], dtype=torch.float32)
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = k * torch.cos(ang) * flip, -k * torch.sin(ang)
        theta[:, 1, 0], theta[:, 1, 1] = k * torch.sin(ang) * flip, k * torch.cos(ang)
        theta[:, 0, 2], theta[:, 1, 2] = 2 * cx / S - 1, 2 * cy / S - 1
        src = torch.from_numpy(np.stack([d.units[p[0]] for p in picks]).astype(np.float32))[:, None]
        grid = F.affine_grid(theta, (B, 1, P, P), align_corners=False)
        x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
        # cell centres of the patch in unit pixels
        n = P // STRIDE
        cgrid = F.affine_grid(theta, (B, 1, n, n), align_corners=False)
        ux, uy = (cgrid[..., 0] + 1) * S / 2, (cgrid[..., 1] + 1) * S / 2
        lc = torch.from_numpy(np.stack([d.cells[p[0]] for p in picks]).astype(np.float32))[:, None]
        lungs = F.grid_sample(lc, cgrid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0] > 0
        target = torch.zeros(B, n, n)
        known = torch.ones(B, n, n, dtype=torch.bool)
        half = STRIDE / 2  # half a patch cell in unit px, at zoom 1 (a patch pixel is `zoom` unit pixels)
        for b, (i, _, _, mined) in enumerate(picks):
            for (nx, ny, r) in d.nodules[i]:
                dist = torch.hypot(ux[b] - nx, uy[b] - ny)
                target[b] = torch.maximum(target[b], (dist <= r + half * float(zoom[b])).float())
                mm = d.mm_per_px[i]
                ring = r + half * float(zoom[b]) + (cfg.ignore_mm / mm if np.isfinite(mm) else 0)
                known[b] &= ~((dist <= ring) & (dist > r + half * float(zoom[b])))
        label = torch.tensor([1.0 if p[3] else 0.0 for p in picks])
        label = torch.maximum(label, (target.flatten(1) > 0).any(1).float())
        dense = torch.tensor([not p[3] for p in picks])
        if cfg.paste > 0 and self.bank:
            self._paste(x, picks, lungs, target, known, label, zoom)
        x = _intensity(x, self.gen)
        xs = ((x - NODULE_SPEC.mean) / NODULE_SPEC.std)[:, None].expand(-1, 3, -1, -1)
        return xs.contiguous(memory_format=torch.channels_last), target.float(), known, lungs, label, dense


def _intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    B = x.shape[0]
    r = lambda lo, hi: torch.empty(B, 1, 1).uniform_(lo, hi, generator=gen)
    x = x.clamp(0, 1) ** r(0.7, 1.4)
    x = (x - 0.5) * r(0.8, 1.2) + 0.5 + r(-0.08, 0.08)
    blur = (torch.rand(B, generator=gen) < 0.2).view(B, 1, 1)
    x = torch.where(blur, F.avg_pool2d(x[:, None], 3, 1, 1, count_include_pad=False)[:, 0], x)
    x = x + torch.randn(x.shape, generator=gen) * r(0.0, 0.02)
    return x.clamp(0, 1)


def patch_losses(logits: torch.Tensor, target, known, lungs, label, dense) -> torch.Tensor:
    """Balanced per-cell BCE where places are known, plus the multiple-instance BCE of the highest
    lung cell against the patch's label."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    sel = known & dense[:, None, None]
    pos, neg = sel & (target > 0), sel & (target == 0)
    cell = (bce[pos].mean() if pos.any() else logits.sum() * 0) + (bce[neg].mean() if neg.any() else logits.sum() * 0)
    top, _ = masked_max(logits, lungs)
    return cell + F.binary_cross_entropy_with_logits(top, label)


def full_logit_maps(net: NoduleNet, units: np.ndarray, bf16: bool, batch: int = 8, window: int = 128) -> np.ndarray:
    """(N, S, S) units -> (N, S/16, S/16) logit maps, eval mode, by the inference path
    (:meth:`ai.nodule.NoduleModel.logit_maps`, read by windows)."""
    model = NoduleModel(net, NoduleMeta("in training", "", window=window), bf16=bf16)
    out = [model.logit_maps(units[s:s + batch]) for s in range(0, len(units), batch)]
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


def peaks(maps: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image logits (N,), peak centres (N, 2) in unit px)."""
    v, idx = masked_max(torch.from_numpy(maps), torch.from_numpy(cells))
    return v.numpy(), np.array([cell_centre(i, maps.shape[-1]) for i in idx.tolist()]).reshape(-1, 2)


def top_places(maps: np.ndarray, cells: np.ndarray, k: int) -> list[list[tuple[float, float]]]:
    """Per image, the centres (unit px) of its ``k`` highest lung cells, highest first."""
    n = maps.shape[-1]
    flat = np.where(cells.reshape(len(maps), -1) | ~cells.reshape(len(maps), -1).any(1, keepdims=True),
                    maps.reshape(len(maps), -1), -np.inf)
    order = np.argsort(-flat, axis=1)[:, :k]
    return [[cell_centre(j, n) for j in row] for row in order]


def train_mode(net: NoduleNet, freeze_bn: bool = False) -> None:
    """Training mode; with ``freeze_bn`` the backbone's BatchNorm statistics stay as initialised
    (their scale and shift still learn), as detection models do with small batches."""
    net.train()
    if freeze_bn:
        for m in net.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()


def train_net(data: NoduleData, train: np.ndarray, cfg: NoduleConfig, stage: str = "training",
              cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, NoduleNet]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = NoduleNet()
    if cfg.init:
        init_backbone(net, cfg.init)
    net = net.to(memory_format=torch.channels_last)
    head = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": net.backbone.parameters(), "lr": cfg.backbone_lr},
                             {"params": head, "lr": cfg.lr}], weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    sampler = _Sampler(data, train, cfg, gen)
    t0, losses = time.time(), []
    for it in range(cfg.iterations):
        cancel.raise_if_cancelled()
        if it >= cfg.mine_start and (it - cfg.mine_start) % cfg.mine_every == 0:
            neg = sampler.known if cfg.mine_known else sampler.negatives
            if len(neg) > cfg.mine_negatives:
                neg = sampler.rng.choice(neg, cfg.mine_negatives, replace=False)
            idx = np.concatenate([sampler.nih_pos, neg]).astype(int)
            places = top_places(full_logit_maps(net, data.units[idx], cfg.bf16, window=cfg.patch), data.cells[idx],
                                cfg.mine_top)
            sampler.mined = {int(i): p for i, p in zip(idx, places)}
            yield Progress(stage, it, cfg.iterations, f"mined the places of {len(idx)} images")
        train_mode(net, cfg.freeze_bn)
        frac = it / max(cfg.iterations - 1, 1)
        scale = min(1.0, (it + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * scale
        x, target, known, lungs, label, dense = sampler.batch(sampler.choose())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(x).float()
        loss = patch_losses(logits, target, known, lungs, label, dense)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if it % 10 == 0 or it == cfg.iterations - 1:
            rate = (it + 1) * cfg.batch / max(time.time() - t0, 1e-6)
            yield Progress(stage, it + 1, cfg.iterations,
                           f"loss {np.mean(losses[-10:]):.4f}, {rate:.1f} patches/s")
    if cfg.whole_iterations:
        yield from _train_whole(net, data, train, cfg, stage, gen, cancel)
    net.eval()
    return net


def _train_whole(net: NoduleNet, data: NoduleData, train: np.ndarray, cfg: NoduleConfig, stage: str,
                 gen: torch.Generator, cancel: CancelToken) -> Generator[Progress, None, None]:
    """Whole lung boxes at the model's size, half of each batch nodule/mass images: the image's
    label against its highest lung cell (where NIH images say no place), plus the per-cell loss on
    JSRT images. Light augmentation (flip, intensity) only: the image must stay whole."""
    rng = np.random.default_rng(cfg.seed + 1)
    pos, neg = train[data.labels[train] == 1], train[data.labels[train] == 0]
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.whole_lr, weight_decay=cfg.weight_decay)
    n = data.spec_size // STRIDE
    ctr = (torch.arange(n) + 0.5) * STRIDE
    for it in range(cfg.whole_iterations):
        cancel.raise_if_cancelled()
        half = cfg.whole_batch // 2
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, cfg.whole_batch - half)])
        x = torch.from_numpy(data.units[idx].astype(np.float32))
        target = torch.zeros(len(idx), n, n)
        known = torch.ones(len(idx), n, n, dtype=torch.bool)
        for b, i in enumerate(idx):
            for (nx, ny, r) in data.nodules[i]:
                dist = torch.hypot(ctr[None, :] - nx, ctr[:, None] - ny)
                target[b] = torch.maximum(target[b], (dist <= r + STRIDE / 2).float())
                known[b] &= ~((dist <= r + STRIDE / 2 + cfg.ignore_mm / data.mm_per_px[i]) & (target[b] == 0))
        lungs = torch.from_numpy(data.cells[idx])
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None], x.flip(-1), x)
        target = torch.where(flip[:, None, None], target.flip(-1), target)
        known = torch.where(flip[:, None, None], known.flip(-1), known)
        lungs = torch.where(flip[:, None, None], lungs.flip(-1), lungs)
        x = _intensity(x, gen)
        xs = ((x - NODULE_SPEC.mean) / NODULE_SPEC.std)[:, None].expand(-1, 3, -1, -1)
        label = torch.from_numpy(data.labels[idx].astype(np.float32))
        dense = torch.from_numpy(data.sources[idx] == "jsrt")
        train_mode(net, cfg.freeze_bn)
        for g in opt.param_groups:
            g["lr"] = cfg.whole_lr * 0.5 * (1 + math.cos(math.pi * it / max(cfg.whole_iterations - 1, 1)))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = net(xs.contiguous(memory_format=torch.channels_last)).float()
        loss = patch_losses(logits, target, known, lungs, label, dense)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 10 == 0 or it == cfg.whole_iterations - 1:
            yield Progress(stage + ", whole lung boxes", it + 1, cfg.whole_iterations, f"loss {float(loss.detach()):.4f}")


def evaluate_fold(net: NoduleNet, data: NoduleData, idx: np.ndarray, bf16: bool, window: int = 128) -> list[dict]:
    """Per held-out image: its logit, and for a JSRT nodule whether the peak lies within the
    nodule's radius + 10 mm."""
    maps = full_logit_maps(net, data.units[idx], bf16, window=window)
    logits, centres = peaks(maps, data.cells[idx])
    rows = []
    for j, i in enumerate(idx):
        row = {"id": data.ids[i], "source": str(data.sources[i]), "group": str(data.groups[i]),
               "label": int(data.labels[i]), "logit": float(logits[j])}
        if data.nodules[i]:
            x, y, r = data.nodules[i][0]
            dist_mm = math.hypot(centres[j][0] - x, centres[j][1] - y) * data.mm_per_px[i]
            row["peak_distance_mm"] = float(dist_mm)
            row["nodule_radius_mm"] = float(r * data.mm_per_px[i])
            row["peak_hit"] = bool(dist_mm <= r * data.mm_per_px[i] + 10.0)
        rows.append(row)
    return rows


def fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling (a logistic regression on the logit) fitted on out-of-fold logits."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4).fit(np.asarray(logits).reshape(-1, 1), np.asarray(y).astype(int))
    slope, intercept = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not (math.isfinite(slope) and 1e-3 <= slope <= 100 and math.isfinite(intercept) and abs(intercept) <= 100):
        return 1.0, 0.0
    return slope, intercept


def summarise(rows: list[dict], cfg: NoduleConfig) -> dict:
    """Out-of-fold metrics per source and pooled, with calibration, threshold and availability."""
    from cxr_viewer.training.metrics import auroc, bootstrap_auroc_ci, sensitivity_threshold

    z = np.array([r["logit"] for r in rows])
    y = np.array([r["label"] for r in rows])
    src = np.array([r["source"] for r in rows])
    slope, intercept = fit_platt(z, y)
    p = 1 / (1 + np.exp(-(slope * z + intercept)))
    thr = sensitivity_threshold(y, p, cfg.threshold_sensitivity)

    def block(mask) -> dict:
        yy, pp = y[mask], p[mask]
        pred = pp >= thr
        pos, neg = yy == 1, yy == 0
        out = {"images": int(mask.sum()), "positives": int(pos.sum()), "auroc": auroc(yy, pp),
               "auroc_ci95": bootstrap_auroc_ci(yy, pp, 2000, cfg.seed),
               "sensitivity": float(pred[pos].mean()) if pos.any() else None,
               "specificity": float((~pred[neg]).mean()) if neg.any() else None,
               "accuracy": float((pred == (yy == 1)).mean()),
               "always_negative_accuracy": float(neg.mean()), "always_negative_auroc": 0.5}
        return out

    per = {s: block(src == s) for s in sorted(set(src))}
    pooled = block(np.ones(len(y), bool))
    hits = [r["peak_hit"] for r in rows if "peak_hit" in r]
    lows = {s: (v["auroc_ci95"] or (0, 0))[0] for s, v in per.items()}
    available = all(lo > cfg.min_auroc_lower for lo in lows.values()) and len(lows) >= 2
    note = "; ".join(f"{s.upper()} cross-validated AUROC {per[s]['auroc']:.3f} (95% CI {lows[s]:.3f}-"
                     f"{per[s]['auroc_ci95'][1]:.3f})" for s in per if per[s]["auroc_ci95"])
    if not available:
        note = f"{note}; the lower bound must be above {cfg.min_auroc_lower:g} on every source"
    return {"per_source": per, "pooled": pooled,
            "peak_within_radius_plus_10mm": {"jsrt_nodules": len(hits),
                                             "share": float(np.mean(hits)) if hits else None},
            "calibration": {"slope": slope, "intercept": intercept, "method": "Platt, on out-of-fold logits"},
            "threshold": float(thr), "rule": f"the highest threshold with sensitivity >= {cfg.threshold_sensitivity:g} "
                                               "on the pooled out-of-fold predictions",
            "available": bool(available), "note": note}


def cross_validate(data: NoduleData, cfg: NoduleConfig, progress_file: str = "",
                   cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[dict, list[dict]]]:
    """k folds; each fold's held-out rows are written to ``progress_file`` as it ends, and folds
    found there (same config) are not trained again: a stopped run resumes."""
    done: dict = {}
    cfg_key = json.dumps(asdict(cfg), sort_keys=True)
    if progress_file and os.path.exists(progress_file):
        with open(progress_file) as fh:
            doc = json.load(fh)
        if doc.get("config") == cfg_key:
            done = {int(k): v for k, v in doc.get("folds", {}).items()}
    for f, val in enumerate(stratified_group_folds(data, cfg.folds, cfg.seed)):
        if f in done:
            continue
        train = np.setdiff1d(np.arange(len(data.ids)), val)
        net = yield from train_net(data, train, cfg, f"fold {f + 1}/{cfg.folds}", cancel)
        rows = evaluate_fold(net, data, val, cfg.bf16, reading_window(cfg))
        for r in rows:
            r["fold"] = f
        done[f] = rows
        if progress_file:
            write_bytes_atomic(progress_file, json.dumps({"config": cfg_key, "folds": done}).encode())
    rows = [r for f in sorted(done) for r in done[f]]
    return summarise(rows, cfg), rows


DATA_TEXT = ("JSRT (247 adult PA radiographs, 154 with a nodule; research use only, and so are these weights) "
             "and NIH ChestX-ray14 (421 adult PA/AP radiographs, 91 nodule or mass by report text mining; "
             "Wang et al., CVPR 2017; NIH Clinical Center)")


def train_nodule(jsrt: str, nih: str, out: str, cfg: NoduleConfig, anatomy, cache: str = "",
                 cross_validation: bool = True, final_anyway: bool = False, cancel: CancelToken = NEVER_CANCELLED
                 ) -> Generator[Progress, None, dict]:
    """Cross-validate the recipe, then train it on every image and save it to ``out`` with the
    out-of-fold calibration, threshold and availability. A recipe that does not clear the bar is
    not trained on every image unless ``final_anyway`` (the report says why)."""
    data = yield from load_cases(jsrt, nih, anatomy, cache, cancel)
    report: dict = {"data": {"text": DATA_TEXT, "images": len(data.ids),
                             "by_source": {s: {"images": int((data.sources == s).sum()),
                                               "positives": int(data.labels[data.sources == s].sum())}
                                           for s in sorted(set(data.sources))}},
                    "config": asdict(cfg)}
    summary: dict = {}
    if cross_validation:
        summary, rows = yield from cross_validate(data, cfg, os.path.splitext(out)[0] + ".cv.json", cancel)
        report["cross_validation"] = summary
        report["per_image"] = rows
    if cross_validation and not summary.get("available") and not final_anyway:
        report["final_model"] = "not trained: the cross-validated AUROC does not clear the bar (" + summary["note"] + ")"
        return report
    net = yield from train_net(data, np.arange(len(data.ids)), cfg, "final model", cancel)
    cal = summary.get("calibration", {})
    per = summary.get("per_source", {})
    meta = NoduleMeta(cfg.name, cfg.version, NODULE_SPEC, window=reading_window(cfg),
                      slope=cal.get("slope", 1.0), intercept=cal.get("intercept", 0.0),
                      threshold=summary.get("threshold", 0.5), available=bool(summary.get("available", False)),
                      note=summary.get("note", "not cross-validated"),
                      operating_point={"sensitivity": summary.get("pooled", {}).get("sensitivity"),
                                       "specificity": summary.get("pooled", {}).get("specificity")},
                      rule=summary.get("rule", ""),
                      training={"data": DATA_TEXT, "images": len(data.ids), "iterations": cfg.iterations,
                                "batch": cfg.batch, "patch": cfg.patch, "seed": cfg.seed,
                                "init": os.path.basename(cfg.init) if cfg.init else "scratch",
                                "augmentation": "zoom 0.8-1.25, rotation 10 deg, h-flip, gamma, contrast, "
                                                "brightness, blur, noise"},
                      metrics={"cross_validation": {s: {k: v[k] for k in ("images", "positives", "auroc", "auroc_ci95",
                                                                           "sensitivity", "specificity")}
                                                    for s, v in per.items()},
                               "peak_within_radius_plus_10mm": summary.get("peak_within_radius_plus_10mm")})
    NoduleModel(net, meta, out).save(out)
    return report
