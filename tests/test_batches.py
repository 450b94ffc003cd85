"""Batches never fail as a whole: predict, evaluate, thumbnails and Score All list a bad file and go
on; predict's stdout is always complete, strict JSON; a closed stdout ends a command quietly."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cxr_testdata as td
import pytest
from model_fixtures import make_test_model

from cxr_viewer import cli
from cxr_viewer.ai import inference
from cxr_viewer.io.index import index
from cxr_viewer.training.evaluation import NON_FINITE

pytestmark = pytest.mark.shared_data


def strict_json(text: str):
    """json.loads that fails on NaN / Infinity (which Python's json accepts by default)."""
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name} in the output")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def corpus_paths(corpus: td.BrokenCorpus) -> tuple[set[str], set[str]]:
    """(every file the corpus holds that predict must list, the good ones among them)."""
    bad = {str(c.path) for c in list(corpus.index_errors.values()) + list(corpus.decode_errors.values())}
    good = {str(p) for p in corpus.good.values()}
    return bad | good, good


def test_predict_lists_every_file_of_a_hostile_folder(module_corpus, model_path, cli):
    # --score-anyway: the good files here are adults' radiographs; this test is about bad files
    r = cli("predict", str(module_corpus.root), "--model", str(model_path), "--device", "cpu", "--json",
            "--score-anyway", timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]  # some failed, some scored
    doc = strict_json(r.stdout)
    results = doc["results"]
    every, good = corpus_paths(module_corpus)
    listed = [x["path"] for x in results]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert every <= set(listed), sorted(every - set(listed))
    for x in results:
        if x["path"] in good:
            assert not x.get("error"), x
            p = x["pneumonia_probability"]
            assert isinstance(p, float) and 0.0 <= p <= 1.0 and x["pneumonia_label"] in ("positive", "negative")
        elif x["path"] in every:
            assert x["error"] and "\n" not in x["error"], x
            assert x["pneumonia_probability"] is None
    # every failure is also one line on stderr, and nothing else there is a traceback
    assert "Traceback" not in r.stderr
    for x in results:
        if x.get("error"):
            assert f"cxr-viewer predict: {x['path']}: {x['error']}" in r.stderr

    r = cli("predict", str(module_corpus.root), "--model", str(model_path), "--device", "cpu", "--csv",
            "--score-anyway", timeout=300)
    assert r.returncode == 1
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["path"] for row in rows} == set(listed) and len(rows) == len(listed)
    assert all(row["error"] or 0.0 <= float(row["pneumonia_probability"]) <= 1.0 for row in rows)


def test_predict_exit_2_with_complete_output_when_nothing_can_be_scored(module_corpus, model_path, cli):
    bad = [str(c.path) for c in module_corpus.index_errors.values()][:4]
    r = cli("predict", *bad, "--model", str(model_path), "--device", "cpu", timeout=120)
    assert r.returncode == 2
    doc = strict_json(r.stdout)
    assert sorted(x["path"] for x in doc["results"]) == sorted(bad)
    assert all(x["error"] for x in doc["results"])


def _faulty_score_many(real, die_at: str, nan_at: str):
    """score_many_task as if a layer below had a defect: the generator dies (an exception nobody
    turned into a per-file error) when it reaches ``die_at``, and ``nan_at`` gets a NaN score."""
    def faulty(scorer, refs, batch_size=8, cancel=inference.NEVER_CANCELLED, score_anyway=False):
        for row in real(scorer, refs, batch_size=batch_size, cancel=cancel, score_anyway=score_anyway):
            if row.path == die_at:
                raise RuntimeError("decoder crashed\nwith a second line")
            if row.path == nan_at:
                row = inference.WorklistRow(row.path, {h: (math.nan if v is not None else None)
                                                       for h, v in row.probabilities.items()})
            yield row
        return 0
    return faulty


