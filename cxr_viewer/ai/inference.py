"""Scoring: device and precision choice, calibrated per-head probabilities, Grad-CAM heatmaps.

Heatmaps are Grad-CAM (Selvaraju et al., ICCV 2017) at the output of ResNet50's last conv block
(layer4): per head, the gradient of the head's logit with respect to that feature map, averaged
over space, weights the maps; the ReLU of the weighted sum, scaled to [0, 1], is the heatmap.
Only the small heads need a backward pass, since the gradient is taken at the backbone's output.
We use this small hook-free implementation rather than captum or pytorch-grad-cam (which pull in
OpenCV, matplotlib and more) and test it against a hand-computed case.

A score is a finite number or nothing: an image whose model input is not finite after
preprocessing, or whose model output is not, raises :class:`UnscorableImageError` (listed like an
unreadable file), and in a batch any failure of one file is that file's row, never the batch's end.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Generator, Sequence

import numpy as np
import torch

from cxr_viewer.ai.gate import GateVerdict, InputChecks
from cxr_viewer.ai.model import HEAD_TITLES, CxrNet, ModelMeta, load_model, unavailable_reason
from cxr_viewer.ai.nodule import Companion, NoduleFinding
from cxr_viewer.ai.preprocess import LungBox, map_over_image, normalise_intensity, standardise, unit_and_box
from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress
from cxr_viewer.io.image import LoadedImage, load_image
from cxr_viewer.io.study import ImageRef

HEAD_MEANING = {
    "pneumonia": (
        "How strongly this image resembles the pneumonia radiographs the model was trained on. "
        "It is not a diagnosis and does not tell bacterial from viral."
    ),
    "lung_cancer_association": (
        "How strongly this image shows findings associated with lung cancer (a nodule or mass). "
        "It is not a prediction that pneumonia turns into cancer; the two are shown together "
        "because a pneumonia that recurs in one lobe or does not clear can hide a tumour."
    ),
}


class UnscorableImageError(ImageOpenError):
    """An image the model gives no number for (non-finite input or output); one line, like an unreadable file."""


NONFINITE_INPUT = "the image has non-finite pixel values (NaN or infinity) or model input; it is not scored"
NONFINITE_OUTPUT = "the model gave a non-finite output for this image; it is not scored"


LUNG = "lung_cancer_association"

OUTSIDE = "not scored, outside this head's intended use: "
OUTSIDE_SCORED = "scored anyway, outside this head's intended use: "


def check_model_input(x: np.ndarray) -> np.ndarray:
    """``x`` if every value is finite; UnscorableImageError otherwise."""
    if not np.isfinite(x).all():
        raise UnscorableImageError(NONFINITE_INPUT)
    return x


def model_input(image: LoadedImage, scorer: Scorer) -> np.ndarray:
    """The preprocessed input (3, S, S) of ``image``. A non-finite pixel is refused even where the
    percentile clipping would hide it (an infinite pixel would become a plausible white one)."""
    return model_gate_box(image, scorer)[0]


def model_gate_box(image: LoadedImage, scorer: Scorer) -> tuple[np.ndarray, np.ndarray | None, LungBox | None]:
    """The model's input, the image check's unit and, for a model that reads the lung box, that box
    (image pixels), from one intensity normalisation when both specs normalise alike (the one
    preprocessing function, steps 1-2 done once)."""
    if not np.isfinite(image.values).all():
        raise UnscorableImageError(NONFINITE_INPUT)
    spec = scorer.meta.preprocessing
    gate = scorer.checks.gate
    norm = normalise_intensity(image.values, image.monochrome1, image.padding, spec)
    box = scorer.lung_box_of(image) if spec.crop == "lungs" else None
    unit, box = unit_and_box(norm, spec, box=box, padding=image.padding)
    x = check_model_input(standardise(unit, spec))
    if gate is None:
        return x, None, box
    gspec = gate.meta.preprocessing
    if (gspec.low_percentile, gspec.high_percentile) == (spec.low_percentile, spec.high_percentile):
        return x, unit_and_box(norm, gspec, padding=image.padding)[0], box
    return x, gate.unit(image.values, image.monochrome1, image.padding), box


def failure_reason(exc: BaseException, doing: str) -> str:
    """One line for a file that failed in a way nobody planned for (the batch goes on)."""
    if isinstance(exc, ImageOpenError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"out of memory while {doing}"
    detail = " ".join(str(exc).split())
    line = f"unexpected error while {doing}: {type(exc).__name__}" + (f": {detail}" if detail else "")
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32", "bf16" or "fp16"

    @property
    def label(self) -> str:
        if self.device.startswith("cuda") and torch.cuda.is_available():
            name = torch.cuda.get_device_name(torch.device(self.device))
            return f"CUDA ({name}), {self.precision}"
        return f"CPU, {self.precision}"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def choose_device(device: str = "auto", precision: str = "auto") -> DeviceChoice:
    """``device``: auto | cpu | cuda; ``precision``: auto | fp32 | bf16 | fp16."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError("device must be auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if precision == "auto":
        if use_cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError("precision must be auto, fp32, bf16 or fp16")
    if not use_cuda and precision == "fp16":
        precision = "fp32"  # CPU fp16 autocast is slow and poorly supported
    return DeviceChoice("cuda" if use_cuda else "cpu", precision)


