"""Training heads on a frozen backbone, with patient-level cross-validation.

For a head with few labelled images (JSRT: 247 radiographs), fine-tuning a ResNet50 end to end
overfits and cannot be validated well. Instead the backbone of an existing model is frozen, its
pooled features are computed once (with a few augmented copies per image), and the head is fitted
on them. K-fold cross-validation grouped by patient gives out-of-fold probabilities: they estimate
the AUROC (with a bootstrap interval) and fit the temperature and the threshold. The final head is
refitted on all images. If the interval's lower bound is not above ``min_auroc_lower`` (0.70: a
score worth showing, not merely better than chance) the head is stored as NOT trained, so the
viewer says "not available" with the numbers rather than showing a score it has not earned.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, replace
from typing import Generator

import numpy as np
import torch

from cxr_viewer.ai.inference import autocast, choose_device
from cxr_viewer.ai.model import HEADS, HeadInfo, load_model
from cxr_viewer.common.errors import UserError
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.training.data import DataError, PreprocessCache, default_cache_dir, scan_dataset, validate_for_training
from cxr_viewer.training.engine import (
    CLASS_NAMES,
    Augment,
    DoneEvent,
    check_output_folder,
    one_line,
    output_bytes_needed,
    prepare_images,
    report_writers,
    write_model_files,
)
from cxr_viewer.training.metrics import binary_report, fit_temperature, format_report, youden_threshold


@dataclass
class HeadTrainConfig:
    data_dir: str
    base_model: str
    out: str
    labels_csv: str | None = None
    folds: int = 5
    augmented_copies: int = 4
    steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None
    bootstrap: int = 1000
    version: str | None = None
    #: the lowest cross-validated AUROC lower 95% bound at which a head is shipped as available
    min_auroc_lower: float = 0.70


def _features(model, images: np.ndarray, spec, copies: int, choice, cancel: CancelToken, seed: int
              ) -> Generator[Progress, None, np.ndarray]:
    """(copies + 1, N, 2048) pooled backbone features: the plain image first, then augmented copies."""
    torch.manual_seed(seed)
    import random

    random.seed(seed)
    aug = Augment(spec.input_size, equalize=spec.intensity == "equalize")  # as scoring feeds the model
    out = np.zeros((copies + 1, len(images), 2048), dtype=np.float32)
    model.eval()
    total = (copies + 1) * len(images)
    done = 0
    for c in range(copies + 1):
        for start in range(0, len(images), 16):
            cancel.raise_if_cancelled()
            batch = torch.from_numpy(images[start:start + 16].astype(np.float32) / 65535.0)[:, None]
            if c:
                batch = torch.stack([aug(x) for x in batch])
            x = ((batch - spec.mean) / spec.std).expand(-1, spec.channels, -1, -1).contiguous(
                memory_format=torch.channels_last).to(choice.device)
            with torch.inference_mode(), autocast(choice):
                fmap = model.features(x)
            out[c, start:start + len(batch)] = torch.flatten(
                torch.nn.functional.adaptive_avg_pool2d(fmap.float(), 1), 1).cpu().numpy()
            done += len(batch)
            yield Progress("computing backbone features", done, total)
    return out


def _fit_head(head: torch.nn.Module, feats: np.ndarray, y: np.ndarray, cfg: HeadTrainConfig) -> None:
    """Full-batch AdamW on (copies, n, 2048) features: every copy is a training example."""
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(feats.reshape(-1, feats.shape[-1]))
    t = torch.from_numpy(np.tile(y, feats.shape[0]).astype(np.float32))
    pos = float(t.mean())
    weight = torch.where(t > 0.5, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))  # class balance
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    head.train()
    for _ in range(cfg.steps):
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(head(x)[:, 0], t, reduction="none") * weight).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()


def train_heads(cfg: HeadTrainConfig, cancel: CancelToken = NEVER_CANCELLED) -> Generator[object, None, DoneEvent]:
    from sklearn.model_selection import StratifiedGroupKFold

    if not str(cfg.out).endswith(".safetensors"):
        raise DataError("the output model must be a .safetensors path")
    check_output_folder(cfg.out)
    try:
        model, meta = load_model(cfg.base_model)
        base_sha = meta.weights_sha256
    except UserError as exc:  # ModelFileError: one line (pickles refused, SHA-256 checked)
        raise DataError(f"base model unusable: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a file the loader did not foresee: still one line
        raise DataError(f"base model unusable: {one_line(exc)}") from None
    check_output_folder(cfg.out, output_bytes_needed(model, "sgd") // 4)  # no checkpoint here: weights + report
    try:
        choice = choose_device(cfg.device, cfg.precision)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    model = model.to(choice.device).to(memory_format=torch.channels_last)
    scan = scan_dataset(cfg.data_dir, cfg.labels_csv)
    samples = [s for split in ("train", "val", "test") for s in scan.splits.get(split, [])]
    validate_for_training(samples)
    spec = meta.preprocessing
    cache = PreprocessCache(cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(), spec)
    images, samples, bad = yield from prepare_images(samples, cache, cancel, "preparing images")
    per_head = validate_for_training(samples)  # after unreadable images were dropped and listed
    heads = [h for h in HEADS if per_head[h]]
    feats = yield from _features(model, images, spec, cfg.augmented_copies, choice, cancel, cfg.seed)
    reports, texts, cv = {}, [], {}
    for head in heads:
        j = HEADS.index(head)
        idx = np.array([i for i, s in enumerate(samples) if s.labels[j] is not None])
        y = np.array([samples[i].labels[j] for i in idx], dtype=np.int64)
        groups = [samples[i].patient for i in idx]
        oof = np.zeros(len(idx), dtype=np.float64)
        sgkf = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
        for k, (tr, te) in enumerate(sgkf.split(np.zeros(len(idx)), y, groups)):
            cancel.raise_if_cancelled()
            h = _clone(model.heads[head])
            _fit_head(h, feats[:, idx[tr]], y[tr], cfg)
            with torch.no_grad():
                oof[te] = h(torch.from_numpy(feats[0, idx[te]]))[:, 0].double().numpy()
            yield Progress(f"cross-validation ({head})", k + 1, cfg.folds)
        temperature = fit_temperature(oof, y)
        p = 1 / (1 + np.exp(-oof / temperature))
        threshold = youden_threshold(y, p)
        rep = binary_report(y, p, threshold, CLASS_NAMES[head], bootstrap=cfg.bootstrap, seed=cfg.seed)
        reports[head] = rep
        texts.append(f"{cfg.folds}-fold cross-validation, grouped by patient (out-of-fold predictions)\n"
                     + format_report(head, rep))
        ci = rep.get("auroc_ci95") or (0.0, 0.0)
        better_than_chance = ci[0] > 0.5
        available = ci[0] > cfg.min_auroc_lower
        # refit on all images for the shipped head
        model.heads[head] = _clone(model.heads[head])
        _fit_head(model.heads[head], feats[:, idx], y, cfg)
        cv[head] = {"folds": cfg.folds, "auroc": rep["auroc"], "auroc_ci95": ci, "better_than_chance": better_than_chance,
                    "required_auroc_lower": cfg.min_auroc_lower, "available": available}
        meta.heads[head] = HeadInfo(
            trained=bool(available), threshold=threshold, temperature=temperature,
            negative=CLASS_NAMES[head][0], positive=CLASS_NAMES[head][1],
            operating_point={"sensitivity": rep["sensitivity"], "specificity": rep["specificity"]},
            rule=f"head fitted on the frozen backbone; temperature and threshold (Youden's J) from {cfg.folds}-fold "
                 "patient-grouped cross-validation out-of-fold predictions",
            note=("" if available else
                  f"cross-validated AUROC {rep['auroc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}) is "
                  + ("not better than chance" if not better_than_chance else
                     f"better than chance but its lower bound is not above the {cfg.min_auroc_lower:.2f} required")
                  + "; the weights are kept for research, the viewer shows no score"),
        )
    meta.training.setdefault("heads_trained_later", []).append({
        "heads": heads, "data_dir": os.path.abspath(cfg.data_dir), "labels_csv": cfg.labels_csv,
        "counts": {h: {str(k): int(v) for k, v in per_head[h].items()} for h in heads},
        "method": "frozen backbone; head MLP fitted with AdamW on pooled features of each image and "
                  f"{cfg.augmented_copies} augmented copies; {cfg.steps} full-batch steps",
        "cross_validation": cv, "base_model_sha256": meta.weights_sha256,
        "config": {k: v for k, v in vars(cfg).items() if k != "cache_dir"},
        "skipped": len(bad),
    })
    if cache.anatomy is not None:  # the lung box these heads were fitted on: a scorer refuses another one
        meta.training["anatomy_sha256"] = cache.anatomy.meta.weights_sha256
    meta.metrics.setdefault("cross_validation", {}).update(
        {h: {k: v for k, v in r.items() if k not in ("roc_curve", "calibration_curve")} for h, r in reports.items()})
    if cfg.version:
        meta.version = cfg.version
    meta.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    report_path = os.path.splitext(cfg.out)[0] + ".heads.report.json"
    report = json.dumps({"notice": "Research use only. Not for diagnostic use.",
                         "split": f"{cfg.folds}-fold cross-validation", "heads": reports}, indent=2)
    write_model_files(model.cpu(), meta, cfg.out, report_writers(report_path, report, reports, cfg.out))
    texts.append(_carry_input_check(cfg, base_sha, meta.weights_sha256))
    return DoneEvent(cfg.out, report_path, -1, False, "\n\n".join(texts))


def _carry_input_check(cfg: HeadTrainConfig, base_sha: str, new_sha: str) -> str:
    """Beside the new model: the base model's feature distance, unchanged but for the model it belongs
    to. It measures the backbone's pooled features only, and the backbone is frozen here, so every
    distance and its limit are the base model's. An older check at the output's name is removed
    first; a failed write leaves none (the model is whole either way); returns the report's line.
    The base's check is read before anything is removed (the output may be the base model's name)."""
    from cxr_viewer.ai.gate import feature_distance_of, ood_path, remove_feature_distance

    fd, why = feature_distance_of(cfg.base_model, base_sha)
    if fd is None and not os.path.exists(ood_path(cfg.base_model)):
        why = "the base model has none"
    try:
        remove_feature_distance(cfg.out)
        if fd is not None:
            fd = replace(fd, model_sha256=new_sha, fitted_on={
                **fd.fitted_on, "carried_from": os.path.basename(cfg.base_model),
                "carried_because": "the backbone is frozen: its features, the distance and its limit are the "
                                   "base model's"})
            fd.save(ood_path(cfg.out))
            return (f"input check: the base model's feature distance carried over (the backbone is frozen; limit "
                    f"{fd.threshold:.2f}) -> {os.path.basename(ood_path(cfg.out))}")
    except OSError as exc:
        why = f"cannot write it: {exc.strerror or exc}"
        try:
            remove_feature_distance(cfg.out)
        except OSError:
            pass
    return (f"input check: no feature distance ({why}); the image check alone decides which images "
            "this model scores")


def _clone(module: torch.nn.Module) -> torch.nn.Module:
    """A freshly initialised copy of a head (same layers and shapes), on the CPU in fp32."""
    import copy

    m = copy.deepcopy(module).cpu().float()
    for layer in m.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return m