def test_predict_survives_a_fault_below_and_never_prints_nan(shared_data, tmp_path, model_path, monkeypatch, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    jpegs = td.kermany_jpegs(shared_data, 6)
    for p in jpegs:
        shutil.copyfile(p, folder / p.name)
    shutil.copyfile(td.nih(shared_data), folder / "nih.dcm")
    refs = sorted(r.path for r in index([str(folder)]).images())
    assert len(refs) == 7
    die_at, nan_at = refs[2], refs[4]
    monkeypatch.setattr(inference, "score_many_task", _faulty_score_many(inference.score_many_task, die_at, nan_at))

    code = cli.main(["predict", str(folder), "--model", str(model_path), "--device", "cpu", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    results = {x["path"]: x for x in strict_json(out)["results"]}  # strict: no NaN / Infinity constants
    assert sorted(results) == refs  # every input exactly once, scored or with its reason
    assert results[die_at]["error"] == "cannot score: RuntimeError: decoder crashed"
    assert results[nan_at]["error"] == NON_FINITE and results[nan_at]["pneumonia_probability"] is None
    scored = [p for p in refs if p not in (die_at, nan_at)]
    for p in scored:
        assert not results[p].get("error")
        if p.endswith("nih.dcm"):  # an adult: set aside, with its reason, no number
            assert results[p]["pneumonia_status"] == "outside_intended_use" and results[p]["pneumonia_reason"]
            assert results[p]["pneumonia_probability"] is None
        else:
            assert results[p]["pneumonia_status"] == "scored" and 0.0 <= results[p]["pneumonia_probability"] <= 1.0
    assert "Traceback" not in err


def test_evaluate_skips_and_lists_bad_files(shared_data, tmp_path, model_path, cli):
    root = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        d = root / "test" / cls
        d.mkdir(parents=True)
        for p in td.kermany_jpegs(shared_data, 4, cls):
            shutil.copyfile(p, d / p.name)
    good_n = 8
    src = td.kermany_jpegs(shared_data, 1, "NORMAL")[0].read_bytes()
    (root / "test" / "NORMAL" / "cut.jpeg").write_bytes(src[: len(src) // 2])  # a truncated real JPEG
    (root / "test" / "PNEUMONIA" / "empty.png").write_bytes(b"")
    (root / "test" / "PNEUMONIA" / "notes.dcm").write_bytes((td.dicom_dir(shared_data) / "labels.csv").read_bytes())
    r = cli("evaluate", str(root), "--model", str(model_path), "--device", "cpu", "--precision", "fp32",
            "--bootstrap", "20", "--json", timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]  # some images skipped
    doc = strict_json(r.stdout)
    assert doc["heads"]["pneumonia"]["n"] == good_n
    skipped = {Path(s["path"]).name: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {"cut.jpeg", "empty.png", "notes.dcm"}
    for name in skipped:
        assert f"skipped {root}" in r.stderr and name in r.stderr
    assert "Traceback" not in r.stderr


def test_thumbnails_go_on_after_a_fault_in_one_file(module_corpus, monkeypatch):
    from cxr_viewer.io import thumbnails

    refs = list(index([str(module_corpus.root)]).images())
    victim = str(module_corpus.good["kermany"])
    real_load = thumbnails.load_image

    def load(ref, frame=0):
        if ref.path == victim:
            raise ValueError("broken decoder state")  # not an ImageOpenError: a defect below
        return real_load(ref, frame)

    monkeypatch.setattr(thumbnails, "load_image", load)
    thumbs = list(thumbnails.thumbnails_task(refs))
    assert [t.path for t in thumbs] == [r.path for r in refs]
    by_path = {t.path: t for t in thumbs}
    assert by_path[victim].pixels is None
    assert by_path[victim].error.startswith("cannot make a thumbnail: ") and "broken decoder state" in by_path[victim].error
    for name, p in module_corpus.good.items():
        if str(p) != victim and str(p) in by_path:
            assert by_path[str(p)].pixels is not None, name
    for case in module_corpus.decode_errors.values():
        if str(case.path) in by_path:
            assert by_path[str(case.path)].pixels is None and by_path[str(case.path)].error


def test_closed_stdout_ends_quietly(shared_data):
    """``cxr-viewer info --json NIH | head -c 10``: no BrokenPipeError traceback, exit 141 (SIGPIPE)."""
    cmd = [sys.executable, "-m", "cxr_viewer", "info", "--json", str(shared_data / "nih")]
    proc = subprocess.Popen(cmd, cwd=td.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.read(10)
    proc.stdout.close()  # the reader goes away long before the document (several 100 KB) is written
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=300)
    assert first.startswith(b"{")
    assert err == "", err
    assert code == 141


def test_closed_stdout_in_process(shared_data, monkeypatch):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert cli.main(["info", "--json", str(td.nih(shared_data))]) == 141
