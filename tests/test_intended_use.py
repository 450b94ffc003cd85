"""Scoring only inside each head's intended use: header checks, the image check (gate), the
feature distance, and the ``predict`` / ``evaluate`` contract, on real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pydicom
import pytest
from model_fixtures import make_test_model
from PIL import Image, ImageDraw

from cxr_viewer.ai.gate import FeatureDistance, Gate, InputChecks, default_gate_path, ood_path
from cxr_viewer.ai.inference import Scorer
from cxr_viewer.ai.intended_use import LUNG_CANCER_USE, PNEUMONIA_USE, IntendedUse, IntendedUseError, header_reason
from cxr_viewer.ai.model import ModelFileError, read_meta
from cxr_viewer.ai.model_store import default_model_path
from cxr_viewer.io.image import open_image
from cxr_viewer.training.shift import SHIFTS

SAMPLES = td.REPO_ROOT / "resources" / "samples"
KIDS = sorted((SAMPLES / "children_kermany").rglob("*.jpeg"))
NIH_DX = SAMPLES / "dicom" / "NIH_DX_no_finding.dcm"
RG1 = SAMPLES / "dicom" / "RG1_J2KR.dcm"


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.from_file(default_model_path(), "cpu")


def _meta(path):
    return open_image(str(path)).ref.meta


# --- header checks -----------------------------------------------------------------------------

def test_header_reasons_on_real_files():
    assert header_reason(_meta(NIH_DX), PNEUMONIA_USE) == (
        "adult radiograph (age 81 in the header); this head was trained on children aged 1-5")
    assert header_reason(_meta(NIH_DX), LUNG_CANCER_USE) is None
    assert header_reason(_meta(RG1), PNEUMONIA_USE) == (
        "adult radiograph (age 64 from the birth and study dates); this head was trained on children aged 1-5")
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    assert header_reason(_meta(ct), PNEUMONIA_USE) == "not a chest radiograph (CT in the header)"
    assert header_reason(_meta(ct), LUNG_CANCER_USE) == "not a chest radiograph (CT in the header)"
    assert header_reason(_meta(KIDS[0]), PNEUMONIA_USE) is None  # a JPEG has no header: the image check decides


@pytest.mark.parametrize("edit, expected", [
    ({"ViewPosition": "LL"}, "lateral view in the header; this head reads frontal (PA/AP) views"),
    ({"BodyPartExamined": "KNEE"}, "not a chest image (body part KNEE in the header)"),
    ({"Modality": "MR"}, "not a chest radiograph (MR in the header)"),
    ({"PatientAge": "003Y"}, "child radiograph (age 3 in the header); this head was trained on adults aged 18 or older"),
    ({"PatientAge": "018M"}, "child radiograph (age 18 months in the header); this head was trained on adults aged 18 or older"),
])
def test_each_header_reason(tmp_path, edit, expected):
    ds = pydicom.dcmread(NIH_DX)
    for k, v in edit.items():
        setattr(ds, k, v)
    path = tmp_path / "edited.dcm"
    ds.save_as(path)
    assert header_reason(_meta(path), LUNG_CANCER_USE) == expected


def test_intended_use_is_validated_in_the_model_file(tmp_path):
    assert IntendedUse.from_dict(PNEUMONIA_USE.to_dict()) == PNEUMONIA_USE
    with pytest.raises(IntendedUseError):
        IntendedUse.from_dict({"population": "cats", "min_age_years": 1, "max_age_years": 6})
    with pytest.raises(IntendedUseError):
        IntendedUse.from_dict({"population": "children", "min_age_years": 6, "max_age_years": 1})
    model = Path(default_model_path())
    for suffix in (".safetensors", ".json"):
        shutil.copy(model.with_suffix(suffix), tmp_path / f"m{suffix}")
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["heads"]["pneumonia"]["intended_use"] = {"population": "children", "min_age_years": "one",
                                                 "max_age_years": 6}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="heads.pneumonia.intended_use"):
        read_meta(str(tmp_path / "m.safetensors"))


def test_the_default_model_declares_each_heads_intended_use():
    meta = read_meta(default_model_path())
    assert meta.heads["pneumonia"].use("pneumonia") == PNEUMONIA_USE
    assert meta.heads["pneumonia"].intended_use  # written in the file, not only a default
    assert meta.heads["lung_cancer_association"].use("lung_cancer_association") == LUNG_CANCER_USE
    assert PNEUMONIA_USE.describe().startswith("children aged 1-5; frontal (PA/AP) chest radiographs")


# --- the image check -------------------------------------------------------------------------------

def _text_page() -> np.ndarray:
    im = Image.new("L", (700, 900), 255)
    d = ImageDraw.Draw(im)
    for k in range(40):
        d.text((30, 20 + k * 20), "Findings: the lungs are clear. Impression: no acute disease. " * 2, fill=0)
    return np.asarray(im, np.float32)


def test_the_shipped_gate_loads_verified_and_sorts_real_images(shared_data):
    gate = Gate.from_file(default_gate_path())
    for path in KIDS:
        image = open_image(str(path))
        assert gate.classify(image.values, image.monochrome1, image.padding).label == "child", path.name
    for path in sorted((shared_data / "jsrt" / "images").glob("*.png"))[:10]:
        image = open_image(str(path))
        assert gate.classify(image.values).label == "adult", path.name
    for mask in sorted((shared_data / "jsrt" / "masks" / "heart").glob("*.png"))[:5]:
        assert gate.classify(open_image(str(mask)).values).label == "other", mask.name
    assert gate.classify(_text_page()).label == "other"
    kid = open_image(str(KIDS[0]))
    assert gate.classify(kid.values, not kid.monochrome1).label == "inverted"  # the same child as a negative


def test_a_doctored_gate_file_is_refused(tmp_path):
    src = Path(default_gate_path())
    for suffix in (".safetensors", ".json"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"g{suffix}")
    doc = json.loads((tmp_path / "g.json").read_text())
    doc["child_min"] = 1.5
    (tmp_path / "g.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="child_min"):
        Gate.from_file(str(tmp_path / "g.safetensors"))
    doc["child_min"] = 0.5
    (tmp_path / "g.json").write_text(json.dumps(doc))
    data = bytearray((tmp_path / "g.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "g.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="do not match their description"):
        Gate.from_file(str(tmp_path / "g.safetensors"))


# --- scoring --------------------------------------------------------------------------------------

def test_a_child_is_scored_and_an_adult_is_not(scorer):
    kid = scorer.score(open_image(str(KIDS[0])))
    assert kid.head("pneumonia").status == "scored" and kid.head("pneumonia").probability is not None
    assert "pneumonia" in kid.heatmaps
    adult = scorer.score(open_image(str(NIH_DX)))
    pn = adult.head("pneumonia")
    assert pn.status == "outside_intended_use" and pn.probability is None and not pn.available
    assert pn.reason == ("not scored, outside this head's intended use: adult radiograph (age 81 in the header); "
                         "this head was trained on children aged 1-5")
    assert "pneumonia" not in adult.heatmaps
    assert adult.head("lung_cancer_association").status == "not_available"
    anyway = scorer.score(open_image(str(NIH_DX)), score_anyway=True).head("pneumonia")
    assert anyway.status == "scored_outside_intended_use" and anyway.probability is not None
    assert anyway.reason.startswith("scored anyway, outside this head's intended use: adult radiograph")


def test_without_an_image_check_nothing_is_scored(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_VIEWER_GATE", str(tmp_path / "missing.safetensors"))
    s = Scorer.from_file(default_model_path(), "cpu")
    hs = s.score(open_image(str(KIDS[0])), heatmaps=False).head("pneumonia")
    assert hs.status == "not_available" and hs.probability is None
    assert hs.reason.startswith("not available: the input check cannot be used (input-check file not found")


def test_feature_distance_belongs_to_its_model(tmp_path, scorer):
    fd_path = ood_path(default_model_path())
    assert Path(fd_path).exists(), "the default model ships its feature-distance check"
    fd = FeatureDistance.from_file(fd_path)
    assert fd.model_sha256 == scorer.meta.weights_sha256 and scorer.checks.distance is not None
    x = np.stack([scorer_input(scorer, p) for p in KIDS[:2]])
    assert (fd.distance(scorer.pooled_features(x)) < fd.threshold).all()  # the training population passes
    # Noise: v5's last block, trained to fire inside children's lungs, gives it no activation at all
    # (pooled features all zero), as it gives a quiet normal child almost none, so the distance alone
    # cannot refuse it (v4's did). The input checks together do: the image check calls it no chest
    # radiograph, and no number is shown.
    png = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)).save(png)
    head = scorer.score(open_image(str(png))).head("pneumonia")
    assert head.status == "outside_intended_use" and head.probability is None, head.reason
    other = replace(fd, model_sha256="0" * 64)
    other_path = tmp_path / "m.ood.safetensors"
    other.save(str(other_path))
    for suffix in (".safetensors", ".json"):
        shutil.copy(Path(default_model_path()).with_suffix(suffix), tmp_path / f"m{suffix}")
    checks = InputChecks.for_model(str(tmp_path / "m.safetensors"), scorer.meta)
    assert checks.distance is None and "fitted for another model" in checks.distance_note


def scorer_input(scorer, path):
    from cxr_viewer.ai.inference import model_input

    return model_input(open_image(str(path)), scorer)


# --- predict and evaluate ---------------------------------------------------------------------------

def _folder(tmp_path, shared_data) -> Path:
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(KIDS[0], d / "child.jpeg")
    shutil.copy(sorted((shared_data / "nih" / "images").glob("*.png"))[0], d / "adult.png")
    Image.fromarray(_text_page().astype(np.uint8)).save(d / "page.png")
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), d / "ct.dcm")
    return d


def test_predict_json_contract(tmp_path, shared_data):
    d = _folder(tmp_path, shared_data)
    proc = subprocess.run([sys.executable, "-m", "cxr_viewer", "predict", str(d), "--json"], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=td.REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    recs = {Path(r["path"]).name: r for r in json.loads(proc.stdout)["results"]}
    assert recs["child.jpeg"]["pneumonia_status"] == "scored"
    assert recs["child.jpeg"]["pneumonia_reason"] is None
    assert isinstance(recs["child.jpeg"]["pneumonia_probability"], float)
    for name, words in (("adult.png", "adult's radiograph by the image check"),
                        ("page.png", "not a chest radiograph (image check"),
                        ("ct.dcm", "not a chest radiograph (CT in the header)")):
        r = recs[name]
        assert r["pneumonia_status"] == "outside_intended_use", r
        assert r["pneumonia_probability"] is None and r["pneumonia_label"] is None
        assert words in r["pneumonia_reason"], r["pneumonia_reason"]
        assert r["lung_cancer_association_status"] == "not_available"
        assert r["lung_cancer_association_probability"] is None
    anyway = subprocess.run([sys.executable, "-m", "cxr_viewer", "predict", str(d / "adult.png"), "--score-anyway"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=td.REPO_ROOT)
    (r,) = json.loads(anyway.stdout)["results"]
    assert r["pneumonia_status"] == "scored_outside_intended_use" and isinstance(r["pneumonia_probability"], float)
    assert r["pneumonia_reason"].startswith("scored anyway, outside this head's intended use")


def test_evaluate_reports_what_the_checks_set_aside(tmp_path, shared_data, scorer):
    from cxr_viewer.common.tasks import run_to_completion
    from cxr_viewer.training.data import Sample
    from cxr_viewer.training.evaluation import evaluate_task

    adults = sorted((shared_data / "nih" / "images").glob("*.png"))[:3]
    samples = [Sample(str(p), (int("PNEUMONIA" in str(p)), None), p.stem, "t") for p in KIDS]
    samples += [Sample(str(p), (0, None), p.stem, "t") for p in adults]
    result = run_to_completion(evaluate_task(scorer, samples, "mixed", bootstrap=50))
    aside = result.set_aside["pneumonia"]
    assert sum(aside.values()) == 3, aside
    assert result.heads["pneumonia"]["n"] == len(KIDS)
    assert "set aside as outside the head's intended use" in result.text()
    everything = run_to_completion(evaluate_task(scorer, samples, "mixed", bootstrap=50, score_anyway=True))
    assert everything.heads["pneumonia"]["n"] == len(samples) and not everything.set_aside


def test_the_first_sample_a_new_user_sees_is_inside_the_intended_use(scorer):
    """The quick start opens resources/samples: its first image (depth-first, in name order, as the
    study browser shows it first) is a child's radiograph, and the pneumonia head scores it."""
    from cxr_viewer.io.index import index

    first = next(index([str(SAMPLES)]).images())
    assert "children_kermany" in Path(first.path).parts
    assert scorer.score(open_image(first.path), heatmaps=False).head("pneumonia").status == "scored"


