"""The CUDA path: scoring, heatmaps, input checks and training on a GPU agree with the CPU.

Skipped, saying so, on a machine without CUDA (CI, most workstations); run on a GPU machine with
``bash bench/gpu_check.sh`` (which also runs the GPU benchmarks). The CPU in fp32 is the reference:
the GPU runs bf16 (or fp16) autocast, so scores are compared within a tolerance, and the decisions a
clinician sees (positive or negative, outside the intended use or not) must be the same except for a
score within that tolerance of its threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pytest
import torch
from model_fixtures import DEFAULT_MODEL, REPO
from training_data import tiny_kaggle_root

from cxr_viewer.ai.inference import Scorer, choose_device, score_many_task
from cxr_viewer.ai.model import read_meta
from cxr_viewer.io.image import open_image
from cxr_viewer.io.index import read_any

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here: the CUDA path is checked on a GPU machine "
                                       "(bash bench/gpu_check.sh)")

SAMPLES = REPO / "resources" / "samples"
TOL = 0.02  # probability, bf16 autocast vs fp32 (the CPU bf16 test uses the same)


@pytest.fixture(scope="module")
def kermany_data() -> Path:
    """../shared/data, of which only kermany/train is read here (a GPU machine may get only that)."""
    if not all((td.SHARED_DATA / "kermany" / "train" / c).is_dir() for c in ("NORMAL", "PNEUMONIA")):
        pytest.skip(f"../shared/data is missing: kermany/train not found under {td.SHARED_DATA}")
    return td.SHARED_DATA


def _sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm"))


@pytest.fixture(scope="module")
def scorers():
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"the bundled model {DEFAULT_MODEL} is absent")
    return Scorer.from_file(str(DEFAULT_MODEL), "cpu", "fp32"), Scorer.from_file(str(DEFAULT_MODEL), "cuda", "auto")


def test_auto_chooses_cuda_and_says_so():
    c = choose_device("auto")
    assert c.device == "cuda" and c.precision in ("bf16", "fp16")
    assert c.label.startswith("CUDA (") and torch.cuda.get_device_name(0) in c.label
    assert choose_device("cuda", "fp32").precision == "fp32"


def _close_decision(cpu, gpu, threshold) -> bool:
    """Same side of the threshold, or both within TOL of it."""
    if threshold is None:
        return True
    return (cpu >= threshold) == (gpu >= threshold) or abs(cpu - threshold) < TOL


def test_bundled_model_scores_alike_on_cuda(scorers):
    cpu, gpu = scorers
    assert gpu.model.conv1.weight.is_cuda if hasattr(gpu.model, "conv1") else next(gpu.model.parameters()).is_cuda
    files = _sample_files()
    assert len(files) >= 4
    for f in files:
        img = open_image(str(f))
        a, b = cpu.score(img, heatmaps=True), gpu.score(img, heatmaps=True)
        assert b.device.startswith("CUDA"), b.device
        for ha, hb in zip(a.heads, b.heads):
            assert (ha.head, ha.available) == (hb.head, hb.available)
            # the one slack: an image at the feature distance's limit (test_feature_distance_alike_on_cuda
            # holds the two distances together there)
            assert ha.status == hb.status or "feature distance" in f"{ha.reason} {hb.reason}", (
                f.name, ha.head, ha.status, hb.status, ha.reason, hb.reason)
            if ha.status != hb.status:
                continue
            if ha.probability is None:
                assert hb.probability is None
                continue
            assert abs(ha.probability - hb.probability) < TOL, (f.name, ha.head, ha.probability, hb.probability)
            assert _close_decision(ha.probability, hb.probability, ha.threshold), (f.name, ha.probability,
                                                                                   hb.probability)
        for head, ma in a.heatmaps.items():
            mb = b.heatmaps[head]
            assert ma.shape == mb.shape and mb.dtype == ma.dtype and np.isfinite(mb).all()
            if ma.std() > 1e-3:  # a flat map has no shape to compare
                r = float(np.corrcoef(ma.ravel(), mb.ravel())[0, 1])
                assert r > 0.9, (f.name, head, r)


def test_feature_distance_alike_on_cuda(scorers):
    """The input check that refuses images unlike the training images reads the GPU's features."""
    from cxr_viewer.ai.inference import model_input

    cpu, gpu = scorers
    if cpu.checks.distance is None:
        pytest.skip("the bundled model has no feature-distance check")
    x = np.stack([model_input(open_image(str(f)), cpu) for f in _sample_files()])
    _, _, da = cpu.batch_probabilities_and_distances(x)
    _, _, db = gpu.batch_probabilities_and_distances(x)
    limit = cpu.checks.distance.threshold
    rel = np.abs(da - db) / np.maximum(np.abs(da), 1e-6)
    assert float(rel.max()) < 0.05, (da, db)
    assert all((p > limit) == (q > limit) or abs(p - limit) < 0.05 * limit for p, q in zip(da, db))


