"""Training engine on real images (small subsets, CPU): learning, cancel/resume, splits, errors, DDP."""

from __future__ import annotations

import json
import os
import random
import shutil
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
                val_split=0.25, early_stopping=0, warmup_steps=1, min_val_per_class=1)
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


def test_earliest_split_holds_out_the_lowest_numbered_patients_of_each_class_and_series():
    from cxr_viewer.training.data import Sample, choose_validation, earliest_split

    samples = []
    for n in range(1, 41):  # 40 pneumonia patients, two images each, numbered out of order
        samples += [Sample(f"p/person{(n * 7) % 41}_bacteria_{k}.jpeg", (1,), f"PERSON{(n * 7) % 41}", "PNEUMONIA")
                    for k in range(2)]
    samples += [Sample(f"n/IM-{n:04d}-0001.jpeg", (0,), f"IM-{n:04d}", "NORMAL") for n in range(115, 135)]
    samples += [Sample(f"n/NORMAL2-IM-{n:04d}-0001.jpeg", (0,), f"NORMAL2-IM-{n:04d}", "NORMAL")
                for n in range(300, 330)]
    samples.append(Sample("n/odd.jpeg", (0,), "ODD", "NORMAL"))  # no number: always trained on
    samples.append(Sample("n/person3_normal.jpeg", (0,), "PERSON3", "NORMAL"))  # held out with its pneumonia
    train_s, val_s = earliest_split(samples, 0.1)
    assert len(train_s) + len(val_s) == len(samples)
    assert {s.patient for s in val_s} == {"PERSON1", "PERSON2", "PERSON3", "PERSON4", "IM-0115", "IM-0116",
                                          "NORMAL2-IM-0300", "NORMAL2-IM-0301", "NORMAL2-IM-0302"}
    assert not {s.patient for s in train_s} & {s.patient for s in val_s}
    assert "ODD" in {s.patient for s in train_s}
    assert "n/person3_normal.jpeg" in {s.path for s in val_s}
    with pytest.raises(DataError):
        earliest_split([s for s in samples if s.patient == "ODD"] * 3, 0.1)
    with pytest.raises(DataError):
        choose_validation(type("Scan", (), {"splits": {"train": samples}})(), 0.1, 0, "alphabetical")


def test_earliest_split_of_kermany_is_re_derived_by_evaluate(shared_data):
    import argparse

    from cxr_viewer.cli.training import _train_config, add_parsers
    from cxr_viewer.training.data import choose_validation
    from cxr_viewer.training.evaluation import select_samples

    root = str(shared_data / "kermany")
    train_s, val_s, note = choose_validation(scan_dataset(root), 0.1, 0, "earliest")
    assert "earliest" in note and 0.08 < len(val_s) / (len(train_s) + len(val_s)) < 0.15
    trained = {s.patient for s in train_s}
    for prefix in ("IM-", "NORMAL2-IM-", "PERSON"):
        held = [int(s.patient[len(prefix):]) for s in val_s if s.patient.startswith(prefix)]
        rest = [int(p[len(prefix):]) for p in trained if p.startswith(prefix)]
        assert held and max(held) < min(rest)  # every held-out patient came before every trained one
    val, _ = select_samples(root, "validation", {"config": {"val_split": 0.1, "seed": 5, "split_by": "earliest"}})
    assert sorted(s.path for s in val) == sorted(s.path for s in val_s)
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "DATA", "--out", "m.safetensors", "--split-by", "earliest"])
    assert _train_config(args).split_by == "earliest"


def test_every_way_to_choose_validation_patients_is_offered_by_the_cli():
    """The CLI lists the split choices itself (importing training.data would pull torch into every
    command's argument parsing); this keeps that list and data.SPLITS_BY the same."""
    import argparse

    from cxr_viewer.cli.training import add_parsers
    from cxr_viewer.training.data import SPLITS_BY

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parsers(sub)
    action = next(a for a in sub.choices["train"]._actions if "--split-by" in a.option_strings)
    assert tuple(action.choices) == SPLITS_BY


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
    r = cli("evaluate", str(tiny_root), "--model", done.model_path, "--shifted", "--heatmap-in-lungs")
    assert r.returncode == 2 and "--shifted and --heatmap-in-lungs are two measurements" in r.stderr


