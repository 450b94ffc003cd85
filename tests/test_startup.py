"""A new user's first run: where Qt cannot open a window the app says why in one line and exits 2
(Qt's xcb plugin would abort the process instead), and ``--self-test --json OUT`` prints one line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_viewer.cli import entry
from cxr_viewer.cli.selftest import summary_line
from cxr_viewer.gui import app

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "resources" / "samples"
NO_SERVER = ":987"

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the xcb start-up check is Linux only")


def _viewer(*args: str, env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``cxr-viewer`` console script (``python -m cxr_viewer`` where there is none)."""
    script = Path(sys.executable).with_name("cxr-viewer")
    cmd = [str(script), *args] if script.exists() else [sys.executable, "-m", "cxr_viewer", *args]
    return subprocess.run(cmd, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _xcb_env(tmp_path: Path, display: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "QT_QPA_PLATFORM")}
    env.update(QT_QPA_PLATFORM="xcb", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    if display is not None:
        env["DISPLAY"] = display
    return env


def _assert_one_line_exit_2(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])  # not 134 (SIGABRT) nor any signal
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert r.stdout == ""
    return lines[0]


def _no_server_on(display: str) -> None:
    number = display.lstrip(":").split(".")[0]
    if os.path.exists(f"/tmp/.X11-unix/X{number}"):
        pytest.skip(f"an X server is listening on {display} here")


def _skip_unless_xcb_libraries() -> None:
    missing = app.missing_xcb_libraries()
    if missing:
        pytest.skip(f"Qt's xcb libraries are not installed here ({missing[0][0]}...): .ci/run installs them")


@linux_only
def test_no_display_gives_one_line_and_exit_2(tmp_path):
    r = _viewer(str(SAMPLES), env=_xcb_env(tmp_path, None), cwd=tmp_path)
    line = _assert_one_line_exit_2(r)
    assert "no X display" in line and "DISPLAY is not set" in line and "offscreen" in line


@linux_only
def test_display_without_a_server_gives_one_line_and_exit_2(tmp_path):
    _no_server_on(NO_SERVER)
    _skip_unless_xcb_libraries()
    r = _viewer(str(SAMPLES / "dicom"), env=_xcb_env(tmp_path, NO_SERVER), cwd=tmp_path)
    line = _assert_one_line_exit_2(r)
    assert f"cannot connect to X display {NO_SERVER}" in line


@linux_only
def test_display_name_that_is_not_one_is_reported(tmp_path):
    _skip_unless_xcb_libraries()
    problem = app.gui_start_problem(_xcb_env(tmp_path, "not-a-display"))
    assert problem is not None and "not-a-display" in problem and "not a valid X display" in problem


