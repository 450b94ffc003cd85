"""Hostile model files and images never give a silent wrong number.

Every value of a model description (``NAME.json`` beside ``NAME.safetensors``) is checked; a bad
one is a one-line ModelFileError in-process and exit 2 with one stderr line from ``predict``.
Weights must be finite with non-negative BatchNorm variances; the SHA-256 reported is that of the
bytes loaded. An image whose model input or output is not finite is a listed failure, never a
score, and one failing file never ends a batch.

The model files are the shipped default model (``models/default.*``) copied and edited; when it is
absent, a seeded random-weights fixture model stands in (the file format is the same).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import DEFAULT_MODEL, make_test_model

import cxr_viewer.ai.model as model_mod
from cxr_viewer.ai import inference
from cxr_viewer.ai.inference import NONFINITE_INPUT, NONFINITE_OUTPUT, Scorer, UnscorableImageError, score_many_task
from cxr_viewer.ai.model import ModelFileError, load_model, read_meta, save_model, sidecar_path
from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.io.image import open_image

# --- the model files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the real default model (else a fixture model) that each case links to or edits."""
    folder = tmp_path_factory.mktemp("source")
    dst = folder / "m.safetensors"
    if DEFAULT_MODEL.exists():
        dst.write_bytes(DEFAULT_MODEL.read_bytes())
        Path(sidecar_path(str(dst))).write_bytes(Path(sidecar_path(str(DEFAULT_MODEL))).read_bytes())
        return dst
    return make_test_model(dst)


@pytest.fixture(scope="module")
def source_doc(source) -> dict:
    return json.loads(Path(sidecar_path(str(source))).read_text())


@pytest.fixture(scope="module")
def image_path(shared_data) -> Path:
    """A real radiograph for ``predict`` (the model is refused before it is read)."""
    import cxr_testdata as td

    return td.kermany_jpegs(shared_data, 1)[0]


