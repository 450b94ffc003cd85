"""The nodule/mass model (lung-cancer association): lung box, input, map, location, file format,
the scorer's use of it, and its training recipe's parts. Networks here have RANDOM weights (the
plumbing is tested, not what a trained model says); the trained model's numbers are in
models/NODULE_CARD.md and models/nodule.report.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import make_test_model, make_test_nodule_model

from cxr_viewer.ai.model import ModelFileError
from cxr_viewer.ai.nodule import (
    HEATMAP_SIZE,
    STRIDE,
    LungBox,
    NoduleModel,
    NoduleNet,
    crop_resize,
    heatmap_over_image,
    lung_box,
    masked_max,
    nodule_unit,
    peak_box,
    windowed_maps,
)
from cxr_viewer.training import nodule as tn


def test_lung_box_is_square_padded_and_centred_on_the_lungs():
    mask = np.zeros((400, 300), bool)
    mask[100:300, 50:250] = True  # 200 x 200 lungs
    box = lung_box(mask, mask.shape)
    assert box.from_lungs
    assert box.side == pytest.approx(200 * 1.12)
    assert box.x0 + box.side / 2 == pytest.approx(150) and box.y0 + box.side / 2 == pytest.approx(200)


def test_lung_box_falls_back_to_the_whole_image_without_lungs():
    shape = (300, 400)
    for mask in (None, np.zeros(shape, bool), np.pad(np.ones((5, 5), bool), ((0, 295), (0, 395)))):
        box = lung_box(mask, shape)
        assert not box.from_lungs and box.side == 400 and box.x0 == 0 and box.y0 == -50


def test_crop_resize_maps_the_box_and_fills_outside_with_zero():
    img = np.tile(np.arange(100, dtype=np.float32), (100, 1)) + 1  # value = column + 1
    out = crop_resize(img, LungBox(50, 0, 100, True), 50)  # right half inside, the rest outside
    assert out.shape == (50, 50)
    assert out[:, :24].mean() == pytest.approx(img[:, 50:98].mean(), abs=2)
    assert np.all(out[:, 27:] == 0)


def test_nodule_unit_shapes_and_lung_cells():
    values = np.random.default_rng(0).random((600, 500)).astype(np.float32) * 4000
    lungs = np.zeros(values.shape, bool)
    lungs[100:500, 60:440] = True
    unit, cells, box = nodule_unit(values, False, None, lungs)
    assert unit.shape == (512, 512) and unit.dtype == np.float32 and 0 <= unit.min() and unit.max() <= 1
    assert cells.shape == (512 // STRIDE, 512 // STRIDE) and cells.dtype == bool
    assert 0.5 < cells.mean() < 1.0 and not cells[0, 0]
    assert box.from_lungs


def test_masked_max_only_looks_inside_the_mask():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = 9.0  # outside the mask
    m[0, 2, 3] = 2.0
    cells = torch.zeros(1, 4, 4, dtype=torch.bool)
    cells[0, 2:, 2:] = True
    v, i = masked_max(m, cells)
    assert float(v[0]) == 2.0 and int(i[0]) == 2 * 4 + 3
    v, i = masked_max(m, torch.zeros(1, 4, 4, dtype=torch.bool))  # no lung cell: all cells
    assert float(v[0]) == 9.0


def test_peak_box_covers_the_blob_around_the_peak_and_no_more():
    lmap = np.full((32, 32), -5.0, np.float32)
    lmap[10:13, 20:22] = 1.0
    lmap[11, 21] = 1.5
    lmap[0:3, 0:3] = 1.4  # a second blob, not connected
    r0, c0, r1, c1 = peak_box(lmap, 11 * 32 + 21)
    assert (r0, c0, r1, c1) == (10, 20, 13, 22)
    lmap[:, :] = 3.0  # everything within the drop: capped
    r0, c0, r1, c1 = peak_box(lmap, 16 * 32 + 16, max_cells=6)
    assert r1 - r0 <= 6 and c1 - c0 <= 6 and r0 <= 16 < r1 and c0 <= 16 < c1


def test_heatmap_over_image_places_the_cells_in_the_box():
    cells = np.ones((32, 32), np.float32)
    heat = heatmap_over_image(cells, LungBox(500, 0, 500, True), (1000, 1000))
    assert heat.shape == (HEATMAP_SIZE, HEATMAP_SIZE)
    assert heat[:, : HEATMAP_SIZE // 2 - 1].max() == 0 and heat[: HEATMAP_SIZE // 2 - 1, HEATMAP_SIZE // 2 + 1:].min() == 1


def test_net_gives_a_map_at_stride_16():
    net = NoduleNet(width=16).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 128, 128))
    assert out.shape == (1, 128 // STRIDE, 128 // STRIDE)


class _CellMeans(torch.nn.Module):
    """A stand-in network that is exactly translation-equivariant: the mean of each 16 px cell."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x[:, 0:1], STRIDE)[:, 0]


