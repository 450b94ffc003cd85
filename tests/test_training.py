"""Training engine on real images (small subsets, CPU): learning, cancel/resume, splits, errors, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from training_data import tiny_kaggle_root

from cxr_viewer.ai.model import CxrNet, read_meta
from cxr_viewer.ai.preprocess import PreprocessSpec, standardise
from cxr_viewer.common.tasks import Cancelled, CancelToken, run_to_completion
from cxr_viewer.training.data import DataError, grouped_split, read_labels_csv, scan_dataset
from cxr_viewer.training.engine import (
    EpochEvent,
    ScanEvent,
    StepEvent,
    TrainConfig,
    balanced_weights,
    load_checkpoint,
    masked_bce,
    train,
)

REPO = Path(__file__).resolve().parents[1]


def tiny_config(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(root), out=str(out), epochs=2, batch_size=4, input_size=48, max_steps_per_epoch=2,
                num_workers=0, precision="fp32", device="cpu", cache_dir=str(out.parent / "cache"), bootstrap=20,
                val_split=0.25, early_stopping=0, warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_root(shared_data, tmp_path_factory) -> Path:
    return tiny_kaggle_root(shared_data, tmp_path_factory.mktemp("tiny"), per_class=12, with_test=True)


def test_loss_falls_when_overfitting_a_small_batch(shared_data):
    from cxr_viewer.training.data import PreprocessCache

    torch.manual_seed(0)
    spec = PreprocessSpec(input_size=64)
    cache = PreprocessCache(None, spec)
    normal = sorted((shared_data / "kermany/train/NORMAL").iterdir())[:4]
    pneu = sorted((shared_data / "kermany/train/PNEUMONIA").iterdir())[:4]
    x = torch.from_numpy(standardise(np.stack([cache.load(str(p)) for p in normal + pneu]), spec))
    y = torch.tensor([[0.0, -1.0]] * 4 + [[1.0, -1.0]] * 4)
    model = CxrNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = masked_bce(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


def test_masked_loss_ignores_unlabelled_heads():
    logits = torch.tensor([[0.3, 5.0], [-0.2, -7.0]], requires_grad=True)
    labels = torch.tensor([[1.0, -1.0], [0.0, -1.0]])
    loss = masked_bce(logits, labels)
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0].detach(), labels[:, 0])
    assert torch.isclose(loss.detach(), expected)
    none = masked_bce(logits, torch.full((2, 2), -1.0))
    assert float(none.detach()) == 0.0


def test_balanced_weights_split_each_head_evenly():
    labels = np.array([[0, -1]] * 10 + [[1, -1]] * 30 + [[-1, 1]] * 3 + [[-1, 0]] * 2, dtype=np.float32)
    w = balanced_weights(labels)
    assert w[:10].sum() == pytest.approx(w[10:40].sum())
    assert w[40:43].sum() == pytest.approx(w[43:].sum())
    assert w[:40].sum() == pytest.approx(40 / 45)


def test_grouped_split_has_no_patient_on_both_sides(shared_data):
    scan = scan_dataset(str(shared_data / "kermany"))
    samples = scan.splits["train"]
    for ratio in (0.1, 0.2):
        train_s, val_s = grouped_split(samples, ratio, seed=0)
        assert not {s.patient for s in train_s} & {s.patient for s in val_s}
        assert len(train_s) + len(val_s) == len(samples)
        frac = len(val_s) / len(samples)
        assert abs(frac - ratio) < 0.03
        share = Counter(s.source for s in val_s)["PNEUMONIA"] / len(val_s)
        assert abs(share - 3875 / 5216) < 0.03  # stratified


def test_jsrt_labels_define_the_positive_class(shared_data):
    samples = read_labels_csv(str(shared_data / "jsrt" / "jsrt_metadata.csv"))
    counts = Counter(s.label("lung_cancer_association") for s in samples)
    assert counts == {1: 154, 0: 93}  # malignant + benign nodules are positive; non-nodule negative
    assert all(s.label("pneumonia") is None for s in samples)
    assert all(os.path.exists(s.path) for s in samples)


def test_bad_folders_give_clear_errors(tmp_path, shared_data):
    with pytest.raises(DataError, match="not a folder"):
        run_to_completion(train(tiny_config(tmp_path / "nope", tmp_path / "o" / "m.safetensors")))
    empty = tmp_path / "empty"
    (empty / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        run_to_completion(train(tiny_config(empty, tmp_path / "o" / "m.safetensors")))
    one = tiny_kaggle_root(shared_data, tmp_path / "one", per_class=6)
    for p in (one / "train" / "PNEUMONIA").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="only one class"):
        run_to_completion(train(tiny_config(one, tmp_path / "o" / "m.safetensors")))
    corrupt = tiny_kaggle_root(shared_data, tmp_path / "corrupt", per_class=6)
    for p in (corrupt / "train" / "PNEUMONIA").iterdir():
        p.unlink()
        p.write_bytes(b"not an image")
    with pytest.raises(DataError, match="only one class"):
        run_to_completion(train(tiny_config(corrupt, tmp_path / "o" / "m.safetensors")))
    assert not (tmp_path / "o" / "m.safetensors").exists()


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_cancel_keeps_checkpoint_and_resume_reproduces_the_run(tiny_root, tmp_path):
    full = tiny_config(tiny_root, tmp_path / "a" / "m.safetensors")
    events = []
    gen = train(full)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            done_a = stop.value
            break
    assert any(isinstance(e, ScanEvent) for e in events)
    steps = [e for e in events if isinstance(e, StepEvent)]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert len(steps) == 4 and len(epochs) == 2
    assert Path(done_a.model_path).exists() and Path(done_a.report_path).exists()

    cfg_b = tiny_config(tiny_root, tmp_path / "b" / "m.safetensors")
    token = CancelToken()
    gen = train(cfg_b, cancel=token)
    with pytest.raises(Cancelled):
        for ev in gen:
            if isinstance(ev, EpochEvent) and ev.epoch == 0:
                token.cancel()
    assert not Path(cfg_b.out).exists()  # no half-finished model
    ck = load_checkpoint(cfg_b.checkpoint_path)
    assert ck["epoch"] == 0
    done_b = run_to_completion(train(cfg_b, resume=True))
    wa, wb = _weights(Path(done_a.model_path)), _weights(Path(done_b.model_path))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-3), k
    ha = read_meta(done_a.model_path).training["history"]
    hb = read_meta(done_b.model_path).training["history"]
    assert [round(h["train_loss"], 4) for h in ha] == [round(h["train_loss"], 4) for h in hb]


def test_evaluate_reproduces_the_models_validation_metrics(tiny_root, tmp_path, cli):
    done = run_to_completion(train(tiny_config(tiny_root, tmp_path / "m.safetensors", epochs=1)))
    meta = read_meta(done.model_path)
    card = meta.metrics["validation"]["pneumonia"]
    r = cli("evaluate", str(tiny_root), "--model", done.model_path, "--split", "validation", "--json",
            "--device", "cpu", "--precision", "fp32", "--bootstrap", "20", timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["heads"]["pneumonia"]
    assert got["n"] == card["n"]
    assert got["auroc"] == pytest.approx(card["auroc"], abs=0.01)
    assert got["accuracy"] == pytest.approx(card["accuracy"], abs=1.0 / card["n"] + 1e-9)
    r = cli("evaluate", str(tiny_root), "--model", done.model_path, "--json", "--device", "cpu", "--bootstrap", "20",
            timeout=300)
    assert r.returncode == 0, r.stderr
    test = json.loads(r.stdout)
    assert test["split"] == "the test/ split" and test["heads"]["pneumonia"]["n"] == 8
    for key in ("confusion_matrix", "classification_report", "sensitivity", "specificity", "auroc_ci95"):
        assert key in test["heads"]["pneumonia"]


def test_two_cpu_processes_under_torchrun(tiny_root, tmp_path):
    out = tmp_path / "ddp" / "m.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "cxr_viewer", "train", str(tiny_root), "--out", str(out), "--epochs", "1", "--batch-size", "4",
           "--input-size", "32", "--max-steps-per-epoch", "2", "--precision", "fp32", "--device", "cpu",
           "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"), "--val-split", "0.25"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = read_meta(str(out))
    assert meta.training["world_size"] == 2
    assert meta.heads["pneumonia"].trained


def test_experiment_grid_prints_the_comparison_table(tiny_root, tmp_path, cli):
    r = cli("experiment", str(tiny_root), "--optimizers", "sgd,adagrad", "--val-split", "0.25", "--epochs", "1",
            "--batch-size", "4", "--input-size", "32", "--max-steps-per-epoch", "1", "--precision", "fp32",
            "--device", "cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path / "exp"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table = r.stdout
    assert "| sgd | 25% | pneumonia |" in table and "| adagrad | 25% | pneumonia |" in table
    assert "always-majority" in table and "AUROC" in table
    rows = (tmp_path / "exp" / "experiment.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("optimizer,val_split,head")