def _linked(source: Path, folder: Path) -> Path:
    """A model in ``folder`` whose weights are the source's (a symbolic link: no 50 MB copy per case)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "doctored.safetensors"
    weights.symlink_to(source)
    return weights


def _set(field: str, value):
    def edit(doc: dict) -> dict:
        node = doc
        *parents, last = field.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
        return doc
    return edit


def _drop(field: str):
    def edit(doc: dict) -> dict:
        node = doc
        *parents, last = field.split(".")
        for key in parents:
            node = node[key]
        del node[last]
        return doc
    return edit


def _nested(depth: int):
    """metrics nested ``depth`` lists deep (the text is spliced in: json.dumps would recurse)."""
    def text(doc: dict) -> str:
        doc["metrics"] = "@@DEEP@@"
        return json.dumps(doc).replace('"@@DEEP@@"', "[" * depth + "]" * depth)
    return text


def _raw(data: bytes):
    return lambda doc: data


def _padded(doc: dict) -> str:
    return json.dumps(doc) + " " * (1 << 20)


class _Special:
    """The sidecar is not a regular file: /dev/zero (a link to it), a FIFO or a folder."""

    def __init__(self, kind: str):
        self.kind = kind

    def make(self, side: Path) -> None:
        if self.kind == "dev_zero":
            side.symlink_to("/dev/zero")
        elif self.kind == "fifo":
            os.mkfifo(side)
        else:
            side.mkdir()


def _huge_threshold(doc: dict) -> str:
    doc["heads"]["pneumonia"]["threshold"] = "@@BIG@@"
    return json.dumps(doc).replace('"@@BIG@@"', "1" + "0" * 400)  # an integer no float can hold


def _many_digits(doc: dict) -> str:
    doc["head_hidden"] = "@@BIG@@"
    return json.dumps(doc).replace('"@@BIG@@"', "9" * 5000)  # past Python's int-from-text digit limit


# (id, edit of the description: doc -> doc | text | bytes, or a maker of a special file; the message;
#  whether ``predict`` is run in a subprocess too). The cases the issue found first all run predict.
SIDECAR_CASES = [
    ("temperature_negative", _set("heads.pneumonia.temperature", -1), r"heads\.pneumonia\.temperature must be", True),
    ("temperature_zero", _set("heads.pneumonia.temperature", 0), r"heads\.pneumonia\.temperature must be", True),
    ("threshold_nan", _set("heads.pneumonia.threshold", float("nan")), r"heads\.pneumonia\.threshold must be", True),
    ("threshold_two", _set("heads.pneumonia.threshold", 2), r"heads\.pneumonia\.threshold must be", True),
    ("std_zero", _set("preprocessing.std", 0), r"preprocessing\.std must be", True),
    ("input_size_8", _set("preprocessing.input_size", 8), r"preprocessing\.input_size must be", True),
    ("input_size_0", _set("preprocessing.input_size", 0), r"preprocessing\.input_size must be", True),
    ("input_size_string", _set("preprocessing.input_size", "224"), r"preprocessing\.input_size must be", True),
    ("channels_1", _set("preprocessing.channels", 1), r"preprocessing\.channels must be", True),
    ("percentile_150", _set("preprocessing.high_percentile", 150), r"preprocessing\.high_percentile must be", True),
    ("heads_list", _set("heads", ["pneumonia"]), r"heads must be a JSON object", True),
    ("json_100000_deep", _nested(100_000), r"nests too deeply", True),
    ("sidecar_dev_zero", _Special("dev_zero"), r"not a regular file", True),
    ("sidecar_fifo", _Special("fifo"), r"not a regular file", True),
    # the other values, in-process
    ("temperature_inf", _set("heads.pneumonia.temperature", float("inf")), r"temperature must be", False),
    ("temperature_string", _set("heads.pneumonia.temperature", "1.2"), r"temperature must be", False),
    ("temperature_huge", _set("heads.pneumonia.temperature", 1e9), r"temperature must be", False),
    ("threshold_zero", _set("heads.pneumonia.threshold", 0), r"threshold must be", False),
    ("threshold_one", _set("heads.pneumonia.threshold", 1.0), r"threshold must be", False),
    ("threshold_bool", _set("heads.pneumonia.threshold", True), r"threshold must be", False),
    ("threshold_huge_integer", _huge_threshold, r"threshold must be", False),
    ("untrained_head_temperature", _set("heads.lung_cancer_association.temperature", -1),
     r"lung_cancer_association\.temperature must be", False),
    ("trained_string", _set("heads.pneumonia.trained", "yes"), r"trained must be true or false", False),
    ("head_not_object", _set("heads.pneumonia", 1), r"heads\.pneumonia must be a JSON object", False),
    ("heads_empty", _set("heads", {}), r"heads must be a JSON object of at least one head", False),
    ("heads_unknown", _set("heads.tuberculosis", {"trained": True}), r"unknown heads", False),
    ("heads_missing", _drop("heads"), r"heads must be", False),
    ("operating_point_above_1", _set("heads.pneumonia.operating_point.sensitivity", 1.5),
     r"operating_point\.sensitivity must be", False),
    ("operating_point_list", _set("heads.pneumonia.operating_point", [0.9, 0.8]), r"operating_point must be", False),
    ("positive_number", _set("heads.pneumonia.positive", 1), r"positive must be a string", False),
    ("std_negative", _set("preprocessing.std", -0.25), r"std must be", False),
    ("std_nan", _set("preprocessing.std", float("nan")), r"std must be", False),
    ("std_tiny", _set("preprocessing.std", 1e-12), r"std must be", False),
    ("mean_inf", _set("preprocessing.mean", float("-inf")), r"mean must be", False),
    ("mean_string", _set("preprocessing.mean", "0.5"), r"mean must be", False),
    ("low_percentile_negative", _set("preprocessing.low_percentile", -1), r"low_percentile must be", False),
    ("percentiles_crossed", _set("preprocessing.low_percentile", 99.9), r"low_percentile must be below", False),
    ("input_size_float", _set("preprocessing.input_size", 224.0), r"input_size must be an integer", False),
    ("input_size_4096", _set("preprocessing.input_size", 4096), r"input_size must be an integer", False),
    ("input_size_bool", _set("preprocessing.input_size", True), r"input_size must be an integer", False),
    ("top_input_size_differs", _set("input_size", 8), r"input_size must be", False),
    ("resize_crop", _set("preprocessing.resize", "crop"), r"resize must be one of squash", False),
    ("preprocessing_version_3", _set("preprocessing.version", 3), r"preprocessing\.version must be", False),
    ("preprocessing_list", _set("preprocessing", [224]), r"preprocessing must be a JSON object", False),
    ("head_hidden_string", _set("head_hidden", "256"), r"head_hidden must be", False),
    ("head_hidden_zero", _set("head_hidden", 0), r"head_hidden must be", False),
    ("head_activation_unknown", _set("head_activation", "swish"), r"head_activation must be one of", False),
    ("version_integer", _set("version", 1), r"version must be a string", False),
    ("name_null", _set("name", None), r"name must be a string", False),
    ("created_number", _set("created", 20240101), r"created must be a string", False),
    ("notice_list", _set("notice", []), r"notice must be a string", False),
    ("weights_dtype_int8", _set("weights_dtype", "int8"), r"weights_dtype must be one of", False),
    ("sha_not_hex", _set("weights_sha256", "z" * 64), r"weights_sha256 must be 64", False),
    ("sha_missing", _drop("weights_sha256"), r"no weights SHA-256", False),
    ("classes_differ", _set("classes.pneumonia", ["PNEUMONIA", "NORMAL"]), r"classes\.pneumonia must be", False),
    ("training_list", _set("training", []), r"training must be a JSON object", False),
    ("metrics_string", _set("metrics", "good"), r"metrics must be a JSON object", False),
    ("format_other", _set("format", "other/1"), r"not a cxr_viewer model description", False),
    ("architecture_other", _set("architecture", "vit"), r"unsupported architecture", False),
    ("json_40_deep", _nested(40), r"nests deeper than 32", False),
    ("integer_of_5000_digits", _many_digits, r"cannot read the model description", False),
    ("not_an_object", _raw(b"[1, 2, 3]"), r"not a JSON object", False),
    ("not_utf8", _raw(b'{"format": "\xff\xfe"}'), r"cannot read the model description", False),
    ("not_json", _raw(b"{not json"), r"cannot read the model description", False),
    ("over_1_mib", _padded, r"too large", False),
    ("sidecar_folder", _Special("folder"), r"is a folder", False),
]



def _doctor(source: Path, doc: dict, folder: Path, edit) -> Path:
    weights = _linked(source, folder)
    side = Path(sidecar_path(str(weights)))
    if isinstance(edit, _Special):
        edit.make(side)
        return weights
    out = edit(copy.deepcopy(doc))
    if isinstance(out, dict):
        out = json.dumps(out)  # NaN and Infinity are written as such, as a careless tool would
    side.write_bytes(out if isinstance(out, bytes) else out.encode())
    return weights


def _load_in_thread(path: Path, timeout: float = 30.0):
    """load_model(path) with a hang turned into a test failure (a FIFO must never block)."""
    outcome: list = []

    def run():
        try:
            outcome.append(load_model(str(path)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for fifo in (path, Path(sidecar_path(str(path)))):  # unblock the reader before failing
            if fifo.is_fifo():
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"load_model blocked on {path.name}")
    return outcome[0]


def _one_line_exit_2(cli, model: Path, image: Path, match: str) -> str:
    r = cli("predict", str(image), "--model", str(model), "--device", "cpu", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cxr-viewer predict: cannot use model") and re.search(match, lines[0])
    assert r.stdout == ""
    return lines[0]


def test_the_unedited_copy_loads_and_predicts(source, source_doc, image_path, tmp_path, cli):
    """The control: the copy every case starts from is a good model, so each refusal is its edit's."""
    weights = _doctor(source, source_doc, tmp_path / "control", lambda d: d)
    model, meta = load_model(str(weights))
    assert meta.weights_sha256 == source_doc["weights_sha256"] and not model.training
    r = cli("predict", str(image_path), "--model", str(weights), "--device", "cpu", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["results"][0]["pneumonia_probability"] is not None


@pytest.mark.parametrize("case, edit, match, run_cli", SIDECAR_CASES, ids=[c[0] for c in SIDECAR_CASES])
def test_a_doctored_description_is_refused_in_one_line(case, edit, match, run_cli, source, source_doc, tmp_path,
                                                       request, cli):
    weights = _doctor(source, source_doc, tmp_path / case, edit)
    outcome = _load_in_thread(weights)
    assert isinstance(outcome, ModelFileError), f"{case}: loaded or failed otherwise: {outcome!r}"
    message = str(outcome)
    assert re.search(match, message), message
    assert "\n" not in message and len(message) < 300, message
    if run_cli:
        image = request.getfixturevalue("image_path")
        line = _one_line_exit_2(cli, weights, image, match)
        assert message in line


# --- weights --------------------------------------------------------------------------------


def _doctored_weights(source: Path, doc: dict, folder: Path, change, dtype: str | None = None) -> Path:
    """A copy of the weights changed by ``change(state)``, with a description whose SHA-256 matches
    (so only the new weight checks stand between these weights and a score)."""
    from safetensors.torch import load, save

    folder.mkdir(parents=True, exist_ok=True)
    state = load(source.read_bytes())
    change(state)
    data = save(state, metadata={"format": model_mod.FORMAT})
    weights = folder / "doctored.safetensors"
    weights.write_bytes(data)
    doc = copy.deepcopy(doc)
    doc["weights_sha256"] = hashlib.sha256(data).hexdigest()
    if dtype:
        doc["weights_dtype"] = dtype
    Path(sidecar_path(str(weights))).write_text(json.dumps(doc))
    return weights


def _poke(key: str, value: float):
    def change(state):
        t = state[key].clone()
        t.view(-1)[0] = value
        state[key] = t
    return change


def _drop_head(head: str):
    def change(state):
        for k in [k for k in state if k.startswith(f"heads.{head}.")]:
            del state[k]
    return change


WEIGHT_CASES = [
    ("nan_weight", _poke("backbone.layer3.0.conv1.weight", float("nan")), None,
     r"non-finite values \(NaN or infinity\) in backbone\.layer3\.0\.conv1\.weight", True),
    ("inf_weight", _poke("heads.pneumonia.3.bias", float("inf")), None,
     r"non-finite values \(NaN or infinity\) in heads\.pneumonia\.3\.bias", False),
    ("negative_bn_variance", _poke("backbone.layer1.0.bn2.running_var", -0.5), None,
     r"negative BatchNorm variance in backbone\.layer1\.0\.bn2\.running_var", True),
    ("trained_head_missing", _drop_head("pneumonia"), None, r"do not fit the architecture: 4 missing", False),
    ("dtype_not_described", lambda state: None, "bfloat16", r"do not match their description: .* expected bfloat16",
     False),
]


@pytest.mark.parametrize("case, change, dtype, match, run_cli", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_weights_with_a_matching_sha_are_refused(case, change, dtype, match, run_cli, source, source_doc,
                                                     tmp_path, request, cli):
    weights = _doctored_weights(source, source_doc, tmp_path / case, change, dtype)
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(str(weights))
    assert "\n" not in str(info.value)
    if run_cli:
        _one_line_exit_2(cli, weights, request.getfixturevalue("image_path"), match)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_weights_that_are_not_a_regular_file_are_refused_without_blocking(kind, source, source_doc, tmp_path):
    weights = tmp_path / "w.safetensors"
    if kind == "fifo":
        os.mkfifo(weights)
    elif kind == "dev_zero":
        weights.symlink_to("/dev/zero")
    else:
        weights.mkdir()
    Path(sidecar_path(str(weights))).write_text(json.dumps(source_doc))
    outcome = _load_in_thread(weights)
    assert isinstance(outcome, ModelFileError), repr(outcome)
    assert "a folder" in str(outcome) if kind == "folder" else "not a regular file" in str(outcome)


def test_the_sha_reported_is_that_of_the_bytes_loaded(source, source_doc, tmp_path, monkeypatch):
    """The file is swapped for other (valid) weights right after it is read: the model holds the
    bytes that were read and hashed, never a mix of one file's SHA and another's weights."""
    import safetensors.torch

    weights = tmp_path / "m.safetensors"
    weights.write_bytes(source.read_bytes())
    Path(sidecar_path(str(weights))).write_text(json.dumps(source_doc))
    other = _doctored_weights(source, source_doc, tmp_path / "other",
                              _poke("heads.pneumonia.3.bias", 7.0))  # a valid model with another SHA
    read_bytes, parsed = [], []
    real_read, real_load = model_mod._read_regular_file, safetensors.torch.load

    def read_then_swap(path, limit, what):
        data = real_read(path, limit, what)
        if path == str(weights):
            read_bytes.append(data)
            os.replace(other, weights)  # the swap the old hash-then-reopen code fell for
        return data

    def spying_load(data):
        parsed.append(data)
        return real_load(data)

    monkeypatch.setattr(model_mod, "_read_regular_file", read_then_swap)
    monkeypatch.setattr(safetensors.torch, "load", spying_load)
    model, meta = load_model(str(weights))
    assert len(read_bytes) == 1 and parsed == read_bytes  # read once; those very bytes parsed
    assert meta.weights_sha256 == hashlib.sha256(read_bytes[0]).hexdigest() == source_doc["weights_sha256"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() != meta.weights_sha256  # the file on disk changed
    original = real_load(read_bytes[0])["heads.pneumonia.3.bias"].float()
    assert torch.equal(model.heads["pneumonia"][3].bias.detach(), original)  # not the swapped-in 7.0
    assert float(original[0]) != 7.0


def test_save_model_refuses_a_description_it_could_not_load(tmp_path):
    from cxr_viewer.ai.model import CxrNet, HeadInfo, ModelMeta

    meta = ModelMeta()
    meta.heads["pneumonia"] = HeadInfo(trained=True, threshold=1.0)  # no score reaches it
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ModelFileError, match="threshold must be"):
        save_model(CxrNet(), meta, str(path))
    assert not path.exists() and not Path(sidecar_path(str(path))).exists()


def test_a_saved_model_reads_back_with_the_sha_of_its_bytes(tmp_path):
    path = make_test_model(tmp_path / "m.safetensors")
    meta = read_meta(str(path))
    assert meta.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.weights_dtype == "float16"


# --- scoring: non-finite inputs and outputs, one bad file in a batch ---------------------------


@pytest.fixture(scope="module")
def scorer(source) -> Scorer:
    return Scorer.from_file(str(source), "cpu", "fp32")


@pytest.fixture(scope="module")
def real_images(shared_data) -> list[Path]:
    import cxr_testdata as td

    return [*td.kermany_jpegs(shared_data, 2, "NORMAL"), *td.kermany_jpegs(shared_data, 2, "PNEUMONIA")]


def _with_values(image, values: np.ndarray):
    return dataclasses.replace(image, values=values.astype(np.float32))


@pytest.mark.parametrize("bad", ["nan_everywhere", "nan_block", "inf_pixel"])
def test_a_non_finite_image_is_not_scored(bad, scorer, real_images):
    image = open_image(str(real_images[0]))
    values = image.values.astype(np.float32).copy()
    if bad == "nan_everywhere":
        values[:] = np.nan
    elif bad == "nan_block":
        values[50:80, 60:90] = np.nan
    else:
        values[100, 100] = np.inf
    broken = _with_values(image, values)
    assert scorer.score(image, heatmaps=False).head("pneumonia").probability is not None  # the control
    for heatmaps in (False, True):
        with pytest.raises(UnscorableImageError, match="non-finite pixel values") as info:
            scorer.score(broken, heatmaps=heatmaps)
        assert isinstance(info.value, ImageOpenError) and str(info.value) == NONFINITE_INPUT


def test_a_non_finite_model_output_is_not_a_score(scorer, real_images, monkeypatch):
    """An infinite logit would be a plausible-looking 1.0 after the sigmoid: it is a failure instead."""
    real_heads = scorer.model.head_logits

    def inf_for_the_first(fmap):
        logits = real_heads(fmap).clone()
        logits[0, 0] = math.inf
        return logits

    monkeypatch.setattr(scorer.model, "head_logits", inf_for_the_first)
    image = open_image(str(real_images[0]))
    for heatmaps in (False, True):
        with pytest.raises(UnscorableImageError, match="non-finite output"):
            scorer.score(image, heatmaps=heatmaps)
    rows = list(score_many_task(scorer, [open_image(str(p)).ref for p in real_images[:2]], batch_size=2))
    assert rows[0].error == NONFINITE_OUTPUT and rows[0].probabilities["pneumonia"] is None
    assert not rows[1].error and 0.0 <= rows[1].probabilities["pneumonia"] <= 1.0


def _drive(gen):
    rows = []
    while True:
        try:
            rows.append(next(gen))
        except StopIteration as stop:
            return rows, stop.value


def test_one_bad_file_of_any_kind_never_ends_the_batch(scorer, real_images, monkeypatch):
    refs = [open_image(str(p)).ref for p in real_images]
    nan_path, boom_path = refs[1].path, refs[2].path
    real_load = inference.load_image

    def load_image(ref, frame=0):
        if ref.path == boom_path:
            raise KeyError("a decoder bug nobody planned for")
        image = real_load(ref, frame)
        if ref.path == nan_path:
            values = image.values.astype(np.float32).copy()
            values[10:20, 10:20] = np.nan
            image = _with_values(image, values)
        return image

    monkeypatch.setattr(inference, "load_image", load_image)
    rows, scored = _drive(score_many_task(scorer, refs, batch_size=2))
    by_path = {r.path: r for r in rows}
    assert len(rows) == len(refs) and scored == len(refs) - 2
    assert by_path[nan_path].error == NONFINITE_INPUT
    boom = by_path[boom_path].error
    assert boom.startswith("unexpected error while decoding: KeyError") and "decoder bug" in boom and "\n" not in boom
    for r in rows:
        if r.path not in (nan_path, boom_path):
            assert not r.error and 0.0 <= r.probabilities["pneumonia"] <= 1.0
        else:
            assert all(p is None for p in r.probabilities.values())


def test_a_batch_the_model_fails_on_is_scored_image_by_image(scorer, real_images, monkeypatch):
    refs = [open_image(str(p)).ref for p in real_images]
    poisoned = inference.model_input(open_image(refs[3].path), scorer)
    real = scorer.batch_probabilities_and_distances

    def failing(x):
        if any(np.array_equal(row, poisoned) for row in x):
            raise RuntimeError("device lost")
        return real(x)

    monkeypatch.setattr(scorer, "batch_probabilities_and_distances", failing)
    rows, scored = _drive(score_many_task(scorer, refs, batch_size=4))
    assert scored == 3
    assert [r.path for r in rows if r.error] == [refs[3].path]
    assert next(r for r in rows if r.error).error == "unexpected error while scoring: RuntimeError: device lost"


_PREDICT_WITH_A_NAN_IMAGE = """
import dataclasses
import sys

import numpy as np
from cxr_viewer.ai import inference
from cxr_viewer.cli import main

real = inference.load_image

def load_image(ref, frame=0):
    image = real(ref, frame)
    if ref.path.endswith("/nan.jpeg"):
        image = dataclasses.replace(image, values=np.full_like(image.values, np.nan))  # a decoder bug's output
    return image

inference.load_image = load_image
sys.exit(main(sys.argv[1:]))
"""


def test_predict_lists_a_nan_image_as_a_failure_and_writes_valid_json(source, real_images, tmp_path, cli):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "good.jpeg").write_bytes(real_images[0].read_bytes())
    (folder / "nan.jpeg").write_bytes(real_images[1].read_bytes())
    r = cli("predict", str(folder), "--model", str(source), "--device", "cpu",
            python_code=_PREDICT_WITH_A_NAN_IMAGE, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]

    def no_constants(name):
        raise AssertionError(f"{name} in predict's JSON")

    doc = json.loads(r.stdout, parse_constant=no_constants)  # NaN is not JSON
    rows = {Path(x["path"]).name: x for x in doc["results"]}
    assert rows["nan.jpeg"]["error"] == NONFINITE_INPUT
    assert rows["nan.jpeg"]["pneumonia_probability"] is None and rows["nan.jpeg"]["pneumonia_label"] is None
    assert "error" not in rows["good.jpeg"] and 0.0 <= rows["good.jpeg"]["pneumonia_probability"] <= 1.0
    assert f"nan.jpeg: {NONFINITE_INPUT}" in r.stderr


def test_an_operating_point_without_cases_is_null_not_a_number(source, source_doc, tmp_path):
    """Training writes null sensitivity when its validation split has no positives: that loads, as no number."""
    doc = copy.deepcopy(source_doc)
    doc["heads"]["pneumonia"]["operating_point"] = {"sensitivity": None, "specificity": 0.9}
    weights = _doctor(source, doc, tmp_path / "null_op", lambda d: d)
    meta = read_meta(str(weights))
    assert meta.heads["pneumonia"].operating_point == {"sensitivity": None, "specificity": 0.9}