@pytest.mark.parametrize("size", [512, 256, 128])
def test_windowed_maps_tile_every_cell_exactly_once(size):
    x = torch.rand(2, 3, size, size)
    whole = _CellMeans()(x)
    assert torch.allclose(windowed_maps(_CellMeans(), x, 128), whole)
    assert torch.allclose(windowed_maps(_CellMeans(), x, 2048), whole)


@pytest.fixture(scope="module")
def nodule_file(tmp_path_factory):
    return make_test_nodule_model(tmp_path_factory.mktemp("nod") / "n.safetensors")


def test_model_file_round_trip_and_find(nodule_file):
    model = NoduleModel.from_file(str(nodule_file))
    assert model.meta.available and model.meta.threshold == 0.05
    values = np.random.default_rng(1).random((300, 280)).astype(np.float32)
    lungs = np.zeros(values.shape, bool)
    lungs[50:250, 30:250] = True
    f = model.find(values, False, None, lungs)
    assert 0 < f.probability < 1 and math.isfinite(f.logit)
    x0, y0, x1, y1 = f.box
    assert 0 <= x0 < x1 <= 280 and 0 <= y0 < y1 <= 300
    assert x0 <= f.peak[0] <= x1 and y0 <= f.peak[1] <= y1
    assert f.heatmap.shape == (HEATMAP_SIZE, HEATMAP_SIZE) and 0 <= f.heatmap.min() and f.heatmap.max() <= 1
    assert f.lungs_found


def _edit_description(path, **changes):
    side = Path(str(path).replace(".safetensors", ".json"))
    doc = json.loads(side.read_text())
    doc.update(changes)
    side.write_text(json.dumps(doc))


@pytest.mark.parametrize("changes, words", [
    ({"format": "cxr_viewer.model/1"}, "not a cxr_viewer nodule-model description"),
    ({"threshold": 1.5}, "threshold"),
    ({"architecture": "vgg"}, "architecture"),
    ({"stride": 32}, "stride"),
    ({"window": 100}, "window"),
    ({"weights_sha256": "0" * 64}, "do not match"),
    ({"operating_point": {"sensitivity": 2}}, "sensitivity"),
])
def test_a_wrong_description_is_refused_in_one_line(tmp_path, changes, words):
    path = make_test_nodule_model(tmp_path / "n.safetensors")
    _edit_description(path, **changes)
    with pytest.raises(ModelFileError, match=words) as err:
        NoduleModel.from_file(str(path))
    assert "\n" not in str(err.value)


