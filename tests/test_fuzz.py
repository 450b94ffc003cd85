"""Fuzzing the image readers with seeded mutations of the REAL shared files.

Every case runs in a child process (batches of cases per child, two children at a time), so a
native abort (GDCM's SIGABRT, a segfault) is a test failure naming the case instead of the end
of the test run. Each file must either open (2-D, finite values, renders through the display
pipeline and ``cxr-viewer render``) or give one ImageOpenError line; never a traceback.

The same corpus for the lead: ``python bench/fuzz_corpus.py OUT_FOLDER``.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cxr_testdata as td
import pytest

SEED = 20240611
TESTS_DIR = Path(__file__).resolve().parent


# --- the child: runs cases one by one and reports each on one line ------------------------------


def _one_case(path: str, out_png: str) -> dict:
    import numpy as np

    from cxr_viewer.cli import main as cli_main
    from cxr_viewer.common.errors import ImageOpenError
    from cxr_viewer.io.display import display_mapping, render_uint8
    from cxr_viewer.io.image import open_image

    result: dict = {}
    try:
        image = open_image(path)
        if image.values.ndim != 2 or not np.isfinite(image.values).all():
            result["problem"] = f"opened with shape {image.values.shape} and non-finite or non-2-D values"
        for voi in image.presets():  # every header window, VOI LUT, auto and full range must render
            out = render_uint8(display_mapping(image.values, voi, image.monochrome1))
            if out.shape != image.values.shape or out.dtype != np.uint8:
                result["problem"] = f"render of {voi.describe()} gave {out.shape} {out.dtype}"
        result["open"] = "ok"
    except ImageOpenError as exc:
        result["open"] = "error"
        result["message"] = str(exc)
        if not str(exc) or "\n" in str(exc):
            result["problem"] = f"ImageOpenError message is not one line: {str(exc)!r}"
    except Exception as exc:  # what the test exists to catch
        result["open"] = "exception"
        result["problem"] = f"{type(exc).__name__}: {exc}"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(["render", path, "-o", out_png])
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:
        rc = f"exception {type(exc).__name__}: {exc}"
    result["render_rc"] = rc
    if "Traceback" in err.getvalue():
        result["problem"] = "cxr-viewer render printed a traceback"
    expected_rc = 0 if result["open"] == "ok" else 2
    if rc != expected_rc:
        result.setdefault("problem", f"cxr-viewer render exit {rc!r}, open_image said {result['open']}")
    return result


def child_main() -> None:
    """Read case paths (one JSON list on stdin); print START and RESULT lines, flushed."""
    import warnings

    warnings.simplefilter("ignore")  # pydicom's warnings about odd headers are not the subject
    paths = json.loads(sys.stdin.read())
    with tempfile.TemporaryDirectory() as tmp:
        out_png = os.path.join(tmp, "out.png")
        for path in paths:
            print("START " + json.dumps(path), flush=True)
            result = _one_case(path, out_png)
            print("RESULT " + json.dumps({"path": path, **result}), flush=True)


CHILD_CODE = f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); from test_fuzz import child_main; child_main()"


def run_batch(paths: list[str], timeout: float = 600) -> dict[str, dict]:
    """Run cases in one child; if it dies, the case it had started is a crash and the rest
    continue in a fresh child."""
    results: dict[str, dict] = {}
    pending = list(paths)
    while pending:
        proc = subprocess.run([sys.executable, "-c", CHILD_CODE], input=json.dumps(pending), text=True,
                              capture_output=True, timeout=timeout, cwd=td.REPO_ROOT)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                started = json.loads(line[6:])
            elif line.startswith("RESULT "):
                r = json.loads(line[7:])
                results[r.pop("path")] = r
                started = None
        if "Traceback" in proc.stderr:
            for p in pending:
                results.setdefault(p, {"open": "exception"})
            first = next(p for p in pending if p in results)
            results[first]["problem"] = "traceback on stderr: " + proc.stderr[-2000:]
        if proc.returncode != 0 or started is not None:
            crashed = started or next((p for p in pending if p not in results), None)
            if crashed is None:
                break
            results[crashed] = {"open": "crash", "problem": f"the process died (exit {proc.returncode}): "
                                                           f"{proc.stderr.strip().splitlines()[-1:] }"}
        pending = [p for p in pending if p not in results]
    return results


def run_cases(cases: list[td.FuzzCase], workers: int = 2) -> dict[str, dict]:
    paths = [str(c.path) for c in cases]
    chunks = [paths[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        merged: dict[str, dict] = {}
        for part in pool.map(run_batch, chunks):
            merged.update(part)
    return merged


# --- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_corpus(shared_data, tmp_path_factory) -> list[td.FuzzCase]:
    return td.build_fuzz_corpus(shared_data, tmp_path_factory.mktemp("fuzz"), seed=SEED)


def _summary(cases, results) -> collections.Counter:
    counts = collections.Counter(tried=len(cases))
    for c in cases:
        r = results.get(str(c.path), {"open": "missing"})
        counts[{"ok": "success", "error": "clean error"}.get(r["open"], r["open"])] += 1
    return counts


def test_fuzz_open_and_render_never_crash(fuzz_corpus, record_property):
    results = run_cases(fuzz_corpus)
    counts = _summary(fuzz_corpus, results)
    record_property("fuzz_counts", dict(counts))
    print(f"\nfuzz: tried {counts['tried']}, clean error {counts['clean error']}, success {counts['success']}, "
          f"crash {counts['crash']}, exception {counts['exception']}")
    failures = [f"{c.name} ({c.what}): {results.get(str(c.path), {}).get('problem', 'no result')}"
                for c in fuzz_corpus if results.get(str(c.path), {}).get("problem")
                or results.get(str(c.path), {}).get("open") not in ("ok", "error")]
    assert not failures, f"{len(failures)} of {len(fuzz_corpus)} cases failed:\n" + "\n".join(failures[:40])
    assert counts["success"] and counts["clean error"], "the corpus must hold both good and refused files"


def test_fuzz_known_crashers_are_refused(fuzz_corpus):
    """The issue's examples: J2K labelled RGB/YBR or 3 samples, JPEG with BitsAllocated 32 or
    BitsStored 1, NaN windows/rescale, two padding values, 1-column images: one line each."""
    wanted = ("rg1_j2ki__photometric-RGB", "rg1_j2ki__photometric-YBR_FULL", "rg1_j2ki__samples-3",
              "siim_jpeg__bits_allocated-32", "siim_jpeg__bits_stored-1", "rg1_native16__slope-NaN",
              "nih__padding-two_values", "nih__cols-1", "rg1_native16__float_nan", "pyd_jpeg_lossless__bits_stored-1")
    by_name = {c.name: c for c in fuzz_corpus}
    missing = [w for w in wanted if w not in by_name]
    assert not missing, f"the corpus lacks {missing}"
    results = run_batch([str(by_name[w].path) for w in wanted])
    for w in wanted:
        r = results[str(by_name[w].path)]
        assert r["open"] in ("ok", "error") and not r.get("problem"), (w, r)
    assert results[str(by_name["rg1_native16__float_nan"].path)]["open"] == "error"
    assert "nan or infinite" in results[str(by_name["rg1_native16__float_nan"].path)]["message"].lower()
    assert "contradicts" in results[str(by_name["rg1_j2ki__photometric-RGB"].path)]["message"]
    # a bad window is skipped, not fatal; padding with two values is ignored, not fatal
    assert results[str(by_name["nih__padding-two_values"].path)]["open"] == "ok"


def test_fuzz_harness_reports_a_native_abort(tmp_path, shared_data):
    """The harness is not vacuous: a case that aborts the child is reported by name."""
    victim = tmp_path / "abort_me.dcm"
    victim.write_bytes(td.nih(shared_data).read_bytes())
    good = tmp_path / "good.dcm"
    good.write_bytes(td.nih(shared_data).read_bytes())
    code = (f"import os, sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import test_fuzz; orig = test_fuzz._one_case\n"
            "def one(p, o):\n    if p.endswith('abort_me.dcm'): os.abort()\n    return orig(p, o)\n"
            "test_fuzz._one_case = one; test_fuzz.child_main()")
    old = globals()["CHILD_CODE"]
    globals()["CHILD_CODE"] = code
    try:
        results = run_batch([str(victim), str(good)])
    finally:
        globals()["CHILD_CODE"] = old
    assert results[str(victim)]["open"] == "crash"
    assert results[str(good)]["open"] == "ok"  # the batch went on after the crash


def test_cli_info_json_over_the_fuzz_corpus(fuzz_corpus):
    root = fuzz_corpus[0].path.parent
    proc = td.run_cli("info", "--json", str(root), timeout=300)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    listed = {e["path"] for e in doc["errors"]}

    def walk(node):
        if isinstance(node, dict):
            if "path" in node and "meta" in node:
                listed.add(node["path"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc.get("patients", []))
    missing = [c.name for c in fuzz_corpus if str(c.path) not in listed]
    assert not missing, f"not reported as image or error: {missing[:20]}"
    assert all("\n" not in e["reason"] for e in doc["errors"])


def test_pydicom_shipped_files_render_when_pydicom_decodes_them(tmp_path):
    """pydicom's own test files: whatever pydicom decodes (``ds.pixel_array``) opens and renders."""
    import warnings

    import pydicom

    files = td.pydicom_test_files()
    if not files:
        pytest.skip("pydicom's test files are not installed with pydicom")
    decodable = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in files:
            try:
                pydicom.dcmread(p, force=True).pixel_array
                decodable.append(p)
            except Exception:
                pass
    assert any(p.name == "SC_ybr_full_422_uncompressed.dcm" for p in decodable)
    results = run_batch([str(p) for p in decodable])
    bad = {Path(p).name: r for p, r in results.items() if r["open"] != "ok" or r.get("problem")}
    assert not bad, bad
    print(f"\npydicom test files: {len(decodable)} of {len(files)} decoded by pydicom, all render here")
