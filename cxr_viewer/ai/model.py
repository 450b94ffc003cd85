"""The model: a torchvision ResNet50 with one sigmoid head per finding, and its file format.

A model file is ``NAME.safetensors`` (weights only: no code runs when it is read) plus
``NAME.json`` (metadata: architecture, heads and which are trained, classes, input size,
preprocessing, per-head threshold and temperature, training data, metrics, and the weights'
SHA-256, checked at load). Pickled PyTorch files are refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cxr_viewer.ai.preprocess import PreprocessSpec
from cxr_viewer.common.errors import UserError
from cxr_viewer.common.fileio import atomic_path, write_bytes_atomic

FORMAT = "cxr_viewer.model/1"
HEADS = ("pneumonia", "lung_cancer_association")
HEAD_TITLES = {"pneumonia": "Pneumonia", "lung_cancer_association": "Lung-cancer association (nodule or mass)"}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def short_title(head: str) -> str:
    """"Pneumonia", "Lung-cancer association" (the title without its parenthesis)."""
    return HEAD_TITLES.get(head, head).split(" (")[0]


def unavailable_reason(head: str, note: str = "") -> str:
    """What the viewer and ``predict`` say instead of a score for a head that was not trained."""
    reason = f"not available: this model has no trained {short_title(head).lower()} head"
    return reason + (f" ({note})" if note else "")


class ModelFileError(UserError):
    """A model file that cannot be used; ``str(err)`` is one line for the user."""


class CxrNet(nn.Module):
    """ResNet50 features -> per-head MLP (Linear, activation, dropout, Linear) -> one logit each."""

    def __init__(self, heads: tuple[str, ...] = HEADS, hidden: int = 256, activation: str = "relu",
                 dropout: float = 0.2):
        super().__init__()
        from torchvision.models import resnet50

        if activation not in ACTIVATIONS:
            raise ValueError(f"head activation must be one of {sorted(ACTIVATIONS)}")
        backbone = resnet50(weights=None)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head_names = tuple(heads)
        self.heads = nn.ModuleDict({
            h: nn.Sequential(nn.Linear(2048, hidden), ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Linear(hidden, 1))
            for h in heads
        })

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv block's output (B, 2048, h, w): where the heatmaps come from."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def head_logits(self, fmap: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(fmap, 1), 1)
        return torch.cat([self.heads[h](pooled) for h in self.head_names], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.features(x))


@dataclass
class HeadInfo:
    trained: bool = False
    threshold: float = 0.5
    temperature: float = 1.0
    positive: str = ""
    negative: str = ""
    #: sensitivity / specificity at ``threshold`` on the model's validation data
    operating_point: dict[str, float] = field(default_factory=dict)
    rule: str = ""  # how threshold and temperature were chosen
    note: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "HeadInfo":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class ModelMeta:
    name: str = "cxr_viewer ResNet50"
    version: str = "0"
    architecture: str = "resnet50"
    head_hidden: int = 256
    head_activation: str = "relu"
    heads: dict[str, HeadInfo] = field(default_factory=lambda: {h: HeadInfo() for h in HEADS})
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    weights_dtype: str = "float32"
    created: str = ""

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def trained_heads(self) -> list[str]:
        return [h for h, info in self.heads.items() if info.trained]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "head_hidden": self.head_hidden,
            "head_activation": self.head_activation,
            "input_size": self.input_size,
            "classes": {h: [i.negative, i.positive] for h, i in self.heads.items()},
            "heads": {h: vars(i) for h, i in self.heads.items()},
            "preprocessing": self.preprocessing.to_dict(),
            "training": self.training,
            "metrics": self.metrics,
            "weights_sha256": self.weights_sha256,
            "weights_dtype": self.weights_dtype,
            "created": self.created,
            "notice": "Research use only. Not for diagnostic use.",
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        if d.get("format") != FORMAT:
            raise ModelFileError(f"not a cxr_viewer model description (format {d.get('format')!r}, expected {FORMAT!r})")
        if d.get("architecture") != "resnet50":
            raise ModelFileError(f"unsupported architecture {d.get('architecture')!r}")
        try:
            heads = {h: HeadInfo.from_dict(v) for h, v in d["heads"].items()}
            unknown = set(heads) - set(HEADS)
            if unknown:
                raise ModelFileError(f"unknown heads {sorted(unknown)}")
            return cls(
                name=str(d.get("name", "")), version=str(d.get("version", "")), architecture="resnet50",
                head_hidden=int(d.get("head_hidden", 256)), head_activation=str(d.get("head_activation", "relu")),
                heads=heads, preprocessing=PreprocessSpec.from_dict(d.get("preprocessing", {})),
                training=dict(d.get("training", {})), metrics=dict(d.get("metrics", {})),
                weights_sha256=str(d.get("weights_sha256", "")), weights_dtype=str(d.get("weights_dtype", "float32")),
                created=str(d.get("created", "")),
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model description is malformed: {exc}") from None


def sidecar_path(weights_path: str) -> str:
    root, _ = os.path.splitext(weights_path)
    return root + ".json"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(meta: ModelMeta) -> CxrNet:
    return CxrNet(tuple(meta.heads), meta.head_hidden, meta.head_activation)


def save_model(model: CxrNet, meta: ModelMeta, path: str, dtype: torch.dtype = torch.float32) -> ModelMeta:
    """Write weights then metadata, each atomically; returns the metadata as written."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"format": FORMAT})
        meta.weights_sha256 = sha256_file(tmp)
    meta.weights_dtype = str(dtype).replace("torch.", "")
    write_bytes_atomic(sidecar_path(path), json.dumps(meta.to_dict(), indent=2).encode())
    return meta


_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def read_meta(path: str) -> ModelMeta:
    side = sidecar_path(path)
    try:
        with open(side, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"the model description {os.path.basename(side)} is missing beside the weights") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read the model description {os.path.basename(side)}: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelFileError("the model description is not a JSON object")
    return ModelMeta.from_dict(doc)


def load_model(path: str) -> tuple[CxrNet, ModelMeta]:
    """Load and verify a model file. Raises ModelFileError with a one-line reason."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {os.path.basename(path)}: {exc.strerror}") from None
    if head.startswith(_PICKLE_MAGICS):
        raise ModelFileError("this is a pickled PyTorch file; it is refused (pickles can run code). "
                             "cxr_viewer loads .safetensors weights with a .json description")
    meta = read_meta(path)
    digest = sha256_file(path)
    if meta.weights_sha256 and digest != meta.weights_sha256:
        raise ModelFileError(f"weights do not match their description (SHA-256 {digest[:12]}... expected "
                             f"{meta.weights_sha256[:12]}...): the file is truncated, modified or not this model's")
    if not meta.weights_sha256:
        raise ModelFileError("the model description has no weights SHA-256; it cannot be verified")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"not a readable safetensors file: {str(exc).splitlines()[0]}") from None
    model = build_model(meta)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelFileError(f"weights do not fit the architecture: {len(missing)} missing, {len(extra)} unexpected "
                             f"tensors (e.g. {(missing or extra)[0]})")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelFileError(f"weights do not fit the architecture: {k} has shape {tuple(state[k].shape)}, "
                                 f"expected {tuple(v.shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.eval()
    return model, meta