def test_a_pickle_or_a_truncated_file_is_refused(tmp_path):
    path = make_test_nodule_model(tmp_path / "n.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="do not match"):
        NoduleModel.from_file(str(path))
    path.write_bytes(b"\x80\x04" + data[2:100])
    with pytest.raises(ModelFileError, match="pickle"):
        NoduleModel.from_file(str(path))


# --- the scorer ------------------------------------------------------------------------------

def _image(tmp_path, size=(320, 300)):
    from PIL import Image

    from cxr_viewer.io.image import load_image
    from cxr_viewer.io.index import index

    arr = (np.random.default_rng(2).random(size) * 255).astype(np.uint8)
    p = tmp_path / "img.png"
    Image.fromarray(arr).save(p)
    return load_image(next(iter(index([str(p)]).images())), 0)


@pytest.fixture()
def scorer_with(tmp_path, monkeypatch):
    from cxr_viewer.ai.inference import Scorer

    model = make_test_model(tmp_path / "m.safetensors")

    def make(nodule_path):
        monkeypatch.setenv("CXR_VIEWER_NODULE", str(nodule_path))
        return Scorer.from_file(str(model), device="cpu", precision="fp32")
    return make


LUNG = "lung_cancer_association"


def test_scorer_scores_the_lung_head_with_the_nodule_model_and_marks_where(tmp_path, scorer_with):
    scorer = scorer_with(make_test_nodule_model(tmp_path / "n.safetensors"))
    assert LUNG in scorer.trained and LUNG in scorer.summary().trained_heads
    img = _image(tmp_path)
    result = scorer.score(img, score_anyway=True)  # a random picture is outside every intended use
    hs = result.head(LUNG)
    assert hs.available and hs.positive and hs.status == "scored_outside_intended_use"
    x0, y0, x1, y1 = hs.location
    assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 320
    assert result.heatmaps[LUNG].shape == (HEATMAP_SIZE, HEATMAP_SIZE)
    assert result.companion[2] == scorer.nodule.model.meta.weights_sha256
    # without score_anyway the image check keeps it unscored, with no number and no place
    plain = scorer.score(img)
    assert plain.head(LUNG).probability is None and plain.head(LUNG).location is None
    assert LUNG not in plain.heatmaps


def test_no_place_is_marked_below_the_threshold(tmp_path, scorer_with):
    path = make_test_nodule_model(tmp_path / "n.safetensors")
    _edit_description(path, threshold=0.999)
    scorer = scorer_with(path)
    hs = scorer.score(_image(tmp_path), score_anyway=True).head(LUNG)
    assert hs.available and not hs.positive and hs.location is None


def test_a_model_that_has_not_earned_a_score_gives_none_and_says_why(tmp_path, scorer_with):
    path = make_test_nodule_model(tmp_path / "n.safetensors")
    note = "JSRT cross-validated AUROC 0.640 (95% CI 0.560-0.720); the lower bound must be above 0.7"
    # the description is re-written through the model's own writer so that its checks still hold
    model = NoduleModel.from_file(str(path))
    model.meta.available, model.meta.note = False, note
    model.save(str(path))
    scorer = scorer_with(path)
    assert LUNG not in scorer.trained
    result = scorer.score(_image(tmp_path), score_anyway=True)
    hs = result.head(LUNG)
    assert not hs.available and hs.probability is None and hs.status == "not_available"
    assert "0.640" in hs.reason and LUNG not in result.heatmaps
    assert "0.640" in scorer.summary().head_notes[LUNG]


def test_a_broken_nodule_model_leaves_the_rest_working(tmp_path, scorer_with):
    path = make_test_nodule_model(tmp_path / "n.safetensors")
    path.write_bytes(b"not safetensors at all")
    scorer = scorer_with(path)
    result = scorer.score(_image(tmp_path), score_anyway=True)
    assert result.head("pneumonia").available
    assert "cannot be used" in result.head(LUNG).reason and result.head(LUNG).probability is None


def test_the_batch_path_scores_the_nodule_head_only_where_the_checks_allow_and_lets_images_go(tmp_path, scorer_with):
    from cxr_viewer.ai.inference import _prepare, _score_rows

    scorer = scorer_with(make_test_nodule_model(tmp_path / "n.safetensors"))
    img = _image(tmp_path)
    calls, real = [], scorer.nodule.find
    scorer.nodule.find = lambda *a, **k: calls.append(1) or real(*a, **k)
    prepared = _prepare(img.ref, scorer)
    assert prepared.nodule_image is not None
    (row,) = _score_rows(scorer, [prepared])  # a random picture: the image check says no
    assert row.probabilities[LUNG] is None and LUNG not in row.locations and not calls
    assert prepared.nodule_image is None  # the full image is not kept once its row is out
    prepared = _prepare(img.ref, scorer)
    (row,) = _score_rows(scorer, [prepared], score_anyway=True)
    assert calls and 0 < row.probabilities[LUNG] < 1 and len(row.locations[LUNG]) == 4
    assert prepared.nodule_image is None


def test_a_nodule_model_failing_on_an_image_is_that_head_s_one_line_reason(tmp_path, scorer_with):
    scorer = scorer_with(make_test_nodule_model(tmp_path / "n.safetensors"))

    def broken(*_a, **_k):
        raise RuntimeError("kaput\nsecond line")
    scorer.nodule.find = broken
    result = scorer.score(_image(tmp_path), score_anyway=True)
    assert result.head("pneumonia").available and result.companion is None
    hs = result.head(LUNG)
    assert hs.probability is None and hs.status == "not_available" and "kaput" in hs.reason and "\n" not in hs.reason


def test_predict_json_reports_the_nodule_probability_and_box(tmp_path, monkeypatch, cli):
    model = make_test_model(tmp_path / "m.safetensors")
    monkeypatch.setenv("CXR_VIEWER_NODULE", str(make_test_nodule_model(tmp_path / "n.safetensors")))
    img = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(3).random((200, 220)) * 255).astype(np.uint8)).save(img)
    out = cli("predict", "--model", str(model), "--json", "--score-anyway", str(img))
    rec = json.loads(out.stdout)[0] if out.stdout.lstrip().startswith("[") else json.loads(out.stdout)["results"][0]
    assert 0 < rec[f"{LUNG}_probability"] < 1 and rec[f"{LUNG}_label"] == "positive"
    x0, y0, x1, y1 = rec[f"{LUNG}_box"]
    assert 0 <= x0 < x1 <= 220 and 0 <= y0 < y1 <= 200
    assert len(rec["nodule_model_sha256"]) == 64