def test_two_cpu_processes_under_torchrun(tiny_root, tmp_path):
    out = tmp_path / "ddp" / "m.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "cxr_viewer", "train", str(tiny_root), "--out", str(out), "--epochs", "1", "--batch-size", "4",
           "--input-size", "32", "--max-steps-per-epoch", "2", "--precision", "fp32", "--device", "cpu",
           "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"), "--val-split", "0.25", "--min-val-per-class", "1"]
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
            "--out-dir", str(tmp_path / "exp"), "--min-val-per-class", "1", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table = r.stdout
    assert "| sgd | 25% | pneumonia |" in table and "| adagrad | 25% | pneumonia |" in table
    assert "always-majority" in table and "AUROC" in table
    rows = (tmp_path / "exp" / "experiment.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("optimizer,val_split,head")


# --- hostile inputs and a hostile disk: one line, exit 2 before training, nothing half-written ------


def _train_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cxr_viewer", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL)


TINY_ARGS = ("--epochs", "1", "--batch-size", "4", "--input-size", "32", "--max-steps-per-epoch", "1",
             "--precision", "fp32", "--device", "cpu", "--num-workers", "0", "--val-split", "0.25",
             "--min-val-per-class", "1")


class _Evil:
    """Unpickling this would print a marker: a weights-only loader must refuse it."""

    def __reduce__(self):
        return (print, ("UNPICKLED-AND-RAN",))


def test_init_with_a_pickle_or_any_bad_file_is_one_line_and_exit_2(tiny_root, tmp_path):
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.weight": _Evil()}, protocol=4))
    r = _train_cli(str(tiny_root), "--out", str(tmp_path / "o" / "m.safetensors"), "--init", str(evil),
                   "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "UNPICKLED-AND-RAN" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("cxr-viewer train: evil.pt is not a weights-only torch file")
    assert "epoch" not in r.stderr  # refused before any training
    assert not (tmp_path / "o" / "m.safetensors").exists()

    # in-process, the other kinds of bad --init file: each a DataError with one line
    from cxr_viewer.training.engine import initial_model

    real = sorted((tiny_root / "train" / "NORMAL").iterdir())[0].resolve()
    named_safetensors = tmp_path / "pickle.safetensors"
    torch.save({"w": torch.zeros(2)}, named_safetensors)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(real.read_bytes())  # a real JPEG named .pth
    truncated = tmp_path / "cut.pth"
    torch.save(CxrNet().backbone.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    not_state = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_state)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(3, 3)}, str(wrong))
    cases = {named_safetensors: "pickled file", garbage: "not a weights-only torch file",
             truncated: "not a weights-only torch file", not_state: "not a torchvision ResNet50 state dict",
             wrong: "not a torchvision ResNet50 state dict", tmp_path / "missing.pth": "not found"}
    for path, expect in cases.items():
        with pytest.raises(DataError) as err:
            initial_model(tiny_config(tiny_root, tmp_path / "o" / "m.safetensors", init=str(path)))
        assert expect in str(err.value) and "\n" not in str(err.value), (path.name, str(err.value))


@pytest.fixture
def small_fs(tmp_path):
    """``small_fs(size_mb, read_only=False)``: a real small file system (tmpfs) for a full or read-only
    output disk. Mounting needs root; the test skips, saying so, elsewhere."""
    mounted: list[Path] = []

    def mount(size_mb: int, read_only: bool = False) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        if os.geteuid() != 0:
            pytest.skip("a real full / read-only disk needs root to mount a small tmpfs")
        opts = f"size={size_mb}m,mode=0755" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)  # a file still open: detach


