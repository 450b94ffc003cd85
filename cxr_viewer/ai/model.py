"""The model: a torchvision ResNet50 with one sigmoid head per finding, and its file format.

A model file is ``NAME.safetensors`` (weights only: no code runs when it is read) plus
``NAME.json`` (metadata: architecture, heads and which are trained, classes, input size,
preprocessing, per-head threshold and temperature, training data, metrics, and the weights'
SHA-256, checked at load). Pickled PyTorch files are refused, never unpickled.

Loading trusts nothing: both files must be regular files of bounded size (a FIFO or a device is
refused before any read), every value of the description is checked (type, range, finite), the
SHA-256 is taken of the very bytes the weights are then parsed from, and the weights must be
finite with non-negative BatchNorm variances. Any failure is a one-line :class:`ModelFileError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr_viewer.ai.preprocess import PreprocessSpec
from cxr_viewer.common.errors import UserError
from cxr_viewer.common.fileio import write_bytes_atomic

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

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits (B, heads); with ``with_features``, (logits, the last conv block's output)."""
        fmap = self.features(x)
        return (self.head_logits(fmap), fmap) if with_features else self.head_logits(fmap)


@dataclass
class HeadInfo:
    trained: bool = False
    threshold: float = 0.5
    temperature: float = 1.0
    positive: str = ""
    negative: str = ""
    #: sensitivity / specificity at ``threshold`` on the model's validation data (None: no such cases there)
    operating_point: dict[str, float | None] = field(default_factory=dict)
    rule: str = ""  # how threshold and temperature were chosen
    note: str = ""
    #: whom and what the head was trained on (``ai.intended_use.IntendedUse.to_dict``); empty: the
    #: head's default (:data:`ai.intended_use.DEFAULT_USES`)
    intended_use: dict = field(default_factory=dict)

    def use(self, head: str):
        """The head's :class:`~cxr_viewer.ai.intended_use.IntendedUse`."""
        from cxr_viewer.ai.intended_use import DEFAULT_USES, IntendedUse

        return IntendedUse.from_dict(self.intended_use) if self.intended_use else DEFAULT_USES[head]


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
            "name": str(self.name),
            "version": str(self.version),
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
    def from_dict(cls, d: dict) -> ModelMeta:
        """The metadata of a description document, every value checked; ModelFileError otherwise."""
        return _meta_from_doc(d)


# --- reading a description: every value checked -------------------------------------------

