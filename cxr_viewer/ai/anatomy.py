"""The anatomy model: lung fields and heart on a frontal chest radiograph, and the cardiothoracic
ratio measured from them.

A small U-Net (Ronneberger et al. 2015; torchvision has no U-Net, and a 2-million-parameter one of
our own is smaller and faster on a workstation CPU than pulling segmentation_models_pytorch and
timm into the installer) on one grey channel at 256 x 256, fed by the one preprocessing function
with its own spec, with one sigmoid output per structure (right lung, left lung, heart; "right"
and "left" are the patient's). Trained by ``training.anatomy`` on the SCR masks of JSRT.

Loaded, hashed and checked like the scoring model (safetensors + JSON, SHA-256 of the bytes
parsed, every value validated, never a pickle). Qt-free; the results are plain data
(:class:`Anatomy`, :class:`CtrMeasurement`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
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
    verified_tensors,
)
from cxr_viewer.ai.preprocess import PreprocessSpec, preprocess_unit, resize_square, standardise

ANATOMY_FORMAT = "cxr_viewer.anatomy/1"
ANATOMY_FILE = "anatomy.safetensors"
STRUCTURES = ("right_lung", "left_lung", "heart")
MAX_ANATOMY_BYTES = 64 << 20
ANATOMY_SPEC = PreprocessSpec(input_size=256, channels=1)
WORK_SIZE = 1024
LUNG_BOX_WORK = 256  # the lung box is found on masks of at most this size


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AnatomyNet(nn.Module):
    """U-Net: ``depth`` levels of two 3x3 convolutions, max-pool down, transposed convolution up."""

    def __init__(self, base: int = 16, depth: int = 5, outputs: int = len(STRUCTURES)):
        super().__init__()
        ch = [base * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList([_block(1 if i == 0 else ch[i - 1], ch[i]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2) for i in range(depth - 1, 0, -1)])
        self.dec = nn.ModuleList([_block(ch[i - 1] * 2, ch[i - 1]) for i in range(depth - 1, 0, -1)])
        self.head = nn.Conv2d(base, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down):
            x = down(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


@dataclass
class AnatomyMeta:
    name: str
    version: str
    preprocessing: PreprocessSpec = ANATOMY_SPEC
    base: int = 16
    depth: int = 5
    threshold: float = 0.5
    weights_sha256: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": ANATOMY_FORMAT, "architecture": "unet-1ch", "structures": list(STRUCTURES),
                "name": self.name, "version": self.version, "preprocessing": self.preprocessing.to_dict(),
                "base": self.base, "depth": self.depth, "threshold": self.threshold,
                "weights_sha256": self.weights_sha256, "weights_dtype": "float16",
                "intended_use": "frontal (PA/AP) chest radiographs: lung fields and heart outlines, "
                                "cardiothoracic ratio; research use only",
                "training": self.training, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, doc) -> "AnatomyMeta":
        if not isinstance(doc, dict) or doc.get("format") != ANATOMY_FORMAT:
            raise ModelFileError(f"not a cxr_viewer anatomy-model description (format expected {ANATOMY_FORMAT!r})")
        f = _Fields(doc, "")
        if doc.get("structures") != list(STRUCTURES) or doc.get("architecture") != "unet-1ch":
            raise f.invalid("structures", f"{list(STRUCTURES)} of a unet-1ch", doc.get("structures"))
        spec = _preprocessing_from_doc(doc.get("preprocessing", {}), ANATOMY_SPEC, (64, 1024))
        p = f.obj("preprocessing")
        depth = f.integer("depth", 5, 2, 7)
        if spec.input_size % (2 ** (depth - 1)):
            raise p.invalid("input_size", f"a multiple of {2 ** (depth - 1)}", spec.input_size)
        sha = f.string("weights_sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise f.invalid("weights_sha256", "64 lowercase hexadecimal digits", sha)
        f.choice("weights_dtype", ("float16",), "float16")
        return cls(name=f.string("name"), version=f.string("version"), preprocessing=spec,
                   base=f.integer("base", 16, 4, 64), depth=depth,
                   threshold=f.number("threshold", 0.5, 0.0, 1.0, open_lo=True, open_hi=True),
                   weights_sha256=sha, training=dict(f.obj("training").doc), metrics=dict(f.obj("metrics").doc))


@dataclass(frozen=True)
class CtrMeasurement:
    """The cardiothoracic ratio with its two horizontal lines, in image pixel coordinates (x, y).

    ``heart`` and ``thorax`` are ((x0, y), (x1, y)); the ratio is the heart line's length over the
    thorax line's. Either line may be moved by the user: :meth:`with_lines` recomputes the ratio.
    """

    heart: tuple[tuple[float, float], tuple[float, float]]
    thorax: tuple[tuple[float, float], tuple[float, float]]
    corrected: bool = False

    @property
    def heart_width(self) -> float:
        return abs(self.heart[1][0] - self.heart[0][0])

    @property
    def thorax_width(self) -> float:
        return abs(self.thorax[1][0] - self.thorax[0][0])

    @property
    def ratio(self) -> float:
        return self.heart_width / self.thorax_width if self.thorax_width > 0 else float("nan")

    def with_lines(self, heart=None, thorax=None) -> "CtrMeasurement":
        return CtrMeasurement(tuple(map(tuple, heart)) if heart is not None else self.heart,
                              tuple(map(tuple, thorax)) if thorax is not None else self.thorax, corrected=True)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return ndimage.binary_fill_holes(mask)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == (1 + int(np.argmax(sizes))))


def clean_masks(masks: np.ndarray) -> np.ndarray:
    """(3, H, W) bool -> the largest connected component of each structure, holes filled."""
    return np.stack([_largest_component(m) if m.any() else m for m in masks])


def measure_ctr(right_lung: np.ndarray, left_lung: np.ndarray, heart: np.ndarray) -> CtrMeasurement | None:
    """The cardiothoracic ratio from masks: the heart's widest horizontal extent (rightmost minus
    leftmost heart pixel, over all rows) over the widest inner thoracic width (over the rows where
    both lungs are present, the lateral edge of the left lung minus that of the right lung).
    None when a structure is missing."""
    if not (heart.any() and right_lung.any() and left_lung.any()):
        return None
    cols = np.nonzero(heart.any(0))[0]
    hx0, hx1 = float(cols[0]), float(cols[-1] + 1)
    hrows = np.nonzero(heart.any(1))[0]
    # the heart line is drawn at the row where the heart is widest
    h_first = np.where(heart.any(1), heart.argmax(1), heart.shape[1])
    h_last = np.where(heart.any(1), heart.shape[1] - heart[:, ::-1].argmax(1), 0)
    hy = float(hrows[int(np.argmax((h_last - h_first)[hrows]))])
    both = np.nonzero(right_lung.any(1) & left_lung.any(1))[0]
    if not len(both):
        return None
    # image left = the patient's right lung; its lateral edge is its leftmost pixel
    r_edge = right_lung[both].argmax(1)
    l_edge = left_lung.shape[1] - left_lung[both][:, ::-1].argmax(1)
    widths = l_edge - r_edge
    i = int(np.argmax(widths))
    ty = float(both[i])
    return CtrMeasurement(((hx0, hy), (hx1, hy)), ((float(r_edge[i]), ty), (float(l_edge[i]), ty)))


def ctr_problem(masks: np.ndarray, ctr: CtrMeasurement | None) -> str | None:
    """Why the outlines cannot give a trustworthy CTR, or None. Seen on children with pneumonia: a
    consolidation whitens a lung, which the model then outlines only in part, or hides the heart
    border; a ratio from such outlines would be a confident wrong number."""
    if ctr is None:
        return "a lung or the heart was not found"
    right, left = int(masks[0].sum()), int(masks[1].sum())
    if min(right, left) < 0.35 * max(right, left):
        return ("one lung outline is much smaller than the other (an opacity, effusion or collapse may hide "
                "its border)")
    if not 0.25 <= ctr.ratio <= 0.85:
        return f"the outlines give an implausible ratio ({ctr.ratio:.2f}): a border is probably hidden"
    return None


@dataclass(frozen=True)
class Anatomy:
    """Masks at the image's own size (bool, (3, H, W) in :data:`STRUCTURES` order) and the CTR;
    ``ctr`` is None when the outlines cannot give one, and ``ctr_note`` says why."""

    masks: np.ndarray
    ctr: CtrMeasurement | None
    model_name: str = ""
    ctr_note: str = ""

    @property
    def lungs(self) -> np.ndarray:
        return self.masks[0] | self.masks[1]

    @property
    def heart(self) -> np.ndarray:
        return self.masks[2]


def resize_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, s, s) float -> (C, H, W) float by bilinear interpolation (undoes the squash)."""
    h, w = shape
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p, np.float32), mode="F")
                                .resize((w, h), Image.Resampling.BILINEAR)) for p in probs])


