"""Bad input, made from real files: every one is reported with a one-line reason, nothing hangs
or crashes, and the good files beside the bad ones still open.

Covered here: the core (``index``, ``open_image``/``load_image``) and the command line (``info``,
``render``) in a subprocess. The GUI's open path is tested in tests/test_gui*.py.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from pathlib import Path

import cxr_testdata as td
import numpy as np
import pydicom
import pytest
from cxr_testdata import run_cli

from cxr_viewer import cli
from cxr_viewer.common.errors import ImageOpenError
from cxr_viewer.io import dicom as dicom_io
from cxr_viewer.io.image import load_image, open_image
from cxr_viewer.io.index import index

pytestmark = [
    pytest.mark.shared_data,
    # pydicom warns about the truncated JPEG 2000 file; the core turns it into an error reason
    pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning"),
]


def _mode_000_is_readable() -> bool:
    """True where this process reads files and lists folders whatever their mode (root, or any
    process holding CAP_DAC_OVERRIDE): chmod 000 then proves nothing."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
            return True
        except PermissionError:
            return False
        finally:
            probe.chmod(0o600)


MODE_000_READABLE = _mode_000_is_readable()
SKIP_AS_ROOT = "running as root (as CI does), chmod 000 files stay readable; the monkeypatched test covers this"


def assert_reason(reason: str, expect: tuple[str, ...], what: str = "") -> None:
    assert reason and reason == reason.strip(), (what, reason)
    assert "\n" not in reason and "\r" not in reason and len(reason) < 400, (what, reason)
    assert "Traceback" not in reason, (what, reason)
    for part in expect:
        assert part.lower() in reason.lower(), (what, reason, part)


def errors_by_path(result) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in result.errors:
        assert e.path not in out, f"reported twice: {e.path}"
        out[e.path] = e.reason
    return out


