"""The nodule/mass model: the lung-cancer association score, and where it comes from.

A second network beside the paediatric pneumonia one, because a 10-20 mm nodule is 2-4 px at
224 px: a torchvision ResNet50 sees the **lung fields** (the box around both lungs found by the
anatomy model, made square and padded by 6 %) at 512 x 512, so the lungs get all 512 px. Its
output is dense: a logit per 16 x 16 px cell (a 32 x 32 map at 512 px, each cell about 9 mm on
an adult) from a small feature-pyramid head on layers 3 and 4. The image's logit is the highest
cell inside the lungs, so the score always comes with the place it came from; above the
threshold that place is drawn as a box of cells (the model's own resolution), the way chest
X-ray AI products mark findings.

Input: the one preprocessing function's steps 1-2 (modality values, MONOCHROME1 made MONOCHROME2,
0.5-99.5 percentile normalisation) on the whole image, then the lung box cropped (outside the
image: 0) and resized to 512, then standardised. Where the anatomy model finds no lungs the whole
image is used and ``NoduleFinding.lungs_found`` says so (not yet passed on to HeadScore or the
reports).

Loaded, hashed and checked like the other models (safetensors + JSON description, SHA-256 of the
bytes parsed, every value validated, never a pickle). Qt-free; results are plain data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cxr_viewer.ai.model import (
    ModelFileError,
    _checked_weights,
    _Fields,
    _preprocessing_from_doc,
    models_dir,
    read_description,
    read_weights_bytes,
    save_fp16_described,
    verified_tensors,
)
from cxr_viewer.ai.preprocess import (
    LungBox,
    PreprocessSpec,
    crop_resize,
    lung_box,
    map_over_image,
    normalise_intensity,
    standardise,
)
from cxr_viewer.common.errors import ImageOpenError

NODULE_FORMAT = "cxr_viewer.nodule/1"
NODULE_FILE = "nodule.safetensors"
NODULE_SPEC = PreprocessSpec(input_size=512, channels=3)
STRIDE = 16  # one map cell per 16 x 16 input pixels
MAX_NODULE_BYTES = 256 << 20
HEATMAP_SIZE = 256  # the heatmap handed to the viewer covers the whole image at this size


class NoduleNet(nn.Module):
    """ResNet50 (torchvision) -> layers 3 and 4 -> a small pyramid head -> one logit per cell."""

    def __init__(self, width: int = 256):
        super().__init__()
        from torchvision.models import resnet50

        b = resnet50(weights=None)
        b.fc = nn.Identity()
        self.backbone = b
        self.lat3 = nn.Conv2d(1024, width, 1)
        self.lat4 = nn.Conv2d(2048, width, 1)
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU(inplace=True), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> logit map (B, S/16, S/16)."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c3 = b.layer3(b.layer2(b.layer1(x)))
        c4 = b.layer4(c3)
        p = self.lat3(c3) + F.interpolate(self.lat4(c4), size=c3.shape[-2:], mode="nearest")
        return self.head(p)[:, 0]


def windowed_maps(net: NoduleNet, x: torch.Tensor, window: int, batch: int = 64) -> torch.Tensor:
    """The logit map of standardised inputs (B, 3, S, S) from overlapping windows of the size the
    model was trained on (stride half a window), each cell taken from the window whose centre half
    holds it (image edges: the edge windows): what a patch-trained network says, without asking it
    about contexts larger than it ever saw. ``window >= S``: the whole input at once."""
    B, _, S, _ = x.shape
    if window >= S:
        return net(x)
    step = window // 2
    starts = list(range(0, S - window + 1, step))
    if starts[-1] != S - window:
        starts.append(S - window)
    tiles = torch.stack([x[:, :, r:r + window, c:c + window] for r in starts for c in starts], 1)
    tiles = tiles.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    outs = torch.cat([net(tiles[k:k + batch]) for k in range(0, len(tiles), batch)]).float()
    outs = outs.view(B, len(starts), len(starts), window // STRIDE, window // STRIDE)
    n, w, q = S // STRIDE, window // STRIDE, window // STRIDE // 4
    out = torch.empty(B, n, n, dtype=outs.dtype)
    for i, r in enumerate(starts):
        r0 = 0 if i == 0 else r // STRIDE + q
        r1 = n if i == len(starts) - 1 else r // STRIDE + w - q
        for j, c in enumerate(starts):
            c0 = 0 if j == 0 else c // STRIDE + q
            c1 = n if j == len(starts) - 1 else c // STRIDE + w - q
            out[:, r0:r1, c0:c1] = outs[:, i, j, r0 - r // STRIDE:r1 - r // STRIDE, c0 - c // STRIDE:c1 - c // STRIDE]
    return out


def cell_centre(index: int, n: int) -> tuple[float, float]:
    """The centre (x, y, input px) of cell ``index`` of an n x n map, flattened row by row."""
    r, c = divmod(int(index), n)
    return (c + 0.5) * STRIDE, (r + 0.5) * STRIDE


def masked_max(logit_map: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image logits (B,), flat index of the peak (B,)): the highest cell where ``cells`` is true
    (all cells where a row has none)."""
    flat = logit_map.flatten(1)
    m = cells.flatten(1).bool()
    m = m | ~m.any(dim=1, keepdim=True)
    masked = flat.masked_fill(~m, float("-inf"))
    value, index = masked.max(dim=1)
    return value, index


