"""Every part below ``gui`` and the ``info``/``render`` command line work where Qt cannot be imported.

A fresh interpreter gets a meta-path finder that makes every import of PySide6, shiboken6,
pyqtgraph, PyQt5 and PyQt6 raise ImportError; then it imports every module under
``cxr_viewer`` except ``cxr_viewer.gui``, indexes and renders a real image and runs ``cli.main(['info', ...])``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cxr_testdata as td
import pytest

pytestmark = pytest.mark.shared_data

SCRIPT = textwrap.dedent(
    r'''
    import importlib
    import io
    import json
    import pkgutil
    import sys
    from contextlib import redirect_stdout

    BLOCKED = ("PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6")
    attempts = []


    class NoQt:
        """Refuses Qt and its bindings, as on a machine without them."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{name} is blocked in this test: the core must not need Qt")
            return None


    sys.meta_path.insert(0, NoQt())
    for name in BLOCKED:  # the blocker works
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} imported despite the blocker")
    attempts.clear()

    import cxr_viewer

    modules = sorted(m.name for m in pkgutil.walk_packages(cxr_viewer.__path__, "cxr_viewer.")
                     if m.name.split(".")[1] not in ("gui", "__main__"))
    for name in modules:
        importlib.import_module(name)

    from cxr_viewer import cli
    from cxr_viewer.io.display import display_mapping, render_uint8
    from cxr_viewer.io.image import load_image
    from cxr_viewer.io.index import index

    data_folder, rg1_folder, out_png = sys.argv[1:4]
    result = index([rg1_folder])
    ref = next(result.images())
    image = load_image(ref)
    pixels = render_uint8(display_mapping(image.values, image.default_voi(), image.monochrome1))

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        info_rc = cli.main(["info", "--json", data_folder])
    render_rc = cli.main(["render", ref.path, "-o", out_png])

    print(json.dumps({
        "modules": modules,
        "images": result.image_count,
        "errors": len(result.errors),
        "shape": list(pixels.shape),
        "grey_levels": int(len(set(pixels.ravel().tolist()))),
        "info_rc": info_rc,
        "info_images": sum(len(se["images"]) for p in json.loads(buffer.getvalue())["patients"]
                           for st in p["studies"] for se in st["series"]),
        "render_rc": render_rc,
        "qt_modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
        "pyside6_loaded": "PySide6" in sys.modules,
        "attempts": attempts,
    }))
    '''
)


def test_core_and_cli_import_and_work_without_qt(shared_data, tmp_path):
    out_png = tmp_path / "noqt.png"
    rg1_folder = td.rg1(shared_data).parent
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(td.dicom_dir(shared_data)), str(rg1_folder), str(out_png)],
        cwd=td.REPO_ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    pkg_dir = td.REPO_ROOT / "cxr_viewer"
    below_gui = sorted(  # modules and subpackages (e.g. clinical/pacs/): a package is its __init__.py
        ".".join(("cxr_viewer", *p.relative_to(pkg_dir).with_suffix("").parts[:-1]))
        if p.name == "__init__.py" else
        ".".join(("cxr_viewer", *p.relative_to(pkg_dir).with_suffix("").parts))
        for p in pkg_dir.rglob("*.py")
        if p != pkg_dir / "__init__.py" and p.relative_to(pkg_dir).parts[0] not in ("gui", "__main__.py")
    )
    assert report["modules"] == below_gui  # every module below gui was imported
    for needed in ("io.index", "io.image", "io.display", "io.dicom", "io.raster", "io.study", "common.tasks",
                   "common.errors", "common.fileio", "ai.model", "ai.inference", "training.engine", "clinical.export",
                   "cli.entry"):
        assert f"cxr_viewer.{needed}" in report["modules"]
    assert report["images"] == 3 and report["errors"] == 0
    assert report["shape"] == [1955, 1841] and report["grey_levels"] > 100
    assert report["info_rc"] == 0 and report["info_images"] == 6
    assert report["render_rc"] == 0 and out_png.stat().st_size > 0
    assert report["qt_modules"] == [] and report["pyside6_loaded"] is False
    assert report["attempts"] == [], f"a part below gui tried to import Qt: {report['attempts']}"