class AnatomyModel:
    """The loaded anatomy model. Inference only (no state changes), so threads may share it."""

    def __init__(self, net: AnatomyNet, meta: AnatomyMeta, path: str = ""):
        self.net, self.meta, self.path = net.eval().to(memory_format=torch.channels_last), meta, path
        self.bf16 = False

    @classmethod
    def from_file(cls, path: str) -> "AnatomyModel":
        if not os.path.lexists(path):
            raise ModelFileError(f"anatomy model not found: {path}")
        meta = AnatomyMeta.from_dict(read_description(path, "the anatomy-model description"))
        state = verified_tensors(read_weights_bytes(path, MAX_ANATOMY_BYTES, "the anatomy model"), meta.weights_sha256)
        net = AnatomyNet(meta.base, meta.depth)
        net.load_state_dict(_checked_weights(state, net.state_dict(), "float16"))
        return cls(net, meta, path)

    def probabilities_units(self, units: np.ndarray) -> np.ndarray:
        """(B, S, S) preprocessed units in [0, 1] -> (B, 3, S, S) probabilities."""
        x = torch.from_numpy(standardise(units, self.meta.preprocessing))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(x.contiguous(memory_format=torch.channels_last)).float()
        return torch.sigmoid(logits).numpy()

    def lungs_of_units(self, units: np.ndarray, size: int) -> np.ndarray:
        """(B, size, size) bool: both lungs, cleaned as :meth:`segment` cleans them, of whole-image
        units (B, S, S) in [0, 1] (the percentile window only), each resized to the model's input."""
        side = self.meta.preprocessing.input_size
        probs = self.probabilities_units(np.stack([resize_square(x, side) for x in units]))
        masks = [clean_masks(resize_probabilities(pr, (size, size)) >= self.meta.threshold) for pr in probs]
        return np.stack([m[0] | m[1] for m in masks])

    def segment(self, values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None,
                shape: tuple[int, int] | None = None) -> Anatomy:
        """Masks and CTR for modality values; masks at ``shape`` (default: the values' shape)."""
        unit = preprocess_unit(values, monochrome1, padding, self.meta.preprocessing)
        probs = self.probabilities_units(unit[None])[0]
        h, w = shape or values.shape[:2]
        # masks are cleaned and measured at no more than WORK_SIZE px a side (the model sees 256):
        # a 3000 px image would otherwise cost seconds for no detail; then scaled to the image
        scale = min(1.0, WORK_SIZE / max(h, w))
        wh, ww = max(1, round(h * scale)), max(1, round(w * scale))
        masks = clean_masks(resize_probabilities(probs, (wh, ww)) >= self.meta.threshold)
        ctr = measure_ctr(*masks)
        if (wh, ww) != (h, w):
            masks = np.stack([np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST)) for m in masks])
            if ctr is not None:
                sx, sy = w / ww, h / wh
                ctr = CtrMeasurement(tuple((x * sx, y * sy) for x, y in ctr.heart),
                                     tuple((x * sx, y * sy) for x, y in ctr.thorax))
        problem = ctr_problem(masks, ctr)
        return Anatomy(masks, None if problem else ctr, self.meta.name, problem or "")

    def lung_box(self, values: np.ndarray, monochrome1: bool = False, padding: np.ndarray | None = None,
                 pad: float = 0.1, work: int = LUNG_BOX_WORK):
        """The padded square box around both lungs (``ai.preprocess.LungBox``, image pixels), found on
        masks of at most ``work`` px a side (the model sees 256: a 2000 px image needs no finer mask
        for a box, and cleaning it at full size would cost a second)."""
        from cxr_viewer.ai.preprocess import LungBox, lung_box

        h, w = values.shape[:2]
        s = min(1.0, work / max(h, w))
        wh, ww = max(1, round(h * s)), max(1, round(w * s))
        small = lung_box(self.segment(values, monochrome1, padding, (wh, ww)).lungs, (wh, ww), pad)
        if not small.from_lungs:
            return lung_box(None, (h, w), pad)
        sx, sy = w / ww, h / wh
        return LungBox(small.x0 * sx, small.y0 * sy, small.side * max(sx, sy), True)

    def segment_image(self, image) -> Anatomy:
        return self.segment(image.values, image.monochrome1, image.padding)

    def save(self, path: str) -> None:
        """Weights (float16) then the description, each atomically; the SHA-256 is of the bytes written."""
        save_fp16_described(self.net, self.meta, path, ANATOMY_FORMAT)


def default_anatomy_path() -> str:
    """$CXR_VIEWER_ANATOMY if set, else ``models/anatomy.safetensors``."""
    return os.environ.get("CXR_VIEWER_ANATOMY") or str(models_dir() / ANATOMY_FILE)
