"""The training engine: a generator that yields plain events, checks for cancellation, writes an
atomic checkpoint every epoch and resumes exactly.

Runs unchanged on one CPU, one GPU, or several processes under ``torchrun`` (PyTorch's
DistributedDataParallel; gloo on CPU, NCCL on CUDA): every rank draws the same epoch order from
the same seed and takes its own slice; every rank evaluates the whole validation split, so all
ranks make the same decisions; rank 0 writes the files.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator

import numpy as np
import torch
from torch import nn

from cxr_viewer.ai.inference import autocast, choose_device
from cxr_viewer.ai.model import HEADS, CxrNet, HeadInfo, ModelMeta, load_model, read_meta, save_model, sidecar_path
from cxr_viewer.ai.preprocess import PreprocessSpec
from cxr_viewer.common.errors import ImageOpenError, UserError
from cxr_viewer.common.fileio import atomic_path
from cxr_viewer.common.tasks import NEVER_CANCELLED, Cancelled, CancelToken, Progress
from cxr_viewer.io.study import OpenError
from cxr_viewer.training.data import (
    DataError,
    PreprocessCache,
    Sample,
    choose_validation,
    default_cache_dir,
    scan_dataset,
    validate_for_training,
)
from cxr_viewer.training.metrics import (
    auroc,
    binary_report,
    choose_threshold,
    fit_temperature,
    format_report,
    parse_threshold_rule,
    save_report_plots,
)

OPTIMIZERS = ("sgd", "adam", "adamw", "adamax", "adagrad")
CLASS_NAMES = {"pneumonia": ("NORMAL", "PNEUMONIA"), "lung_cancer_association": ("NO_NODULE", "NODULE_OR_MASS")}


@dataclass
class TrainConfig:
    data_dir: str
    out: str
    labels_csv: str | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 100
    epochs: int = 30
    batch_size: int = 30
    head_activation: str = "relu"
    input_size: int = 224
    balance: bool = True
    augment: bool = True
    #: "standard": small affine, gamma, contrast, brightness; "strong": also wider zoom and shift,
    #: processing curves, blur, edge enhancement, noise and collimation, each followed by the
    #: pipeline's own percentile normalisation (what a new hospital's raw image goes through)
    augment_strength: str = "standard"
    #: what chooses the epoch, the calibration and the threshold: "validation" (the carved-out split)
    #: or "shifted" (the same images changed the way other hospitals' images differ, training.shift,
    #: pooled with the split as it is)
    select_on: str = "validation"
    #: exponential moving average of the weights (0: off), evaluated and saved instead of the raw weights
    ema: float = 0.0
    #: aspect jitter: half the training images cropped on one axis to a random aspect ratio within
    #: exp(+-aspect_jitter) and resized back to a square, so the chest's proportions vary as they do
    #: when images of other shapes are squashed to the input (0: off; e.g. 0.25 for 0.78-1.28)
    aspect_jitter: float = 0.0
    #: mixup (Zhang et al. 2018): each batch blended with a shuffled copy of itself, labels alike,
    #: the blend drawn from Beta(mixup, mixup); 0: off
    mixup: float = 0.0
    #: "lungs": the model reads the box around both lungs (the anatomy model's), not the whole image;
    #: None: as the initial model reads images (a cxr_viewer model given as ``init``), else "none"
    crop: str | None = None
    #: "equalize": histogram equalisation after the resize (ai.preprocess), in training and scoring;
    #: None: as the initial model, else "percentile"
    intensity: str | None = None
    #: weight of a loss that keeps the last conv block's activations (where the Grad-CAM heatmaps come
    #: from) inside the lung fields the anatomy model outlines on each training image: the share of
    #: activation outside the lungs, averaged over the batch (:func:`outside_lung_share`); 0: off
    lung_guidance: float = 0.0
    precision: str = "auto"
    device: str = "auto"
    init: str = "scratch"  # scratch | a cxr_viewer model .safetensors | ImageNet ResNet50 weights file
    early_stopping: int = 5  # patience in epochs on validation AUROC; 0 = off
    val_split: float = 0.1
    seed: int = 0
    #: the validation split's seed (and its shifted copies'); None: ``seed``. Fixing it while ``seed``
    #: varies trains members of a seed ensemble on the same split, chosen on the same validation
    split_seed: int | None = None
    split_by: str = "patient"  # "earliest": the lowest-numbered patients (data.earliest_split)
    num_workers: int = 1
    cache_dir: str | None = field(default_factory=default_cache_dir)
    limit_per_class: int | None = None  # use at most this many images per class folder (tests, quick looks)
    max_steps_per_epoch: int | None = None
    checkpoint: str | None = None  # default: OUT with .ckpt
    bootstrap: int = 1000
    threshold_rule: str = "youden"  # or "sensitivity:0.97"
    #: fewer validation images than this in either class of a head: no calibration, no threshold,
    #: the head is not available (a threshold of 1.000 "chosen" on 3 images is not an operating point)
    min_val_per_class: int = 20
    #: fit the model's own feature-distance input check (``ai.gate.FeatureDistance``, OUT.ood.safetensors)
    #: on its training and validation children after training, so that the viewer refuses images
    #: unlike them with this model as with the shipped one; only with at least
    #: ``input_check_min_images`` training images of the pneumonia head (and 40 validation ones),
    #: on at most ``input_check_max_images`` of them (a seeded sample)
    input_check: bool = True
    input_check_min_images: int = 200
    input_check_max_images: int = 2000
    name: str = ""  # default: the output file's name, "(trained DATE)"
    version: str = ""  # default: the date and time of the run

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint or os.path.splitext(self.out)[0] + ".ckpt"

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise DataError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.augment_strength not in ("standard", "strong"):
            raise DataError("augment strength must be standard or strong")
        if self.select_on not in ("validation", "shifted"):
            raise DataError("select-on must be validation or shifted")
        if not 0.0 <= self.ema < 1.0:
            raise DataError("ema must be in [0, 1)")
        if not 0.0 <= self.aspect_jitter <= 0.7:
            raise DataError("aspect jitter must be in [0, 0.7] (the largest log aspect ratio; 0: off)")
        if not 0.0 <= self.mixup <= 10.0:
            raise DataError("mixup must be in [0, 10] (the Beta distribution's parameter; 0: off)")
        if self.crop not in (None, "none", "lungs"):
            raise DataError("crop must be none or lungs")
        if not 0.0 <= self.lung_guidance <= 100.0:
            raise DataError("lung guidance must be in [0, 100] (0: off)")
        if self.lung_guidance and (self.mixup or self.crop == "lungs"):
            raise DataError("lung guidance works on whole images without mixup (a blend has two pairs of lungs)")
        if self.intensity not in (None, "percentile", "equalize"):
            raise DataError("intensity must be percentile or equalize")
        if self.schedule not in ("cosine", "constant"):
            raise DataError("schedule must be cosine or constant")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DataError("epochs, batch size and learning rate must be positive")
        if not self.out.endswith(".safetensors"):
            raise DataError("the output model must be a .safetensors path")
        try:  # checked here, before training, by the parser the finished run uses
            parse_threshold_rule(self.threshold_rule)
        except ValueError as exc:
            raise DataError(str(exc)) from None


class OutputError(UserError):
    """The model, its checkpoint or its report could not be written (disk full, folder read-only);
    ``str(err)`` is one line. What was written before stays whole (see :func:`write_model_files`)."""


def one_line(exc: BaseException) -> str:
    """An unexpected exception as one short line (an OSError's reason, else its type and the first
    line of its message), for listing a file or stopping a run without a traceback."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