@dataclass
class NoduleMeta:
    name: str
    version: str
    preprocessing: PreprocessSpec = NODULE_SPEC
    width: int = 256
    #: the square window (input px) the model was trained on and reads the lung box by (half-overlapping)
    window: int = 128
    #: calibrated probability = sigmoid(slope * logit + intercept), fitted on out-of-fold logits
    slope: float = 1.0
    intercept: float = 0.0
    threshold: float = 0.5
    #: shipped as a score only when the cross-validated AUROC's lower 95 % bound clears the bar on every source
    available: bool = False
    note: str = ""  # why it is not available, with the numbers
    operating_point: dict = field(default_factory=dict)
    rule: str = ""
    weights_sha256: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": NODULE_FORMAT, "architecture": "resnet50-fpn-dense", "head": "lung_cancer_association",
                "name": self.name, "version": self.version, "preprocessing": self.preprocessing.to_dict(),
                "crop": "lung box (anatomy model), square, padded", "stride": STRIDE, "width": self.width, "window": self.window,
                "calibration": {"slope": self.slope, "intercept": self.intercept}, "threshold": self.threshold,
                "available": self.available, "note": self.note, "operating_point": self.operating_point,
                "rule": self.rule, "weights_sha256": self.weights_sha256, "weights_dtype": "float16",
                "intended_use": "frontal (PA/AP) adult chest radiographs: a nodule or mass and its place; "
                                "research use only",
                "training": self.training, "metrics": self.metrics,
                "notice": "Research use only. Not for diagnostic use."}

    @classmethod
    def from_dict(cls, doc) -> NoduleMeta:
        if not isinstance(doc, dict) or doc.get("format") != NODULE_FORMAT:
            raise ModelFileError(f"not a cxr_viewer nodule-model description (format expected {NODULE_FORMAT!r})")
        f = _Fields(doc, "")
        if doc.get("architecture") != "resnet50-fpn-dense":
            raise f.invalid("architecture", "resnet50-fpn-dense", doc.get("architecture"))
        spec = _preprocessing_from_doc(doc.get("preprocessing", {}), NODULE_SPEC, (128, 2048))
        if spec.input_size % 32:
            raise f.obj("preprocessing").invalid("input_size", "a multiple of 32", spec.input_size)
        window = f.integer("window", 128, 64, 2048)
        if window % 64:
            raise f.invalid("window", "a multiple of 64", window)
        if f.integer("stride", STRIDE, 1, 64) != STRIDE:
            raise f.invalid("stride", str(STRIDE), doc.get("stride"))
        cal = f.obj("calibration")
        sha = f.string("weights_sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise f.invalid("weights_sha256", "64 lowercase hexadecimal digits", sha)
        f.choice("weights_dtype", ("float16",), "float16")
        op = f.obj("operating_point").doc
        for k in ("sensitivity", "specificity"):
            v = op.get(k)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1):
                raise f.obj("operating_point").invalid(k, "a number in [0, 1] or null", v)
        return cls(name=f.string("name"), version=f.string("version"), preprocessing=spec,
                   width=f.integer("width", 256, 8, 1024), window=window,
                   slope=cal.number("slope", 1.0, 1e-3, 100.0),
                   intercept=cal.number("intercept", 0.0, -100.0, 100.0),
                   threshold=f.number("threshold", 0.5, 0.0, 1.0, open_lo=True, open_hi=True),
                   available=f.boolean("available", False), note=f.string("note"),
                   operating_point={k: op.get(k) for k in ("sensitivity", "specificity")}, rule=f.string("rule"),
                   weights_sha256=sha, training=dict(f.obj("training").doc), metrics=dict(f.obj("metrics").doc))


