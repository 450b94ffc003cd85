"""The anatomy model (lungs, heart, cardiothoracic ratio): measurements, model files, the shipped model
on real images, and the training task on real JSRT images and SCR masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.ai.anatomy import (
    STRUCTURES,
    AnatomyMeta,
    AnatomyModel,
    AnatomyNet,
    CtrMeasurement,
    clean_masks,
    default_anatomy_path,
    measure_ctr,
)
from cxr_viewer.ai.model import ModelFileError, sidecar_path
from cxr_viewer.ai.preprocess import PreprocessSpec
from cxr_viewer.common.tasks import run_to_completion

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "anatomy.safetensors"


def _box(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_ctr_is_the_widest_heart_over_the_widest_inner_thorax():
    shape = (200, 200)
    right = _box(shape, 40, 160, 20, 90)  # image left: the patient's right lung
    left = _box(shape, 50, 170, 110, 185)
    right[150:160, 10:20] = True  # the widest thorax is lower down, where both lungs are present
    heart = _box(shape, 100, 150, 70, 130)
    heart[120, 60:70] = True  # one row reaches further
    c = measure_ctr(right, left, heart)
    assert c.heart_width == 70 and c.heart[0][1] == 120  # from x=60 to x=130, drawn at its widest row
    assert c.thorax_width == 175 and c.thorax[0][0] == 10 and c.thorax[0][1] >= 150
    assert c.ratio == pytest.approx(70 / 175)
    assert measure_ctr(right, np.zeros(shape, bool), heart) is None
    # the user moves the heart line's ends: only horizontal extents count
    moved = c.with_lines(heart=((65, 118), (125, 121)))
    assert moved.corrected and moved.ratio == pytest.approx(60 / 175) and not c.corrected


def test_clean_masks_keep_the_largest_piece_and_fill_holes():
    m = np.zeros((3, 50, 50), bool)
    m[0, 5:30, 5:30] = True
    m[0, 15, 15] = False  # a hole
    m[0, 40:42, 40:42] = True  # a speck
    out = clean_masks(m)
    assert out[0, 15, 15] and not out[0, 41, 41] and not out[1].any()


def _tiny(tmp_path: Path) -> Path:
    path = tmp_path / "a.safetensors"
    meta = AnatomyMeta("tiny", "1", preprocessing=PreprocessSpec(input_size=64, channels=1), base=4, depth=3)
    AnatomyModel(AnatomyNet(4, 3), meta).save(str(path))
    return path


def test_model_file_round_trip_and_refusals(tmp_path):
    path = _tiny(tmp_path)
    model = AnatomyModel.from_file(str(path))
    values = np.random.default_rng(0).random((90, 70)).astype(np.float32)
    a = model.segment(values)
    assert a.masks.shape == (len(STRUCTURES), 90, 70) and a.masks.dtype == bool
    # tampered weights, a wrong description, a missing file: one-line refusals, never a pickle
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(bytes(data))
    Path(sidecar_path(str(bad))).write_text(Path(sidecar_path(str(path))).read_text())
    with pytest.raises(ModelFileError, match="SHA-256"):
        AnatomyModel.from_file(str(bad))
    doc = json.loads(Path(sidecar_path(str(path))).read_text())
    for key, value in (("threshold", 1.5), ("structures", ["heart"]), ("depth", 1), ("format", "x")):
        wrong = dict(doc, **{key: value})
        Path(sidecar_path(str(bad))).write_text(json.dumps(wrong))
        with pytest.raises(ModelFileError) as err:
            AnatomyModel.from_file(str(bad))
        assert "\n" not in str(err.value)
    with pytest.raises(ModelFileError, match="not found"):
        AnatomyModel.from_file(str(tmp_path / "none.safetensors"))


needs_model = pytest.mark.skipif(not SHIPPED.exists(), reason="models/anatomy.safetensors is not in this checkout")


@needs_model
def test_shipped_model_outlines_lungs_and_heart_on_the_bundled_samples():
    """The bundled child (Kermany) and adult (NIH DICOM) samples: either two lungs either side of a
    heart and a CTR in the range seen in people (0.3-0.7), or no CTR and a reason (the pneumonia
    sample's consolidation whitens its left lung, which the model then outlines only in part).
    Not a Dice check: these images have no reference masks."""
    from cxr_viewer.io.image import open_image

    model = AnatomyModel.from_file(default_anatomy_path())
    samples = sorted((REPO / "resources" / "samples").rglob("*.*"))
    images = [p for p in samples if p.suffix.lower() in (".png", ".jpeg", ".jpg", ".dcm")]
    assert images
    with_ctr = []
    for p in images:
        image = open_image(str(p))
        a = model.segment_image(image)
        h, w = image.values.shape[:2]
        assert a.masks.shape[1:] == (h, w)
        if a.ctr is None:
            assert a.ctr_note, p.name
            continue
        right, left, heart = a.masks
        assert right.sum() > 0.03 * h * w and left.sum() > 0.03 * h * w, p.name
        cx = lambda m: np.nonzero(m)[1].mean()  # noqa: E731
        assert cx(right) < cx(heart) < cx(left), p.name
        assert 0.3 < a.ctr.ratio < 0.7, (p.name, a.ctr)
        with_ctr.append(p.name)
    assert any("NORMAL" in str(p) or "normal" in str(p).lower() for p in images if p.name in with_ctr)
    assert any(p.suffix.lower() == ".dcm" for p in images if p.name in with_ctr)


@needs_model
def test_shipped_model_card_reports_cross_validated_dice_and_ctr():
    doc = json.loads(Path(sidecar_path(str(SHIPPED))).read_text())
    cv = doc["metrics"]
    assert cv["images"] == 247
    assert cv["dice_lungs"]["mean"] >= 0.95 and cv["dice_heart"]["mean"] >= 0.90
    assert cv["ctr_abs_error"]["mean"] <= 0.03
    assert "research" in doc["training"]["data"].lower()


def test_training_task_learns_on_real_jsrt_masks(shared_data, tmp_path):
    """Two folds of a few epochs on 24 real JSRT images at 64 px: the pipeline runs end to end,
    measures Dice at the masks' own 1024 px, and writes a loadable model."""
    from cxr_viewer.training import anatomy as ta

    jsrt = shared_data / "jsrt"
    if not (jsrt / "masks" / "heart").is_dir():
        pytest.skip("../shared/data/jsrt/masks is missing")
    data = run_to_completion(ta.load_jsrt(str(jsrt), size=64))
    keep = np.arange(24)
    small = ta.AnatomyData([data.ids[i] for i in keep], data.units[keep], data.targets[keep], data.folder, data.spec)
    cfg = ta.AnatomyConfig(epochs=12, batch_size=4, base=8, depth=4, folds=2, lr=5e-3)
    summary, rows = run_to_completion(ta.cross_validate(small, cfg))
    assert summary["images"] == 24 and len(rows) == 24
    assert summary["dice_lungs"]["mean"] > 0.5  # learning, not chance, after a few epochs
    assert all(0 <= r["dice_heart"] <= 1 for r in rows)


@needs_model
def test_heatmap_share_in_the_lungs_is_measured_on_real_pneumonia_images(shared_data, tmp_path):
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.training.data import Sample
    from cxr_viewer.training.evaluation import heatmap_lung_share_task

    files = sorted((shared_data / "kermany" / "train" / "PNEUMONIA").iterdir())[:6]
    normals = sorted((shared_data / "kermany" / "train" / "NORMAL").iterdir())[:2]
    samples = [Sample(str(p), (1, None), p.stem, "PNEUMONIA") for p in files] + \
        [Sample(str(p), (0, None), p.stem, "NORMAL") for p in normals]
    scorer = Scorer.from_file(default_model_path(), "cpu", "fp32")
    doc = run_to_completion(heatmap_lung_share_task(scorer, AnatomyModel.from_file(str(SHIPPED)), samples))
    assert doc["images"] == 6  # the positives only
    assert 0.0 <= doc["mean_share_in_lungs"] <= 1.0 and 0.1 < doc["lung_area_fraction"] < 0.7
    # a 7 x 7 heatmap lighting both lungs evenly scores well above an evenly spread one, short of 1
    assert doc["lung_area_fraction"] + 0.1 < doc["lung_shaped_heatmap_share"] < 0.95


def test_lung_shaped_heatmap_share_measures_a_coarse_heatmap_of_the_lungs_themselves():
    from cxr_viewer.training.evaluation import _lung_shaped_share

    assert _lung_shaped_share(np.ones((224, 224), bool), 224) == pytest.approx(1.0)
    assert np.isnan(_lung_shaped_share(np.zeros((224, 224), bool), 224))
    lungs = np.zeros((224, 224), bool)
    lungs[:, :112] = True  # half the image, on the 7 x 7 grid's cell borders at 3.5 cells: blurred over
    share = _lung_shaped_share(lungs, 224)
    assert 0.5 < share < 1.0
    thin = np.zeros((224, 224), bool)
    thin[100:110, 20:200] = True  # a strip thinner than one cell: the coarse heatmap spills far outside
    assert _lung_shaped_share(thin, 224) < share


def test_no_ctr_from_implausible_outlines():
    """A lung outlined only in part (a consolidation whitens it) or a heart barely found must not
    give a confident ratio: there is none, and the reason says why."""
    from cxr_viewer.ai.anatomy import ctr_problem

    shape = (200, 200)
    right = _box(shape, 40, 160, 20, 90)
    left = _box(shape, 50, 170, 110, 185)
    heart = _box(shape, 100, 150, 70, 130)
    masks = np.stack([right, left, heart])
    assert ctr_problem(masks, measure_ctr(*masks)) is None
    partial = np.stack([right, _box(shape, 50, 80, 150, 185), heart])
    assert "much smaller" in ctr_problem(partial, measure_ctr(*partial))
    tiny_heart = np.stack([right, left, _box(shape, 120, 125, 95, 100)])
    assert "implausible" in ctr_problem(tiny_heart, measure_ctr(*tiny_heart))
    assert "not found" in ctr_problem(masks, None)


@needs_model
def test_lung_guidance_trains_on_the_cleaned_outlines_the_heatmap_share_is_measured_on():
    """`train --lung-guidance` finds each training image's lungs with the same function as the
    viewer and `evaluate --heatmap-in-lungs` (each lung its largest part, holes filled)."""
    from scipy import ndimage

    from cxr_viewer.ai.preprocess import normalise_intensity, resize_square
    from cxr_viewer.io.image import open_image
    from cxr_viewer.training.engine import lung_masks

    model = AnatomyModel.from_file(default_anatomy_path())
    paths = sorted(p for p in (REPO / "resources" / "samples").rglob("*") if p.suffix.lower() in (".png", ".jpeg"))
    assert paths
    units = []
    for p in paths:
        image = open_image(str(p))
        norm = normalise_intensity(image.values, image.monochrome1, image.padding, PreprocessSpec())
        units.append(np.rint(resize_square(norm, 96) * 65535.0).astype(np.uint16))
    masks = run_to_completion(lung_masks(np.stack(units), model, batch=2))
    assert masks.shape == (len(paths), 96, 96) and masks.dtype == np.uint8
    expected = model.lungs_of_units(np.stack(units).astype(np.float32) / 65535.0, 96)
    assert np.array_equal(masks.astype(bool), expected)
    for m in masks.astype(bool):
        assert 0.05 < m.mean() < 0.6 and ndimage.label(m)[1] <= 2 and np.array_equal(ndimage.binary_fill_holes(m), m)