#: optimiser state tensors kept per parameter (what a checkpoint holds besides the weights)
_OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2, "adamax": 2, "adagrad": 1}


def output_bytes_needed(model: nn.Module, optimizer: str, checkpoint: str | None = None) -> int:
    """Free space a run needs beside its output: the fp16 weights, the checkpoint (fp32 weights, the
    best epoch's weights and the optimiser's state) twice (the old one stays until the new one is
    complete), less a checkpoint already there, and a few MiB for the sidecar, report and plots."""
    n = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    ckpt = 4 * n * (2 + _OPTIMIZER_SLOTS.get(optimizer, 2))
    existing = os.path.getsize(checkpoint) if checkpoint and os.path.isfile(checkpoint) else 0
    return 2 * n + max(ckpt, 2 * ckpt - existing) + 8 * 2**20


def check_output_folder(out: str, need: int = 0) -> None:
    """Before any training: the output folder exists (made if needed), takes a new file, and has
    ``need`` bytes free. Raises DataError with one line otherwise."""
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the output folder {folder}: {one_line(exc)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise DataError(f"the output folder {folder} is not writable: {one_line(exc)}") from None
    if need:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return  # a file system that cannot say: the writes themselves are checked
        if free < need:
            raise DataError(f"not enough free space in {folder}: {_mib(free)} free, training needs about "
                            f"{_mib(need)} (model, checkpoint and its replacement)")


def _file_mode() -> int:
    """What a plain ``open(path, "w")`` gives under the current umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_model_files(model: nn.Module, meta: ModelMeta, out: str, extras: dict[str, Callable[[str], None]],
                      dtype: torch.dtype = torch.float16) -> None:
    """Write the weights, their sidecar and ``extras`` (final path -> writer of a given path: the
    report, the plots) as one unit: all to temporary names in the output folder, then renamed, the
    sidecar last (weights without a sidecar are never a model). On any failure every temporary
    file and every file already renamed is removed, and OutputError says why. All files get the
    permissions of a plain file write."""
    folder = os.path.dirname(os.path.abspath(out))
    stem = os.path.splitext(os.path.basename(out))[0]
    temps: list[str] = []
    moved: list[str] = []
    backups: list[tuple[str, str]] = []  # (backup, final): what was there before, put back on failure
    try:
        fd, tmp_weights = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=".safetensors", dir=folder)
        os.close(fd)
        temps += [tmp_weights, sidecar_path(tmp_weights)]
        staged: list[tuple[str, str]] = []
        for final, writer in extras.items():
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=os.path.splitext(final)[1], dir=folder)
            os.close(fd)
            temps.append(tmp)
            writer(tmp)
            staged.append((tmp, final))
        save_model(model, meta, tmp_weights, dtype=dtype)
        mode = _file_mode()
        for tmp in temps:
            os.chmod(tmp, mode)
        staged += [(tmp_weights, out), (sidecar_path(tmp_weights), sidecar_path(out))]
        # An older model at these names is moved aside first, its sidecar first (so it stops being a
        # model before its weights change), and put back if anything below fails: nothing is lost.
        for final in [sidecar_path(out)] + [f for _, f in staged if f != sidecar_path(out)]:
            if os.path.lexists(final):
                backup = f"{final}.bak-{os.getpid()}"
                os.replace(final, backup)
                backups.append((backup, final))
        for tmp, final in staged:
            os.replace(tmp, final)
            temps.remove(tmp)
            moved.append(final)
        for backup, _final in backups:
            try:
                os.unlink(backup)
            except OSError:
                pass
        backups.clear()
        try:  # the renames themselves survive a power cut
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException as exc:
        for path in temps + moved:
            try:
                os.unlink(path)
            except OSError:
                pass
        for backup, final in reversed(backups):  # the sidecar, moved aside first, comes back last
            try:
                os.replace(backup, final)
            except OSError:
                pass
        if isinstance(exc, OSError):
            kept = "; the previous model there is kept" if backups else ""
            raise OutputError(f"cannot write the model {out}: {one_line(exc)}; nothing new was kept{kept}") from None
        raise


# --- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanEvent:
    summary: str
    train_counts: dict
    val_counts: dict
    validation: str
    skipped: tuple[OpenError, ...]
    trained_heads: tuple[str, ...]


@dataclass(frozen=True)
class StepEvent:
    epoch: int
    step: int
    steps: int
    loss: float
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None
    val_auroc: float | None
    val_sensitivity: float | None
    val_specificity: float | None
    head_auroc: dict
    images_per_s: float
    seconds: float
    eta_s: float
    best_epoch: int
    device: str


@dataclass(frozen=True)
class SavedEvent:
    """The model is written and whole (what follows, the input check's fit, cannot undo that)."""
    model_path: str


@dataclass(frozen=True)
class DoneEvent:
    model_path: str
    report_path: str
    best_epoch: int
    stopped_early: bool
    report_text: str


# --- data -----------------------------------------------------------------------------------

def _limit(samples: list[Sample], per_class: int | None, seed: int) -> list[Sample]:
    if not per_class:
        return samples
    rng = random.Random(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.source, []).append(s)
    out = []
    for cls in sorted(by_class):
        items = sorted(by_class[cls], key=lambda s: s.path)
        rng.shuffle(items)
        out += items[:per_class]
    return out


def _labels_array(samples: list[Sample]) -> np.ndarray:
    return np.array([[-1 if v is None else v for v in s.labels] for s in samples], dtype=np.float32)


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling weights: each head gets draws in proportion to its labelled images, split evenly
    between its two classes."""
    n = len(labels)
    w = np.zeros(n, dtype=np.float64)
    for j in range(labels.shape[1]):
        col = labels[:, j]
        n_head = int((col >= 0).sum())
        for cls in (0, 1):
            idx = np.flatnonzero(col == cls)
            if len(idx):
                w[idx] += (n_head / n) * 0.5 / len(idx)
    w[w == 0] = w[w > 0].min() if (w > 0).any() else 1.0
    return w / w.sum()


class Augment:
    """Radiograph augmentation on a (1, S, S) [0, 1] tensor: small rotation, shift and zoom;
    brightness, contrast and gamma. No flips: left-right anatomy (heart side, markers) matters.
    ``strength="strong"``: see :class:`TrainConfig`."""

    def __init__(self, size: int, strength: str = "standard", equalize: bool = False, aspect: float = 0.0):
        from torchvision.transforms import v2

        self.strong = strength == "strong"
        self.aspect = aspect  # TrainConfig.aspect_jitter
        #: end as the pipeline does for an ``intensity="equalize"`` model (ai.preprocess.equalise)
        self.equalize = equalize
        if self.strong:
            self.affine = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.75, 1.25))
        else:
            self.affine = v2.RandomAffine(degrees=7, translate=(0.06, 0.06), scale=(0.9, 1.12))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The changed image."""
        return self._photometric(self.affine(self._aspect(x)[0]))

    def with_mask(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The changed image and ``mask`` (1, S, S) moved by the same geometry (the mask's values kept)."""
        from torchvision import tv_tensors

        x, mask = self._aspect(x, mask)
        x, mask = self.affine(tv_tensors.Image(x), tv_tensors.Mask(mask))
        return self._photometric(x.as_subclass(torch.Tensor)), mask.as_subclass(torch.Tensor)

    def _aspect(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Half the time (with ``aspect``): crop one axis to a random aspect ratio and resize back."""
        from torch.nn import functional as F

        if not self.aspect or random.random() >= 0.5:
            return x, mask
        s = x.shape[-1]
        ratio = math.exp(random.uniform(-self.aspect, self.aspect))  # width over height of the crop
        h, w = (s, max(8, round(s * ratio))) if ratio < 1 else (max(8, round(s / ratio)), s)
        y0, x0 = random.randint(0, s - h), random.randint(0, s - w)

        def back(t: torch.Tensor, mode: str) -> torch.Tensor:
            t = t[..., y0:y0 + h, x0:x0 + w][None].float()
            out = F.interpolate(t, size=(s, s), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
            return out[0]

        return back(x, "bilinear"), None if mask is None else back(mask, "nearest").to(mask.dtype)

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        if self.strong:
            x = self._strong(x)
        else:
            gamma = math.exp(random.uniform(math.log(0.75), math.log(1.33)))
            x = x.clamp(0, 1) ** gamma
            contrast = random.uniform(0.75, 1.3)
            brightness = random.uniform(-0.08, 0.08)
            x = ((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
        if self.equalize:
            from cxr_viewer.ai.preprocess import equalise

            x = torch.from_numpy(equalise(x[0].numpy()))[None]
        return x


    @staticmethod
    def _strong(x: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        x = x.clamp(0, 1) ** math.exp(random.uniform(math.log(0.5), math.log(2.0)))
        r = random.random()
        if r < 0.2:  # a steeper processing curve
            x = torch.sigmoid(random.uniform(4, 10) * (x - 0.5))
        elif r < 0.4:  # a flatter one
            x = 0.5 + 0.5 * torch.tanh(random.uniform(1.0, 2.0) * (x - 0.5))
        r = random.random()
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
        kk = (k[:, None] * k[None, :]).view(1, 1, 5, 5)
        if r < 0.4:
            blurred = F.conv2d(F.pad(x[None], (2, 2, 2, 2), mode="replicate"), kk)[0]
            x = blurred if r < 0.2 else x + random.uniform(0.5, 1.5) * (x - blurred)  # blur or edge enhancement
        if random.random() < 0.3:
            x = x + torch.randn_like(x) * random.uniform(0.01, 0.05)
        if random.random() < 0.15:  # collimator bands
            w = x.shape[-1]
            b = int(w * random.uniform(0.03, 0.12))
            x[..., :b] = 1.0
            x[..., w - b:] = 1.0
        # the pipeline's own normalisation: 0.5 and 99.5 percentiles to 0 and 1
        lo, hi = torch.quantile(x.flatten()[::4], torch.tensor([0.005, 0.995])).tolist()
        return ((x - lo) / max(hi - lo, 1e-6)).clamp(0, 1)


class ArrayDataset(torch.utils.data.Dataset):
    """Preprocessed images held in memory (uint16, [0, 1] scaled), labels with -1 for unlabelled."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, augment: bool,
                 strength: str = "standard", masks: np.ndarray | None = None, aspect: float = 0.0):
        self.images, self.labels, self.spec, self.masks = images, labels, spec, masks
        self.augment = (Augment(spec.input_size, strength, spec.intensity == "equalize", aspect)
                        if augment else None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i].astype(np.float32) / 65535.0)[None]
        m = None if self.masks is None else torch.from_numpy(self.masks[i])[None]
        if self.augment is not None:
            x, m = (self.augment(x), None) if m is None else self.augment.with_mask(x, m)
        x = ((x - self.spec.mean) / self.spec.std).expand(self.spec.channels, -1, -1).contiguous()
        if m is None:
            return x, torch.from_numpy(self.labels[i])
        return x, torch.from_numpy(self.labels[i]), m.float()


def _guidance_anatomy():
    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path

    try:
        return AnatomyModel.from_file(default_anatomy_path())
    except Exception as exc:  # noqa: BLE001 - a missing or bad file: one line
        raise DataError(f"lung guidance needs the anatomy model: {one_line(exc)}") from None


def outside_lung_share(fmap: torch.Tensor, lungs: torch.Tensor) -> torch.Tensor:
    """The share of the last conv block's activation (B, C, h, w) that lies outside the lungs
    (B, 1, H, W in {0, 1}), averaged over the batch: each cell's activation summed over channels,
    weighted by the share of its pixels outside the lungs. Grad-CAM is a weighted sum of these
    activations, so a map with little activation outside the lungs cannot put its heatmap there."""
    e = fmap.float().sum(1)  # the block ends in a ReLU: activations are >= 0
    lung = torch.nn.functional.adaptive_avg_pool2d(lungs.float(), fmap.shape[-2:])[:, 0]
    return ((e * (1 - lung)).sum((1, 2)) / e.sum((1, 2)).clamp(min=1e-6)).mean()


def lung_masks(units: np.ndarray, anatomy, cancel: CancelToken = NEVER_CANCELLED, batch: int = 32
               ) -> Generator[Progress, None, np.ndarray]:
    """(N, S, S) uint8 lung masks (both lungs, 0/1) of whole-image units (uint16, the percentile
    window): the anatomy model's outlines, cleaned as the viewer and ``evaluate --heatmap-in-lungs``
    clean them (:meth:`AnatomyModel.lungs_of_units`), so training is guided by the lungs it is measured on."""
    n, s = len(units), units.shape[-1]
    out = np.zeros((n, s, s), np.uint8)
    for i in range(0, n, batch):
        cancel.raise_if_cancelled()
        out[i:i + batch] = anatomy.lungs_of_units(units[i:i + batch].astype(np.float32) / 65535.0, s)
        yield Progress("finding the lungs", min(i + batch, n), n)
    return out


def prepare_images(samples: list[Sample], cache: PreprocessCache, cancel: CancelToken, stage: str
                   ) -> Generator[Progress, None, tuple[np.ndarray, list[Sample], list[OpenError]]]:
    """Decode and preprocess every image once (the disk cache makes later runs fast)."""
    size = cache.spec.input_size
    images = np.zeros((len(samples), size, size), dtype=np.uint16)
    keep, bad = [], []
    for i, s in enumerate(samples):
        cancel.raise_if_cancelled()
        try:
            unit = cache.load(s.path)
            images[len(keep)] = np.rint(unit * 65535.0).astype(np.uint16)
            keep.append(s)
        except ImageOpenError as exc:
            bad.append(OpenError(s.path, str(exc)))
        except OSError as exc:
            bad.append(OpenError(s.path, f"cannot read: {exc.strerror or exc}"))
        except MemoryError:
            bad.append(OpenError(s.path, "out of memory while decoding"))
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file is skipped and listed, never fatal
            bad.append(OpenError(s.path, f"cannot use this image: {one_line(exc)}"))
        if i % 50 == 0 or i + 1 == len(samples):
            yield Progress(stage, i + 1, len(samples), s.path)
    return images[: len(keep)], keep, bad


# --- model init -----------------------------------------------------------------------------

def preprocessing_for(cfg: TrainConfig) -> PreprocessSpec:
    """The run's preprocessing: the config's lung box and intensity where given, else those of the
    initial model when it is a cxr_viewer model (fine-tuning an equalising model must not feed it
    unequalised images), else the whole image and the percentile window."""
    inherited = PreprocessSpec()
    if (cfg.crop is None or cfg.intensity is None) and cfg.init not in ("", "scratch"):
        try:
            inherited = read_meta(cfg.init).preprocessing
        except Exception:  # noqa: BLE001 - ImageNet weights, or a bad file: initial_model says why
            pass
    return PreprocessSpec(input_size=cfg.input_size, crop=cfg.crop or inherited.crop,
                          crop_pad=inherited.crop_pad if cfg.crop is None else PreprocessSpec.crop_pad,
                          intensity=cfg.intensity or inherited.intensity)


def initial_model(cfg: TrainConfig) -> tuple[CxrNet, str]:
    """The network to start from. Any unusable --init file raises DataError with one line."""
    model = CxrNet(HEADS, 256, cfg.head_activation)
    if cfg.init in ("", "scratch"):
        return model, "from scratch (random initialisation; no pretrained weights)"
    path = cfg.init
    if not os.path.isfile(path):
        raise DataError(f"initial weights not found: {path}")
    try:
        return _load_initial(model, cfg, path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile or broken file: one line, never a traceback
        raise DataError(f"initial weights unusable ({os.path.basename(path)}): {one_line(exc)}") from None


def _load_initial(model: CxrNet, cfg: TrainConfig, path: str) -> tuple[CxrNet, str]:
    if path.endswith(".safetensors") and os.path.exists(sidecar_path(path)):
        try:
            loaded, meta = load_model(path)
        except UserError as exc:  # ModelFileError: pickles refused, SHA-256 checked, shapes checked
            raise DataError(f"initial model unusable: {exc}") from None
        model.backbone.load_state_dict(loaded.backbone.state_dict())
        for h in HEADS:
            if meta.head_activation == cfg.head_activation:
                model.heads[h].load_state_dict(loaded.heads[h].state_dict())
        return model, f"fine-tuned from model {os.path.basename(path)} (SHA-256 {meta.weights_sha256[:12]})"
    # ImageNet ResNet50 weights (torchvision names): safetensors, or a torch file read weights-only
    # (tensors and plain containers; anything else is refused by torch's restricted loader)
    with open(path, "rb") as f:
        magic = f.read(8)
    if path.endswith(".safetensors"):
        if magic.startswith((b"PK\x03\x04", b"\x80")):
            raise DataError(f"{os.path.basename(path)} is a pickled file named .safetensors; it is refused "
                            "(pickles can run code)")
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends
            raise DataError(f"{os.path.basename(path)} is not a weights-only torch file (refused, never "
                            f"unpickled: {one_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{os.path.basename(path)} is not a torchvision ResNet50 state dict")
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    try:
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    except RuntimeError:  # shapes that do not fit
        missing, unexpected = [], ["?"]
    if unexpected or [m for m in missing if not m.startswith("fc.")]:
        raise DataError(f"{os.path.basename(path)} is not a torchvision ResNet50 state dict")
    return model, f"backbone initialised from {os.path.basename(path)} (local ImageNet weights)"


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch blended with a shuffled copy of itself (mixup): images and labels alike, one blend
    per batch from Beta(alpha, alpha). A head's label missing (-1) in either image stays missing: a
    head labelled on a share p of the images keeps about p squared of its labels under mixup."""
    lam = float(np.random.default_rng(int(torch.randint(1 << 30, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=g).to(x.device)
    known = (y >= 0) & (y[perm] >= 0)
    mixed = lam * y.clamp(min=0).float() + (1 - lam) * y[perm].clamp(min=0).float()
    return lam * x + (1 - lam) * x[perm], torch.where(known, mixed, torch.full_like(mixed, -1.0))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over labelled (head, image) pairs only; unlabelled (-1) are ignored."""
    mask = labels >= 0
    if not mask.any():
        return logits.sum() * 0.0
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).float(), reduction="none")
    return (loss * mask).sum() / mask.sum()


# --- checkpoints ----------------------------------------------------------------------------

def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[-2], tuple(p[:-2]), p[-1]))


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str, payload: dict) -> None:
    """Atomic (the previous checkpoint stays whole until the new one is complete). A failed write is
    OutputError with one line; torch's writer reports a full disk as a RuntimeError, so that case is
    recognised by the free space left."""
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise OutputError(f"cannot write the checkpoint {path}: {one_line(exc)}") from None
    except RuntimeError as exc:
        try:
            full = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < _tensor_bytes(payload)
        except OSError:
            full = False
        reason = "No space left on device" if full else f"the write failed ({one_line(exc)})"
        raise OutputError(f"cannot write the checkpoint {path}: {reason}") from None