@pytest.fixture
def never_open_fifo(broken_corpus, monkeypatch):
    """Fail loudly (instead of blocking forever) if anything opens the corpus's FIFO."""
    fifo = os.path.realpath(broken_corpus.fifo)
    real_open, real_os_open = builtins.open, os.open

    def guard(file):
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(file)) == fifo:
            raise AssertionError(f"opened the FIFO {fifo}: reading it would block")

    def fake_open(file, *args, **kwargs):
        guard(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(path, *args, **kwargs):
        guard(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


# --- the core ---------------------------------------------------------------------------------


def test_index_reports_every_bad_file_and_opens_the_good_ones(broken_corpus, never_open_fifo):
    c = broken_corpus
    result = index([str(c.root)])
    errors = errors_by_path(result)
    expected_bad = {str(case.path) for case in c.index_errors.values()}
    assert set(errors) == expected_bad
    for name, case in c.index_errors.items():
        assert_reason(errors[str(case.path)], case.expect, name)

    images = {im.path: im for im in result.images()}
    # the folder link to its parent did not loop or list anything twice
    assert len({os.path.realpath(p) for p in images}) == len(images)
    assert str(c.good["nested"]) in images
    assert not any(str(c.dir_loop) in p for p in images)
    assert set(images) == {str(p) for p in c.good.values()} | {str(case.path) for case in c.decode_errors.values()}

    for name, path in c.good.items():
        img = load_image(images[str(path)])
        assert img.values.ndim == 2 and img.values.size > 0, name
    for name, case in c.decode_errors.items():
        with pytest.raises(ImageOpenError) as err:
            load_image(images[str(case.path)])
        assert_reason(str(err.value), case.expect, name)


def test_each_bad_file_given_alone(broken_corpus, never_open_fifo):
    for name, case in broken_corpus.index_errors.items():
        result = index([str(case.path)])
        assert result.image_count == 0, name
        assert [e.path for e in result.errors] == [str(case.path)], name
        assert_reason(result.errors[0].reason, case.expect, name)
        with pytest.raises(ImageOpenError) as err:
            open_image(str(case.path))
        assert_reason(str(err.value), case.expect, name)
    for name, case in broken_corpus.decode_errors.items():
        with pytest.raises(ImageOpenError) as err:
            open_image(str(case.path))
        assert_reason(str(err.value), case.expect, name)


@pytest.mark.parametrize("where", ["file meta", "early dataset", "late dataset", "before pixel tag",
                                   "inside pixel tag", "pixel length", "pixel start", "pixel middle",
                                   "last pixel bytes"])
def test_dicom_cut_anywhere_is_truncated(shared_data, tmp_path, where):
    uncr = td.rg1(shared_data)
    raw = uncr.read_bytes()
    pix = td.pixel_data_offset(uncr)
    pixel_bytes = 1955 * 1841 * 2
    cut = {
        "file meta": 140, "early dataset": 400, "late dataset": pix - 200, "before pixel tag": pix - 1,
        "inside pixel tag": pix + 2, "pixel length": pix + 9, "pixel start": pix + 12 + 2,
        "pixel middle": pix + 12 + pixel_bytes // 2, "last pixel bytes": pix + 12 + pixel_bytes - 2,
    }[where]
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[:cut])
    result = index([str(path)])
    assert result.image_count == 0
    assert_reason(result.errors[0].reason, ("truncated",), where)
    with pytest.raises(ImageOpenError, match="truncated"):
        open_image(str(path))
    # the part after the pixel data (trailing padding) may go: the image is whole
    whole = tmp_path / "whole.dcm"
    whole.write_bytes(raw[: pix + 12 + pixel_bytes])
    np.testing.assert_array_equal(open_image(str(whole)).stored, td.real_pixels(uncr))


def test_unsupported_transfer_syntax_is_named(broken_corpus):
    case = broken_corpus.index_errors["private_ts"]
    with pytest.raises(ImageOpenError) as err:
        open_image(str(case.path))
    assert str(err.value) == f"unsupported transfer syntax {td.PRIVATE_TS}: pydicom has no decoder for it"


def test_missing_jpeg2000_decoder_names_the_package(broken_corpus, monkeypatch):
    path = str(broken_corpus.j2k)
    assert open_image(path).shape == (1955, 1841)  # decodes while the plugin is there
    td.disable_j2k_decoders(monkeypatch)
    reason = errors_by_path(index([path]))[path]
    assert_reason(reason, ("JPEG 2000", "1.2.840.10008.1.2.4.90", "not installed", "pylibjpeg-openjpeg"))
    with pytest.raises(ImageOpenError, match="install pylibjpeg-openjpeg"):
        open_image(path)
    # the good files beside it still open
    result = index([str(broken_corpus.good["nih"]), path])
    assert [Path(im.path).name for im in result.images()] == ["good_nih.dcm"]


def test_without_file_meta_opens_with_the_real_pixels(broken_corpus, shared_data):
    path = broken_corpus.good["no_meta"]
    raw = path.read_bytes()
    assert raw[128:132] != b"DICM"
    result = index([str(path)])
    assert result.errors == ()
    (ref,) = list(result.images())
    assert ref.meta.patient_id == "Covid0000" and "Implicit VR Little Endian" in ref.meta.transfer_syntax
    img = load_image(ref)
    np.testing.assert_array_equal(img.stored, td.real_pixels(td.nih(shared_data)))


def test_odd_pngs_open_with_the_right_grey(broken_corpus):
    assert set(broken_corpus.odd_png) == {"grey16", "palette", "rgba", "la", "bilevel"}
    for name, (path, expected) in broken_corpus.odd_png.items():
        result = index([str(path)])
        assert result.errors == (), name
        img = open_image(str(path))
        assert img.values.ndim == 2, name
        np.testing.assert_array_equal(img.values, expected.astype(np.float32), err_msg=name)
    grey16 = open_image(str(broken_corpus.odd_png["grey16"][0]))
    assert grey16.ref.meta.bits_stored == 16
    assert grey16.values.max() > 255  # the 16-bit range is kept, not cut to 8 bits


def test_huge_images_are_refused_before_decoding(broken_corpus, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("tried to decode a huge image")

    monkeypatch.setattr(dicom_io, "pixel_array", no_decoding)
    for name in ("huge_dcm", "huge_png"):
        case = broken_corpus.index_errors[name]
        with pytest.raises(ImageOpenError) as err:
            open_image(str(case.path))
        assert_reason(str(err.value), case.expect, name)


def test_huge_dicom_refused_at_decode_too(broken_corpus):
    """load_image checks the size itself (a file may change after it was indexed)."""
    good = index([str(broken_corpus.good["nih"])])
    ref = next(good.images())
    shutil.copyfile(broken_corpus.index_errors["huge_dcm"].path, ref.path)
    with pytest.raises(ImageOpenError, match="too large"):
        load_image(ref)


def test_fifo_is_reported_without_being_opened(broken_corpus, never_open_fifo):
    fifo = str(broken_corpus.fifo)
    for result in (index([fifo]), index([str(broken_corpus.root)])):
        assert errors_by_path(result)[fifo] == "not a regular file (device, pipe or socket)"
    with pytest.raises(ImageOpenError, match="not a regular file"):
        open_image(fifo)
    png_fifo = broken_corpus.root / "pipe.png"
    os.mkfifo(png_fifo)
    with pytest.raises(ImageOpenError, match="not a regular file"):
        open_image(str(png_fifo))


def test_symlink_loops(broken_corpus):
    c = broken_corpus
    result = index([str(c.dir_loop)])  # the link itself: the corpus, once
    assert result.image_count == index([str(c.root)]).image_count
    result = index([str(c.root), str(c.root / "sub"), str(c.dir_loop)])  # the same folders again
    paths = [im.path for im in result.images()]
    assert len(paths) == len(set(map(os.path.realpath, paths)))
    self_link = str(c.root / "self.dcm")
    assert errors_by_path(index([self_link])) == {self_link: "symbolic link loop"}
    with pytest.raises(ImageOpenError, match="symbolic links"):
        open_image(self_link)


def test_folder_and_missing_path_given_to_open_image(broken_corpus, tmp_path):
    with pytest.raises(ImageOpenError, match="folder"):
        open_image(str(broken_corpus.root))
    with pytest.raises(ImageOpenError, match="No such file"):
        open_image(str(tmp_path / "nowhere.dcm"))
    result = index([str(tmp_path / "nowhere.dcm")])
    assert_reason(result.errors[0].reason, ("no such file",))


# --- permissions ------------------------------------------------------------------------------


@pytest.fixture
def unreadable(broken_corpus):
    """Copies of a real DICOM and a real JPEG, with a good DICOM beside them."""
    folder = broken_corpus.root / "locked"
    folder.mkdir()
    dcm = Path(shutil.copyfile(broken_corpus.good["nih"], folder / "locked.dcm"))
    jpeg = Path(shutil.copyfile(broken_corpus.good["kermany"], folder / "locked.jpeg"))
    good = Path(shutil.copyfile(broken_corpus.good["nih"], folder / "readable.dcm"))
    return folder, dcm, jpeg, good


def check_permission_denied(folder, dcm, jpeg, good, capsys, tmp_path):
    result = index([str(folder)])
    errors = errors_by_path(result)
    assert set(errors) == {str(dcm), str(jpeg)}
    for reason in errors.values():
        assert_reason(reason, ("permission denied",))
    assert errors[str(dcm)].startswith("cannot read file")
    assert [im.path for im in result.images()] == [str(good)]
    assert load_image(next(result.images())).shape == (1024, 1024)
    for path in (dcm, jpeg):
        with pytest.raises(ImageOpenError, match="Permission denied"):
            open_image(str(path))
        out = tmp_path / f"{path.stem}.png"
        assert cli.main(["render", str(path), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert "Permission denied" in err and str(path) in err and err.count("\n") == 1
        assert not out.exists()


@pytest.mark.skipif(MODE_000_READABLE, reason=SKIP_AS_ROOT)
def test_permission_denied_chmod(unreadable, capsys, tmp_path):
    folder, dcm, jpeg, good = unreadable
    for p in (dcm, jpeg):
        p.chmod(0)
    try:
        check_permission_denied(folder, dcm, jpeg, good, capsys, tmp_path)
    finally:
        for p in (dcm, jpeg):
            p.chmod(0o644)


@pytest.mark.skipif(MODE_000_READABLE, reason=SKIP_AS_ROOT)
def test_unlistable_folder_chmod(broken_corpus):
    locked = broken_corpus.root / "no_entry"
    locked.mkdir()
    shutil.copyfile(broken_corpus.good["nih"], locked / "hidden.dcm")
    locked.chmod(0)
    try:
        result = index([str(broken_corpus.root)])
        assert_reason(errors_by_path(result)[str(locked)], ("cannot open folder", "permission denied"))
        assert str(broken_corpus.good["nih"]) in {im.path for im in result.images()}
    finally:
        locked.chmod(0o755)


def test_permission_denied_monkeypatched(unreadable, capsys, tmp_path, monkeypatch):
    """Always runs, root or not: opening the two files raises PermissionError as chmod 000 would."""
    folder, dcm, jpeg, good = unreadable
    locked = {os.path.realpath(dcm), os.path.realpath(jpeg)}
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    check_permission_denied(folder, dcm, jpeg, good, capsys, tmp_path)


def test_unlistable_folder_monkeypatched(broken_corpus, monkeypatch):
    locked = broken_corpus.root / "no_entry"
    locked.mkdir()
    shutil.copyfile(broken_corpus.good["nih"], locked / "hidden.dcm")
    real_scandir = os.scandir

    def fake_scandir(path="."):
        if os.path.realpath(path) == os.path.realpath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", fake_scandir)
    result = index([str(broken_corpus.root)])
    assert errors_by_path(result)[str(locked)] == "cannot open folder: Permission denied"
    assert str(broken_corpus.good["nih"]) in {im.path for im in result.images()}


# --- the command line, in a subprocess ----------------------------------------------------------


def test_cli_info_json_on_the_corpus(broken_corpus):
    c = broken_corpus
    proc = run_cli("info", "--json", str(c.root), timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    errors = {e["path"]: e["reason"] for e in doc["errors"]}
    assert set(errors) == {str(case.path) for case in c.index_errors.values()}
    for name, case in c.index_errors.items():
        assert_reason(errors[str(case.path)], case.expect, name)
    listed = {im["path"] for p in doc["patients"] for st in p["studies"] for se in st["series"] for im in se["images"]}
    assert {str(p) for p in c.good.values()} <= listed


def test_cli_info_only_bad_files_exits_2(broken_corpus):
    bad = [str(case.path) for case in broken_corpus.index_errors.values()]
    proc = run_cli("info", "--json", *bad, timeout=120)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["patients"] == [] and len(doc["errors"]) == len(bad)
    proc = run_cli("info", *bad, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(bad) and all(line.startswith("ERROR ") for line in lines)


def _render_cases() -> list[str]:
    return ["empty", "empty_png", "cut_header", "cut_pixels", "cut_j2k", "text", "sr", "kos", "private_ts",
            "huge_dcm", "huge_png", "cut_jpeg_header", "cut_jpeg_data", "cut_png_header", "cut_png_data",
            "self_link", "fifo"]


@pytest.mark.parametrize("name", _render_cases())
def test_cli_render_bad_input(module_corpus, tmp_path, name):
    case = module_corpus.index_errors.get(name) or module_corpus.decode_errors[name]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.png"
    proc = run_cli("render", str(case.path), "-o", str(out), timeout=60)
    assert proc.returncode == 2, (name, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    prefix = f"cxr-viewer render: {case.path}: "
    assert lines[0].startswith(prefix), lines[0]
    assert_reason(lines[0][len(prefix):], case.expect, name)
    assert list(out_dir.iterdir()) == []  # no output, no temporary left behind


def test_render_cases_cover_the_corpus(module_corpus):
    assert set(_render_cases()) == set(module_corpus.index_errors) | set(module_corpus.decode_errors)


def test_cli_render_missing_jpeg2000_decoder(broken_corpus, tmp_path):
    out = tmp_path / "j2k.png"
    proc = run_cli("render", str(broken_corpus.j2k), "-o", str(out), python_code=td.NO_J2K_PRELUDE, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "pylibjpeg-openjpeg" in proc.stderr and "JPEG 2000" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not out.exists()
    proc = run_cli("info", "--json", str(broken_corpus.j2k), python_code=td.NO_J2K_PRELUDE, timeout=60)
    assert proc.returncode == 2
    (err,) = json.loads(proc.stdout)["errors"]
    assert "install pylibjpeg-openjpeg" in err["reason"]
    # control: the same file renders when the decoder is there
    proc = run_cli("render", str(broken_corpus.j2k), "-o", str(out), timeout=60)
    assert proc.returncode == 0 and out.exists()


def test_cli_render_good_files_of_the_corpus(module_corpus, tmp_path):
    from PIL import Image

    for name in ("no_meta", "odd_grey16", "odd_palette", "odd_rgba", "odd_la", "odd_bilevel", "kermany"):
        path = module_corpus.good[name]
        out = tmp_path / f"{name}.png"
        proc = run_cli("render", str(path), "-o", str(out), timeout=60)
        assert proc.returncode == 0, (name, proc.stderr)
        with Image.open(out) as im:
            assert im.mode == "L"
            expected = open_image(str(path))
            assert im.size == (expected.shape[1], expected.shape[0])


def test_cli_render_unwritable_output(broken_corpus, tmp_path):
    out = tmp_path / "no_such_folder" / "out.png"
    proc = run_cli("render", str(broken_corpus.good["nih"]), "-o", str(out), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("cxr-viewer render: cannot write") and len(proc.stderr.splitlines()) == 1


def test_deflated_transfer_syntax(shared_data, tmp_path):
    """A valid but rare encoding: the whole dataset is one zlib stream."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(td.nih(shared_data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    image = tmp_path / "deflated.dcm"
    ds.save_as(image, enforce_file_format=True, implicit_vr=False, little_endian=True)
    report = td.structured_report(tmp_path / "sr_deflated.dcm", td.nih(shared_data))
    sr = pydicom.dcmread(report)
    sr.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    sr.save_as(report, enforce_file_format=True, implicit_vr=False, little_endian=True)
    result = index([str(tmp_path)])
    assert [Path(im.path).name for im in result.images()] == ["deflated.dcm"]
    assert [(Path(e.path).name, e.reason) for e in result.errors] == [
        ("sr_deflated.dcm", "DICOM object without pixel data (Comprehensive SR Storage): nothing to display")
    ]
    np.testing.assert_array_equal(open_image(str(image)).stored, td.real_pixels(td.nih(shared_data)))
