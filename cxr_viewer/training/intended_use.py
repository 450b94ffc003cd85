"""Training the image-based input check (``ai.gate``) and fitting a model's feature distance.

The gate learns four classes from real images and generated negatives:

- ``child``: the paediatric training radiographs (a Kaggle-style folder: ``train/NORMAL``,
  ``train/PNEUMONIA``), with a validation part carved out by patient;
- ``adult``: adult chest radiographs (folders of PNG/JPEG/DICOM, e.g. JSRT and NIH);
- ``other``: folders of real non-radiographs (segmentation masks, CT/MR slices) plus images made
  here: rendered text pages, noise, gradients, shapes, body cross-sections, crops of the
  photographs that matplotlib and scikit-learn ship;
- ``inverted``: radiographs of either population shown as negatives.

Every image goes through the one preprocessing function (``ai.preprocess.preprocess_unit``) with
the gate's own spec. Augmentation mimics how new hospitals' images differ (crop, rotation,
gamma, contrast, blur, resolution, JPEG, collimation). The thresholds on ``child`` and ``adult``
are chosen on validation images only. ``fit_feature_distance`` fits the scoring model's
out-of-distribution check on its training images and sets its threshold on validation ones.

Qt-free; long work is a generator that yields :class:`~cxr_viewer.common.tasks.Progress` and checks cancellation.
"""

from __future__ import annotations

import glob
import io
import os
import time
from dataclasses import dataclass, field
from typing import Generator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from cxr_viewer.ai.gate import GATE_CLASSES, GATE_SPEC, FeatureDistance, Gate, GateMeta, GateNet
from cxr_viewer.ai.preprocess import PreprocessSpec
from cxr_viewer.common.tasks import NEVER_CANCELLED, CancelToken, Progress, run_to_completion
from cxr_viewer.io.image import open_image

MIN_VALIDATION_CHILDREN = 20  # fewer cannot set child_min (the 1% quantile) with any meaning
CACHE_SIZE = 160  # images are cached a little larger than the input, for crops
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")


@dataclass
class GateData:
    units: np.ndarray  # (N, 160, 160) uint8, preprocessed
    kinds: np.ndarray  # child | adult | other
    sources: np.ndarray  # the folder each came from (for reports)
    groups: np.ndarray  # patient or file, for grouped splits
    paths: np.ndarray
    skipped: list = field(default_factory=list)


def _files(folder: str) -> list[str]:
    out = []
    for root, _dirs, names in os.walk(folder):
        out += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(out)


def source_name(folder: str) -> str:
    """A folder's name in reports and hold-outs: its last two parts (``jsrt/images``, ``nih/images``)."""
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    return "/".join(parts[-2:])


def kermany_group(path: str) -> str:
    """The patient of a Kermany file name (``person123_bacteria_4.jpeg``, ``IM-0115-0001.jpeg``)."""
    name = os.path.basename(path)
    if name.startswith("person"):
        return name.split("_")[0]
    parts = name.replace("NORMAL2-", "").split("-")
    return "-".join(parts[:2])


def _unit(values, monochrome1=False, padding=None) -> np.ndarray:
    from cxr_viewer.ai.preprocess import preprocess_unit

    spec = PreprocessSpec(input_size=CACHE_SIZE, channels=1)
    return (preprocess_unit(values, monochrome1, padding, spec) * 255 + 0.5).astype(np.uint8)


def load_folders(children: Sequence[str], adults: Sequence[str], others: Sequence[str],
                 cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, GateData]:
    """Decode and preprocess every image of the folders once (unreadable files are listed)."""
    items = [(p, "child", source_name(f), kermany_group(p)) for f in children for p in _files(f)]
    items += [(p, "adult", source_name(f), p) for f in adults for p in _files(f)]
    items += [(p, "other", source_name(f), p) for f in others for p in _files(f)]
    units, keep, skipped = [], [], []
    for i, (path, kind, source, group) in enumerate(items):
        cancel.raise_if_cancelled()
        try:
            image = open_image(path)
            units.append(_unit(image.values, image.monochrome1, image.padding))
            keep.append((kind, source, group, path))
        except Exception as exc:  # noqa: BLE001 - one unreadable file is listed, not fatal
            skipped.append((path, " ".join(str(exc).split())[:200]))
        if i % 200 == 0:
            yield Progress("decoding", i, len(items), path)
    yield Progress("decoding", len(items), len(items))
    if not keep:
        raise ValueError("no readable images in the given folders")
    return GateData(np.stack(units), np.array([k[0] for k in keep]), np.array([k[1] for k in keep]),
                    np.array([k[2] for k in keep]), np.array([k[3] for k in keep]), skipped)