def autocast(choice: DeviceChoice):
    dtype = choice.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if choice.device.startswith("cuda") else "cpu", dtype=dtype)


def grad_cam(fmap: torch.Tensor, head_logits, n_heads: int) -> torch.Tensor:
    """Grad-CAM maps (B, n_heads, h, w) in [0, 1] for feature maps ``fmap`` (B, C, h, w).

    ``head_logits`` maps the feature map to logits (B, n_heads).
    """
    fmap = fmap.detach().float().requires_grad_(True)
    with torch.enable_grad():
        logits = head_logits(fmap)
        maps = []
        for i in range(n_heads):
            (grads,) = torch.autograd.grad(logits[:, i].sum(), fmap, retain_graph=i + 1 < n_heads)
            weights = grads.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * fmap).sum(dim=1))
            peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)
            maps.append(cam / peak[:, None, None])
    return torch.stack(maps, dim=1).detach()


def probability_text(p: float) -> str:
    """A probability as a percentage with one decimal; ">99.9%" and "<0.1%" instead of the
    "100.0%" and "0.0%" that rounding would print (a calibrated model is never certain, and ties
    at 100.0% in a worklist say nothing)."""
    if p >= 0.9995:
        return ">99.9%"
    if p < 0.0005:
        return "<0.1%"
    return f"{p * 100:.1f}%"


@dataclass(frozen=True)
class HeadScore:
    head: str
    title: str
    available: bool
    probability: float | None = None
    positive: bool | None = None
    threshold: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    reason: str = ""  # why unavailable, or why outside the head's intended use
    meaning: str = ""
    #: scored | outside_intended_use | not_available | scored_outside_intended_use
    status: str = "scored"
    #: the finding's box (x0, y0, x1, y1, image pixels) when the head marks where (the nodule/mass
    #: model) and the score is at or above the threshold; None otherwise
    location: tuple[float, float, float, float] | None = None

    @property
    def outside_intended_use(self) -> bool:
        return self.status in ("outside_intended_use", "scored_outside_intended_use")


@dataclass(frozen=True, eq=False)
class ScoreResult:
    path: str
    frame: int
    heads: tuple[HeadScore, ...]
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (S, S) float32 in [0, 1]
    model_name: str = ""
    model_version: str = ""
    model_sha256: str = ""
    device: str = ""
    seconds: float = 0.0
    gate: GateVerdict | None = None  # what the image check said (None without one)
    #: the second network's identity when a head was scored by it (the nodule/mass model): name, version, SHA-256
    companion: tuple[str, str, str] | None = None

    def head(self, name: str) -> HeadScore:
        return next(h for h in self.heads if h.head == name)


