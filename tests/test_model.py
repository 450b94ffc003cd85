"""Model files (safetensors + JSON, SHA-256 checked, no pickles), preprocessing, Grad-CAM, scoring."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import DEFAULT_MODEL, REPO, make_test_model

from cxr_viewer.ai.inference import Scorer, choose_device, cpu_supports_bf16, grad_cam
from cxr_viewer.ai.model import ModelFileError, load_model, sidecar_path
from cxr_viewer.ai.preprocess import PreprocessSpec, preprocess, preprocess_image
from cxr_viewer.io.image import open_image

SAMPLES = REPO / "resources" / "samples"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def test_roundtrip_and_metadata(model_path):
    model, meta = load_model(str(model_path))
    assert meta.trained_heads() == ["pneumonia"]
    assert meta.input_size == 64
    doc = json.loads(Path(sidecar_path(str(model_path))).read_text())
    for key in ("architecture", "heads", "classes", "input_size", "preprocessing", "weights_sha256", "training", "metrics"):
        assert key in doc
    assert doc["heads"]["pneumonia"]["threshold"] == 0.5 and doc["heads"]["pneumonia"]["temperature"] == 1.0
    assert not model.training


def _copy(model_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy.safetensors"
    dst.write_bytes(model_path.read_bytes())
    Path(sidecar_path(str(dst))).write_text(Path(sidecar_path(str(model_path))).read_text())
    return dst


def test_tampered_weights_fail_the_hash(model_path, tmp_path):
    p = _copy(model_path, tmp_path)
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(str(p))


def test_truncated_weights_fail(model_path, tmp_path):
    p = _copy(model_path, tmp_path)
    p.write_bytes(p.read_bytes()[: 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(str(p))


def test_pickle_is_refused_without_unpickling(tmp_path, monkeypatch):
    p = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(2)}, p)  # a zip-based pickle
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    with pytest.raises(ModelFileError, match="pickled"):
        load_model(str(p))
    p2 = tmp_path / "evil2.safetensors"
    p2.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(ModelFileError, match="pickled"):
        load_model(str(p2))
    assert not calls


def test_wrong_shapes_are_refused(model_path, tmp_path):
    p = _copy(model_path, tmp_path)
    side = Path(sidecar_path(str(p)))
    doc = json.loads(side.read_text())
    doc["head_hidden"] = 128  # the weights have 256
    side.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(str(p))


def test_missing_or_malformed_description(model_path, tmp_path):
    p = _copy(model_path, tmp_path)
    side = Path(sidecar_path(str(p)))
    side.write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot read the model description"):
        load_model(str(p))
    side.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_model(str(p))
    side.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ModelFileError, match="not a cxr_viewer model"):
        load_model(str(p))


def test_untrained_head_is_never_a_score(model_path):
    scorer = Scorer.from_file(str(model_path), "cpu")
    result = scorer.score(open_image(str(SAMPLES / "children_kermany" / "NORMAL" / "IM-0115-0001.jpeg")))
    lung = result.head("lung_cancer_association")
    assert not lung.available and lung.probability is None
    assert lung.reason == "not available: this model has no trained lung-cancer association head"
    assert "lung_cancer_association" not in result.heatmaps
    pneu = result.head("pneumonia")
    assert pneu.available and 0.0 <= pneu.probability <= 1.0
    heat = result.heatmaps["pneumonia"]
    assert heat.shape == (64, 64) and heat.dtype == np.float32 and 0.0 <= heat.min() and heat.max() <= 1.0


def test_grad_cam_matches_a_hand_computed_case():
    # feature map (1, 2 channels, 2 x 2); head: logit = 2*mean(A0) - 1*mean(A1)
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 8.0]]]])
    w = torch.tensor([2.0, -1.0])

    def head(fmap):
        return (fmap.mean(dim=(2, 3)) * w).sum(dim=1, keepdim=True)

    cam = grad_cam(a, head, 1)[0, 0].numpy()
    # d logit / d A_c(i,j) = w_c / 4, so alpha = (0.5, -0.25); cam = relu(0.5 A0 - 0.25 A1), then / max
    raw = np.maximum(0.5 * a[0, 0].numpy() - 0.25 * a[0, 1].numpy(), 0)
    assert np.allclose(cam, raw / raw.max())
    assert cam[0, 0] == 0.0  # 0.5 - 1.0 < 0 is cut by the ReLU


def test_monochrome1_is_fed_as_monochrome2(shared_data):
    import cxr_testdata as td

    siim = open_image(str(td.siim(shared_data)))
    fake = open_image(str(td.fake_mono1(shared_data)))
    assert fake.monochrome1 and not siim.monochrome1
    spec = PreprocessSpec()
    x_fake = preprocess_image(fake, spec)
    x_inverted_siim = preprocess(255.0 - siim.values, False, None, spec)
    assert np.allclose(x_fake, x_inverted_siim, atol=1e-4)
    assert x_fake.shape == (3, 224, 224) and x_fake.dtype == np.float32


def test_one_preprocessing_for_dicom_and_png(tmp_path):
    """The same pixels as an 8-bit PNG and as a DICOM give the same model input."""
    import cxr_testdata as td
    from PIL import Image

    png = SAMPLES / "children_kermany" / "NORMAL" / "IM-0117-0001.jpeg"
    pixels = np.asarray(Image.open(png).convert("L"))
    dcm = td.write_image(tmp_path / "same.dcm", pixels)
    a = preprocess_image(open_image(str(png)))
    b = preprocess_image(open_image(str(dcm)))
    assert np.array_equal(a, b)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 support: nothing to compare")
def test_bf16_and_fp32_scores_agree_on_real_images(tmp_path):
    path = DEFAULT_MODEL if DEFAULT_MODEL.exists() else make_test_model(tmp_path / "m.safetensors")
    s16 = Scorer.from_file(str(path), "cpu", "bf16")
    s32 = Scorer.from_file(str(path), "cpu", "fp32")
    assert s16.choice.precision == "bf16" and s32.choice.precision == "fp32"
    files = sorted(p for p in SAMPLES.rglob("*") if p.suffix in (".jpeg", ".dcm"))
    for f in files:
        img = open_image(str(f))
        p16 = s16.score(img, heatmaps=False, score_anyway=True).head("pneumonia").probability
        p32 = s32.score(img, heatmaps=False, score_anyway=True).head("pneumonia").probability
        assert abs(p16 - p32) < 0.02, (f.name, p16, p32)


def test_device_choice():
    c = choose_device("cpu", "auto")
    assert c.device == "cpu" and c.precision in ("bf16", "fp32")
    assert choose_device("cpu", "fp32").precision == "fp32"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            choose_device("cuda")
        assert choose_device("auto").device == "cpu"
    with pytest.raises(ValueError):
        choose_device("tpu")


def test_predict_exit_codes(model_path, tmp_path, cli):
    good = SAMPLES / "children_kermany" / "NORMAL"
    r = cli("predict", str(good), "--model", str(model_path), "--device", "cpu", "--csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("path,pneumonia_status,pneumonia_probability,pneumonia_label,pneumonia_reason,"
                               "lung_cancer_association_status,lung_cancer_association_probability")
    assert len(lines) == 3
    row = next(csv.DictReader(io.StringIO(r.stdout)))
    assert row["pneumonia_status"] == "scored" and 0.0 <= float(row["pneumonia_probability"]) <= 1.0
    assert row["pneumonia_label"] in ("positive", "negative") and row["pneumonia_reason"] == ""
    assert row["lung_cancer_association_status"] == "not_available" and row["lung_cancer_association_probability"] == ""

    broken = tmp_path / "mixed"
    broken.mkdir()
    (broken / "empty.dcm").write_bytes(b"")
    (broken / "ok.jpeg").write_bytes((good / "IM-0115-0001.jpeg").read_bytes())
    r = cli("predict", str(broken), "--model", str(model_path), "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    errors = [x for x in doc["results"] if x.get("error")]
    assert len(errors) == 1 and "empty" in errors[0]["error"]
    assert doc["results"][-1]["lung_cancer_association_probability"] is None

    r = cli("predict", str(broken / "empty.dcm"), "--model", str(model_path))
    assert r.returncode == 2
    r = cli("predict", str(good), "--model", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2 and "not found" in r.stderr
    bad = tmp_path / "bad.safetensors"
    torch.save({"x": torch.zeros(1)}, bad)
    r = cli("predict", str(good), "--model", str(bad))
    assert r.returncode == 2 and "pickled" in r.stderr
    env_model = os.environ.pop("CXR_VIEWER_MODEL", None)
    try:
        if not DEFAULT_MODEL.exists():
            r = cli("predict", str(good))
            assert r.returncode == 2 and "no model" in r.stderr
    finally:
        if env_model is not None:
            os.environ["CXR_VIEWER_MODEL"] = env_model