MAX_DESCRIPTION_BYTES = 1 << 20  # a description is a few kB; a larger one is not ours
MAX_WEIGHTS_BYTES = 4 << 30  # a ResNet50 in float32 is about 100 MB
MAX_JSON_DEPTH = 32  # our descriptions nest 6 deep
INPUT_SIZE_RANGE = (32, 2048)  # ResNet50 downsamples 32 x; below 32 its last block sees nothing
TEMPERATURE_RANGE = (0.01, 100.0)  # training fits it within (0.05, 20)
HEAD_HIDDEN_RANGE = (1, 65536)
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(value).__name__)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    """Typed reads from one JSON object of a description; a wrong value is a ModelFileError naming its field."""

    def __init__(self, doc: Any, where: str):
        self.where = where
        if not isinstance(doc, dict):
            raise self.invalid("", "a JSON object", doc)
        self.doc = doc

    def invalid(self, key: str, need: str, value: Any) -> ModelFileError:
        name = ".".join(p for p in (self.where, key) if p) or "the document"
        return ModelFileError(f"the model description is invalid: {name} must be {need}, not {_shown(value)}")

    def string(self, key: str, default: str = "") -> str:
        value = self.doc.get(key, default)
        if not isinstance(value, str):
            raise self.invalid(key, "a string", value)
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.doc.get(key, default)
        if value not in options or not isinstance(value, str):
            raise self.invalid(key, "one of " + ", ".join(options), value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.doc.get(key, default)
        if not isinstance(value, bool):
            raise self.invalid(key, "true or false", value)
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.invalid(key, f"an integer from {lo} to {hi}", value)
        return value

    def number(self, key: str, default: float, lo: float, hi: float, *, open_lo: bool = False,
               open_hi: bool = False) -> float:
        value = self.doc.get(key, default)
        need = f"a finite number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.invalid(key, need, value)
        try:
            x = float(value)
        except OverflowError:  # an integer too large for a float
            raise self.invalid(key, need, value) from None
        if not (math.isfinite(x) and (lo < x if open_lo else lo <= x) and (x < hi if open_hi else x <= hi)):
            raise self.invalid(key, need, value)
        return x

    def obj(self, key: str) -> _Fields:
        return _Fields(self.doc.get(key, {}), ".".join(p for p in (self.where, key) if p))


def _depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def _head_from_doc(doc: Any, head: str) -> HeadInfo:
    f = _Fields(doc, f"heads.{head}")
    op = f.obj("operating_point")
    return HeadInfo(
        trained=f.boolean("trained", False),
        threshold=f.number("threshold", 0.5, 0.0, 1.0, open_lo=True, open_hi=True),
        temperature=f.number("temperature", 1.0, *TEMPERATURE_RANGE),
        positive=f.string("positive"), negative=f.string("negative"),
        operating_point={k: None if op.doc[k] is None else op.number(k, 0.0, 0.0, 1.0) for k in op.doc},
        rule=f.string("rule"), note=f.string("note"), intended_use=_intended_use_from_doc(doc, head),
    )


def _intended_use_from_doc(doc: dict, head: str) -> dict:
    from cxr_viewer.ai.intended_use import IntendedUse, IntendedUseError

    if doc.get("intended_use") in (None, {}):
        return {}
    try:
        return IntendedUse.from_dict(doc["intended_use"]).to_dict()
    except (IntendedUseError, TypeError) as exc:
        raise ModelFileError(f"the model description is invalid: heads.{head}.intended_use: {exc}") from None


def _preprocessing_from_doc(doc: Any, default: PreprocessSpec = PreprocessSpec(),
                            sizes: tuple[int, int] = INPUT_SIZE_RANGE, crops: tuple[str, ...] = ("none",)
                            ) -> PreprocessSpec:
    """The checked preprocessing of a description; the input channels must be ``default``'s
    (3 for the scoring model, 1 for the image check and the anatomy model); only the scoring model
    may read the lung box (``crops``)."""
    f = _Fields(doc, "preprocessing")
    spec = PreprocessSpec(
        input_size=f.integer("input_size", default.input_size, *sizes),
        low_percentile=f.number("low_percentile", default.low_percentile, 0.0, 100.0),
        high_percentile=f.number("high_percentile", default.high_percentile, 0.0, 100.0),
        resize=f.choice("resize", ("squash",), default.resize),
        channels=f.integer("channels", default.channels, default.channels, default.channels),
        mean=f.number("mean", default.mean, -1e6, 1e6),
        std=f.number("std", default.std, 0.0, 1e6, open_lo=True),
        crop=f.choice("crop", crops, "none"),
        crop_pad=f.number("crop_pad", default.crop_pad, 0.0, 0.5),
        intensity=f.choice("intensity", ("percentile", "equalize"), default.intensity),
    )
    f.integer("version", 1, 1, 2)  # 2: the lung box or equalisation (``PreprocessSpec.version``)
    if spec.low_percentile >= spec.high_percentile:
        raise f.invalid("low_percentile", f"below high_percentile ({spec.high_percentile:g})", spec.low_percentile)
    if spec.std < 1e-6:
        raise f.invalid("std", "at least 1e-06", spec.std)
    return spec


def _meta_from_doc(doc: Any) -> ModelMeta:
    if not isinstance(doc, dict):
        raise ModelFileError("the model description is not a JSON object")
    if doc.get("format") != FORMAT:
        raise ModelFileError(f"not a cxr_viewer model description (format {_shown(doc.get('format'))}, "
                             f"expected {FORMAT!r})")
    if doc.get("architecture") != "resnet50":
        raise ModelFileError(f"unsupported architecture {_shown(doc.get('architecture'))}")
    f = _Fields(doc, "")
    heads_doc = doc.get("heads")
    if not isinstance(heads_doc, dict) or not heads_doc:
        raise f.invalid("heads", "a JSON object of at least one head", heads_doc)
    unknown = sorted(set(heads_doc) - set(HEADS))
    if unknown:
        raise ModelFileError(f"the model description is invalid: unknown heads {_shown(unknown)} "
                             f"(known: {', '.join(HEADS)})")
    heads = {h: _head_from_doc(v, h) for h, v in heads_doc.items()}
    spec = _preprocessing_from_doc(doc.get("preprocessing", {}), crops=("none", "lungs"))
    if "input_size" in doc and f.integer("input_size", spec.input_size, *INPUT_SIZE_RANGE) != spec.input_size:
        raise f.invalid("input_size", f"the preprocessing input size {spec.input_size}", doc["input_size"])
    classes = f.obj("classes")
    for h, names in classes.doc.items():
        if h not in heads or names != [heads[h].negative, heads[h].positive]:
            want = [heads[h].negative, heads[h].positive] if h in heads else "a known head's [negative, positive]"
            raise classes.invalid(str(h), f"{_shown(want)} as in heads", names)
    sha = f.string("weights_sha256")
    if not sha:
        raise ModelFileError("the model description has no weights SHA-256; it cannot be verified")
    if not _SHA256.fullmatch(sha):
        raise f.invalid("weights_sha256", "64 lowercase hexadecimal digits", sha)
    f.string("notice")
    return ModelMeta(
        name=f.string("name"), version=f.string("version"), architecture="resnet50",
        head_hidden=f.integer("head_hidden", 256, *HEAD_HIDDEN_RANGE),
        head_activation=f.choice("head_activation", tuple(ACTIVATIONS), "relu"),
        heads=heads, preprocessing=spec, training=dict(f.obj("training").doc), metrics=dict(f.obj("metrics").doc),
        weights_sha256=sha, weights_dtype=f.choice("weights_dtype", WEIGHT_DTYPES, "float32"),
        created=f.string("created"),
    )


def models_dir() -> Path:
    """The ``models/`` folder shipped beside the package (source tree, installed or frozen)."""
    return Path(__file__).resolve().parents[2] / "models"


def sidecar_path(weights_path: str) -> str:
    root, _ = os.path.splitext(weights_path)
    return root + ".json"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_regular_file(path: str, limit: int, what: str) -> bytes:
    """All bytes of a regular file of at most ``limit`` bytes, read once.

    A FIFO, a device (/dev/zero), a socket or a folder is refused without a blocking read: the file
    is checked before it is opened, and opened non-blocking then checked again (it may have been
    swapped in between). OSError (FileNotFoundError...) passes through for the caller to word.
    """
    def refuse(mode: int) -> ModelFileError:
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        return ModelFileError(f"{what} is {kind}: {os.path.basename(path) or path}")

    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise refuse(mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise refuse(st.st_mode)
        data = f.read(limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:
            raise ModelFileError(f"{what} is too large ({max(st.st_size, len(data)):,} bytes; "
                                 f"at most {limit:,} expected): {os.path.basename(path)}")
    return data


def save_fp16_described(net: nn.Module, meta: Any, path: str, fmt: str) -> None:
    """Weights as float16 safetensors, then ``meta``'s description, each atomically. ``meta`` has
    ``weights_sha256``, ``to_dict()`` and a ``from_dict`` that checks it: the SHA-256 recorded is
    that of the bytes written, and the description is read back through its own checks first."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in net.state_dict().items()}, metadata={"format": fmt})
    meta.weights_sha256 = hashlib.sha256(data).hexdigest()
    text = json.dumps(meta.to_dict(), indent=2)
    type(meta).from_dict(json.loads(text))
    write_bytes_atomic(path, data)
    write_bytes_atomic(sidecar_path(path), text.encode())


def build_model(meta: ModelMeta) -> CxrNet:
    return CxrNet(tuple(meta.heads), meta.head_hidden, meta.head_activation)


def save_model(model: CxrNet, meta: ModelMeta, path: str, dtype: torch.dtype = torch.float32) -> ModelMeta:
    """Write weights then metadata, each atomically; returns the metadata as written.

    The description is checked as :func:`read_meta` will check it, so no model is written that
    cannot be loaded; the SHA-256 is that of the bytes written.
    """
    from safetensors.torch import save

    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": FORMAT})
    meta.weights_sha256 = hashlib.sha256(data).hexdigest()
    meta.weights_dtype = str(dtype).replace("torch.", "")
    text = json.dumps(meta.to_dict(), indent=2)
    ModelMeta.from_dict(json.loads(text))
    write_bytes_atomic(path, data)
    write_bytes_atomic(sidecar_path(path), text.encode())
    return meta


_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def read_meta(path: str) -> ModelMeta:
    """The checked description beside the weights file ``path``; ModelFileError with one line otherwise."""
    return ModelMeta.from_dict(read_description(path))


def read_description(path: str, what: str = "the model description") -> Any:
    """The JSON document beside the weights file ``path`` (NAME.json), read within the size and
    nesting limits, not yet checked field by field; ModelFileError with one line otherwise."""
    side = sidecar_path(path)
    name = os.path.basename(side)
    try:
        raw = _read_regular_file(side, MAX_DESCRIPTION_BYTES, f"{what} {name}")
    except FileNotFoundError:
        raise ModelFileError(f"{what} {name} is missing beside the weights") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ModelFileError(f"cannot read {what} {name}: it nests too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, an integer of too many digits
        reason = " ".join(str(exc).split())
        raise ModelFileError(f"cannot read {what} {name}: {reason}") from None
    if _depth_exceeds(doc, MAX_JSON_DEPTH):
        raise ModelFileError(f"cannot read {what} {name}: it nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def read_weights_bytes(path: str, limit: int = MAX_WEIGHTS_BYTES, what: str = "the model file") -> bytes:
    """All bytes of a weights file, read once; a missing, unreadable or pickled file is a one-line
    ModelFileError (a pickle is never opened as one)."""
    try:
        data = _read_regular_file(path, limit, what)
    except FileNotFoundError:
        raise ModelFileError(f"{what.removeprefix('the ')} not found: {path}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {os.path.basename(path)}: {exc.strerror or exc}") from None
    if data.startswith(_PICKLE_MAGICS):
        raise ModelFileError("this is a pickled PyTorch file; it is refused (pickles can run code). "
                             "cxr_viewer loads .safetensors weights with a .json description")
    return data


def verified_tensors(data: bytes, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data`` once their SHA-256 is the described one: the hash checked
    is that of the very bytes parsed."""
    from safetensors.torch import load

    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelFileError(f"weights do not match their description (SHA-256 {digest[:12]}... expected "
                             f"{sha256[:12]}...): the file is truncated, modified or not this model's")
    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure of the bytes is a refused file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"not a readable safetensors file: {reason}") from None


def _checked_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     dtype: str) -> dict[str, torch.Tensor]:
    """The loaded tensors in the model's dtypes, once they are shown to fit the architecture, to
    have the described dtype, to be finite and to hold no negative BatchNorm running variance."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelFileError(f"weights do not fit the architecture: {len(missing)} missing, {len(extra)} unexpected "
                             f"tensors (e.g. {(missing or extra)[0]})")
    out = {}
    for k, v in expected.items():
        t = state[k]
        if tuple(t.shape) != tuple(v.shape):
            raise ModelFileError(f"weights do not fit the architecture: {k} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(v.shape)}")
        want = dtype if v.is_floating_point() else str(v.dtype).replace("torch.", "")
        if str(t.dtype) != f"torch.{want}":
            raise ModelFileError(f"weights do not match their description: {k} is "
                                 f"{str(t.dtype).replace('torch.', '')}, expected {want}")
        out[k] = t = t.to(v.dtype)
        if v.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                raise ModelFileError(f"weights contain non-finite values (NaN or infinity) in {k}; "
                                     "the model is refused")
            if k.endswith("running_var") and bool((t < 0).any()):
                raise ModelFileError(f"weights contain a negative BatchNorm variance in {k}; the model is refused")
    return out


def load_model(path: str) -> tuple[CxrNet, ModelMeta]:
    """Load and verify a model file. Raises ModelFileError with a one-line reason.

    The weights are read once into memory: the SHA-256 checked is that of the bytes parsed.
    """
    data = read_weights_bytes(path)
    meta = read_meta(path)
    state = verified_tensors(data, meta.weights_sha256)
    del data
    model = build_model(meta)
    expected = model.state_dict()
    model.load_state_dict(_checked_weights(state, expected, meta.weights_dtype))
    model.eval()
    return model, meta
