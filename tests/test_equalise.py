"""Histogram equalisation as the model's intensity normalisation (``PreprocessSpec.intensity``):
invariant to monotone grey-scale changes, stored only when used, and the same in training
(augmentation ends with it), the shifted validation and scoring; the image check keeps its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_data import tiny_kaggle_root

from cxr_viewer.ai.model import ModelFileError, _preprocessing_from_doc, read_meta
from cxr_viewer.ai.preprocess import PreprocessSpec, equalise, preprocess_unit
from cxr_viewer.common.tasks import run_to_completion


def _chest_like(n: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    return (1000 + 800 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 5 * xx + 3 * yy).astype(np.float32)


def test_equalisation_is_blind_to_exposure_gamma_and_processing_curves():
    spec = PreprocessSpec(input_size=64, intensity="equalize")
    raw = _chest_like()
    base = preprocess_unit(raw, spec=spec)
    assert base.dtype == np.float32 and 0.0 <= base.min() and base.max() <= 1.0
    assert base.mean() == pytest.approx(0.5, abs=0.02)  # a flat histogram
    x01 = (raw - raw.min()) / (raw.max() - raw.min())
    for changed in (raw * 3.0 + 500, x01 ** 1.8, 1 / (1 + np.exp(-8 * (x01 - 0.5))), np.sqrt(x01)):
        assert np.abs(preprocess_unit(changed.astype(np.float32), spec=spec) - base).mean() < 0.01
    # the percentile window alone is not: a gamma moves the mid-tones
    plain = PreprocessSpec(input_size=64)
    assert np.abs(preprocess_unit((x01 ** 1.8).astype(np.float32), spec=plain) - preprocess_unit(raw, spec=plain)).mean() > 0.05


def test_padding_does_not_count_and_stays_black():
    img = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    pad = np.zeros((10, 10), bool)
    pad[:, :5] = True
    out = equalise(img, pad)
    assert out[:, 5:].min() > 0.0 and out[:, 5:].max() < 1.0
    assert out[:, 5:].mean() == pytest.approx(0.5, abs=0.02)  # equalised over the unpadded half only
    unit = preprocess_unit(img * 1000, padding=pad, spec=PreprocessSpec(input_size=10, intensity="equalize"))
    assert (unit[pad] == 0).all() and unit[:, 5:].mean() == pytest.approx(0.5, abs=0.03)


def test_equalisation_happens_at_the_models_size_as_on_the_training_images():
    """Training images are 224 px: equalised at 224. A 2,000 px image is resized first, then
    equalised at 224, the way the training images were made (and 50x cheaper than at full size)."""
    from cxr_viewer.ai.preprocess import normalise_intensity, resize_square

    big = _chest_like(896)
    spec = PreprocessSpec(input_size=64, intensity="equalize")
    expected = equalise(resize_square(normalise_intensity(big, False, None, spec), 64))
    assert np.allclose(preprocess_unit(big, spec=spec), expected, atol=1e-6)


def test_the_intensity_is_stored_only_when_it_is_equalisation():
    assert "intensity" not in PreprocessSpec().to_dict()
    doc = PreprocessSpec(intensity="equalize").to_dict()
    assert doc["intensity"] == "equalize"
    assert _preprocessing_from_doc(doc).intensity == "equalize"
    with pytest.raises(ModelFileError, match="intensity"):
        _preprocessing_from_doc({**doc, "intensity": "clahe"})
    # version 2 marks a pipeline that readers knowing only version 1 must refuse, not half-follow
    assert doc["version"] == 2 and PreprocessSpec().to_dict()["version"] == 1
    assert PreprocessSpec(crop="lungs").to_dict()["version"] == 2
    with pytest.raises(ModelFileError, match="version"):
        _preprocessing_from_doc({**doc, "version": 3})


def test_augmentation_ends_equalised_for_an_equalising_model():
    from cxr_viewer.training.engine import Augment

    x = torch.from_numpy(preprocess_unit(_chest_like(), spec=PreprocessSpec(input_size=64)).copy())[None]
    for strength in ("standard", "strong"):
        out = Augment(64, strength, equalize=True)(x.clone())
        assert out.shape == (1, 64, 64) and out.dtype == torch.float32
        assert float(out.mean()) == pytest.approx(0.5, abs=0.08)
        assert torch.allclose(out, torch.from_numpy(equalise(out[0].numpy()))[None], atol=2e-3)  # already equalised


def test_an_equalising_model_is_trained_and_scored_through_the_same_preprocessing(shared_data, tmp_path):
    from test_training import tiny_config

    from cxr_viewer.ai.inference import Scorer, model_gate_box
    from cxr_viewer.io.image import open_image
    from cxr_viewer.training.data import PreprocessCache
    from cxr_viewer.training.engine import train

    root = tiny_kaggle_root(shared_data, tmp_path / "data", per_class=8, with_test=False)
    cfg = tiny_config(root, tmp_path / "m.safetensors", intensity="equalize", augment_strength="strong",
                      select_on="shifted", epochs=1)
    done = run_to_completion(train(cfg))
    meta = read_meta(done.model_path)
    assert meta.preprocessing.intensity == "equalize"
    scorer = Scorer.from_file(done.model_path, "cpu", "fp32")
    png = next((root / "train" / "NORMAL").iterdir())
    image = open_image(str(png))
    x, unit, box = model_gate_box(image, scorer)
    cached = PreprocessCache(None, meta.preprocessing).load(str(png))
    assert box is None
    assert np.allclose(x[0] * meta.preprocessing.std + meta.preprocessing.mean, cached, atol=1e-5)
    gate = scorer.checks.gate
    assert gate.meta.preprocessing.intensity == "percentile"  # the image check reads images as it was trained
    assert np.allclose(unit, gate.unit(image.values, image.monochrome1, image.padding), atol=1e-6)
    assert scorer.score(image, heatmaps=True, score_anyway=True).head("pneumonia").available

    # fine-tuning it (the training dialog's "Current model") keeps equalising unless told otherwise
    from cxr_viewer.training.engine import preprocessing_for

    again = tiny_config(root, tmp_path / "m2.safetensors", init=done.model_path)
    assert preprocessing_for(again).intensity == "equalize"
    assert preprocessing_for(tiny_config(root, tmp_path / "m3.safetensors", init=done.model_path,
                                         intensity="percentile")).intensity == "percentile"
    assert preprocessing_for(tiny_config(root, tmp_path / "m4.safetensors")).intensity == "percentile"