# --- the training recipe ---------------------------------------------------------------------

def _toy_data(n_jsrt=10, n_nih=12, size=128):
    rng = np.random.default_rng(0)
    units = (rng.random((n_jsrt + n_nih, size, size)) * 0.2 + 0.4).astype(np.float16)
    cells = np.zeros((n_jsrt + n_nih, size // STRIDE, size // STRIDE), bool)
    cells[:, 1:-1, 1:-1] = True
    nodules, labels, groups, sources = [], [], [], []
    for i in range(n_jsrt):
        pos = i % 2 == 0
        nodules.append([(64.0, 48.0, 6.0)] if pos else [])
        if pos:
            yy, xx = np.mgrid[:size, :size]
            units[i][np.hypot(xx - 64, yy - 48) <= 6] = 0.9
        labels.append(int(pos)), groups.append(f"jsrt:{i}"), sources.append("jsrt")
    for j in range(n_nih):
        nodules.append([])
        labels.append(int(j % 3 == 0)), groups.append(f"nih:{j // 2}"), sources.append("nih")
    mm = np.array([0.6] * n_jsrt + [np.nan] * n_nih)
    return tn.NoduleData([f"i{k}" for k in range(len(labels))], np.array(sources), np.array(groups),
                         np.array(labels), units, cells, nodules, mm, spec_size=size)


def test_folds_keep_patients_together_and_share_sources_and_labels():
    data = _toy_data()
    folds = tn.stratified_group_folds(data, 3, 0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(data.ids)))
    where = {}
    for f, idx in enumerate(folds):
        for i in idx:
            assert where.setdefault(data.groups[i], f) == f  # one patient, one fold
        assert {"jsrt", "nih"} <= set(data.sources[idx]) and data.labels[idx].sum() > 0


def test_a_patch_on_a_nodule_has_positive_cells_there_and_a_positive_label():
    data = _toy_data()
    cfg = tn.NoduleConfig(patch=64, batch=2)
    s = tn._Sampler(data, np.arange(len(data.ids)), cfg, torch.Generator().manual_seed(0))
    x, target, known, _lungs, label, _dense = s.batch([(0, 64.0, 48.0, False), (1, 64.0, 48.0, False)])
    assert x.shape == (2, 3, 64, 64)
    assert label.tolist() == [1.0, 0.0] and target[1].sum() == 0
    n = 64 // STRIDE
    assert target[0, n // 2 - 1: n // 2 + 1, n // 2 - 1: n // 2 + 1].sum() >= 1  # at the patch's centre
    assert target[0].sum() <= 4 and not known[0].all()  # a ring around it is ignored


def test_pasted_nodules_make_positive_patches_with_targets():
    data = _toy_data()
    cfg = tn.NoduleConfig(patch=64, batch=4, paste=1.0)
    s = tn._Sampler(data, np.arange(len(data.ids)), cfg, torch.Generator().manual_seed(0))
    assert len(s.bank) == 5
    _x, target, _known, _lungs, label, _dense = s.batch([(1, 64.0, 64.0, False)] * 4)
    assert label.tolist() == [1.0] * 4 and all(t.sum() >= 1 for t in target)


def test_training_runs_and_losses_are_finite():
    data = _toy_data()
    cfg = tn.NoduleConfig(patch=64, batch=4, iterations=3, mine_start=1, mine_every=10, mine_negatives=4,
                          warmup=1, bf16=False, whole_iterations=2, whole_batch=2, nih_positives=True)
    gen = tn.train_net(data, np.arange(len(data.ids)), cfg)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            net = stop.value
            break
    assert any("mined" in e.detail for e in events) and all("nan" not in e.detail for e in events)
    assert any("whole lung boxes" in e.stage for e in events)
    rows = tn.evaluate_fold(net, data, np.arange(len(data.ids)), False)
    assert len(rows) == len(data.ids) and all(math.isfinite(r["logit"]) for r in rows)
    assert all("peak_hit" in r for r in rows if r["source"] == "jsrt" and r["label"])


def _rows(jsrt_sep: float, nih_sep: float, n=80, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for src, sep in (("jsrt", jsrt_sep), ("nih", nih_sep)):
        for k in range(n):
            y = int(k % 3 == 0)
            rows.append({"source": src, "label": y, "logit": float(rng.normal(sep * y, 1.0))})
    return rows


def test_available_only_when_every_source_clears_the_bar():
    cfg = tn.NoduleConfig()
    good = tn.summarise(_rows(3.0, 3.0), cfg)
    assert good["available"] and good["per_source"]["jsrt"]["auroc_ci95"][0] > 0.7
    assert 0 < good["threshold"] < 1 and good["pooled"]["sensitivity"] >= 0.8
    weak = tn.summarise(_rows(3.0, 0.2), cfg)
    assert not weak["available"] and "NIH cross-validated AUROC" in weak["note"] and "above 0.7" in weak["note"]
    assert weak["per_source"]["nih"]["always_negative_auroc"] == 0.5


def test_top_places_are_the_highest_lung_cells_in_order():
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0, 0], maps[0, 1, 2], maps[0, 3, 3] = 9, 5, 4
    cells = np.ones((1, 4, 4), bool)
    cells[0, 0, 0] = False  # the highest cell is outside the lungs
    places = tn.top_places(maps, cells, 2)[0]
    assert places == [(2.5 * STRIDE, 1.5 * STRIDE), (3.5 * STRIDE, 3.5 * STRIDE)]


def test_without_the_anatomy_model_the_nodule_model_gives_no_score(tmp_path, scorer_with, monkeypatch):
    monkeypatch.setenv("CXR_VIEWER_ANATOMY", str(tmp_path / "missing_anatomy.safetensors"))
    scorer = scorer_with(make_test_nodule_model(tmp_path / "n.safetensors"))
    assert not scorer.nodule.available and LUNG not in scorer.trained
    hs = scorer.score(_image(tmp_path), score_anyway=True).head(LUNG)
    assert hs.probability is None and hs.status == "not_available" and "anatomy model" in hs.reason
