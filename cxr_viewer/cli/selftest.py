"""``cxr-viewer --self-test``: proves an installation (source, wheel or frozen bundle) works.

Opens the bundled DICOM and PNG/JPEG samples through the real loaders, scores them with the
default model on the best device, computes a heatmap, checks the model's SHA-256, and reports
device, timings and results. Any failure makes the exit code non-zero.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from cxr_viewer import RESEARCH_NOTICE, __version__


def samples_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "resources" / "samples"


def run_self_test(device: str = "auto") -> dict:
    from cxr_viewer.ai.inference import Scorer
    from cxr_viewer.ai.model import sha256_file
    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.io.image import load_image
    from cxr_viewer.io.index import index

    report: dict = {"version": __version__, "notice": RESEARCH_NOTICE, "python": sys.version.split()[0],
                    "platform": platform.platform(), "frozen": bool(getattr(sys, "frozen", False)),
                    "checks": [], "images": []}

    def check(name: str, ok: bool, detail: str = "") -> bool:
        report["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        return ok

    folder = samples_dir()
    t0 = time.perf_counter()
    found = index([str(folder)])
    refs = list(found.images())
    kinds = {r.kind for r in refs}
    check("samples indexed", bool(refs) and kinds == {"dicom", "raster"} and not found.errors,
          f"{len(refs)} images ({', '.join(sorted(kinds))}) in {time.perf_counter() - t0:.2f} s; {len(found.errors)} errors")
    try:  # torchvision's compiled ops (a frozen bundle missing _C_stable.so fails here)
        import torch
        import torchvision

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
        check("torchvision compiled ops", keep.tolist() == [0], f"torchvision {torchvision.__version__}")
    except Exception as exc:  # noqa: BLE001
        check("torchvision compiled ops", False, str(exc))
    model_path = default_model_path()
    if not check("default model present", model_path is not None, str(model_path)):
        report["ok"] = False
        return report
    t0 = time.perf_counter()
    try:
        scorer = Scorer.from_file(model_path, device)
    except Exception as exc:  # noqa: BLE001 - reported, exit code non-zero
        check("model loads and its SHA-256 matches", False, str(exc))
        report["ok"] = False
        return report
    check("model loads and its SHA-256 matches", sha256_file(model_path) == scorer.meta.weights_sha256,
          f"{scorer.meta.name} v{scorer.meta.version} {scorer.meta.weights_sha256[:16]} in {time.perf_counter() - t0:.2f} s")
    report["device"] = scorer.choice.label
    report["model"] = {"path": model_path, "sha256": scorer.meta.weights_sha256, "trained_heads": scorer.trained}
    first_dicom = None  # (image, result) of the first DICOM sample, for the DICOM-results check
    for ref in refs:
        entry = {"file": Path(ref.path).name, "kind": ref.kind}
        try:
            t0 = time.perf_counter()
            image = load_image(ref)
            entry["decode_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            result = scorer.score(image, heatmaps=True)
            entry["score_ms"] = round(result.seconds * 1000, 1)
            entry["scores"] = {h.head: (round(h.probability, 4) if h.available else None) for h in result.heads}
            entry["statuses"] = {h.head: h.status for h in result.heads}
            entry["heatmaps"] = {h: list(m.shape) for h, m in result.heatmaps.items()}
            scored = [h for h in result.heads if h.status == "scored"]
            aside = [h for h in result.heads if h.status == "outside_intended_use"]
            # each trained head either scored (a probability and its heatmap) or set aside with a reason
            ok = (all(0.0 <= h.probability <= 1.0 and h.head in result.heatmaps for h in scored)
                  and all(h.reason and h.probability is None and h.head not in result.heatmaps for h in aside)
                  and len(scored) + len(aside) == len(scorer.trained))
            if ref.kind == "dicom" and first_dicom is None:
                first_dicom = (image, result)
        except Exception as exc:  # noqa: BLE001
            entry["error"] = str(exc)
            ok = False
        entry["ok"] = ok
        report["images"].append(entry)
    check("every sample scored with a heatmap or set aside with a reason", all(e["ok"] for e in report["images"]),
          f"{len(report['images'])} images")
    kermany = {Path(r.path).name for r in refs if "children_kermany" in Path(r.path).parts}  # the children's samples
    kids = [e for e in report["images"] if e["file"] in kermany]
    adults = [e for e in report["images"] if e["kind"] == "dicom"]
    check("input checks: the children's samples scored, the adults' set aside (pneumonia)",
          bool(kids) and all(e.get("statuses", {}).get("pneumonia") == "scored" for e in kids)
          and all(e.get("statuses", {}).get("pneumonia") == "outside_intended_use" for e in adults),
          f"{len(kids)} children, {len(adults)} adults")
    _check_nodule(check, scorer, first_dicom[0] if first_dicom else None, report)
    if first_dicom is not None:
        _check_clinical(check, *first_dicom)
    report["ok"] = all(c["ok"] for c in report["checks"])
    return report


def _check_nodule(check, scorer, image, report: dict) -> None:
    """The nodule/mass model beside the default model: loaded and hashed, and either earning its
    score (a probability on an adult sample) or saying, with its numbers, that it has not."""
    from cxr_viewer.ai.nodule import default_nodule_path

    comp = scorer.nodule
    name = "nodule/mass model (lung-cancer association) loads and is honest about its score"
    if not default_nodule_path():  # CXR_VIEWER_NODULE=none: not asked for
        report["nodule_model"] = None
        return
    if comp.model is None:
        import os

        if not os.path.lexists(default_nodule_path()):  # none installed: the head says not available
            note = scorer.unavailable_note("lung_cancer_association")
            check(name, bool(note), f"no nodule/mass model installed; the head is not available: {note}")
        else:
            check(name, False, comp.note)
        return
    meta = comp.model.meta
    report["nodule_model"] = {"sha256": meta.weights_sha256, "available": meta.available, "note": meta.note}
    if not meta.available:
        check(name, bool(meta.note), f"not available: {meta.note}")
        return
    if image is None:
        check(name, True, f"SHA-256 {meta.weights_sha256[:12]}; no adult sample to score")
        return
    try:
        t0 = time.perf_counter()
        f = comp.find(image.values, image.monochrome1, image.padding)
        check(name, 0.0 <= f.probability <= 1.0 and f.heatmap.max() <= 1.0,
              f"SHA-256 {meta.weights_sha256[:12]}, probability {f.probability:.3f} on an adult sample "
              f"in {time.perf_counter() - t0:.2f} s")
    except Exception as exc:  # noqa: BLE001
        check(name, False, f"{type(exc).__name__}: {exc}")


def _check_clinical(check, image, result) -> None:
    """SR + Secondary Capture of a de-identified sample, re-read; the PACS libraries import."""
    import io

    try:
        import pydicom

        from cxr_viewer.clinical.deid import Deidentifier
        from cxr_viewer.clinical.dicom_results import build_secondary_capture, build_sr, read_source_header
        from cxr_viewer.clinical.finding_marks import marked_rgb

        t0 = time.perf_counter()
        header = Deidentifier().dataset(read_source_header(image.ref.path))
        back = []
        for ds in (build_sr(header, result), build_secondary_capture(header, marked_rgb(image, result)[0], result)):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            back.append(pydicom.dcmread(io.BytesIO(buf.getvalue())))
        ok = all(b.StudyInstanceUID == header.StudyInstanceUID for b in back) and header.PatientIdentityRemoved == "YES"
        check("DICOM SR and Secondary Capture of a de-identified sample", ok,
              f"{back[0].SOPClassUID.name}, {back[1].SOPClassUID.name} in {time.perf_counter() - t0:.2f} s")
    except Exception as exc:  # noqa: BLE001
        check("DICOM SR and Secondary Capture of a de-identified sample", False, f"{type(exc).__name__}: {exc}")
    try:
        from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path

        t0 = time.perf_counter()
        anatomy = AnatomyModel.from_file(default_anatomy_path())
        seg = anatomy.segment_image(image)
        found = [bool(m.any()) for m in seg.masks]
        check("anatomy model: lungs and heart outlined on a sample", all(found),
              (f"CTR {seg.ctr.ratio:.2f}" if seg.ctr else f"no CTR: {seg.ctr_note}")
              + f", SHA-256 {anatomy.meta.weights_sha256[:12]} in {time.perf_counter() - t0:.2f} s")
    except Exception as exc:  # noqa: BLE001
        check("anatomy model: lungs and heart outlined on a sample", False, f"{type(exc).__name__}: {exc}")
    try:
        import dicomweb_client  # noqa: F401
        import keyring
        from pynetdicom import AE, StoragePresentationContexts

        ae = AE()
        ae.requested_contexts = StoragePresentationContexts[:10]
        check("PACS libraries (pynetdicom, dicomweb-client, keyring)", True, f"keyring backend {type(keyring.get_keyring()).__module__}")
    except Exception as exc:  # noqa: BLE001
        check("PACS libraries (pynetdicom, dicomweb-client, keyring)", False, f"{type(exc).__name__}: {exc}")


def summary_line(report: dict, json_out: str | None = None) -> str:
    """The report in one line: passed or FAILED, what was scored on which device, the failed checks."""
    checks = report.get("checks", [])
    failed = [c for c in checks if not c["ok"]]
    images = report.get("images", [])
    model = report.get("model") or {}
    where = f"; report in {json_out}" if json_out else ""
    if report.get("ok"):
        aside = sum(1 for e in images if "outside_intended_use" in e.get("statuses", {}).values())
        return (f"cxr-viewer self-test passed: {len(checks)} checks, {len(images)} samples checked "
                f"({len(images) - aside} scored, {aside} set aside as outside intended use) on "
                f"{report.get('device', '?')}, model {str(model.get('sha256', ''))[:16]}{where}")
    reasons = "; ".join(f"{c['name']}: {' '.join(str(c['detail']).split())}" if c["detail"] else c["name"]
                        for c in failed)
    return f"cxr-viewer self-test FAILED ({len(failed)} of {len(checks)} checks): {reasons}{where}"


def main(json_out: str | None = None, device: str = "auto") -> int:
    """Run the self-test; with ``json_out`` the report goes to that file and stdout gets one summary
    line, else the report is printed (JSON) to stdout. Exit 0 only if every check passed, 2 when the
    report cannot be written."""
    if json_out and not Path(json_out).resolve().parent.is_dir():  # before a run of several seconds
        print(f"cxr-viewer --self-test: cannot write {json_out}: its folder does not exist", file=sys.stderr)
        return 2
    report = run_self_test(device)
    text = json.dumps(report, indent=2)
    if json_out:
        from cxr_viewer.common.fileio import write_bytes_atomic

        try:
            write_bytes_atomic(json_out, text.encode())
        except OSError as exc:
            print(f"cxr-viewer --self-test: cannot write {json_out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(summary_line(report, json_out))
    else:
        print(text)
    return 0 if report.get("ok") else 1