def test_score_all_on_cuda_with_a_broken_file(scorers, tmp_path):
    """Score All in batches on the GPU: every good image scored as on the CPU, the one broken after
    it was indexed reported as an error, the rest still scored."""
    cpu, gpu = scorers
    files = [f for f in _sample_files() if f.suffix.lower() != ".dcm"]
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(files[0].read_bytes())
    refs = [read_any(str(f))[0] for f in [*files, broken]]
    broken.write_bytes(files[0].read_bytes()[:600])  # truncated after indexing: decoding fails
    rows_gpu = {r.path: r for r in run_to_completion_events(score_many_task(gpu, refs, batch_size=3))}
    rows_cpu = {r.path: r for r in run_to_completion_events(score_many_task(cpu, refs[:-1], batch_size=3))}
    assert rows_gpu[str(broken)].error and not rows_gpu[str(broken)].probabilities.get("pneumonia")
    for path, a in rows_cpu.items():
        b = rows_gpu[path]
        assert not b.error and a.statuses == b.statuses, (path, a.statuses, b.statuses, b.error)
        p, q = a.probabilities.get("pneumonia"), b.probabilities.get("pneumonia")
        assert (p is None) == (q is None) and (p is None or abs(p - q) < TOL), (path, p, q)


def test_training_on_cuda_writes_a_model_the_cpu_scores(kermany_data, tmp_path):
    """A short run on the GPU with the shipped recipe's parts (strong augmentation, shifted
    validation, EMA, equalisation, lung guidance, mixup off) ends in a model file the CPU loads
    and scores; its validation figures are finite."""
    from cxr_viewer.training.engine import EpochEvent, StepEvent, TrainConfig, train

    root = tiny_kaggle_root(kermany_data, tmp_path / "tiny", per_class=16)
    cfg = TrainConfig(data_dir=str(root), out=str(tmp_path / "m.safetensors"), epochs=2, batch_size=8,
                      input_size=64, max_steps_per_epoch=3, num_workers=2, precision="auto", device="cuda",
                      cache_dir=str(tmp_path / "cache"), bootstrap=20, val_split=0.25, early_stopping=0,
                      warmup_steps=1, min_val_per_class=1, augment_strength="strong", select_on="shifted",
                      ema=0.9, intensity="equalize", lung_guidance=1.0, aspect_jitter=0.25)
    events = []
    gen = train(cfg)
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        done = stop.value
    steps = [e for e in events if isinstance(e, StepEvent)]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert steps and all(math.isfinite(e.loss) for e in steps)
    assert len(epochs) == 2 and epochs[-1].device.startswith("CUDA")
    meta = read_meta(done.model_path)
    assert meta.training["config"]["device"] == "cuda"
    s = Scorer.from_file(done.model_path, "cpu", "fp32")
    r = s.score(open_image(str(_sample_files()[0])), heatmaps=True).head("pneumonia")
    assert r.status != "scored" or (r.probability is not None and 0.0 <= r.probability <= 1.0), (
        r.status, r.probability)


def test_fp16_training_step_on_cuda(kermany_data, tmp_path):
    """fp16 autocast trains through the gradient scaler (GPUs without bf16)."""
    from cxr_viewer.training.engine import StepEvent, TrainConfig, train

    root = tiny_kaggle_root(kermany_data, tmp_path / "tiny", per_class=8)
    cfg = TrainConfig(data_dir=str(root), out=str(tmp_path / "h.safetensors"), epochs=1, batch_size=4,
                      input_size=48, max_steps_per_epoch=3, num_workers=0, precision="fp16", device="cuda",
                      cache_dir=str(tmp_path / "cache"), bootstrap=20, val_split=0.25, early_stopping=0,
                      warmup_steps=1, min_val_per_class=1, input_check=False)
    losses = [e.loss for e in run_to_completion_events(train(cfg)) if isinstance(e, StepEvent)]
    assert losses and all(math.isfinite(v) for v in losses)


def run_to_completion_events(gen) -> list:
    out = []
    try:
        while True:
            out.append(next(gen))
    except StopIteration:
        return out
