"""The image-based input check: is this a chest radiograph at all, a child's or an adult's, and
does the scoring model's own feature space know images like it.

Two parts, both loaded, hashed and checked like the scoring model (safetensors + JSON, SHA-256 of
the bytes loaded, every value validated, never a pickle):

- :class:`Gate` (``models/intended_use.safetensors``): a small ResNet18 (half width) on one grey channel that
  classifies the preprocessed image (the one preprocessing function, with the gate's own spec)
  as ``child`` (a chest radiograph like the paediatric training set), ``adult`` (an adult chest
  radiograph), ``other`` (not a chest radiograph: photographs, documents, masks, CT/MR slices,
  noise...) or ``inverted`` (a radiograph shown as a negative: bone dark). Trained by
  ``training.intended_use`` on the real images in ``../shared/data`` and generated negatives.
- :class:`FeatureDistance` (``NAME.ood.safetensors`` beside a model ``NAME.safetensors``): the
  Mahalanobis distance of the model's pooled penultimate features in a PCA space fitted on that
  model's training images, with a threshold chosen on validation images: it catches kinds of
  input nobody listed. It belongs to one model (its SHA-256 is recorded) and is not used with
  another.

Qt-free. The verdicts are plain data (:class:`GateVerdict`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cxr_viewer.ai.model import (
    ModelFileError,
    _checked_weights,
    _Fields,
    _preprocessing_from_doc,
    models_dir,
    read_description,
    read_weights_bytes,
    save_fp16_described,
    sidecar_path,
    verified_tensors,
)
from cxr_viewer.ai.preprocess import PreprocessSpec, preprocess_unit, standardise
from cxr_viewer.common.fileio import write_bytes_atomic

GATE_FORMAT = "cxr_viewer.gate/1"
OOD_FORMAT = "cxr_viewer.ood/1"
GATE_CLASSES = ("child", "adult", "other", "inverted")
GATE_FILE = "intended_use.safetensors"
#: the image check's preprocessing: the one preprocessing function, one grey channel, 128 px
GATE_SPEC = PreprocessSpec(input_size=128, channels=1)
MAX_GATE_BYTES = 256 << 20


class GateNet(nn.Module):
    """torchvision's ResNet18 layout (BasicBlocks, 2-2-2-2) with a one-channel stem and four classes;
    ``width`` channels in the first stage (64: a ResNet18's widths; 32: a quarter of its work). The
    replaced layers keep PyTorch's default initialisation, as the shipped check was trained."""

    def __init__(self, width: int = 64):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=len(GATE_CLASSES))
        net.inplanes = width
        net.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        net.layer1 = net._make_layer(BasicBlock, width, 2)
        net.layer2 = net._make_layer(BasicBlock, 2 * width, 2, stride=2)
        net.layer3 = net._make_layer(BasicBlock, 4 * width, 2, stride=2)
        net.layer4 = net._make_layer(BasicBlock, 8 * width, 2, stride=2)
        net.fc = nn.Linear(8 * width, len(GATE_CLASSES))
        self.net = net
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fused_for_inference(net: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``net`` with every BatchNorm folded into the convolution before it
    (torch's ``fuse_conv_bn_eval``): the same function, about a fifth fewer layers to run."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()

    def fold(module: nn.Module) -> None:
        names = list(module._modules)
        for i, name in enumerate(names):
            child = module._modules[name]
            after = module._modules[names[i + 1]] if i + 1 < len(names) else None
            if isinstance(child, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
                module._modules[name] = fuse_conv_bn_eval(child, after)
                module._modules[names[i + 1]] = nn.Identity()
            elif child is not None:
                fold(child)
        # torchvision's downsample is Sequential(conv, bn): handled by the loop above

    fold(net)
    return net


@dataclass
class GateMeta:
    name: str
    version: str
    preprocessing: PreprocessSpec
    #: the lowest probability of ``child`` / ``adult`` at which an image counts as that population
    #: (chosen on validation so that nearly all validation images of the population pass)
    child_min: float
    adult_min: float
    width: int = 64  # GateNet's first-stage channels
    weights_sha256: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": GATE_FORMAT, "architecture": "resnet18-1ch", "width": self.width,
                "classes": list(GATE_CLASSES), "name": self.name, "version": self.version, "preprocessing": self.preprocessing.to_dict(),
                "child_min": self.child_min, "adult_min": self.adult_min, "weights_sha256": self.weights_sha256,
                "weights_dtype": "float16", "training": self.training, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, doc) -> "GateMeta":
        if not isinstance(doc, dict) or doc.get("format") != GATE_FORMAT:
            raise ModelFileError(f"not a cxr_viewer input-check description (format expected {GATE_FORMAT!r})")
        f = _Fields(doc, "")
        if doc.get("classes") != list(GATE_CLASSES) or doc.get("architecture") != "resnet18-1ch":
            raise f.invalid("classes", f"{list(GATE_CLASSES)} of a resnet18-1ch", doc.get("classes"))
        spec = _preprocessing_from_doc(doc.get("preprocessing", {}), GATE_SPEC, (32, 512))
        sha = f.string("weights_sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise f.invalid("weights_sha256", "64 lowercase hexadecimal digits", sha)
        f.choice("weights_dtype", ("float16",), "float16")
        return cls(name=f.string("name"), version=f.string("version"), preprocessing=spec,
                   child_min=f.number("child_min", 0.5, 0.0, 1.0, open_lo=True, open_hi=True),
                   adult_min=f.number("adult_min", 0.5, 0.0, 1.0, open_lo=True, open_hi=True),
                   width=f.integer("width", 64, 8, 256), weights_sha256=sha, training=dict(f.obj("training").doc), metrics=dict(f.obj("metrics").doc))


def _read_description(path: str) -> dict:
    return read_description(path, "the input-check description")


def _read_tensors(path: str, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, read once; the SHA-256 checked is that of the bytes parsed."""
    return verified_tensors(read_weights_bytes(path, MAX_GATE_BYTES, "the input-check file"), sha256)


@dataclass(frozen=True)
class GateVerdict:
    """What the image-based check says of one image: class probabilities and the label chosen."""

    probabilities: dict[str, float]
    label: str  # child | adult | other | inverted | unsure

    def reason_for(self, population: str) -> str | None:
        """Why a head for ``population`` ("children" / "adults") must not score this image, or None."""
        p = self.probabilities
        if self.label == "other":
            return f"not a chest radiograph (image check: {p['other']:.0%} not a radiograph)"
        if self.label == "inverted":
            return ("the image looks like a negative (bone dark; image check "
                    f"{p['inverted']:.0%}): check its PhotometricInterpretation")
        wanted = "child" if population == "children" else "adult"
        if self.label == wanted:
            return None
        if self.label == "unsure":
            return (f"the image check cannot tell whether this is a {wanted}'s chest radiograph like the "
                    f"training images ({wanted} {p[wanted]:.0%})")
        return f"{self.label}'s radiograph by the image check ({p[self.label]:.0%}); this head was trained on {population}"


class Gate:
    """The loaded image check. Inference only, read-only after loading: the viewer's scoring and Score All
    workers may use it at once."""

    def __init__(self, net: GateNet, meta: GateMeta, path: str):
        if getattr(net, "width", meta.width) != meta.width:
            raise ModelFileError(f"the input check's network has width {net.width}, its description {meta.width}")
        # channels_last: faster convolutions with oneDNN on the CPU
        self.net, self.meta, self.path = net.eval().to(memory_format=torch.channels_last), meta, path
        #: what gives the verdicts: a snapshot of ``net`` with BatchNorm folded into the convolutions,
        #: made here once (read-only afterwards, so two worker threads may share it); ``save`` writes ``net``
        self._fused = fused_for_inference(self.net).to(memory_format=torch.channels_last)
        #: run in bf16 autocast (set where the CPU has native bf16): probabilities within 0.006 of
        #: fp32 and the same labels on 250 real images (children, NIH and JSRT adults), 3x faster
        self.bf16 = False

    @classmethod
    def from_file(cls, path: str) -> "Gate":
        if not os.path.lexists(path):
            raise ModelFileError(f"input-check file not found: {path}")
        meta = GateMeta.from_dict(_read_description(path))
        state = _read_tensors(path, meta.weights_sha256)
        net = GateNet(meta.width)
        net.load_state_dict(_checked_weights(state, net.state_dict(), "float16"))
        return cls(net, meta, path)

    def unit(self, values: np.ndarray, monochrome1: bool, padding: np.ndarray | None) -> np.ndarray:
        """The gate's input before standardising: the one preprocessing function with the gate's spec."""
        return preprocess_unit(values, monochrome1, padding, self.meta.preprocessing)

    def classify_units(self, units: np.ndarray) -> list[GateVerdict]:
        """Verdicts for (B, S, S) preprocessed units in [0, 1]."""
        x = torch.from_numpy(standardise(units, self.meta.preprocessing))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            probs = torch.softmax(self._fused(x.contiguous(memory_format=torch.channels_last)).float(), dim=1).numpy()
        return self.verdicts_from(probs)

    def verdicts_from(self, probs: np.ndarray) -> list[GateVerdict]:
        """Verdicts for (B, 4) class probabilities: ``other`` / ``inverted`` when likeliest, else
        ``child`` from ``child_min``, ``adult`` from ``adult_min``, else ``unsure``."""
        out = []
        for row in probs:
            p = {c: float(v) for c, v in zip(GATE_CLASSES, row)}
            best = max(p, key=p.get)
            if best in ("other", "inverted"):
                label = best
            elif p["child"] >= self.meta.child_min:
                label = "child"
            elif p["adult"] >= self.meta.adult_min:
                label = "adult"
            else:
                label = "unsure"
            out.append(GateVerdict(p, label))
        return out

    def classify(self, values: np.ndarray, monochrome1: bool = False,
                 padding: np.ndarray | None = None) -> GateVerdict:
        return self.classify_units(self.unit(values, monochrome1, padding)[None])[0]

    def save(self, path: str) -> None:
        """Weights (float16) then the description, each atomically; the SHA-256 is of the bytes written."""
        save_fp16_described(self.net, self.meta, path, GATE_FORMAT)


def ood_path(model_path: str) -> str:
    root, _ = os.path.splitext(model_path)
    return root + ".ood.safetensors"


def remove_feature_distance(model_path: str) -> None:
    """Remove the feature distance beside a model (weights and description), if there is one."""
    path = ood_path(model_path)
    for f in (path, sidecar_path(path)):
        if os.path.exists(f):
            os.unlink(f)


@dataclass
class FeatureDistance:
    """Mahalanobis distance of pooled features in a PCA space, fitted for one model."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D) orthonormal rows
    variances: np.ndarray  # (K,) > 0
    residual_variance: float  # mean variance of what the K components leave out
    threshold: float
    model_sha256: str
    fitted_on: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, features: np.ndarray, model_sha256: str, components: int = 64,
            fitted_on: dict | None = None) -> "FeatureDistance":
        f = np.asarray(features, np.float64)
        mean = f.mean(0)
        z = f - mean
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        var = s ** 2 / max(len(f) - 1, 1)
        k = min(components, len(var) - 1)
        resid = float(var[k:].mean()) if len(var) > k else float(var[-1])
        return cls(mean.astype(np.float32), vt[:k].astype(np.float32), np.maximum(var[:k], 1e-12).astype(np.float32),
                   max(resid, 1e-12), float("inf"), model_sha256, dict(fitted_on or {}))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(B,) distances: Mahalanobis in the K components plus the residual's norm over its variance."""
        # torch, not numpy: the product runs in torch's own threads instead of a second BLAS pool
        # that would wait on the model's spinning threads (measured: 15 ms per batch of 16 with numpy)
        z = torch.tensor(np.asarray(features, np.float32)) - torch.from_numpy(self.mean)
        proj = z @ torch.from_numpy(self.components).T
        inside = (proj ** 2 / torch.from_numpy(self.variances)).sum(1)
        resid = torch.clamp((z ** 2).sum(1) - (proj ** 2).sum(1), min=0.0) / self.residual_variance
        return torch.sqrt((inside + resid) / z.shape[1]).numpy()

    def save(self, path: str) -> None:
        from safetensors.numpy import save

        data = save({"mean": self.mean, "components": self.components, "variances": self.variances})
        doc = {"format": OOD_FORMAT, "model_sha256": self.model_sha256, "threshold": self.threshold,
               "residual_variance": self.residual_variance, "components": int(len(self.variances)),
               "features": int(self.mean.shape[0]), "weights_sha256": hashlib.sha256(data).hexdigest(),
               "fitted_on": self.fitted_on}
        write_bytes_atomic(path, data)
        write_bytes_atomic(sidecar_path(path), json.dumps(doc, indent=2).encode())

    @classmethod
    def from_file(cls, path: str) -> "FeatureDistance":
        doc = _read_description(path)
        if not isinstance(doc, dict) or doc.get("format") != OOD_FORMAT:
            raise ModelFileError(f"not a cxr_viewer feature-distance description (format expected {OOD_FORMAT!r})")
        f = _Fields(doc, "")
        k = f.integer("components", 64, 1, 2048)
        d = f.integer("features", 2048, 2, 8192)
        sha = f.string("model_sha256")
        if len(sha) != 64:
            raise f.invalid("model_sha256", "64 hexadecimal digits", sha)
        threshold = f.number("threshold", 1.0, 0.0, 1e6, open_lo=True)
        resid = f.number("residual_variance", 1.0, 0.0, 1e12, open_lo=True)
        t = _read_tensors(path, f.string("weights_sha256"))
        shapes = {"mean": (d,), "components": (k, d), "variances": (k,)}
        for name, shape in shapes.items():
            if name not in t or tuple(t[name].shape) != shape or not bool(torch.isfinite(t[name]).all()):
                raise ModelFileError(f"{os.path.basename(path)}: {name} must be a finite array of shape {shape}")
        if bool((t["variances"] <= 0).any()):
            raise ModelFileError(f"{os.path.basename(path)}: variances must be positive")
        return cls(t["mean"].numpy(), t["components"].numpy(), t["variances"].numpy(), resid, threshold, sha,
                   dict(f.obj("fitted_on").doc))


def feature_distance_of(model_path: str, model_sha256: str) -> tuple[FeatureDistance | None, str]:
    """The feature distance beside a model and fitted for these weights, or None and why not."""
    path = ood_path(model_path) if model_path else ""
    if not path or not os.path.exists(path):
        return None, "no feature-distance check was fitted for this model"
    try:
        fd = FeatureDistance.from_file(path)
    except ModelFileError as exc:
        return None, f"feature-distance check not used: {exc}"
    if fd.model_sha256 != model_sha256:
        return None, "feature-distance check not used: it was fitted for another model"
    return fd, ""


def default_gate_path() -> str:
    """$CXR_VIEWER_GATE if set, else ``models/intended_use.safetensors``."""
    return os.environ.get("CXR_VIEWER_GATE") or str(models_dir() / GATE_FILE)


@dataclass
class InputChecks:
    """Everything checked before a head's number is shown: the header against each head's intended
    use, the image check (:class:`Gate`) and the model's feature distance. Loaded with a model."""

    uses: dict  # head -> IntendedUse
    gate: Gate | None = None
    gate_problem: str = ""  # why there is no gate: then no head is scored
    distance: FeatureDistance | None = None
    distance_note: str = ""  # why there is no feature distance for this model (it is then not used)
    distance_heads: tuple[str, ...] = ()

    @classmethod
    def for_model(cls, model_path: str, meta) -> "InputChecks":
        checks = cls({h: info.use(h) for h, info in meta.heads.items()})
        try:
            checks.gate = Gate.from_file(default_gate_path())
        except ModelFileError as exc:
            checks.gate_problem = f"the input check cannot be used ({exc})"
        checks.distance, checks.distance_note = feature_distance_of(model_path, meta.weights_sha256)
        if checks.distance is not None:
            checks.distance_heads = tuple(h for h, u in checks.uses.items() if u.population == "children")
        return checks

    def header_reasons(self, image_meta) -> dict[str, str | None]:
        from cxr_viewer.ai.intended_use import header_reason

        return {h: header_reason(image_meta, use) for h, use in self.uses.items()}

    def reasons(self, header: dict[str, str | None], verdict: GateVerdict | None,
                distance: float | None) -> dict[str, str | None]:
        """Per head: the first reason it must not score this image, or None."""
        out = {}
        for h, use in self.uses.items():
            reason = header.get(h)
            if reason is None and self.gate is None:
                reason = self.gate_problem or "the input check is not loaded"
            if reason is None and verdict is not None:
                reason = verdict.reason_for(use.population)
            if (reason is None and distance is not None and self.distance is not None and h in self.distance_heads
                    and distance > self.distance.threshold):
                reason = (f"unlike the images this model was trained on (feature distance {distance:.2f}, "
                          f"limit {self.distance.threshold:.2f})")
            out[h] = reason
        return out