@dataclass(frozen=True)
class ModelSummary:
    """What the GUI may know of a loaded model (plain data, no torch objects)."""

    path: str
    name: str
    version: str
    sha256: str
    trained_heads: tuple[str, ...]
    all_heads: tuple[str, ...]
    device: str
    input_size: int
    head_notes: dict = field(default_factory=dict)  # why a head is not available
    intended_uses: dict = field(default_factory=dict)  # head -> one line: whom and what it was trained on
    checks_note: str = ""  # what the input checks lack, if anything (no gate, no feature distance)


def anatomy_for(meta: ModelMeta):
    """The anatomy model a ``crop="lungs"`` model needs (None for a whole-image model); the one it
    was trained with where its description names it. ModelFileError when it cannot be used."""
    if meta.preprocessing.crop != "lungs":
        return None
    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
    from cxr_viewer.ai.model import ModelFileError

    try:
        anatomy = AnatomyModel.from_file(default_anatomy_path())
    except ModelFileError as exc:
        raise ModelFileError(f"this model reads the lung box, which needs the anatomy model: {exc}") from None
    want = meta.training.get("anatomy_sha256")
    if want and want != anatomy.meta.weights_sha256:
        raise ModelFileError("this model reads the lung box found by another anatomy model (SHA-256 "
                             f"{str(want)[:12]}..., this one {anatomy.meta.weights_sha256[:12]}...); "
                             "its scores were not measured with this one")
    return anatomy