# --- generated non-radiographs -----------------------------------------------------------------

_WORDS = ("patient report chest radiograph findings impression lungs clear no acute disease heart size normal "
          "history comparison technique signed date page of the and with without left right lobe opacity "
          "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor 2024 12 mg ml").split()


def _fonts() -> list[str]:
    import matplotlib

    found = sorted(glob.glob(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "*.ttf")))
    return found or sorted(glob.glob("/usr/share/fonts/truetype/*/*.ttf"))


def shipped_photographs() -> list[np.ndarray]:
    """Grey photographs and logos that installed packages ship (matplotlib, scikit-learn), in [0, 1]."""
    import matplotlib
    import sklearn.datasets

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    out = [np.asarray(Image.fromarray(im).convert("L"), np.float32) / 255
           for im in sklearn.datasets.load_sample_images().images]
    for name in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        try:
            out.append(np.asarray(Image.open(os.path.join(folder, name)).convert("L"), np.float32) / 255)
        except OSError:
            pass
    return out


class Negatives:
    """Seeded generator of non-radiographs, by kind."""

    KINDS = ("text", "noise", "gradient", "shapes", "section", "photo")

    def __init__(self, rng: np.random.Generator, kinds: Sequence[str] = KINDS):
        self.rng, self.kinds = rng, tuple(kinds)
        self.fonts = _fonts()
        self.photos = shipped_photographs() if "photo" in kinds else []

    def make(self, kind: str | None = None) -> np.ndarray:
        r = self.rng
        kind = kind or self.kinds[int(r.integers(len(self.kinds)))]
        a = getattr(self, "_" + kind)()
        if r.random() < 0.2:
            a = -a
        return _unit(np.asarray(a, np.float32))

    def _text(self):
        r = self.rng
        w, h = int(r.integers(400, 1200)), int(r.integers(400, 1400))
        bg = int(r.integers(180, 256)) if r.random() < 0.8 else int(r.integers(0, 60))
        fg = 255 - bg if r.random() < 0.7 else int(r.integers(0, 256))
        im = Image.new("L", (w, h), bg)
        d = ImageDraw.Draw(im)
        size = int(r.integers(8, 48))
        try:
            font = ImageFont.truetype(self.fonts[int(r.integers(len(self.fonts)))], size) if self.fonts \
                else ImageFont.load_default()
        except OSError:
            font = ImageFont.load_default()
        y = int(r.integers(0, 40))
        while y < h:
            line = " ".join(_WORDS[int(r.integers(len(_WORDS)))] for _ in range(int(r.integers(2, 14))))
            d.text((int(r.integers(5, 60)), y), line, fill=fg, font=font)
            y += int(size * r.uniform(1.1, 2.5))
        return np.asarray(im, np.float32)

    def _noise(self):
        r, n = self.rng, CACHE_SIZE
        k = int(r.integers(4))
        if k == 0:
            return r.normal(0.5, r.uniform(0.05, 0.3), (n, n))
        if k == 1:
            s = int(r.integers(4, 40))
            return np.asarray(Image.fromarray(r.uniform(0, 1, (s, s)).astype(np.float32), "F").resize((n, n), Image.BICUBIC))
        if k == 2:
            return r.uniform(0, 1, (n, n))
        f = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None] ** 2
        return np.real(np.fft.ifft2(np.fft.fft2(r.normal(size=(n, n))) / np.maximum(f, 1e-4) ** r.uniform(0.3, 1.2)))

    def _gradient(self):
        r, n = self.rng, CACHE_SIZE
        y, x = np.mgrid[0:n, 0:n] / n
        k = int(r.integers(4))
        if k == 0:
            t = r.uniform(0, 2 * np.pi)
            return np.cos(t) * x + np.sin(t) * y
        if k == 1:
            cx, cy = r.uniform(0, 1, 2)
            return np.hypot(x - cx, y - cy)
        if k == 2:
            return np.full((n, n), r.uniform()) + r.normal(0, r.uniform(0.001, 0.02), (n, n))
        p = int(r.integers(2, 30))
        return ((np.floor(x * p) + np.floor(y * p * int(r.integers(0, 2)))) % 2).astype(float)

    def _shapes(self):
        r, n = self.rng, CACHE_SIZE * 2
        im = Image.new("L", (n, n), int(r.integers(0, 256)))
        d = ImageDraw.Draw(im)
        for _ in range(int(r.integers(1, 12))):
            x0, x1 = sorted(int(v) for v in r.integers(0, n, 2))
            y0, y1 = sorted(int(v) for v in r.integers(0, n, 2))
            (d.ellipse if r.random() < 0.5 else d.rectangle)([x0, y0, x1 + 2, y1 + 2], fill=int(r.integers(0, 256)))
        return np.asarray(im.filter(ImageFilter.GaussianBlur(float(r.uniform(0, 4)))), np.float32)

    def _section(self):
        """A body cross-section like a CT or MR slice: tissue on black, with dark or bright organs."""
        r, n = self.rng, CACHE_SIZE * 2
        im = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(im)
        cx, cy = n // 2 + int(r.integers(-20, 20)), n // 2 + int(r.integers(-20, 20))
        rx, ry = int(r.integers(n // 4, n // 2 - 10)), int(r.integers(n // 6, n // 2 - 20))
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(r.integers(90, 160)))
        for _ in range(int(r.integers(0, 3))):
            ox, oy = int(r.integers(-rx // 2, rx // 2)), int(r.integers(-ry // 2, ry // 2))
            r1, r2 = int(r.integers(10, rx // 2 + 11)), int(r.integers(10, ry // 2 + 11))
            d.ellipse([cx + ox - r1, cy + oy - r2, cx + ox + r1, cy + oy + r2], fill=int(r.choice([20, 40, 220, 250])))
        a = np.asarray(im.filter(ImageFilter.GaussianBlur(float(r.uniform(0.5, 3)))), np.float32) / 255
        return a + r.normal(0, 0.03, a.shape)

    def _photo(self):
        r = self.rng
        a = self.photos[int(r.integers(len(self.photos)))]
        h, w = a.shape
        ch, cw = int(h * r.uniform(0.3, 1)), int(w * r.uniform(0.3, 1))
        y, x = int(r.integers(0, h - ch + 1)), int(r.integers(0, w - cw + 1))
        c = a[y:y + ch, x:x + cw]
        return c[:, ::-1] if r.random() < 0.5 else c


def _processing_and_field(unit: np.ndarray, r: np.random.Generator) -> np.ndarray:
    """Another hospital's processing and field of view on a (160, 160) uint8 unit: histogram
    equalisation, edge enhancement, a steeper or flatter curve, a wider field (the chest smaller in
    a dark surround), collimator bands on two sides. Without these the check learnt the training
    hospital's look: a 30%-wider field made 70% of the validation children "not a child" and let
    6% of never-seen NIH adults through as children (with them: 2% and 2%)."""
    im = Image.fromarray(np.ascontiguousarray(unit))
    if r.random() < 0.15:
        im = ImageOps.equalize(im)
    if r.random() < 0.15:
        im = im.filter(ImageFilter.UnsharpMask(radius=float(r.uniform(1.5, 4)), percent=int(r.integers(50, 160)),
                                               threshold=0))
    a = np.asarray(im, np.float32) / 255
    u = r.random()
    if u < 0.1:
        a = 1 / (1 + np.exp(-r.uniform(5, 10) * (a - 0.5)))
    elif u < 0.2:
        a = 0.5 + 0.55 * np.tanh(r.uniform(1.2, 2.0) * (a - 0.5))
    if r.random() < 0.2:
        f, (h, w) = r.uniform(1.1, 1.5), a.shape
        out = np.full((int(h * f), int(w * f)), float(np.percentile(a, r.uniform(0, 5))), np.float32)
        y0, x0 = int(r.integers(0, out.shape[0] - h + 1)), int(r.integers(0, out.shape[1] - w + 1))
        out[y0:y0 + h, x0:x0 + w] = a
        a = np.asarray(Image.fromarray((out * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32) / 255
    if r.random() < 0.15:
        (h, w), val = a.shape, float(r.choice([1.0, 1.0, 0.0]))
        b = int(w * r.uniform(0.04, 0.12))
        if r.random() < 0.5:
            a[:, :b], a[:, w - b:] = val, val
        else:
            a[:b], a[h - b:] = val, val
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def augment(unit: np.ndarray, r: np.random.Generator, size: int = GATE_SPEC.input_size) -> np.ndarray:
    """A (160, 160) uint8 unit -> (size, size) float32 in [0, 1], shifted the way other hospitals'
    images differ: processing and field of view (:func:`_processing_and_field`), crop and aspect,
    rotation, flip, blur, resolution, JPEG, gamma, contrast, brightness, noise, collimation bands."""
    unit = _processing_and_field(unit, r)
    h = unit.shape[0]
    area, ratio = r.uniform(0.55, 1.0), float(np.exp(r.uniform(np.log(0.75), np.log(1.33))))
    ch, cw = int(min(h, round(h * np.sqrt(area / ratio)))), int(min(h, round(h * np.sqrt(area * ratio))))
    y, x = int(r.integers(0, h - ch + 1)), int(r.integers(0, h - cw + 1))
    im = Image.fromarray(np.ascontiguousarray(unit[y:y + ch, x:x + cw]))
    if r.random() < 0.7:
        im = im.rotate(r.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=int(r.choice([0, 0, 255])))
    if r.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if r.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(r.uniform(0.3, 1.5)))
    if r.random() < 0.3:
        s = int(r.integers(32, 96))
        im = im.resize((s, s), Image.BILINEAR)
    if r.random() < 0.3:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(r.integers(15, 90)))
        im = Image.open(buf)
    v = np.asarray(im.resize((size, size), Image.BILINEAR), np.float32) / 255
    v = np.clip(v, 0, 1) ** float(np.exp(r.normal(0, 0.3)))
    v = np.clip((v - 0.5) * r.uniform(0.7, 1.3) + 0.5 + r.normal(0, 0.07), 0, 1)
    if r.random() < 0.3:
        v = np.clip(v + r.normal(0, r.uniform(0.01, 0.06), v.shape), 0, 1)
    if r.random() < 0.2:
        b, val, side = int(r.integers(2, size // 6)), float(r.choice([0.0, 1.0])), int(r.integers(4))
        (v[:b] if side == 0 else v[-b:] if side == 1 else v[:, :b] if side == 2 else v[:, -b:])[...] = val
    return v.astype(np.float32)


@dataclass(frozen=True)
class GateConfig:
    epochs: int = 8
    per_epoch: int = 2560
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.15  # of the children's patients
    child_pass: float = 0.99  # the share of validation children that must pass: sets child_min
    #: child_min is never below this: a child must be clearly the likeliest reading. The 1% quantile
    #: alone fell to 0.31-0.36 in three of four trainings and in one let 8.5% of never-seen NIH adults
    #: through as children (seed 1); with the floor 3.8%, for about 0.4% fewer validation children scored
    child_min_floor: float = 0.7
    name: str = "cxr_viewer intended-use check"
    version: str = "1"
    hold_out_adults: tuple[str, ...] = ()  # sources left out of training (cross-source validation)
    hold_out_others: tuple[str, ...] = ()  # other folders / generated kinds left out
    input_size: int = GATE_SPEC.input_size  # the gate's square input, px
    width: int = 32  # GateNet's first-stage channels (64: torchvision's ResNet18; 32: a quarter of its work)


def _split(data: GateData, cfg: GateConfig) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(cfg.seed)
    kids = np.unique(data.groups[data.kinds == "child"])
    r.shuffle(kids)
    val_groups = set(kids[: int(len(kids) * cfg.val_fraction)])
    val = (data.kinds == "child") & np.isin(data.groups, list(val_groups))
    held = np.isin(data.sources, list(cfg.hold_out_adults) + list(cfg.hold_out_others))
    return ~val & ~held, val


def train_gate(data: GateData, cfg: GateConfig, out: str | None = None,
               cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, tuple[Gate, dict]]:
    """Train the gate; returns it (saved to ``out`` when given) and its validation report."""
    torch.manual_seed(cfg.seed)
    r = np.random.default_rng(cfg.seed)
    train, val = _split(data, cfg)
    pools = {k: np.where(train & (data.kinds == k))[0] for k in ("child", "adult", "other")}
    if not len(pools["child"]) or not len(pools["adult"]):
        raise ValueError("the gate needs children's and adults' radiographs to train on")
    if not 8 <= cfg.width <= 256:
        raise ValueError(f"the image check's width must be from 8 to 256 channels (not {cfg.width})")
    if val.sum() < MIN_VALIDATION_CHILDREN:
        raise ValueError(f"the image check sets its threshold on validation children ({cfg.val_fraction:.0%} of the "
                         f"children's patients): {int(val.sum())} here, at least {MIN_VALIDATION_CHILDREN} are needed; "
                         "give it more children's images")
    gen_kinds = [k for k in Negatives.KINDS if k not in cfg.hold_out_others]
    negatives = Negatives(r, gen_kinds)
    net = GateNet(cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = cfg.per_epoch // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    spec = PreprocessSpec(input_size=cfg.input_size, channels=1)
    size = spec.input_size
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        xs, ys = [], []
        for _ in range(steps_per_epoch * cfg.batch_size):
            c = int(r.choice(4, p=[0.32, 0.32, 0.28, 0.08]))
            if c == 2 and (r.random() < 0.6 or not len(pools["other"])):
                unit = negatives.make()
            elif c == 3:
                pool = pools["child" if r.random() < 0.5 else "adult"]
                unit = 255 - data.units[pool[int(r.integers(len(pool)))]]
            else:
                pool = pools[("child", "adult", "other")[c]]
                unit = data.units[pool[int(r.integers(len(pool)))]]
            xs.append(augment(unit, r, size))
            ys.append(c)
        x = torch.from_numpy((np.stack(xs)[:, None] - spec.mean) / spec.std)
        y = torch.from_numpy(np.array(ys))
        net.train()
        total = 0.0
        for i in range(steps_per_epoch):
            cancel.raise_if_cancelled()
            j = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(net(x[j]).float(), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
        yield Progress("epoch", epoch + 1, cfg.epochs,
                           f"loss {total / steps_per_epoch:.3f}, {time.perf_counter() - t0:.0f} s")
    net.eval()
    meta = GateMeta(cfg.name, cfg.version, spec, child_min=0.5, adult_min=0.5, width=cfg.width,
                    training={"epochs": cfg.epochs, "images_per_epoch": steps_per_epoch * cfg.batch_size,
                              "seed": cfg.seed, "counts": {k: int(len(v)) for k, v in pools.items()},
                              "generated_negatives": gen_kinds, "held_out": list(cfg.hold_out_adults)
                              + list(cfg.hold_out_others)})
    gate = Gate(net, meta, out or "")
    yield Progress("validation", 0, 1)
    report = validate_gate(gate, data, val, cfg)
    meta.child_min = report["child_min"]
    meta.metrics = report
    if out:
        gate.save(out)
    return gate, report


def _units_to_input(units: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(u).resize((size, size), Image.BILINEAR), np.float32) / 255
                     for u in units])


def _probs(gate: Gate, units: np.ndarray) -> np.ndarray:
    """(N, 4) class probabilities of (N, 160, 160) uint8 units, 128 at a time."""
    out = []
    for i in range(0, len(units), 128):
        v = gate.classify_units(_units_to_input(units[i:i + 128], gate.meta.preprocessing.input_size))
        out += [[p.probabilities[c] for c in GATE_CLASSES] for p in v]
    return np.array(out).reshape(-1, len(GATE_CLASSES))


def _labels(gate: Gate, probs: np.ndarray) -> list[str]:
    return [v.label for v in gate.verdicts_from(probs)]


def _shifted_units(units: np.ndarray, seed: int = 0, per_image: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 units changed the way another hospital's images differ (``training.shift``,
    ``per_image`` shifts drawn per unit): the shift-mimicking validation of the checks."""
    from cxr_viewer.training.shift import shifted_set

    spec = PreprocessSpec(input_size=units.shape[-1], channels=1)
    out, _src, names = run_to_completion(shifted_set(units.astype(np.float32) / 255, spec, per_image, seed))
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8), np.array(names)


def validate_gate(gate: Gate, data: GateData, val: np.ndarray, cfg: GateConfig) -> dict:
    """child_min from the validation children as they are and shifted the way another hospital's
    images differ (``child_pass`` of them all pass, but never below ``child_min_floor``); what each
    source and each generated kind would see. Held-out sources are reported separately: they are
    the honest estimate for a new hospital."""
    shifted_units, shift_names = _shifted_units(data.units[val], seed=cfg.seed)
    kids = _probs(gate, np.concatenate([data.units[val], shifted_units]))
    quantile = float(np.quantile(kids[:, 0], 1 - cfg.child_pass))
    child_min = float(np.clip(max(quantile, cfg.child_min_floor), 0.05, 0.95))
    gate.meta.child_min = child_min
    report: dict = {"child_min": round(child_min, 4), "child_min_quantile": round(quantile, 4),
                    "child_min_floor": cfg.child_min_floor, "validation_children": int(val.sum()),
                    "child_min_chosen_on": f"the validation children as they are and {len(shifted_units)} shifted "
                                           "copies (training.shift)"}

    def verdicts(units):
        return _labels(gate, _probs(gate, units))

    n = int(val.sum())  # the children's labels come from the probabilities above: no second pass
    labels = np.array(_labels(gate, kids))
    report["validation_children_scored"] = round(float(np.mean(labels[:n] == "child")), 4)
    labels = labels[n:]
    report["shifted_validation_children_scored"] = {
        name: round(float(np.mean(labels[shift_names == name] == "child")), 4) for name in sorted(set(shift_names))}
    train, _ = _split(data, cfg)
    for source in sorted(set(data.sources[data.kinds != "child"])):
        m = (data.sources == source) & (data.kinds != "child")
        labels = verdicts(data.units[m])
        key = ("held_out_" if source in cfg.hold_out_adults + cfg.hold_out_others else "train_") + source
        report[key] = {"images": int(m.sum()), "refused_by_child_head": round(float(np.mean(
            [lab != "child" for lab in labels])), 4), "labels": {c: labels.count(c) for c in sorted(set(labels))}}
    r = np.random.default_rng(12345)
    gen = Negatives(r)
    for kind in Negatives.KINDS:
        labels = verdicts(np.stack([gen.make(kind) for _ in range(40)]))
        key = ("held_out_generated_" if kind in cfg.hold_out_others else "generated_") + kind
        report[key] = {"images": 40, "refused": round(float(np.mean([lab in ("other", "inverted", "unsure")
                                                                       for lab in labels])), 4)}
    inv = verdicts(255 - data.units[val][:200])
    report["inverted_validation_children_refused"] = round(float(np.mean([lab != "child" for lab in inv])), 4)
    return report


def _distance_features(scorer, paths: Sequence[str], shifts_per_image: int, what: str, rng: np.random.Generator,
                       cancel: CancelToken) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """The model's pooled features along the real scoring path (each file decoded and preprocessed
    as for a score), then of the same units shifted ``shifts_per_image`` times (``training.shift``);
    returns (features, the shift's name per row: "none" for the images as they are)."""
    from cxr_viewer.ai.preprocess import preprocess_unit, standardise
    from cxr_viewer.training.shift import SHIFTS, shifted, whole_spec

    spec = scorer.meta.preprocessing
    whole = whole_spec(spec)  # the shifts change whole images; a lung box and equalisation come after
    names = list(SHIFTS)
    feats, kinds = [], []
    for i in range(0, len(paths), 32):
        cancel.raise_if_cancelled()
        units, wholes = [], []
        for p in paths[i:i + 32]:
            image = open_image(str(p))
            units.append(preprocess_unit(image.values, image.monochrome1, image.padding, spec, scorer.anatomy))
            wholes.append(units[-1] if whole == spec else
                          preprocess_unit(image.values, image.monochrome1, image.padding, whole))
        rows, row_kinds = list(units), ["none"] * len(units)
        for u in wholes:
            for name in rng.choice(names, size=shifts_per_image, replace=False):
                rows.append(shifted(u, str(name), spec, int(rng.integers(1 << 30)), scorer.anatomy))
                row_kinds.append(str(name))
        for j in range(0, len(rows), 32):
            feats.append(scorer.pooled_features(standardise(np.stack(rows[j:j + 32]), spec)))
        kinds += row_kinds
        yield Progress(f"features of {what}", i, len(paths))
    return np.concatenate(feats), np.array(kinds)


def fit_distance_on(scorer, train_paths: Sequence[str], val_paths: Sequence[str], val_pass: float = 0.99,
                    rng: np.random.Generator | None = None, cancel: CancelToken = NEVER_CANCELLED
                    ) -> Generator[Progress, None, FeatureDistance]:
    """The feature distance fitted on ``train_paths`` (each image as it is and once shifted), its
    threshold letting ``val_pass`` of ``val_paths`` through (as they are and three shifts each)."""
    from cxr_viewer.training.shift import SHIFTS

    rng = rng if rng is not None else np.random.default_rng(0)
    ftrain, _ = yield from _distance_features(scorer, train_paths, 1, "the training children", rng, cancel)
    fval, val_kinds = yield from _distance_features(scorer, val_paths, 3, "the validation children", rng, cancel)
    fd = FeatureDistance.fit(ftrain, scorer.meta.weights_sha256,
                             fitted_on={"children_train": int(len(train_paths)),
                                        "children_validation": int(len(val_paths)),
                                        "shifted": "each training child once, each validation child three times "
                                                   "(training.shift)"})
    dist = fd.distance(fval)
    fd.threshold = float(np.quantile(dist, val_pass))
    fd.fitted_on["validation_pass"] = val_pass
    fd.fitted_on["validation_children_passed"] = {
        k: round(float((dist[val_kinds == k] <= fd.threshold).mean()), 4) for k in ["none", *SHIFTS]
        if (val_kinds == k).any()}
    return fd


def fit_feature_distance(scorer, data: GateData, val_pass: float = 0.99, cfg: GateConfig | None = None,
                         cancel: CancelToken = NEVER_CANCELLED) -> Generator[Progress, None, FeatureDistance]:
    """Fit the scoring model's feature distance on the children's training part, each image as it
    is and once shifted the way another hospital's images differ (``training.shift``); its threshold
    lets ``val_pass`` of the validation children through, as they are and shifted (three shifts
    each). Fitted on unshifted children only, the distance called 95% of the validation children
    "unlike the training images" once their field of view was 30% wider, 16% once rotated by 6
    degrees: another hospital's children would have been refused as out of distribution.
    The other sets of ``data`` (adults, not radiographs) are measured: the share each refuses."""
    cfg = cfg or GateConfig()  # the image check's own split: the same validation children for both
    train, val = _split(data, cfg)
    kids_train = np.where(train & (data.kinds == "child"))[0]
    kids_val = np.where(val)[0]
    r = np.random.default_rng(cfg.seed)
    fd = yield from fit_distance_on(scorer, data.paths[kids_train], data.paths[kids_val], val_pass, r, cancel)
    for source in sorted(set(data.sources[data.kinds != "child"])):
        idx = np.where((data.sources == source) & (data.kinds != "child"))[0]
        f, _ = yield from _distance_features(scorer, data.paths[idx], 0, source, r, cancel)
        fd.fitted_on[f"refused_{source}"] = round(float((fd.distance(f) > fd.threshold).mean()), 4)
    return fd
