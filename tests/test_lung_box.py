"""The lung box as the pneumonia model's input (``PreprocessSpec.crop="lungs"``): one preprocessing
for training, shifted validation and scoring, the heatmap put back where the box lies, and a model
refused without the anatomy model it was trained with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from training_data import tiny_kaggle_root

from cxr_viewer.ai.model import ModelFileError, _preprocessing_from_doc, read_meta
from cxr_viewer.ai.preprocess import (
    LungBox,
    PreprocessSpec,
    lung_box,
    map_over_image,
    resize_square,
    unit_and_box,
)
from cxr_viewer.common.tasks import run_to_completion


def test_the_crop_is_stored_only_when_used_and_only_the_scoring_model_may_read_the_lung_box():
    assert "crop" not in PreprocessSpec().to_dict()  # a whole-image model's file reads as before
    spec = PreprocessSpec(crop="lungs", crop_pad=0.08)
    doc = spec.to_dict()
    assert doc["crop"] == "lungs" and doc["crop_pad"] == 0.08
    assert _preprocessing_from_doc(doc, crops=("none", "lungs")) == spec
    assert _preprocessing_from_doc({}).crop == "none"
    with pytest.raises(ModelFileError, match="crop"):
        _preprocessing_from_doc(doc)  # the image check and the anatomy model read whole images
    with pytest.raises(ModelFileError, match="crop"):
        _preprocessing_from_doc({**doc, "crop": "heart"}, crops=("none", "lungs"))
    with pytest.raises(ModelFileError, match="crop_pad"):
        _preprocessing_from_doc({**doc, "crop_pad": 0.9}, crops=("none", "lungs"))


def test_the_unit_is_the_padded_lung_box_stretched_again_and_the_whole_image_without_lungs():
    h, w = 200, 300
    yy, xx = np.mgrid[0:h, 0:w]
    img = (xx / w).astype(np.float32)  # a left-to-right ramp: where the crop comes from shows in its values
    lungs = np.zeros((h, w), bool)
    lungs[50:150, 100:200] = True  # a 100 px square of "lungs"
    spec = PreprocessSpec(input_size=64, crop="lungs", crop_pad=0.1)
    unit, box = unit_and_box(img, spec, lungs)
    assert box == LungBox(90.0, 40.0, 120.0, True)  # 100 px grown by 10% on each side, centred
    assert unit.shape == (64, 64) and unit.dtype == np.float32
    assert unit.min() == pytest.approx(0.0, abs=1e-6) and unit.max() == pytest.approx(1.0, abs=1e-6)  # stretched
    assert np.all(np.diff(unit[32]) >= -1e-6)  # still the ramp, left to right
    # no lungs found: the whole image, squared (black above and below), never a guess
    unit2, box2 = unit_and_box(img, spec, None)
    assert box2 == lung_box(None, (h, w)) and not box2.from_lungs and box2.side == w
    # a whole-image spec ignores the lungs
    whole = PreprocessSpec(input_size=64)
    u3, b3 = unit_and_box(img, whole, lungs)
    assert b3 is None and np.array_equal(u3, resize_square(img, 64))


def test_the_heatmap_of_the_box_lands_where_the_box_lies():
    cam = np.zeros((4, 4), np.float32)
    cam[0, 3] = 1.0  # the box's top-right cell
    out = map_over_image(cam, LungBox(100.0, 0.0, 100.0, True), (200, 200), 20)
    assert out.shape == (20, 20)
    assert out[:, :10].max() == 0 and out[10:].max() == 0  # outside the box: nothing
    hot = np.argwhere(out > 0)
    assert hot[:, 0].max() < 3 and hot[:, 1].min() >= 17  # the top-right quarter of the box


@pytest.fixture(scope="module")
def lung_model(shared_data, tmp_path_factory):
    """A tiny lung-box model trained on a few real Kermany images, its shifted copies chosen on."""
    from test_training import tiny_config

    from cxr_viewer.training.engine import train

    tmp = tmp_path_factory.mktemp("lungbox")
    root = tiny_kaggle_root(shared_data, tmp / "data", per_class=10, with_test=False)
    cfg = tiny_config(root, tmp / "m.safetensors", crop="lungs", select_on="shifted", input_size=64, epochs=1)
    done = run_to_completion(train(cfg))
    return root, cfg, Path(done.model_path)


def test_a_lung_box_model_is_trained_scored_and_heatmapped_through_the_same_preprocessing(lung_model):
    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
    from cxr_viewer.ai.inference import Scorer, model_gate_box
    from cxr_viewer.io.image import open_image
    from cxr_viewer.training.data import PreprocessCache

    root, cfg, path = lung_model
    meta = read_meta(str(path))
    anatomy = AnatomyModel.from_file(default_anatomy_path())
    assert meta.preprocessing.crop == "lungs"
    assert meta.training["anatomy_sha256"] == anatomy.meta.weights_sha256
    assert meta.metrics["validation"]["pneumonia"]["shifted_validation"]["all"]["n"] > 0

    scorer = Scorer.from_file(str(path), "cpu", "fp32")
    assert scorer.anatomy is not None
    png = next((root / "train" / "PNEUMONIA").iterdir())
    image = open_image(str(png))
    x, unit, box = model_gate_box(image, scorer)
    assert box is not None and box.from_lungs
    # the input scoring makes is the one training cached (the one preprocessing function)
    cached = PreprocessCache(None, meta.preprocessing, scorer.anatomy).load(str(png))
    assert np.allclose(x[0] * meta.preprocessing.std + meta.preprocessing.mean, cached, atol=1e-5)
    assert unit is not None and unit.shape == (scorer.checks.gate.meta.preprocessing.input_size,) * 2

    result = scorer.score(image, heatmaps=True, score_anyway=True)
    p = result.head("pneumonia")
    assert p.available and 0.0 <= p.probability <= 1.0
    heat = result.heatmaps["pneumonia"]
    hh, ww = image.values.shape[:2]
    s = heat.shape[0]
    xs = (np.arange(s) + 0.5) * ww / s
    ys = (np.arange(s) + 0.5) * hh / s
    outside = (xs[None, :] < box.x0) | (xs[None, :] >= box.x0 + box.side) | \
        (ys[:, None] < box.y0) | (ys[:, None] >= box.y0 + box.side)
    assert heat[outside].max(initial=0.0) == 0.0 and heat.max() > 0


def test_evaluation_shifts_the_whole_image_before_finding_the_lung_box(lung_model):
    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.training.evaluation import evaluate_shifted_task, heatmap_lung_share_task, select_samples
    from cxr_viewer.training.shift import SHIFTS

    root, _cfg, path = lung_model
    scorer = Scorer.from_file(str(path), "cpu", "fp32")
    samples, note = select_samples(str(root), "validation", scorer.meta.training)
    doc = run_to_completion(evaluate_shifted_task(scorer, samples, note))
    head = doc["heads"]["pneumonia"]
    assert head["shifted"]["all"]["n"] == len(SHIFTS) * head["validation"]["n"]
    share = run_to_completion(heatmap_lung_share_task(scorer, AnatomyModel.from_file(default_anatomy_path()), samples))
    assert share["images"] > 0 and 0.0 <= share["mean_share_in_lungs"] <= 1.0
    assert 0.05 < share["lung_area_fraction"] < 0.6  # measured on the whole image, like a whole-image model's


def test_a_lung_box_model_is_refused_without_its_anatomy_model(lung_model, tmp_path, monkeypatch):
    from cxr_viewer.ai.inference import Scorer

    _root, _cfg, path = lung_model
    copy = tmp_path / "m.safetensors"
    shutil.copy(path, copy)
    doc = json.loads(path.with_suffix(".json").read_text())
    doc["training"]["anatomy_sha256"] = "0" * 64
    copy.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="another anatomy model"):
        Scorer.from_file(str(copy), "cpu", "fp32")
    monkeypatch.setenv("CXR_VIEWER_ANATOMY", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelFileError, match="needs the anatomy model"):
        Scorer.from_file(str(path), "cpu", "fp32")


def test_the_lung_box_of_a_large_image_is_found_on_a_small_mask_and_scaled_back(shared_data):
    from PIL import Image

    from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path

    anatomy = AnatomyModel.from_file(default_anatomy_path())
    png = sorted((shared_data / "kermany" / "train" / "NORMAL").iterdir())[0]
    small = np.asarray(Image.open(png).convert("L"), np.float32)
    big = np.asarray(Image.fromarray(small).resize((small.shape[1] * 4, small.shape[0] * 4), Image.Resampling.BILINEAR))
    b_small = anatomy.lung_box(small, pad=0.1)
    b_big = anatomy.lung_box(big, pad=0.1)  # 896 px: masks at 256 px a side, then scaled
    assert b_small.from_lungs and b_big.from_lungs
    # the same box (up to a pixel or two of the small mask), in the big image's pixels
    assert b_big.side / 4 == pytest.approx(b_small.side, rel=0.03)
    assert b_big.x0 / 4 + b_big.side / 8 == pytest.approx(b_small.x0 + b_small.side / 2, abs=2)
    assert b_big.y0 / 4 + b_big.side / 8 == pytest.approx(b_small.y0 + b_small.side / 2, abs=2)