class Scorer:
    """A loaded model on a device. Inference only, no state changed by scoring: the viewer's scoring and
    Score All workers may use it at once."""

    def __init__(self, model: CxrNet, meta: ModelMeta, choice: DeviceChoice, path: str = "",
                 checks: InputChecks | None = None, nodule: Companion | None = None, anatomy=None):
        self.meta, self.choice, self.path = meta, choice, path
        #: the anatomy model that finds the lung box a ``crop="lungs"`` model reads (None: not needed)
        self.anatomy = anatomy_for(meta) if anatomy is None else anatomy  # fp32, as training found its boxes
        #: what is checked before a number is shown (header, image check, feature distance)
        self.checks = checks if checks is not None else InputChecks.for_model(path, meta)
        if self.checks.gate is not None:
            self.checks.gate.bf16 = cpu_supports_bf16()  # the gate runs on the CPU
        # channels_last: faster convolutions with cuDNN and with oneDNN on the CPU
        self.model = model.to(choice.device).to(memory_format=torch.channels_last).eval()
        if choice.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        self.head_names = self.model.head_names
        self.trained = [h for h in self.head_names if meta.heads[h].trained]
        #: the nodule/mass model scoring the lung-cancer association head (where loaded and available)
        self.nodule = nodule if nodule is not None and LUNG in self.head_names else Companion()  # no head: unused
        self.nodule.to(choice)
        if self.nodule.available and LUNG in self.head_names and LUNG not in self.trained:
            self.trained.append(LUNG)
        self._temperature = torch.tensor([meta.heads[h].temperature for h in self.head_names], dtype=torch.float32)

    @classmethod
    def from_file(cls, path: str, device: str = "auto", precision: str = "auto") -> "Scorer":
        model, meta = load_model(path)
        return cls(model, meta, choose_device(device, precision), path, nodule=Companion.beside(path))

    def lung_box_of(self, image: LoadedImage) -> LungBox:
        """The box around both lungs that this lung-box model reads (image pixels)."""
        return self.anatomy.lung_box(image.values, image.monochrome1, image.padding, self.meta.preprocessing.crop_pad)

    def summary(self) -> ModelSummary:
        return ModelSummary(self.path, self.meta.name, self.meta.version, self.meta.weights_sha256,
                            tuple(self.trained), tuple(self.head_names), self.choice.label, self.meta.input_size,
                            {h: self.unavailable_note(h) for h in self.head_names
                             if h not in self.trained and self.unavailable_note(h)},
                            {h: u.describe() for h, u in self.checks.uses.items()},
                            "; ".join(filter(None, (self.checks.gate_problem, self.checks.distance_note))))

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.choice.device.startswith("cuda"):
            t = t.pin_memory().to(self.choice.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last)

    def _calibrate(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (B, n_heads), finite (B,)): a row whose logits are not all finite is no score
        (sigmoid would turn an infinite logit into a plausible 1.0)."""
        logits = logits.float().cpu()
        finite = torch.isfinite(logits).all(dim=1).numpy()
        return torch.sigmoid(logits / self._temperature).numpy(), finite

    def batch_probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (B, n_heads) for preprocessed inputs (B, 3, S, S), and which rows
        are finite (B,); the others must be reported, never used."""
        probs, finite, _ = self.batch_probabilities_and_distances(x)
        return probs, finite

    def batch_probabilities_and_distances(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:meth:`batch_probabilities` and the feature distance of each row (None without that check)."""
        finite_in = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        with torch.inference_mode(), autocast(self.choice):
            fmap = self.model.features(self._to_device(x))
            logits = self.model.head_logits(fmap)
        probs, finite = self._calibrate(logits)
        return probs, finite & finite_in, self._distances(fmap)

    def _distances(self, fmap: torch.Tensor) -> np.ndarray | None:
        if self.checks.distance is None:
            return None
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(fmap.float(), 1), 1).cpu().numpy()
        return self.checks.distance.distance(pooled)

    def pooled_features(self, x: np.ndarray) -> np.ndarray:
        """The pooled penultimate features (B, 2048) of preprocessed inputs: what the feature
        distance is fitted on."""
        with torch.inference_mode(), autocast(self.choice):
            fmap = self.model.features(self._to_device(check_model_input(x)))
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(fmap.float(), 1), 1).cpu().numpy()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (B, n_heads) for preprocessed inputs (B, 3, S, S).

        UnscorableImageError if any input or output is not finite."""
        check_model_input(x)
        probs, finite = self.batch_probabilities(x)
        if not finite.all():
            raise UnscorableImageError(NONFINITE_OUTPUT)
        return probs

    def probabilities_cams_distances(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        check_model_input(x)
        with torch.no_grad(), autocast(self.choice):
            fmap = self.model.features(self._to_device(x))
        heads = self.model.head_logits
        with torch.no_grad():
            logits = heads(fmap.float())
        probs, finite = self._calibrate(logits)
        if not finite.all() or not bool(torch.isfinite(fmap).all()):
            raise UnscorableImageError(NONFINITE_OUTPUT)
        cams = grad_cam(fmap, heads, len(self.head_names))
        size = self.meta.input_size
        cams = torch.nn.functional.interpolate(cams, size=(size, size), mode="bilinear", align_corners=False)
        cams = cams.float().cpu()
        if not bool(torch.isfinite(cams).all()):
            raise UnscorableImageError("the model gave a non-finite heatmap for this image; it is not scored")
        return probs, cams.clamp(0, 1).numpy(), self._distances(fmap)

    def heatmap_over_image(self, cam: np.ndarray, box: LungBox | None, shape: tuple[int, int]) -> np.ndarray:
        """A heatmap over the model's input as the viewer stretches it over the whole image: as it is
        for a whole-image model, placed where the lung box lies for a lung-box model."""
        return cam if box is None else map_over_image(cam, box, shape, self.meta.input_size)

    def by_nodule_model(self, head: str) -> bool:
        """Whether ``head`` is scored by the nodule/mass model (not by this model's own head)."""
        return head == LUNG and self.nodule.available

    def unavailable_note(self, head: str) -> str:
        """Why an untrained head is not available (with the nodule model's numbers, where it has them)."""
        if head == LUNG and self.nodule.note:
            return self.nodule.note
        return self.meta.heads[head].note

    def head_info(self, head: str):
        """(threshold, operating point) of a head, from whichever network scores it."""
        if self.by_nodule_model(head):
            meta = self.nodule.model.meta
            return meta.threshold, meta.operating_point
        info = self.meta.heads[head]
        return info.threshold, info.operating_point

    def head_scores(self, probs: np.ndarray | None, reasons: dict[str, str | None] | None = None,
                    score_anyway: bool = False, nodule: NoduleFinding | None = None) -> tuple[HeadScore, ...]:
        """One HeadScore per head. A head with a reason (outside its intended use) gets no number
        unless ``score_anyway``; then the number is marked as scored outside intended use. The
        lung-cancer association comes from ``nodule`` where the nodule/mass model scores it."""
        reasons = reasons or {}
        out = []
        for i, h in enumerate(self.head_names):
            if h not in self.trained:
                note = self.unavailable_note(h)
                text = (f"not available: {note}" if h == LUNG and self.nodule.note
                        else unavailable_reason(h, note))
                out.append(HeadScore(h, HEAD_TITLES[h], False, reason=text, meaning=HEAD_MEANING[h],
                                     status="not_available"))
                continue
            threshold, op = self.head_info(h)
            reason = reasons.get(h)
            if reason and reason == self.checks.gate_problem and not score_anyway:
                out.append(HeadScore(h, HEAD_TITLES[h], False, threshold=threshold,
                                     reason=f"not available: {reason}", meaning=HEAD_MEANING[h],
                                     status="not_available"))
                continue
            missing = nodule is None if self.by_nodule_model(h) else probs is None
            # asked to score anyway and the nodule/mass model failed: say so, not "outside intended use"
            failed = bool(score_anyway and missing and self.by_nodule_model(h) and self.nodule.failure)
            if reason and not failed and (not score_anyway or missing):
                out.append(HeadScore(h, HEAD_TITLES[h], False, threshold=threshold, reason=OUTSIDE + reason,
                                     meaning=HEAD_MEANING[h], status="outside_intended_use"))
                continue
            if missing:  # not asked for (no image given), or the nodule model failed on this image
                out.append(HeadScore(h, HEAD_TITLES[h], False, threshold=threshold,
                                     reason="not available: " + ((self.nodule.failure if self.by_nodule_model(h)
                                                                  else "") or "not scored"),
                                     meaning=HEAD_MEANING[h], status="not_available"))
                continue
            p = nodule.probability if self.by_nodule_model(h) else float(probs[i])
            op = op or {}
            where = nodule.box if self.by_nodule_model(h) and p >= threshold else None
            out.append(HeadScore(h, HEAD_TITLES[h], True, p, p >= threshold, threshold,
                                 op.get("sensitivity"), op.get("specificity"), meaning=HEAD_MEANING[h],
                                 reason=OUTSIDE_SCORED + reason if reason else "",
                                 status="scored_outside_intended_use" if reason else "scored", location=where))
        return tuple(out)

    def nodule_finding(self, image: LoadedImage) -> NoduleFinding | None:
        """The nodule/mass model's finding for ``image`` (None where it failed: ``nodule.failure`` says why)."""
        self.nodule.failure = ""
        try:
            return self.nodule.find(image.values, image.monochrome1, image.padding)
        except MemoryError:
            self.nodule.failure = "out of memory in the nodule/mass model"
        except Exception as exc:  # noqa: BLE001 - this head's failure is its own; the other still shows
            self.nodule.failure = failure_reason(exc, "scoring with the nodule/mass model")
        return None

    def gate_verdicts(self, units: np.ndarray) -> list[GateVerdict | None]:
        """The image check of (B, S, S) gate units; Nones without a gate."""
        if self.checks.gate is None:
            return [None] * len(units)
        return self.checks.gate.classify_units(units)

    def score(self, image: LoadedImage, heatmaps: bool = True, score_anyway: bool = False) -> ScoreResult:
        """Check the image against each head's intended use, then score the heads it may score
        (all trained heads with ``score_anyway``, marked as such)."""
        t0 = time.perf_counter()
        if not np.isfinite(image.values).all():
            raise UnscorableImageError(NONFINITE_INPUT)
        header = self.checks.header_reasons(image.ref.meta)
        x, unit, box = model_gate_box(image, self)
        x = x[None]
        verdict = self.gate_verdicts(unit[None])[0] if unit is not None else None
        reasons = self.checks.reasons(header, verdict, None)
        probs, maps, finding = None, {}, None
        if self.nodule.available and (score_anyway or reasons.get(LUNG) is None):
            finding = self.nodule_finding(image)
        if score_anyway or any(reasons.get(h) is None for h in self.trained if not self.by_nodule_model(h)):
            if heatmaps:
                probs, cams, dist = self.probabilities_cams_distances(x)
            else:
                probs, finite, dist = self.batch_probabilities_and_distances(x)
                if not finite.all():
                    raise UnscorableImageError(NONFINITE_OUTPUT)
            reasons = self.checks.reasons(header, verdict, None if dist is None else float(dist[0]))
            if heatmaps:
                maps = {h: self.heatmap_over_image(cams[0, i], box, image.values.shape[:2])
                        for i, h in enumerate(self.head_names)
                        if h in self.trained and not self.by_nodule_model(h)
                        and (score_anyway or reasons.get(h) is None)}
            probs = probs[0]
        if finding is not None and heatmaps and (score_anyway or reasons.get(LUNG) is None):
            maps[LUNG] = finding.heatmap
        heads = self.head_scores(probs, reasons, score_anyway, finding)
        companion = self.nodule.identity if finding is not None else None
        return ScoreResult(image.ref.path, image.frame, heads, maps, self.meta.name, self.meta.version,
                           self.meta.weights_sha256, self.choice.label, time.perf_counter() - t0, verdict, companion)


def score_image_task(scorer: Scorer, image: LoadedImage, heatmaps: bool = True,
                     cancel: CancelToken = NEVER_CANCELLED, score_anyway: bool = False
                     ) -> Generator[Progress, None, ScoreResult]:
    yield Progress("scoring", 0, 1, image.ref.path)
    cancel.raise_if_cancelled()
    result = scorer.score(image, heatmaps, score_anyway)
    yield Progress("scoring", 1, 1, image.ref.path)
    return result


@dataclass(frozen=True)
class WorklistRow:
    path: str
    probabilities: dict[str, float | None]  # None: no number (not trained, outside intended use, failed)
    error: str = ""
    #: per head: scored | outside_intended_use | not_available | scored_outside_intended_use
    statuses: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # per head, one line, when not simply scored
    #: per scored head: at or above its operating threshold
    positives: dict[str, bool] = field(default_factory=dict)
    #: per head that marks where, when positive: the box (x0, y0, x1, y1) in image pixels
    locations: dict[str, tuple] = field(default_factory=dict)


@dataclass
class _Prepared:
    ref: ImageRef
    x: np.ndarray | None = None
    header: dict = field(default_factory=dict)
    unit: np.ndarray | None = None
    error: str = ""
    nodule_image: LoadedImage | None = None  # kept for the nodule/mass model, scored after the image check


def _prepare(ref: ImageRef, scorer: Scorer) -> _Prepared:
    """The model input, header reasons and gate input of one file, or its one-line failure:
    any failure of one file is its own."""
    try:
        image = load_image(ref, 0)
        x, unit, _box = model_gate_box(image, scorer)
        prepared = _Prepared(ref, x, scorer.checks.header_reasons(image.ref.meta), unit)
        if scorer.nodule.available:
            prepared.nodule_image = image  # scored after the image check, in the scoring thread
        return prepared
    except Exception as exc:  # noqa: BLE001 - MemoryError too: listed as this file's failure; the batch goes on
        return _Prepared(ref, error=failure_reason(exc, "decoding"))


def _failed(scorer: Scorer, path: str, error: str) -> WorklistRow:
    return WorklistRow(path, {h: None for h in scorer.head_names}, error)


def _row(scorer: Scorer, path: str, probs: np.ndarray | None, reasons: dict, score_anyway: bool,
         prepared: _Prepared | None = None) -> WorklistRow:
    finding = None
    image = prepared.nodule_image if prepared is not None else None
    if image is not None and (score_anyway or reasons.get(LUNG) is None):
        finding = scorer.nodule_finding(image)
    if prepared is not None:
        prepared.nodule_image = None
    scores = scorer.head_scores(probs, reasons, score_anyway, finding)
    return WorklistRow(path, {s.head: s.probability for s in scores}, "",
                       {s.head: s.status for s in scores}, {s.head: s.reason for s in scores if s.reason},
                       {s.head: bool(s.positive) for s in scores if s.probability is not None and s.positive is not None},
                       {s.head: s.location for s in scores if s.location is not None})


def _score_rows(scorer: Scorer, good: list[_Prepared], score_anyway: bool = False
                ) -> Generator[WorklistRow, None, None]:
    """One row per input: its probabilities (or why it has none) with each head's status. A batch
    the model fails on is retried image by image, so that one image's failure is that image's row."""
    try:
        units = [g.unit for g in good]
        verdicts = (scorer.gate_verdicts(np.stack(units)) if all(u is not None for u in units)
                    else [None] * len(good))
        pre = [scorer.checks.reasons(g.header, v, None) for g, v in zip(good, verdicts)]
        need = [score_anyway or any(r.get(h) is None for h in scorer.trained if not scorer.by_nodule_model(h))
                for r in pre]
        todo = [i for i, n in enumerate(need) if n]
        probs = finite = dists = None
        if todo:
            probs, finite, dists = scorer.batch_probabilities_and_distances(np.stack([good[i].x for i in todo]))
    except Exception as exc:  # noqa: BLE001 - e.g. out of (device) memory
        if len(good) > 1:
            for one in good:
                yield from _score_rows(scorer, [one], score_anyway)
            return
        yield _failed(scorer, good[0].ref.path, failure_reason(exc, "scoring"))
        return
    at = {i: k for k, i in enumerate(todo)}
    for i, g in enumerate(good):
        if i not in at:
            yield _row(scorer, g.ref.path, None, pre[i], score_anyway, g)
            continue
        k = at[i]
        if not finite[k]:
            yield _failed(scorer, g.ref.path, NONFINITE_OUTPUT)
            continue
        reasons = scorer.checks.reasons(g.header, verdicts[i], None if dists is None else float(dists[k]))
        yield _row(scorer, g.ref.path, probs[k], reasons, score_anyway, g)


def score_many_task(scorer: Scorer, refs: Sequence[ImageRef], batch_size: int = 8,
                    cancel: CancelToken = NEVER_CANCELLED, score_anyway: bool = False
                    ) -> Generator[WorklistRow, None, int]:
    """Score many images; yields one row per image. Decoding runs ahead in a thread pool so that it
    overlaps with the model's compute. Returns the number of images scored.

    A file that fails in any way (unreadable, non-finite pixels or output, an unexpected error) is
    a row with ``error`` set and no probabilities; the others are still scored."""
    from concurrent.futures import ThreadPoolExecutor

    scored = 0
    workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cxr-decode") as pool:
        pending = [pool.submit(_prepare, ref, scorer) for ref in refs[: batch_size * 2]]
        next_i = len(pending)
        while pending:
            cancel.raise_if_cancelled()
            batch, pending = pending[:batch_size], pending[batch_size:]
            ready = [f.result() for f in batch]
            while next_i < len(refs) and len(pending) < batch_size * 2:
                pending.append(pool.submit(_prepare, refs[next_i], scorer))
                next_i += 1
            good = [p for p in ready if p.x is not None]
            for p in ready:
                if p.x is None:
                    yield _failed(scorer, p.ref.path, p.error)
            if good:
                for row in _score_rows(scorer, good, score_anyway):
                    scored += 0 if row.error else 1
                    yield row
        cancel.raise_if_cancelled()
    return scored