@linux_only
def test_a_missing_xcb_library_is_named_with_its_packages(monkeypatch, tmp_path, capsys):
    _no_server_on(NO_SERVER)
    missing = ("libcxr-viewer-no-such-xcb.so.9", "cxr-deb-package", "cxr-fedora-package")
    monkeypatch.setattr(app, "XCB_LIBRARIES", (*app.XCB_LIBRARIES, missing))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setenv("DISPLAY", NO_SERVER)
    # the whole command in this process: the check stops it before Qt is asked for a window
    assert entry.main([str(SAMPLES)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "libcxr-viewer-no-such-xcb.so.9" in err[0]
    assert "install cxr-deb-package (Debian/Ubuntu) or cxr-fedora-package (Fedora)" in err[0]


def test_the_library_list_is_what_qt_links_against():
    """Every system library that Qt's xcb plugin, its XcbQpa library and QtGui name (their ELF
    string tables, in the installed PySide6) is in the list, and the list names nothing else."""
    spec = importlib.util.find_spec("PySide6")
    qt = Path(next(iter(spec.submodule_search_locations))) / "Qt" if spec else None
    binaries = [qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6",
                qt / "lib" / "libQt6Gui.so.6"] if qt else []
    if not binaries or not all(b.exists() for b in binaries):
        pytest.skip(f"this PySide6 has no Linux xcb plugin at {qt}")
    named = set()
    for binary in binaries:
        named |= {m.decode() for m in re.findall(rb"lib[A-Za-z][\w.+-]*?\.so\.\d+", binary.read_bytes())}
    base = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1"}  # in every Linux
    needed = {n for n in named if not n.startswith("libQt6")} - base
    assert needed == {entry[0] for entry in app.XCB_LIBRARIES}


def test_platform_decision_follows_qt():
    assert app.qt_platforms({"QT_QPA_PLATFORM": "offscreen"}) == ["offscreen"]
    assert app.qt_platforms({"QT_QPA_PLATFORM": "xcb:nograb;offscreen"}) == ["xcb", "offscreen"]
    assert app.qt_platforms({}) == ["xcb"]
    assert app.qt_platforms({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}) == ["wayland", "xcb"]
    assert app.qt_platforms({"XDG_SESSION_TYPE": "wayland"}) == ["wayland", "xcb"]


@linux_only
@pytest.mark.parametrize("environ", [
    {"QT_QPA_PLATFORM": "offscreen"},  # --screenshot without a display
    {"QT_QPA_PLATFORM": "minimal"},
    {"QT_QPA_PLATFORM": "wayland"},
    {"QT_QPA_PLATFORM": "xcb;offscreen"},  # Qt falls back by itself
    {"WAYLAND_DISPLAY": "wayland-0"},  # Qt tries wayland first
])
def test_platforms_other_than_xcb_alone_are_left_to_qt(environ):
    assert app.gui_start_problem(environ) is None


@linux_only
def test_default_platform_without_display_is_checked():
    assert "DISPLAY is not set" in app.gui_start_problem({})


@linux_only
@pytest.mark.xvfb
def test_a_real_x_server_passes_the_check(xvfb_display):
    """The check lets a working display through (tests/test_xvfb_window.py opens the window there)."""
    _skip_unless_xcb_libraries()
    assert app.gui_start_problem({"QT_QPA_PLATFORM": "xcb", "DISPLAY": xvfb_display}) is None


def test_offscreen_screenshot_still_works_without_a_display(tmp_path):
    env = _xcb_env(tmp_path, None)
    env["QT_QPA_PLATFORM"] = "offscreen"
    out = tmp_path / "shot.png"
    r = _viewer(str(SAMPLES / "dicom"), "--screenshot", str(out), env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 10_000


def test_qt_that_cannot_be_imported_gives_one_line(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setitem(sys.modules, "PySide6.QtWidgets", None)  # import fails, as with libGL.so.1 missing
    with pytest.raises(app.UserError) as err:
        app.run_app([str(SAMPLES)])
    assert str(err.value).startswith("cannot start the GUI: Qt could not be loaded:")
    assert "\n" not in str(err.value)
    # the loader's own message for a missing system library gets the package names
    loader = ImportError("libGL.so.1: cannot open shared object file: No such file or directory")
    assert app._qt_import_problem(loader) == (
        "cannot start the GUI: Qt needs libGL.so.1: install libgl1 (Debian/Ubuntu) or libglvnd-glx (Fedora)")


def test_self_test_with_json_prints_one_summary_line(tmp_path):
    out = tmp_path / "self_test.json"
    env = {k: v for k, v in os.environ.items() if k != "CXR_VIEWER_MODEL"}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    r = _viewer("--self-test", "--json", str(out), env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout[:2000]
    report = json.loads(out.read_text())  # the whole report is in the file
    assert report["ok"]
    assert lines[0].startswith("cxr-viewer self-test passed:") and str(out) in lines[0]
    assert f"{len(report['images'])} samples checked (5 scored, 2 set aside as outside intended use) on " \
           f"{report['device']}" in lines[0]
    # the same report with one check failed: FAILED, naming the check and its detail, still one line
    report["ok"] = False
    report["checks"][0].update(ok=False, detail="0 images\nin 0.01 s")
    line = summary_line(report, str(out))
    assert line.startswith("cxr-viewer self-test FAILED (1 of ")
    assert f"{report['checks'][0]['name']}: 0 images in 0.01 s" in line and "\n" not in line


def test_self_test_with_a_damaged_model_fails_in_one_line(tmp_path):
    """A truncated copy of the real default model: exit 1 and a FAILED line naming the model check."""
    model = REPO / "models" / "default.safetensors"
    if not model.exists():
        pytest.skip("models/default.safetensors is missing")
    damaged = tmp_path / "default.safetensors"
    damaged.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    shutil.copy(model.with_suffix(".json"), damaged.with_suffix(".json"))
    out = tmp_path / "self_test.json"
    env = {**os.environ, "CXR_VIEWER_MODEL": str(damaged), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    r = _viewer("--self-test", "--json", str(out), env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxr-viewer self-test FAILED"), r.stdout[:2000]
    assert "model loads and its SHA-256 matches" in lines[0]
    assert not json.loads(out.read_text())["ok"]


def test_self_test_report_into_a_missing_folder_is_refused_at_once(tmp_path):
    target = tmp_path / "no" / "such" / "r.json"
    r = _viewer("--self-test", "--json", str(target), env=dict(os.environ), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"cxr-viewer --self-test: cannot write {target}: its folder does not exist"]