#: what may differ between a run and its resumption: where things go, how they are computed and
#: reported, and when to stop; everything else (data, split, recipe, schedule...) must be the same
RESUME_MAY_CHANGE = frozenset({"out", "checkpoint", "cache_dir", "num_workers", "device", "precision", "epochs",
                               "early_stopping", "threshold_rule", "min_val_per_class", "bootstrap", "name",
                               "version", "input_check", "input_check_min_images", "input_check_max_images"})


def _checkpoint_of_this_run(cfg: TrainConfig) -> dict:
    """The checkpoint to resume, refused (DataError, one line) when it belongs to another run: a
    resumed run must be the run it continues (a dialog whose fields changed since, or another
    recipe, would otherwise silently mix two)."""
    path = cfg.checkpoint_path
    if not os.path.exists(path):
        raise DataError(f"nothing to resume: {path} does not exist")
    ck = load_checkpoint(path)
    try:
        then = json.loads(ck.get("config") or "{}")
    except (TypeError, ValueError):
        then = {}
    now = asdict(cfg)
    differ = [k for k in now if k not in RESUME_MAY_CHANGE and k in then and then[k] != now[k]
              and not (k == "data_dir" and os.path.abspath(str(then[k])) == os.path.abspath(str(now[k])))
              and not (k in ("crop", "intensity") and now[k] is None)]  # None: as the initial model, resolved then
    if differ:
        shown = ", ".join(f"{k} {then[k]!r} (now {now[k]!r})" for k in differ[:4])
        raise DataError(f"cannot resume: the checkpoint {path} is of another run: {shown}"
                        + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                        + "; start a new run, or resume with the same settings")
    return ck


