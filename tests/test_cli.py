"""The Qt-free command line: ``cxr-viewer info`` and ``cxr-viewer render``."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pytest
from cxr_testdata import run_cli
from PIL import Image

from cxr_viewer import RESEARCH_NOTICE, __version__, cli
from cxr_viewer.io.display import Window, display_mapping, render_uint8
from cxr_viewer.io.image import open_image

pytestmark = pytest.mark.shared_data


def core_render(path: Path, frame: int = 0, window: Window | None = None, invert: bool = False) -> np.ndarray:
    img = open_image(str(path), frame)
    return render_uint8(display_mapping(img.values, window or img.default_voi(), img.monochrome1 != invert))


def read_png(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", raw[16:26])
    assert (depth, colour) == (8, 0), "not an 8-bit greyscale PNG"
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (width, height)
        return np.asarray(im)


# --- info ------------------------------------------------------------------------------------


def test_info_json_on_the_real_dicom_folder(shared_data):
    folder = td.dicom_dir(shared_data)
    proc = run_cli("info", "--json", str(folder), timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"version", "notice", "patients", "errors", "presentation_states"}
    assert doc["version"] == __version__ and doc["notice"] == RESEARCH_NOTICE
    assert doc["errors"] == []  # the licence text and labels.csv are skipped, not errors
    assert doc["presentation_states"] == []  # GSPS files (annotations): listed apart, never as errors

    with open(folder / "labels.csv", newline="") as f:
        labels = {str(folder / row["file"]): row for row in csv.DictReader(f)}
    patients = {p["patient_id"]: p for p in doc["patients"]}
    assert set(patients) == {"Covid0000", "9RG1", "16d7f894-55d7-4d95-8957-d18987f0e981"}
    images = {}
    for p in doc["patients"]:
        assert set(p) == {"key", "name", "patient_id", "studies"}
        for st in p["studies"]:
            assert set(st) == {"uid", "date", "description", "series"}
            for se in st["series"]:
                assert set(se) == {"uid", "description", "modality", "images"}
                for im in se["images"]:
                    assert im["kind"] == "dicom"
                    images[im["path"]] = (p, st, se, im)
    assert set(images) == set(labels)
    for path, (p, st, se, im) in images.items():
        row, meta = labels[path], im["meta"]
        assert (meta["rows"], meta["cols"], meta["bits_stored"]) == (
            int(row["rows"]), int(row["cols"]), int(row["bits_stored"]))
        assert meta["modality"] == row["modality"] == se["modality"]
        assert meta["photometric"] == row["photometric"].split()[0]
        assert row["transfer_syntax"].split()[0] in meta["transfer_syntax"]
        assert meta["frames"] == 1 and im["sop_instance_uid"]
    rg1 = patients["9RG1"]
    (study,) = rg1["studies"]
    assert study["date"] == "20040826" and study["description"] == "THORAX"
    (series,) = study["series"]
    assert [Path(im["path"]).name for im in series["images"]] == ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]
    assert all(im["meta"]["spacing"] is None for im in series["images"])  # bogus [0, 0]
    siim = images[str(td.siim(shared_data))][3]["meta"]["spacing"]
    assert siim["label"] == "mm" and siim["row_mm"] == pytest.approx(0.168)
    nih_patient = patients["Covid0000"]
    assert nih_patient["studies"][0]["description"] == "No Finding"


def test_info_text(shared_data):
    proc = run_cli("info", str(td.rg1(shared_data)), str(td.nih(shared_data)), timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "Patient CompressedSamples^RG1 [9RG1]" in proc.stdout
    assert "Study 20040826 THORAX" in proc.stdout
    assert f"{td.rg1(shared_data)}  1841x1955" in proc.stdout


def test_info_exit_codes(shared_data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["info", str(empty)]) == 2  # nothing opened
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"")
    assert cli.main(["info", str(bad), str(td.nih(shared_data))]) == 0  # one opened
    assert cli.main(["info", str(bad)]) == 2


# --- render ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["RG1_UNCR", "SIIM"])
def test_render_subprocess_matches_core(shared_data, tmp_path, which):
    path = td.rg1(shared_data) if which == "RG1_UNCR" else td.siim(shared_data)
    out = tmp_path / "out.png"
    proc = run_cli("render", str(path), "-o", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    got = read_png(out)
    img = open_image(str(path))
    assert got.shape == img.shape  # full resolution
    np.testing.assert_array_equal(got, core_render(path))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind


def test_render_every_real_dicom_in_process(shared_data, tmp_path):
    for path in td.all_dicoms(shared_data):
        out = tmp_path / f"{path.stem}.png"
        assert cli.main(["render", str(path), "-o", str(out)]) == 0
        np.testing.assert_array_equal(read_png(out), core_render(path))


def test_render_raster(shared_data, tmp_path):
    src = sorted((shared_data / "kermany_fullres" / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    out = tmp_path / "k.png"
    assert cli.main(["render", str(src), "-o", str(out)]) == 0
    got = read_png(out)
    with Image.open(src) as im:
        assert got.shape == (im.height, im.width)
        grey = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(got, grey)  # 8-bit raster at full range: shown as is


def test_render_window_override(shared_data, tmp_path):
    path = td.rg1(shared_data)
    out = tmp_path / "w.png"
    proc = run_cli("render", str(path), "-o", str(out), "--window", "15000,30000", timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_png(out), core_render(path))  # the header window again

    assert cli.main(["render", str(path), "-o", str(out), "--window", "9000,4000"]) == 0
    narrow = read_png(out)
    np.testing.assert_array_equal(narrow, core_render(path, window=Window(9000, 4000, "LINEAR")))
    assert not np.array_equal(narrow, core_render(path))

    assert cli.main(["render", str(path), "-o", str(out), "--window", "9000,4000", "--invert"]) == 0
    np.testing.assert_array_equal(read_png(out).astype(np.int16), 255 - narrow.astype(np.int16))


def test_render_invert_undoes_monochrome1(shared_data, tmp_path):
    out = tmp_path / "i.png"
    assert cli.main(["render", str(td.fake_mono1(shared_data)), "-o", str(out), "--invert"]) == 0
    np.testing.assert_array_equal(read_png(out), core_render(td.siim(shared_data)))


@pytest.mark.parametrize("arg", ["abc", "1", "1,2,3", "100,0", "100,-5"])
def test_render_bad_window_argument(shared_data, tmp_path, arg, capsys):
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["render", str(td.nih(shared_data)), "-o", str(out), f"--window={arg}"])
    assert exit_.value.code == 2
    assert "--window" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def three_frames(shared_data, tmp_path) -> Path:
    frames = np.stack([
        td.crop(td.real_pixels(td.nih(shared_data)), 200, 400, 400),
        td.crop(td.real_pixels(td.siim(shared_data)), 200, 300, 300),
        td.crop(td.kermany_grey(td.kermany_jpegs(shared_data, 1)[0]), 200, 10, 10),
    ])
    return td.write_image(tmp_path / "multi.dcm", frames, frames=3)


def test_render_frame(three_frames, tmp_path):
    for frame in range(3):
        out = tmp_path / f"f{frame}.png"
        assert cli.main(["render", str(three_frames), "-o", str(out), "--frame", str(frame)]) == 0
        np.testing.assert_array_equal(read_png(out), core_render(three_frames, frame))
    assert not np.array_equal(read_png(tmp_path / "f0.png"), read_png(tmp_path / "f1.png"))


@pytest.mark.parametrize("frame", ["3", "-1", "99"])
def test_render_frame_out_of_range(three_frames, tmp_path, frame):
    out = tmp_path / "bad.png"
    proc = run_cli("render", str(three_frames), "-o", str(out), "--frame", frame, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"cxr-viewer render: {three_frames}: frame {frame} out of range (the image has 3 frames)\n"
    assert not out.exists()


def test_render_frame_out_of_range_single_frame(shared_data, tmp_path, capsys):
    out = tmp_path / "bad.png"
    assert cli.main(["render", str(td.nih(shared_data)), "-o", str(out), "--frame", "1"]) == 2
    assert "frame 1 out of range" in capsys.readouterr().err
    assert not out.exists()


def test_render_failure_keeps_an_existing_output(shared_data, tmp_path):
    out = tmp_path / "keep.png"
    out.write_bytes(b"previous render")
    bad = tmp_path / "empty.dcm"
    bad.write_bytes(b"")
    assert cli.main(["render", str(bad), "-o", str(out)]) == 2
    assert out.read_bytes() == b"previous render"
    assert cli.main(["render", str(td.nih(shared_data)), "-o", str(out)]) == 0  # replaced on success
    assert read_png(out).shape == (1024, 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.dcm", "keep.png"]


def test_usage_errors():
    proc = run_cli("render", timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = run_cli("info", timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
    proc = run_cli("--version", timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cxr-viewer {__version__}"