def nodule_unit(values: np.ndarray, monochrome1: bool, padding: np.ndarray | None, lungs: np.ndarray | None,
                spec: PreprocessSpec = NODULE_SPEC) -> tuple[np.ndarray, np.ndarray, LungBox]:
    """The one preprocessing function's steps 1-2, then the lung box at the model's size:
    (unit (S, S) in [0, 1], lung cells (S/16, S/16) bool, box). Training and inference both use it."""
    norm = normalise_intensity(values, monochrome1, padding, spec)
    box = lung_box(lungs, norm.shape[:2])
    unit = crop_resize(norm, box, spec.input_size)
    if box.from_lungs:
        cells = crop_resize(lungs.astype(np.float32), box, spec.input_size // STRIDE) > 0.1
        return unit, dilate(cells), box
    # no lungs: every cell on the image (not those of the square's padding)
    cells = crop_resize(np.ones(norm.shape[:2], np.float32), box, spec.input_size // STRIDE) > 0.5
    return unit, cells, box


def dilate(cells: np.ndarray) -> np.ndarray:
    """One cell of growth (a nodule at the lung's edge still counts)."""
    t = torch.from_numpy(cells.astype(np.float32))[None, None]
    return (F.max_pool2d(t, 3, 1, 1)[0, 0] > 0).numpy()


@dataclass(frozen=True)
class NoduleFinding:
    """What the nodule model says of one image (image pixel coordinates)."""

    probability: float
    logit: float
    peak: tuple[float, float]  # the centre of the highest cell
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the cells around the peak
    heatmap: np.ndarray  # (HEATMAP_SIZE, HEATMAP_SIZE) cell probabilities over the whole image
    lungs_found: bool


def peak_box(logit_map: np.ndarray, peak: int, drop: float = 1.0, max_cells: int = 6) -> tuple[int, int, int, int]:
    """(r0, c0, r1, c1) cells (exclusive ends): the connected cells around the peak whose logit is
    within ``drop`` of it, at most ``max_cells`` a side."""
    n = logit_map.shape[1]
    r, c = divmod(int(peak), n)
    keep = logit_map >= logit_map[r, c] - drop
    seen, todo = {(r, c)}, [(r, c)]
    while todo:
        i, j = todo.pop()
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= a < logit_map.shape[0] and 0 <= b < n and (a, b) not in seen and keep[a, b] \
                    and abs(a - r) < max_cells and abs(b - c) < max_cells:
                seen.add((a, b))
                todo.append((a, b))
    rows, cols = [p[0] for p in seen], [p[1] for p in seen]
    r0, r1 = max(min(rows), r - max_cells // 2), min(max(rows) + 1, r + (max_cells + 1) // 2)
    c0, c1 = max(min(cols), c - max_cells // 2), min(max(cols) + 1, c + (max_cells + 1) // 2)
    return r0, c0, r1, c1


class NoduleModel:
    """The loaded nodule model. Used from one worker thread at a time."""

    def __init__(self, net: NoduleNet, meta: NoduleMeta, path: str = "", device: str = "cpu", bf16: bool = False):
        self.meta, self.path, self.device = meta, path, device
        self.net = net.eval().to(device).to(memory_format=torch.channels_last)
        self.bf16 = bf16

    @classmethod
    def from_file(cls, path: str, device: str = "cpu", bf16: bool = False) -> NoduleModel:
        if not os.path.lexists(path):
            raise ModelFileError(f"nodule model not found: {path}")
        meta = NoduleMeta.from_dict(read_description(path, "the nodule-model description"))
        state = verified_tensors(read_weights_bytes(path, MAX_NODULE_BYTES, "the nodule model"), meta.weights_sha256)
        net = NoduleNet(meta.width)
        net.load_state_dict(_checked_weights(state, net.state_dict(), "float16"))
        return cls(net, meta, path, device, bf16)

    def calibrate(self, logit: np.ndarray | float) -> np.ndarray:
        z = self.meta.slope * np.asarray(logit, np.float64) + self.meta.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def logit_maps(self, units: np.ndarray) -> np.ndarray:
        """(B, S, S) units in [0, 1] -> (B, S/16, S/16) float32 logit maps."""
        x = torch.from_numpy(standardise(units, self.meta.preprocessing)).to(self.device)
        dtype = torch.bfloat16 if self.device == "cpu" else torch.float16
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=dtype,
                                                    enabled=self.bf16 or self.device != "cpu"):
            out = windowed_maps(self.net, x.contiguous(memory_format=torch.channels_last), self.meta.window).float()
        return out.cpu().numpy()

    def find(self, values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None,
             lungs: np.ndarray | None = None) -> NoduleFinding:
        """Score one image (modality values; ``lungs``: the anatomy model's lung mask at its size)."""
        spec = self.meta.preprocessing
        unit, cells, box = nodule_unit(values, monochrome1, padding, lungs, spec)
        lmap = self.logit_maps(unit[None])[0]
        if not np.isfinite(lmap).all():
            raise ImageOpenError("the nodule/mass model gave a non-finite output for this image; it is not scored")
        logit, index = masked_max(torch.from_numpy(lmap[None]), torch.from_numpy(cells[None]))
        logit, index = float(logit[0]), int(index[0])
        peak = box.to_image(*cell_centre(index, lmap.shape[1]), spec.input_size)
        r0, c0, r1, c1 = peak_box(lmap, index)
        x0, y0 = box.to_image(c0 * STRIDE, r0 * STRIDE, spec.input_size)
        x1, y1 = box.to_image(c1 * STRIDE, r1 * STRIDE, spec.input_size)
        h, w = values.shape[:2]
        bx = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
        probs = np.where(cells, self.calibrate(lmap), 0.0).astype(np.float32)
        return NoduleFinding(float(self.calibrate(logit)), logit, peak, bx,
                             heatmap_over_image(probs, box, (h, w)), box.from_lungs)

    def save(self, path: str) -> None:
        """Weights (float16) then the description, each atomically; the SHA-256 is of the bytes written."""
        save_fp16_described(self.net, self.meta, path, NODULE_FORMAT)


def heatmap_over_image(cell_probs: np.ndarray, box: LungBox, shape: tuple[int, int],
                       size: int = HEATMAP_SIZE) -> np.ndarray:
    """Cell probabilities of the lung box placed on the whole image (:func:`map_over_image`)."""
    return map_over_image(cell_probs, box, shape, size)


def default_nodule_path() -> str:
    """$CXR_VIEWER_NODULE if set ("none": no nodule model), else ``models/nodule.safetensors``."""
    env = os.environ.get("CXR_VIEWER_NODULE")
    if env == "none":
        return ""
    return env or str(models_dir() / NODULE_FILE)



def nodule_path_for(model_path: str) -> str:
    """The nodule/mass model used with the scoring model ``model_path``: ``NAME.nodule.safetensors``
    beside it where present, else the bundled one (:func:`default_nodule_path`)."""
    if model_path and os.environ.get("CXR_VIEWER_NODULE") != "none":
        sibling = os.path.splitext(model_path)[0] + ".nodule.safetensors"
        if os.path.exists(sibling):
            return sibling
    return default_nodule_path()


def _one_line(exc: BaseException) -> str:
    """A refused file's own message (ModelFileError: already one line), else the error's type and text on one line."""
    if isinstance(exc, ModelFileError):
        return str(exc)
    detail = " ".join(str(exc).split())
    line = type(exc).__name__ + (f": {detail}" if detail else "")
    return line if len(line) <= 300 else line[:297] + "..."


@dataclass
class Companion:
    """The nodule/mass model beside a scoring model, with the anatomy model that finds its lung box.
    ``note`` says why it gives no score (not found, refused, or not earned: its cross-validated
    numbers); ``failure`` why the last image got none."""

    model: NoduleModel | None = None
    anatomy: object | None = None  # ai.anatomy.AnatomyModel; None: the whole image is used
    note: str = ""
    failure: str = ""

    @property
    def available(self) -> bool:
        """A model that earned its score, with the anatomy model that finds the lung box it was
        validated on (without it the model would read whole images, which it was never measured on)."""
        return self.model is not None and self.model.meta.available and self.anatomy is not None

    @property
    def identity(self) -> tuple[str, str, str] | None:
        m = self.model
        return None if m is None else (m.meta.name, m.meta.version, m.meta.weights_sha256)

    @classmethod
    def beside(cls, model_path: str) -> Companion:
        path = nodule_path_for(model_path)
        if not path or not os.path.lexists(path):
            return cls()
        try:
            model = NoduleModel.from_file(path)
        except Exception as exc:  # noqa: BLE001 - its failure (memory too) must not take the scoring model down
            return cls(note=f"the nodule/mass model cannot be used: {_one_line(exc)}")
        anatomy, note = None, ""
        from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path

        try:
            anatomy = AnatomyModel.from_file(default_anatomy_path())
        except Exception as exc:  # noqa: BLE001
            note = f"the nodule/mass model needs the anatomy model's lung outline, which cannot be used: {_one_line(exc)}"
        if not model.meta.available:
            note = f"the nodule/mass model has not earned a score: {model.meta.note}"
        return cls(model, anatomy, note)

    def to(self, choice) -> None:
        """Onto the scoring model's device (``choice``: ai.inference.DeviceChoice)."""
        if self.model is not None:
            self.model.device = choice.device
            self.model.net.to(choice.device)
            self.model.bf16 = choice.precision == "bf16"
        if self.anatomy is not None:
            self.anatomy.bf16 = choice.precision == "bf16" and choice.device == "cpu"

    def find(self, values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None) -> NoduleFinding:
        lungs = None
        if self.anatomy is not None:
            lungs = self.anatomy.segment(values, monochrome1, padding).lungs
        return self.model.find(values, monochrome1, padding, lungs)