def load_checkpoint(path: str) -> dict:
    """Checkpoints are read with ``weights_only=True``: tensors and plain containers, no code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot resume from {path}: {str(exc).splitlines()[0]}") from None


# --- distributed ----------------------------------------------------------------------------

def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


# --- the run --------------------------------------------------------------------------------

def _evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, device: str,
              choice, batch_size: int, cancel: CancelToken) -> tuple[np.ndarray, float]:
    """Logits (N, heads) and masked loss on preprocessed images, without augmentation."""
    model.eval()
    ds = ArrayDataset(images, labels, spec, augment=False)
    out, losses, counts = [], 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ds), batch_size):
            cancel.raise_if_cancelled()
            batch = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            x = torch.stack([b[0] for b in batch]).to(device)
            y = torch.stack([b[1] for b in batch]).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(choice):
                logits = model(x)
            n = int((y >= 0).sum())
            losses += float(masked_bce(logits, y)) * n
            counts += n
            out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(HEADS))), losses / max(counts, 1)


def _head_summary(logits: np.ndarray, labels: np.ndarray, heads: tuple[str, ...]) -> dict:
    res = {}
    for j, h in enumerate(HEADS):
        if h not in heads:
            continue
        m = labels[:, j] >= 0
        y, p = labels[m, j], 1 / (1 + np.exp(-logits[m, j]))
        pred = p >= 0.5
        tp, tn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
        pos, neg = int((y == 1).sum()), int((y == 0).sum())
        res[h] = {"auroc": auroc(y, p), "accuracy": float((tp + tn) / max(len(y), 1)),
                  "sensitivity": tp / pos if pos else None, "specificity": tn / neg if neg else None}
    return res


def report_writers(report_path: str, report_json: str, reports: dict, out: str) -> dict[str, Callable[[str], None]]:
    """Writers for the report JSON and each head's ROC/calibration plot (for :func:`write_model_files`)."""
    def write_text(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(report_json)

    writers: dict[str, Callable[[str], None]] = {report_path: write_text}
    for h, r in reports.items():
        writers[os.path.splitext(out)[0] + f".{h}.png"] = (lambda tmp, h=h, r=r: save_report_plots(h, r, tmp))
    return writers


MIN_INPUT_CHECK_VALIDATION = 40  # the threshold is the 99% quantile of their distances (x 4 with shifts)


def fit_input_check(cfg: TrainConfig, train_s: list[Sample], val_s: list[Sample], head_trained: bool,
                    cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, str]:
    """After the model is written: fit its feature distance on its own training children (each as
    it is and once shifted) with the threshold letting 99% of its validation children through (as
    they are and three shifts each), written atomically beside the model; returns the report's line.
    A feature distance left from an older model at that name is removed first. The model is
    complete before this starts: a cancel or a failure here only leaves it without one."""
    from cxr_viewer.ai.gate import ood_path, remove_feature_distance

    path = ood_path(cfg.out)
    remove_feature_distance(cfg.out)  # it belonged to the model this one replaced
    kids = [s.path for s in train_s if s.label("pneumonia") is not None]
    val = [s.path for s in val_s if s.label("pneumonia") is not None]
    why = ("" if head_trained else "the pneumonia head is not available") if cfg.input_check else "not asked for"
    if not why and (len(kids) < cfg.input_check_min_images or len(val) < MIN_INPUT_CHECK_VALIDATION):
        why = (f"{len(kids)} training and {len(val)} validation images; at least {cfg.input_check_min_images} and "
               f"{MIN_INPUT_CHECK_VALIDATION} are needed")
    if not why:
        from cxr_viewer.ai.inference import Scorer
        from cxr_viewer.training.intended_use import fit_distance_on

        rng = np.random.default_rng(cfg.seed)
        if len(kids) > cfg.input_check_max_images:
            kids = sorted(rng.choice(kids, cfg.input_check_max_images, replace=False).tolist())
        if len(val) > cfg.input_check_max_images // 2:  # each is scored 4 times (as it is and 3 shifts)
            val = sorted(rng.choice(val, cfg.input_check_max_images // 2, replace=False).tolist())
        try:
            scorer = Scorer.from_file(cfg.out, cfg.device)  # the precision the viewer scores with
            fd = yield from fit_distance_on(scorer, kids, val, rng=rng, cancel=cancel)
            fd.fitted_on["by"] = "cxr-viewer train, on the run's own training and validation images"
            fd.save(path)
        except Cancelled:
            why = "cancelled"
        except Exception as exc:  # noqa: BLE001 - the model is written and whole: say why it has no check
            why = one_line(exc)
        else:
            return (f"input check: feature distance fitted on {len(kids)} training images (limit {fd.threshold:.2f}: "
                    f"{fd.fitted_on['validation_children_passed'].get('none', 0):.1%} of the validation images as "
                    f"they are pass) -> {os.path.basename(path)}")
    remove_feature_distance(cfg.out)  # a save that failed half-way
    return (f"input check: no feature distance fitted ({why}); the image check alone decides which images "
            "this model scores")


def train(cfg: TrainConfig, resume: bool = False, cancel: CancelToken = NEVER_CANCELLED
          ) -> Generator[object, None, DoneEvent]:
    """Task: train a model. Yields Progress, ScanEvent, StepEvent and EpochEvent; returns DoneEvent."""
    cfg.validate()
    check_output_folder(cfg.out)  # writable, before anything slow
    ck = _checkpoint_of_this_run(cfg) if resume else None
    world, rank, local_rank = _dist_info()
    distributed = world > 1
    try:
        choice = choose_device(cfg.device, cfg.precision)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    device = choice.device
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
    is_main = rank == 0
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # the starting weights (a bad --init fails here) and room for the outputs, before any data work
    model, init_note = initial_model(cfg)
    if rank == 0:
        check_output_folder(cfg.out, output_bytes_needed(model, cfg.optimizer, cfg.checkpoint_path))

    # data
    scan = scan_dataset(cfg.data_dir, cfg.labels_csv)
    validate_for_training(scan.splits.get("train", []))  # empty or single-class data: say so before splitting
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    train_s, val_s, val_note = choose_validation(scan, cfg.val_split, split_seed, cfg.split_by)
    train_s = _limit(train_s, cfg.limit_per_class, split_seed)
    val_s = _limit(val_s, cfg.limit_per_class and max(2, cfg.limit_per_class // 4), split_seed)
    validate_for_training(train_s)  # before decoding anything
    spec = preprocessing_for(cfg)
    cfg.crop, cfg.intensity = spec.crop, spec.intensity  # the run's record says what was used
    cache = PreprocessCache(cfg.cache_dir, spec)
    train_x, train_s, bad_train = yield from prepare_images(train_s, cache, cancel, "preparing training images")
    val_x, val_s, bad_val = yield from prepare_images(val_s, cache, cancel, "preparing validation images")
    per_head = validate_for_training(train_s)  # unreadable images are gone now (prepare_images lists them)
    heads = tuple(h for h in HEADS if per_head[h])
    skipped = tuple(scan.skipped + bad_train + bad_val)
    train_y, val_y = _labels_array(train_s), _labels_array(val_s)
    for h in heads:
        j = HEADS.index(h)
        if len(np.unique(val_y[val_y[:, j] >= 0, j])) < 2:
            raise DataError(f"the validation split has only one class for the {h} head; use a larger split")

    def counts(samples):
        return {k: int(v) for k, v in sorted(__import__("collections").Counter(s.source for s in samples).items())}

    yield ScanEvent(scan.summary(), counts(train_s), counts(val_s), val_note, skipped, heads)
    shift_x = shift_y = None
    shift_kinds: list[str] = []
    if cfg.select_on == "shifted":
        from cxr_viewer.training.shift import shifted_set, whole_spec

        whole = val_x
        if whole_spec(spec) != spec:  # other hospitals' images change before the lung box or equalisation
            whole, _, _ = yield from prepare_images(val_s, PreprocessCache(cfg.cache_dir, whole_spec(spec)),
                                                    cancel, "preparing validation images")
        units, src, shift_kinds = yield from shifted_set(whole.astype(np.float32) / 65535.0, spec, per_image=3,
                                                         seed=split_seed, cancel=cancel, anatomy=cache.anatomy)
        shift_x, shift_y = np.rint(units * 65535.0).astype(np.uint16), val_y[src]

    # model, optimiser, schedule
    # channels_last: faster convolutions with cuDNN and with oneDNN bf16 on the CPU
    model = model.to(device).to(memory_format=torch.channels_last)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.startswith("cuda") else None)
    optimizer = make_optimizer(cfg, model.parameters())
    ema_model = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema_model = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    n_train = len(train_s)
    per_rank = math.ceil(n_train / world)
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs

    def lr_lambda(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        if cfg.schedule == "constant":
            return warm
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    scaler = torch.amp.GradScaler("cuda") if choice.precision == "fp16" and device.startswith("cuda") else None
    weights = balanced_weights(train_y) if cfg.balance else np.full(n_train, 1.0 / n_train)

    start_epoch, best_epoch, best_score, history = 0, -1, -math.inf, []
    best_state: dict | None = None
    ckpt_path = cfg.checkpoint_path
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        start_epoch, best_epoch, best_score = int(ck["epoch"]) + 1, int(ck["best_epoch"]), float(ck["best_score"])
        history = json.loads(ck["history"])
        best_state = ck.get("best_model")
        if ema_model is not None and ck.get("ema") is not None:
            ema_model.load_state_dict(ck["ema"])
        _set_rng_state(ck["rng"])
    train_masks = None
    if cfg.lung_guidance:
        from cxr_viewer.training.shift import whole_spec

        whole_train = train_x
        if whole_spec(spec) != spec:  # the lungs are found on the image before equalisation
            whole_train, _, _ = yield from prepare_images(train_s, PreprocessCache(cfg.cache_dir, whole_spec(spec)),
                                                          cancel, "preparing training images")
        train_masks = yield from lung_masks(whole_train, _guidance_anatomy(), cancel)
    train_ds = ArrayDataset(train_x, train_y, spec, cfg.augment, cfg.augment_strength, train_masks, cfg.aspect_jitter)
    judged = model if ema_model is None else ema_model.module
    stopped_early = False
    t_run = time.perf_counter()
    epochs_done = 0
    for epoch in range(start_epoch, cfg.epochs):
        cancel.raise_if_cancelled()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.multinomial(torch.as_tensor(weights), n_train, replacement=cfg.balance, generator=g).tolist() \
            if cfg.balance else torch.randperm(n_train, generator=g).tolist()
        order = order[rank::world][: steps_per_epoch * cfg.batch_size]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(train_ds, order), batch_size=cfg.batch_size, shuffle=False,
            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
            persistent_workers=False, pin_memory=device.startswith("cuda"), drop_last=False,
        )
        net.train()
        t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        for step, batch in enumerate(loader):
            cancel.raise_if_cancelled()
            x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            if cfg.mixup > 0:
                x, y = mixup_batch(x, y, cfg.mixup, g)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(choice):
                if train_masks is None:
                    logits = net(x)
                else:
                    logits, fmap = net(x, with_features=True)
            loss = masked_bce(logits, y)
            if train_masks is not None:
                loss = loss + cfg.lung_guidance * outside_lung_share(fmap, batch[2].to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            if ema_model is not None:
                ema_model.update_parameters(model)
            seen += len(x)
            loss_value = float(loss.detach())
            loss_sum += loss_value * len(x)
            loss_n += len(x)
            yield StepEvent(epoch, step + 1, steps_per_epoch, loss_value, float(scheduler.get_last_lr()[0]),
                            seen * world / max(time.perf_counter() - t0, 1e-9))
        train_time = time.perf_counter() - t0
        val_logits, val_loss = _evaluate(judged, val_x, val_y, spec, device, choice, max(cfg.batch_size, 32), cancel)
        summary = _head_summary(val_logits, val_y, heads)
        judge = summary
        entry = {"epoch": epoch, "train_loss": loss_sum / max(loss_n, 1), "val_loss": val_loss, "val": summary}
        if shift_x is not None:
            shift_logits, _ = _evaluate(judged, shift_x, shift_y, spec, device, choice, max(cfg.batch_size, 32), cancel)
            judge = entry["val_shifted"] = _head_summary(shift_logits, shift_y, heads)
        score = float(np.mean([judge[h]["auroc"] or 0.0 for h in heads]))
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu").clone() for k, v in judged.state_dict().items()}
        main = summary.get("pneumonia") or summary[heads[0]]
        entry["images_per_s"] = seen * world / max(train_time, 1e-9)
        history.append(entry)
        epochs_done += 1
        elapsed = time.perf_counter() - t_run
        remaining = (cfg.epochs - epoch - 1) * elapsed / epochs_done
        patience_out = cfg.early_stopping and epoch - best_epoch >= cfg.early_stopping
        if is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "best_epoch": best_epoch, "best_score": best_score, "best_model": best_state,
                "history": json.dumps(history), "rng": _rng_state(), "config": json.dumps(asdict(cfg)),
                "ema": ema_model.state_dict() if ema_model is not None else None,
            })
        yield EpochEvent(epoch, cfg.epochs, loss_sum / max(loss_n, 1), val_loss, main["accuracy"], main["auroc"],
                         main["sensitivity"], main["specificity"], {h: summary[h]["auroc"] for h in heads},
                         seen * world / max(train_time, 1e-9), time.perf_counter() - t0, remaining, best_epoch,
                         choice.label)
        if patience_out:
            stopped_early = True
            break

    # finish: best weights (as they will be stored, fp16), calibration, threshold, report
    assert best_state is not None
    model.load_state_dict({k: (v.half().float() if v.is_floating_point() else v) for k, v in best_state.items()})
    val_logits, _ = _evaluate(model, val_x, val_y, spec, device, choice, max(cfg.batch_size, 32), cancel)
    fit_logits, fit_y = val_logits, val_y  # what calibration and the threshold are chosen on
    shift_logits = None
    if shift_x is not None:
        shift_logits, _ = _evaluate(model, shift_x, shift_y, spec, device, choice, max(cfg.batch_size, 32), cancel)
        fit_logits, fit_y = np.concatenate([val_logits, shift_logits]), np.concatenate([val_y, shift_y])
    now = _dt.datetime.now(_dt.timezone.utc)
    name = cfg.name or f"{os.path.splitext(os.path.basename(cfg.out))[0]} (trained {now:%Y-%m-%d})"
    meta = ModelMeta(name=name, version=cfg.version or f"{now:%Y%m%d.%H%M%S}", head_activation=cfg.head_activation,
                     preprocessing=spec)
    reports, texts = {}, []
    for j, h in enumerate(HEADS):
        if h not in heads:
            meta.heads[h] = HeadInfo(trained=False, negative=CLASS_NAMES[h][0], positive=CLASS_NAMES[h][1],
                                     note="no labelled images for this head in the training data")
            continue
        m = val_y[:, j] >= 0
        y, z = val_y[m, j], val_logits[m, j]
        n_neg, n_pos = int((y == 0).sum()), int((y == 1).sum())
        fm = fit_y[:, j] >= 0
        fy, fz = fit_y[fm, j], fit_logits[fm, j]
        if min(n_neg, n_pos) < cfg.min_val_per_class:
            note = (f"validation had {n_neg} {CLASS_NAMES[h][0]} and {n_pos} {CLASS_NAMES[h][1]} images; at least "
                    f"{cfg.min_val_per_class} per class are needed to calibrate and choose a threshold, so this head "
                    "is not available (train on more images or a larger validation split)")
            meta.heads[h] = HeadInfo(trained=False, negative=CLASS_NAMES[h][0], positive=CLASS_NAMES[h][1], note=note)
            texts.append(f"{h}: not available: {note}")
            continue
        temperature = fit_temperature(fz, fy)
        p = 1 / (1 + np.exp(-z / temperature))
        threshold, rule_text = choose_threshold(fy, 1 / (1 + np.exp(-fz / temperature)), cfg.threshold_rule)
        rep = binary_report(y, p, threshold, CLASS_NAMES[h], bootstrap=cfg.bootstrap, seed=cfg.seed)
        if shift_logits is not None:
            from cxr_viewer.training.shift import shift_report

            sm = shift_y[:, j] >= 0
            rep["shifted_validation"] = shift_report(
                shift_y[sm, j], 1 / (1 + np.exp(-shift_logits[sm, j] / temperature)),
                [k for k, ok in zip(shift_kinds, sm) if ok], threshold)
        reports[h] = rep
        texts.append(format_report(h, rep))
        meta.heads[h] = HeadInfo(
            trained=True, threshold=threshold, temperature=temperature, negative=CLASS_NAMES[h][0],
            positive=CLASS_NAMES[h][1],
            operating_point={"sensitivity": rep["sensitivity"], "specificity": rep["specificity"]},
            rule=(f"temperature: NLL-optimal on the validation split; threshold: {rule_text} on the calibrated "
                  "validation probabilities") if shift_logits is None else
                 (f"temperature: NLL-optimal on the validation split and its shifted copies; threshold: {rule_text} "
                  "on their calibrated probabilities; epoch chosen on the shifted copies' AUROC"),
        )
    meta.training = {
        "data_dir": os.path.abspath(cfg.data_dir), "labels_csv": cfg.labels_csv, "validation": val_note,
        "train_counts": counts(train_s), "val_counts": counts(val_s), "skipped": len(skipped),
        "init": init_note, "config": {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir",)},
        "best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": stopped_early,
        "history": history, "device": choice.label, "world_size": world,
    }
    if cache.anatomy is not None:  # the lung box's anatomy model: a scorer refuses another one
        meta.training["anatomy_sha256"] = cache.anatomy.meta.weights_sha256
    meta.metrics = {"validation": {h: {k: v for k, v in r.items() if k not in ("roc_curve", "calibration_curve")}
                                   for h, r in reports.items()}}
    meta.created = now.isoformat(timespec="seconds")
    report_path = os.path.splitext(cfg.out)[0] + ".report.json"
    if is_main:
        report = json.dumps({"notice": "Research use only. Not for diagnostic use.", "split": "validation",
                             "model": os.path.basename(cfg.out), "heads": reports, "history": history}, indent=2)
        write_model_files(model, meta, cfg.out, report_writers(report_path, report, reports, cfg.out))
        yield SavedEvent(cfg.out)
        texts.append((yield from fit_input_check(cfg, train_s, val_s, meta.heads["pneumonia"].trained, cancel)))
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return DoneEvent(cfg.out, report_path, best_epoch, stopped_early, "\n\n".join(texts))


__all__ = ["TrainConfig", "train", "ScanEvent", "StepEvent", "EpochEvent", "DoneEvent", "DataError", "OutputError",
           "Cancelled", "masked_bce", "balanced_weights", "load_checkpoint", "check_output_folder",
           "write_model_files", "one_line", "OPTIMIZERS"]