def test_read_only_or_small_output_disk_fails_before_epoch_1(tiny_root, tmp_path, small_fs):
    ro = small_fs(16, read_only=True)
    r = _train_cli(str(tiny_root), "--out", str(ro / "m.safetensors"), "--cache-dir", str(tmp_path / "cache"),
                   *TINY_ARGS, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr == f"cxr-viewer train: the output folder {ro} is not writable: Read-only file system\n"
    small = small_fs(40)
    r = _train_cli(str(tiny_root), "--out", str(small / "sub" / "m.safetensors"), "--cache-dir",
                   str(tmp_path / "cache"), *TINY_ARGS, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"cxr-viewer train: not enough free space in {small / 'sub'}: ")
    assert "MiB free, training needs about" in line
    assert [p.name for p in (small / "sub").iterdir()] == []  # nothing written, no epoch run


def test_disk_full_during_the_run_is_one_line_and_leaves_no_half_files(tiny_root, tmp_path, small_fs, monkeypatch,
                                                                       capsys):
    from cxr_viewer import cli
    from cxr_viewer.training import engine

    full = small_fs(24)  # room for the pre-check's probe, not for a ResNet50 checkpoint
    monkeypatch.setattr(engine, "output_bytes_needed", lambda *a, **k: 0)  # as if the disk filled up after it
    out = full / "m.safetensors"
    code = cli.main(["train", str(tiny_root), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *TINY_ARGS])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last == f"cxr-viewer train: cannot write the checkpoint {full / 'm.ckpt'}: No space left on device"
    assert "Traceback" not in err
    assert sorted(p.name for p in full.iterdir()) == []  # no checkpoint, model, log or temporary file


def test_bad_training_files_are_skipped_outputs_are_one_unit_with_one_mode(tiny_root, shared_data, tmp_path,
                                                                            monkeypatch):
    """Bad files in the class folders are skipped and listed; the outputs all get the umask's mode; a
    failure while renaming the outputs into place leaves none of the new ones and puts the older model
    back exactly as it was."""
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root, symlinks=True)
    src = sorted((shared_data / "kermany" / "train" / "NORMAL").iterdir())[-1].read_bytes()
    (root / "train" / "NORMAL" / "cut.jpeg").write_bytes(src[: len(src) // 3])
    (root / "train" / "PNEUMONIA" / "empty.jpeg").write_bytes(b"")
    (root / "train" / "PNEUMONIA" / "notes.png").write_bytes(b"label,file\n1,a.png\n")
    out = tmp_path / "o" / "m.safetensors"
    cfg = tiny_config(root, out, epochs=1, max_steps_per_epoch=1, input_size=32, cache_dir=str(tmp_path / "cache"))
    old = os.umask(0o027)
    try:
        events = []
        gen = train(cfg)
        while True:
            try:
                events.append(next(gen))
            except StopIteration as stop:
                done = stop.value
                break
    finally:
        os.umask(old)
    (scan,) = [e for e in events if isinstance(e, ScanEvent)]
    assert sorted(Path(e.path).name for e in scan.skipped) == ["cut.jpeg", "empty.jpeg", "notes.png"]
    assert all(e.reason and "\n" not in e.reason for e in scan.skipped)
    assert read_meta(done.model_path).training["skipped"] == 3
    written = sorted(p.name for p in out.parent.iterdir())
    assert written == ["m.ckpt", "m.json", "m.pneumonia.png", "m.report.json", "m.safetensors"], written
    for name in written:
        assert (out.parent / name).stat().st_mode & 0o777 == 0o640, name  # 0666 & ~027, like a plain write

    # the new sidecar cannot be renamed into place (the disk fills up at the last moment)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir() if p.name != "m.ckpt"}
    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if str(dst) == str(out.with_suffix(".json")) and os.path.basename(src).startswith(".tmp-"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(Exception) as err:
        run_to_completion(train(cfg))
    assert type(err.value).__name__ == "OutputError"
    assert str(err.value) == (f"cannot write the model {out}: No space left on device; nothing new was kept; "
                              "the previous model there is kept")
    after = {p.name: p.read_bytes() for p in out.parent.iterdir() if p.name != "m.ckpt"}
    assert after == before  # the older model is back, byte for byte; no temporary or backup file is left


def test_too_few_validation_images_give_no_threshold_and_no_score(tiny_root, tmp_path):
    """3 validation images per class cannot choose a threshold or calibrate: the head is saved as not
    available, saying how many are needed, and the model gets its own name and version."""
    out = tmp_path / "few" / "m.safetensors"
    cfg = tiny_config(tiny_root, out, epochs=1, max_steps_per_epoch=1, input_size=32, min_val_per_class=20)
    done = run_to_completion(train(cfg))
    meta = read_meta(done.model_path)
    info = meta.heads["pneumonia"]
    assert not info.trained
    assert "at least 20 per class are needed to calibrate and choose a threshold" in info.note
    import re

    assert re.search(r"validation had \d NORMAL and \d PNEUMONIA images", info.note), info.note
    assert meta.name.startswith("m (trained ") and meta.version and meta.version != "1"
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.io.image import open_image

    kid = sorted((tiny_root / "train" / "NORMAL").iterdir())[0]
    hs = Scorer.from_file(str(out), "cpu").score(open_image(str(kid))).head("pneumonia")
    assert not hs.available and hs.probability is None and "at least 20 per class" in hs.reason


def test_strong_augmentation_ema_and_shifted_selection_choose_on_the_shifted_copies(tiny_root, tmp_path, cli):
    """--select-on shifted: every epoch is judged on the validation images' shifted copies, the
    threshold and temperature are fitted on them pooled with the split, the card reports per shift;
    `evaluate --shifted` measures any model the same way."""
    cfg = tiny_config(tiny_root, tmp_path / "m.safetensors", augment_strength="strong", select_on="shifted",
                      ema=0.9, threshold_rule="sensitivity:0.9")
    done = run_to_completion(train(cfg))
    meta = read_meta(done.model_path)
    hist = meta.training["history"]
    assert all("val_shifted" in h for h in hist)
    head = meta.heads["pneumonia"]
    assert "shifted copies" in head.rule
    shifted = meta.metrics["validation"]["pneumonia"]["shifted_validation"]
    from cxr_viewer.training.shift import SHIFTS

    assert set(shifted) - {"all"} <= set(SHIFTS) and shifted["all"]["n"] == 3 * meta.metrics["validation"]["pneumonia"]["n"]
    ck = load_checkpoint(cfg.checkpoint_path)
    assert ck["ema"] is not None  # resumable with its average
    r = cli("evaluate", str(tiny_root), "--model", done.model_path, "--split", "validation", "--shifted", "--json",
            "--device", "cpu", "--precision", "fp32", timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["heads"]["pneumonia"]
    assert doc["shifted"]["all"]["n"] == len(SHIFTS) * doc["validation"]["n"]
    assert doc["threshold"] == pytest.approx(head.threshold)
    with pytest.raises(DataError, match="select-on"):
        tiny_config(tiny_root, tmp_path / "x.safetensors", select_on="test").validate()


def test_mixup_blends_images_and_labels_alike_and_keeps_missing_labels_missing(tiny_root, tmp_path):
    from cxr_viewer.training.engine import masked_bce, mixup_batch

    x = torch.eye(6).reshape(6, 1, 1, 6)  # image i: a 1 at pixel i, so each blend says who it was mixed with
    y = torch.tensor([[1.0, -1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    xm, ym = mixup_batch(x, y, 0.4, torch.Generator().manual_seed(0))
    lam = float(xm[0, 0, 0, 0]) if float(xm[0, 0, 0, 0]) < 1 else None
    for i in range(6):
        v = xm[i, 0, 0]
        assert float(v.sum()) == pytest.approx(1.0)  # a convex blend of two images
        j = int(torch.argmax(torch.where(torch.arange(6) == i, torch.zeros(6), v))) if float(v[i]) < 1 else i
        w = float(v[i]) if j != i else 1.0
        if lam is not None and j != i:
            assert w == pytest.approx(lam)  # one blend per batch
        for h in range(2):
            if y[i, h] < 0 or y[j, h] < 0:
                assert ym[i, h] == -1  # unknown stays unknown
            else:
                assert float(ym[i, h]) == pytest.approx(w * float(y[i, h]) + (1 - w) * float(y[j, h]), abs=1e-5)
    assert not torch.equal(xm, x)
    assert torch.isfinite(masked_bce(torch.zeros(6, 2), ym))
    with pytest.raises(DataError, match="mixup"):
        tiny_config(tiny_root, tmp_path / "x.safetensors", mixup=-1.0).validate()


def test_the_mixup_option_reaches_the_training_config():
    import argparse

    from cxr_viewer.cli.training import _train_config, add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "DATA", "--out", "m.safetensors", "--mixup", "0.4"])
    assert _train_config(args).mixup == 0.4
    assert _train_config(parser.parse_args(["train", "DATA", "--out", "m.safetensors"])).mixup == 0.0


def test_shifts_change_the_image_and_keep_the_pipeline_range():
    from cxr_viewer.training.shift import SHIFTS, shifted

    spec = PreprocessSpec(input_size=64)
    yy, xx = np.mgrid[0:64, 0:64]
    unit = ((np.sin(xx / 5.0) + np.cos(yy / 7.0)) / 4 + 0.5).astype(np.float32)
    for name in SHIFTS:
        out = shifted(unit, name, spec, seed=1)
        assert out.shape == (64, 64) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0 and np.isfinite(out).all()
        assert np.abs(out - unit).mean() > 1e-3, name
        assert np.array_equal(out, shifted(unit, name, spec, seed=1))  # reproducible


def test_split_seed_keeps_the_validation_split_while_the_training_seed_varies(tiny_root, tmp_path, monkeypatch):
    """Members of a seed ensemble must be chosen on one validation split: ``split_seed`` fixes it."""
    import argparse

    from cxr_viewer.cli.training import _train_config, add_parsers
    from cxr_viewer.training import engine

    chosen = []
    real = engine.choose_validation

    def recording(scan, fraction, seed, *by):
        train_s, val_s, note = real(scan, fraction, seed, *by)
        chosen.append(sorted(s.path for s in val_s))
        return train_s, val_s, note

    monkeypatch.setattr(engine, "choose_validation", recording)

    def validation_of(**kw):
        gen = train(tiny_config(tiny_root, tmp_path / f"m{len(chosen)}.safetensors", **kw))
        for ev in gen:
            if isinstance(ev, ScanEvent):
                gen.close()
                break
        return chosen[-1]

    base = validation_of(seed=0)
    assert validation_of(seed=1, split_seed=0) == base
    assert validation_of(seed=2, split_seed=0) == base
    assert any(validation_of(seed=s) != base for s in (1, 2, 3))  # without it the seed moves the split

    # evaluate --split validation re-derives the split a member was chosen on from its description
    from cxr_viewer.training.evaluation import select_samples

    val, _ = select_samples(str(tiny_root), "validation", {"config": {"val_split": 0.25, "seed": 3, "split_seed": 0}})
    assert sorted(s.path for s in val) == base

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "DATA", "--out", "m.safetensors", "--seed", "3", "--split-seed", "0"])
    assert (_train_config(args).seed, _train_config(args).split_seed) == (3, 0)


def test_outside_lung_share_is_the_activation_outside_the_lungs():
    from cxr_viewer.training.engine import outside_lung_share

    lungs = torch.zeros(2, 1, 64, 64)
    lungs[:, :, 16:48, 8:56] = 1  # cells rows 2-5 of 8 are lung
    fmap = torch.zeros(2, 4, 8, 8)
    fmap[0, :, 3, 3] = 1.0  # all inside
    fmap[1, :, 0, 0] = 1.0  # all outside
    assert outside_lung_share(fmap[:1], lungs[:1]) == pytest.approx(0.0)
    assert outside_lung_share(fmap[1:], lungs[1:]) == pytest.approx(1.0)
    assert outside_lung_share(fmap, lungs) == pytest.approx(0.5)
    f = fmap.clone().requires_grad_(True)
    outside_lung_share(f, lungs).backward()
    assert f.grad[1, :, 0, 0].sum() == 0  # an image whose activation is all outside: no way down but moving it
    assert f.grad[0, :, 0, 0].sum() > 0  # activation added outside the lungs raises the loss


def test_augmentation_moves_the_lung_mask_with_the_image(monkeypatch):
    from cxr_viewer.training.engine import Augment

    # the strong grey-scale changes (collimator bands, edge enhancement) are not geometry: left out here
    monkeypatch.setattr(Augment, "_strong", staticmethod(lambda x: x))
    img = torch.zeros(1, 64, 64)
    img[:, 20:44, 10:30] = 1.0
    mask = (img > 0.5).to(torch.uint8)
    for strength in ("standard", "strong"):
        aug = Augment(64, strength)
        for seed in range(6):
            random.seed(seed)
            torch.manual_seed(seed)
            x, m = aug.with_mask(img.clone(), mask.clone())
            assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1}
            bright = x[0] > x[0].mean()
            inter = (bright & m[0].bool()).sum().item()
            union = (bright | m[0].bool()).sum().item()
            assert inter / union > 0.85, (strength, seed, inter / union)


def test_lung_guidance_trains_on_masks_from_the_anatomy_model(tiny_root, tmp_path, monkeypatch):
    from cxr_viewer.training import engine

    seen = []
    real = engine.outside_lung_share

    def recording(fmap, lungs):
        seen.append((tuple(lungs.shape), float(lungs.mean())))
        return real(fmap, lungs)

    monkeypatch.setattr(engine, "outside_lung_share", recording)
    cfg = tiny_config(tiny_root, tmp_path / "g.safetensors", lung_guidance=1.0, intensity="equalize")
    done = run_to_completion(train(cfg))
    assert len(seen) == 4 and all(s[0] == (4, 1, 48, 48) for s in seen)
    assert all(0.05 < s[1] < 0.6 for s in seen)  # real lung fields, not empty or everything
    assert read_meta(done.model_path).training["config"]["lung_guidance"] == 1.0
    with pytest.raises(DataError, match="lung guidance"):
        tiny_config(tiny_root, tmp_path / "x.safetensors", lung_guidance=1.0, mixup=0.4).validate()


def test_the_shift_robust_recipe_is_the_shipped_model_s():
    """The dialog's and the CLI's "shift-robust" recipe and fine-tuning schedule are what the shipped
    model records it was trained with (models/default.json), so they cannot drift apart."""
    import json

    from cxr_viewer.training.recipes import SHIFT_ROBUST, recipe_of

    config = json.loads((REPO / "models" / "default.json").read_text())["training"]["config"]
    assert {k: config[k] for k in SHIFT_ROBUST.fields} == dict(SHIFT_ROBUST.fields)
    assert recipe_of(TrainConfig(**{k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__})) \
        == "shift-robust"


def test_a_recipe_reaches_the_training_config_and_single_options_override_it():
    import argparse

    from cxr_viewer.cli.training import _train_config, add_parsers
    from cxr_viewer.training.recipes import BASIC, SHIFT_ROBUST, apply_recipe, recipe_of

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    base = ["train", "DATA", "--out", "m.safetensors"]
    robust = _train_config(parser.parse_args(base + ["--recipe", "shift-robust"]))
    assert {k: getattr(robust, k) for k in SHIFT_ROBUST.fields} == dict(SHIFT_ROBUST.fields)
    robust.validate()
    assert recipe_of(_train_config(parser.parse_args(base))) == "basic"  # TrainConfig's defaults
    mixed = _train_config(parser.parse_args(base + ["--recipe", "shift-robust", "--lung-guidance", "1"]))
    assert (mixed.lung_guidance, mixed.ema, recipe_of(mixed)) == (1.0, 0.995, None)
    assert recipe_of(apply_recipe(mixed, "basic")) == "basic" and mixed.intensity is BASIC.fields["intensity"]
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe(mixed, "magic")
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--recipe", "magic"])


def test_a_trained_model_gets_its_own_feature_distance_input_check(tiny_root, tmp_path, monkeypatch):
    """After training, the model's feature distance is fitted on the run's own training children and
    the viewer's scorer uses it; with too few images none is fitted and an older model's is removed."""
    from cxr_viewer.ai.gate import FeatureDistance, ood_path
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.training import engine

    monkeypatch.setattr(engine, "MIN_INPUT_CHECK_VALIDATION", 4)
    out = tmp_path / "m.safetensors"
    done = run_to_completion(train(tiny_config(tiny_root, out, epochs=1, input_check_min_images=8)))
    assert "input check: feature distance fitted on" in done.report_text
    fd = FeatureDistance.from_file(ood_path(str(out)))
    meta = read_meta(str(out))
    assert fd.model_sha256 == meta.weights_sha256 and np.isfinite(fd.threshold)
    assert fd.fitted_on["children_train"] == sum(meta.training["train_counts"].values())
    scorer = Scorer.from_file(str(out), "cpu", "fp32")
    assert scorer.checks.distance is not None and scorer.checks.distance_heads == ("pneumonia",)
    # a run that cannot fit one (here: its scorer fails to load) keeps its model and loses the old check
    def broken(*a, **k):
        raise RuntimeError("no scorer today")

    monkeypatch.setattr(Scorer, "from_file", broken)
    done = run_to_completion(train(tiny_config(tiny_root, out, epochs=1, seed=2, input_check_min_images=8,
                                               input_check_max_images=10)))
    assert "no feature distance fitted (RuntimeError: no scorer today)" in done.report_text
    assert read_meta(str(out)).weights_sha256 != meta.weights_sha256 and not Path(ood_path(str(out))).exists()
    monkeypatch.undo()
    monkeypatch.setattr(engine, "MIN_INPUT_CHECK_VALIDATION", 4)
    done = run_to_completion(train(tiny_config(tiny_root, out, epochs=1, seed=3, input_check_min_images=8,
                                               input_check_max_images=10)))
    fd = FeatureDistance.from_file(ood_path(str(out)))
    assert fd.fitted_on["children_train"] == 10 and fd.fitted_on["children_validation"] <= 5  # the caps
    # a second run to the same name with too few images: the first model's check must not linger
    done = run_to_completion(train(tiny_config(tiny_root, out, epochs=1, seed=1)))
    assert "no feature distance fitted (" in done.report_text and "at least 200" in done.report_text
    assert not Path(ood_path(str(out))).exists()
    assert Scorer.from_file(str(out), "cpu", "fp32").checks.distance is None


def test_resume_refuses_a_checkpoint_of_another_run(tiny_root, tmp_path):
    """Resuming with other settings (a dialog whose fields changed since, another recipe) would mix
    two runs: refused in one line before any data work; where things go and when to stop may change."""
    cfg = tiny_config(tiny_root, tmp_path / "m.safetensors", epochs=1, input_check=False)
    run_to_completion(train(cfg))
    other = tiny_config(tiny_root, tmp_path / "m.safetensors", epochs=2, lr=5e-4, augment_strength="strong",
                        input_check=False)
    with pytest.raises(DataError, match=r"another run: lr 0\.001 \(now 0\.0005\), augment_strength"):
        run_to_completion(train(other, resume=True))
    longer = tiny_config(tiny_root, tmp_path / "m.safetensors", epochs=2, input_check=False,
                         threshold_rule="sensitivity:0.9", cache_dir=None)
    done = run_to_completion(train(longer, resume=True))
    assert read_meta(done.model_path).training["epochs_run"] == 2


def test_aspect_jitter_changes_proportions_and_moves_the_mask_alike():
    """--aspect-jitter: half the images are cropped on one axis and resized back; a mask goes the same way."""
    import random

    from cxr_viewer.training.engine import Augment

    x = torch.zeros(1, 64, 64)
    x[:, 16:48, 16:48] = 1.0  # a square
    aug = Augment(64, "standard", aspect=0.4)
    aug.affine = lambda *t: t if len(t) > 1 else t[0]  # geometry of the aspect step alone
    aug._photometric = lambda t: t
    random.seed(0)
    shapes, moved = set(), 0
    for _ in range(40):
        y, m = aug.with_mask(x.clone(), (x > 0.5).clone())
        rows, cols = torch.nonzero(m[0], as_tuple=True)
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        shapes.add((h, w))
        img = y[0] > 0.5  # the mask is where the image's square went (nearest against bilinear: edges may differ)
        assert (m[0] & img).sum() / (m[0] | img).sum() > 0.9
        moved += (h, w) != (32, 32)
    assert 10 <= moved <= 30 and any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    with pytest.raises(DataError, match="aspect jitter"):
        TrainConfig(data_dir="d", out="o.safetensors", aspect_jitter=2.0).validate()


def test_the_shape_shifts_change_the_chest_s_proportions_as_a_squash_would():
    """narrower / shorter field: an image of another shape squashed to the square input, so that a
    round thing comes out wider / taller (what the v4 card's 'image's shape' rows measure)."""
    from cxr_viewer.training.shift import shifted

    unit = np.zeros((224, 224), np.float32)
    unit[72:152, 72:152] = 1.0  # an 80 px square
    unit[0, 0] = 0.5  # grey levels in between, as an image has
    spec = PreprocessSpec(input_size=224)
    for name, wider in (("narrower field", True), ("shorter field", False)):
        out = shifted(unit, name, spec) > 0.75
        rows, cols = np.nonzero(out)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert (w > 1.15 * h) if wider else (h > 1.15 * w), (name, h, w)


def test_frozen_backbone_heads_keep_the_backbone_and_carry_its_input_check(tiny_root, tmp_path):
    """`train --freeze-backbone`: the heads are fitted by patient-grouped cross-validation on the base
    model's features; the backbone is the base model's to the bit, so its feature distance is carried
    over to the new model (a distance of the backbone's features alone); a base without one leaves
    none, and an older check at the output's name does not linger."""
    from cxr_viewer.ai.gate import FeatureDistance, ood_path
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.training.heads import HeadTrainConfig, train_heads
    from model_fixtures import make_test_model

    base = make_test_model(tmp_path / "base.safetensors", input_size=48)
    base_sha = read_meta(str(base)).weights_sha256
    rng = np.random.default_rng(0)
    base_fd = FeatureDistance.fit(rng.normal(size=(80, 2048)).astype(np.float32), base_sha, components=8)
    base_fd.threshold = 1.7
    base_fd.save(ood_path(str(base)))
    out = tmp_path / "heads.safetensors"

    def cfg(**kw) -> HeadTrainConfig:
        return HeadTrainConfig(data_dir=str(tiny_root), base_model=str(base), out=str(out), folds=2,
                               augmented_copies=1, steps=20, bootstrap=20, device="cpu", precision="fp32",
                               cache_dir=str(tmp_path / "cache"), **kw)

    done = run_to_completion(train_heads(cfg()))
    meta = read_meta(str(out))
    a, b = _weights(base), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("heads."))  # the backbone, bit for bit
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("heads.pneumonia."))
    later = meta.training["heads_trained_later"][-1]
    assert later["heads"] == ["pneumonia"] and later["base_model_sha256"] == base_sha
    cv = later["cross_validation"]["pneumonia"]
    assert cv["folds"] == 2 and meta.heads["pneumonia"].trained == (cv["auroc_ci95"][0] > 0.70)
    assert "2-fold cross-validation, grouped by patient" in done.report_text
    assert "feature distance carried over" in done.report_text
    fd = FeatureDistance.from_file(ood_path(str(out)))
    assert fd.model_sha256 == meta.weights_sha256 != base_sha and fd.threshold == 1.7
    assert np.array_equal(fd.mean, base_fd.mean) and fd.fitted_on["carried_from"] == "base.safetensors"
    assert Scorer.from_file(str(out), "cpu", "fp32").checks.distance is not None
    # a base model without a check: none for the new model, and the one carried before is removed
    os.unlink(ood_path(str(base)))
    done = run_to_completion(train_heads(cfg(seed=1)))
    assert "no feature distance (the base model has none)" in done.report_text
    assert not Path(ood_path(str(out))).exists()