# --- the image check's network, its file and its training -------------------------------------------

def _randomise_batchnorm(net):
    import torch

    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("width", [64, 16])
def test_the_fused_gate_computes_what_the_trained_one_does(width):
    import torch

    from cxr_viewer.ai.gate import GateNet, fused_for_inference

    net = _randomise_batchnorm(GateNet(width))
    fused = fused_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()), "the trained net is left as it was"
    x = torch.randn(3, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = net(x), fused(x)
    assert torch.allclose(a, b, atol=1e-3 * float(a.abs().max())), float((a - b).abs().max())


def test_a_narrow_gate_round_trips_and_a_wrong_width_is_refused(tmp_path):
    from cxr_viewer.ai.gate import GATE_SPEC, GateMeta, GateNet

    gate = Gate(_randomise_batchnorm(GateNet(16)), GateMeta("t", "1", GATE_SPEC, 0.6, 0.5, width=16), "")
    units = np.random.default_rng(0).random((2, 128, 128)).astype(np.float32)
    before = [v.probabilities for v in gate.classify_units(units)]
    gate.save(str(tmp_path / "g.safetensors"))
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["width"] == 16
    loaded = Gate.from_file(str(tmp_path / "g.safetensors"))
    after = [v.probabilities for v in loaded.classify_units(units)]
    for p, q in zip(before, after):  # the file holds float16 weights
        assert all(abs(p[c] - q[c]) < 0.02 for c in p)
    doc["width"] = 32
    (tmp_path / "g.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError):
        Gate.from_file(str(tmp_path / "g.safetensors"))


def test_feature_distance_is_the_documented_formula():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
    fd = FeatureDistance.fit(train, "0" * 64, components=8)
    x = rng.normal(size=(5, 32)).astype(np.float32)
    z = x.astype(np.float64) - fd.mean
    proj = z @ fd.components.T.astype(np.float64)
    inside = (proj ** 2 / fd.variances).sum(1)
    resid = np.maximum((z ** 2).sum(1) - (proj ** 2).sum(1), 0) / fd.residual_variance
    expected = np.sqrt((inside + resid) / z.shape[1])
    assert np.allclose(fd.distance(x), expected, rtol=1e-4)
    assert fd.distance(train[:50].astype(np.float32)).mean() < fd.distance(x * 10).mean()


def test_the_augmentation_keeps_a_unit_a_unit():
    from cxr_viewer.training.intended_use import augment

    unit = (np.random.default_rng(0).random((160, 160)) * 255).astype(np.uint8)
    r = np.random.default_rng(1)
    outs = [augment(unit, r, 96) for _ in range(40)]
    assert all(o.shape == (96, 96) and o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert len({o.tobytes() for o in outs}) == 40  # every draw differs


def test_train_input_check_end_to_end(tmp_path, cli, shared_data):
    """The command trains a (tiny, narrow) check on real folders, writes a file that loads, and reports;
    too few children to set its threshold is refused with the number needed."""
    kids = tmp_path / "kids" / "train"
    for cls, n in (("NORMAL", 100), ("PNEUMONIA", 160)):
        (kids / cls).mkdir(parents=True)
        for p in sorted((shared_data / "kermany" / "train" / cls).glob("*.jpeg"))[:n]:
            shutil.copy(p, kids / cls / p.name)
    adults = tmp_path / "adults"
    adults.mkdir()
    for p in sorted((shared_data / "nih" / "images").glob("*.png"))[:20]:
        shutil.copy(p, adults / p.name)
    out = tmp_path / "check.safetensors"
    model = make_test_model(tmp_path / "m.safetensors")
    args = ("train-input-check", "--adults", str(adults), "--out", str(out), "--epochs", "1", "--per-epoch", "64",
            "--width", "8", "--input-size", "64")
    r = cli(*args, "--children", str(kids), "--model", str(model), timeout=600)
    assert r.returncode == 0, r.stderr
    gate = Gate.from_file(str(out))
    assert gate.meta.width == 8 and gate.meta.preprocessing.input_size == 64
    report = json.loads((tmp_path / "check.json").read_text())["metrics"]
    assert 0 < report["child_min"] < 1 and report["validation_children"] >= 20 and "generated_text" in report
    assert set(report["shifted_validation_children_scored"]) == set(SHIFTS)  # child_min saw shifted children too
    # the model's feature distance: fitted on children as they are and shifted, its own SHA-256
    fd = FeatureDistance.from_file(ood_path(str(model)))
    assert fd.model_sha256 == read_meta(str(model)).weights_sha256 and np.isfinite(fd.threshold)
    passed = fd.fitted_on["validation_children_passed"]
    assert set(passed) == {"none", *SHIFTS} and all(0 <= v <= 1 for v in passed.values())
    assert any(k.startswith("refused_") and k.endswith("/adults") for k in fd.fitted_on)
    few = tmp_path / "few" / "train" / "NORMAL"
    few.mkdir(parents=True)
    for p in KIDS:
        shutil.copy(p, few / p.name)
    r = cli(*args, "--children", str(few.parent), timeout=600)
    assert r.returncode != 0 and "at least 20 are needed" in r.stderr


def test_a_gate_whose_width_disagrees_with_its_description_is_refused_and_bad_widths_are_not_trained():
    from cxr_viewer.ai.gate import GATE_SPEC, GateMeta, GateNet
    from cxr_viewer.training.intended_use import GateConfig, GateData, train_gate

    with pytest.raises(ModelFileError, match="width"):
        Gate(GateNet(16), GateMeta("t", "1", GATE_SPEC, 0.6, 0.5, width=32), "")
    n = 60
    data = GateData(np.zeros((n, 160, 160), np.uint8), np.array(["child"] * 40 + ["adult"] * 20),
                    np.array(["k"] * 40 + ["a"] * 20), np.array([f"p{i}" for i in range(n)]),
                    np.array([f"f{i}" for i in range(n)]))
    with pytest.raises(ValueError, match="width must be from 8 to 256"):
        next(train_gate(data, GateConfig(width=4, val_fraction=0.5)))
