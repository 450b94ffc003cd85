"""Clinical-integration benchmark, side by side in one run:

1. what an export costs beside scoring the image (score + heatmap alone vs SR, Secondary Capture,
   PDF page, de-identification), per real sample DICOM;
2. PACS transfer over loopback against a real Orthanc: retrieve one study of N real radiographs
   with C-GET, C-MOVE and WADO-RS, and send it back with C-STORE and STOW-RS (images/s, MB/s).

    QT_QPA_PLATFORM=offscreen python bench/clinical.py [--copies 4] [--device cpu]

Needs Debian's orthanc + orthanc-dicomweb for part 2 (skipped, saying so, without them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from cxr_viewer.ai.inference import Scorer  # noqa: E402
from cxr_viewer.ai.model_store import default_model_path  # noqa: E402
from cxr_viewer.clinical.deid import Deidentifier  # noqa: E402
from cxr_viewer.clinical.dicom_results import build_secondary_capture, build_sr, read_source_header, write_dataset  # noqa: E402
from cxr_viewer.clinical.export import report_page  # noqa: E402
from cxr_viewer.clinical.finding_marks import marked_rgb  # noqa: E402
from cxr_viewer.common.tasks import run_to_completion  # noqa: E402
from cxr_viewer.io.image import open_image  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SAMPLES = REPO / "resources" / "samples" / "dicom"


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def export_costs(scorer: Scorer, tmp: Path) -> list[dict]:
    from PySide6.QtGui import QGuiApplication

    from cxr_viewer.gui.pdf_report import write_pdf_task

    _app = QGuiApplication.instance() or QGuiApplication([])  # noqa: F841
    rows = []
    for path in sorted(SAMPLES.glob("*.dcm")):
        image = open_image(str(path))
        t_score, result = timed(lambda: scorer.score(image))
        header = read_source_header(str(path))
        t_deid, _ = timed(lambda: Deidentifier().dataset(pydicom.dcmread(path)))
        t_sr, _ = timed(lambda: write_dataset(build_sr(header, result), str(tmp / "sr.dcm")))
        t_sc, _ = timed(lambda: write_dataset(build_secondary_capture(header, marked_rgb(image, result)[0], result),
                                              str(tmp / "sc.dcm")))
        t_pdf, _ = timed(lambda: run_to_completion(write_pdf_task([report_page(image, result, scorer.meta)],
                                                                  str(tmp / "r.pdf"))))
        total = t_sr + t_sc + t_pdf
        rows.append({"image": path.name, "size": f"{image.shape[1]}x{image.shape[0]}",
                     "score_ms": round(t_score * 1000, 1), "sr_ms": round(t_sr * 1000, 1),
                     "sc_ms": round(t_sc * 1000, 1), "pdf_ms": round(t_pdf * 1000, 1),
                     "deidentify_full_file_ms": round(t_deid * 1000, 1),
                     "sc_mb": round((tmp / "sc.dcm").stat().st_size / 1e6, 1),
                     "exports_vs_score": round(total / t_score, 2)})
    return rows


def study_files(copies: int, folder: Path) -> list[Path]:
    """N real radiographs as one new study (new UIDs, same pixels)."""
    sources = sorted((SHARED / "dicom").rglob("*.dcm")) if (SHARED / "dicom").is_dir() else []
    sources = [p for p in sources if _is_image(p)] or sorted(SAMPLES.glob("*.dcm"))
    study, out = generate_uid(), []
    for k in range(copies):
        series = generate_uid()
        for i, src in enumerate(sources):
            ds = pydicom.dcmread(src)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID, ds.PatientName = "BENCH", "Bench^Study"
            p = folder / f"{k}_{i}.dcm"
            ds.save_as(p, enforce_file_format=True)
            out.append(p)
    return out


def _is_image(p: Path) -> bool:
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        return "Rows" in ds and str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.") and ds.Modality != "SR"
    except Exception:  # noqa: BLE001
        return False


def pacs_transfer(copies: int, tmp: Path) -> dict:
    from orthanc_server import ORTHANC_BIN, OrthancServer

    from cxr_viewer.clinical.pacs import retrieve_task, send_task

    if not os.path.exists(ORTHANC_BIN):
        return {"skipped": "Orthanc not installed: apt-get install orthanc orthanc-dicomweb"}
    (tmp / "orthanc").mkdir()
    (tmp / "study").mkdir()
    server = OrthancServer(tmp / "orthanc")
    server.start()
    try:
        files = study_files(copies, tmp / "study")
        mb = sum(p.stat().st_size for p in files) / 1e6
        for p in files:
            server.upload(p)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        out = {"images": len(files), "study_mb": round(mb, 1)}
        dimse, web = server.dimse_node(), server.dicomweb_node()
        move = server.dimse_node(retrieve_method="move", move_port=server.move_port)
        for label, node, pw in (("C-GET", dimse, None), ("C-MOVE", move, None), ("WADO-RS", web, server.password)):
            t0 = time.perf_counter()
            got = run_to_completion(retrieve_task(node, study, str(tmp / f"cache_{label}"), pw))
            dt = time.perf_counter() - t0
            out[f"retrieve {label}"] = {"s": round(dt, 2), "images_per_s": round(len(got) / dt, 1),
                                         "mb_per_s": round(mb / dt, 1), "n": len(got)}
        for label, node, pw in (("C-STORE", dimse, None), ("STOW-RS", web, server.password)):
            server.clear()
            t0 = time.perf_counter()
            res = run_to_completion(send_task(node, [str(p) for p in files], pw))
            dt = time.perf_counter() - t0
            out[f"send {label}"] = {"s": round(dt, 2), "images_per_s": round(len(res.sent) / dt, 1),
                                     "mb_per_s": round(mb / dt, 1), "sent": len(res.sent), "failed": len(res.failed)}
        return out
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4, help="copies of the real DICOMs in the benchmark study")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    scorer = Scorer.from_file(str(default_model_path()), args.device)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        report = {"device": scorer.choice.label, "exports": export_costs(scorer, tmp),
                  "pacs_loopback": pacs_transfer(args.copies, tmp)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
