"""Screenshots of the nodule/mass model's finding box in the real window: for each image, the app
(offscreen) opens it, scores it and saves a 1280x720 picture of the window; where the finding is
positive and placed, a second picture zoomed onto the box. One JSON line per image on stdout.

    QT_QPA_PLATFORM=offscreen python bench/nodule_screens.py --model models/nodule.safetensors \
        ../shared/data/jsrt/images/JPCLN001.png [MORE IMAGES] [--out out/screenshots] [--score-anyway]

``--model`` is the nodule/mass model (set as ``CXR_VIEWER_NODULE`` before the scoring model loads);
``--scorer`` the scoring model (default: the shipped one). Pictures: ``OUT/nodule_<image stem>.png``
and ``OUT/nodule_<image stem>_zoom.png``. Look at them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files (DICOM, PNG, JPEG)")
    ap.add_argument("--model", required=True, help="the nodule/mass model (.safetensors with its .json)")
    ap.add_argument("--scorer", default="", help="the scoring model (default: the shipped one)")
    ap.add_argument("--out", default=str(REPO / "out" / "screenshots"))
    ap.add_argument("--size", default="1280x720", help="window size, WIDTHxHEIGHT")
    ap.add_argument("--score-anyway", action="store_true", help="score images outside the intended use too")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one image's scores")
    args = ap.parse_args()
    if not os.path.exists(args.model):
        ap.error(f"no nodule/mass model at {args.model}")
    os.environ["CXR_VIEWER_NODULE"] = os.path.abspath(args.model)  # before the scorer loads

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.clinical.finding_marks import finding_marks
    from cxr_viewer.gui.app import configure_pyqtgraph
    from cxr_viewer.gui.main_window import MainWindow
    from cxr_viewer.gui.settings import Settings

    _app = QApplication.instance() or QApplication([])  # kept alive for the whole run
    configure_pyqtgraph()
    win = MainWindow(Settings(os.path.join(tempfile.mkdtemp(), "s.ini")), load_default_model=False)
    width, height = (int(v) for v in args.size.lower().split("x"))
    win.resize(width, height)
    win.show()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def wait(signals, timeout_s: float) -> list:
        """Run the event loop until one of ``signals`` fires (its arguments) or the time is up ([])."""
        got: list = []
        loop = QEventLoop()

        def done(*a):
            got.extend(a or [None])
            loop.quit()

        for s in signals:
            s.connect(done)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        for s in signals:
            s.disconnect(done)
        return got

    def settle(ms: int = 300) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    win.load_model(args.scorer or default_model_path())
    got = wait([win.model_changed], args.timeout)
    if win.model_summary is None:
        print(json.dumps({"error": f"the scoring model did not load: {got}"}))
        return 2
    failures = 0
    for path in args.images:
        stem = Path(path).stem
        record: dict = {"image": path}
        win.open_paths([path])
        got = wait([win.scored, win.score_runner.failed, win.image_runners[0].failed], args.timeout)
        result = got[0] if got and hasattr(got[0], "heads") else None
        if result is not None and args.score_anyway and any(h.status == "outside_intended_use" for h in result.heads):
            win._score_current(score_anyway=True)
            got = wait([win.scored, win.score_runner.failed], args.timeout)
            result = got[0] if got and hasattr(got[0], "heads") else None
        if result is None:
            record["error"] = str(got[0]) if got else "timed out"
            failures += 1
            print(json.dumps(record), flush=True)
            continue
        lung = result.head("lung_cancer_association")
        record.update(status=lung.status, probability=lung.probability, positive=lung.positive,
                      threshold=lung.threshold, location=lung.location, reason=lung.reason,
                      nodule_model=result.companion)
        settle()
        shot = out / f"nodule_{stem}.png"
        win.grab().save(str(shot))
        record["screenshot"] = str(shot)
        marks = finding_marks(result, tuple(win.view.image.shape[:2]))
        if marks:
            x0, y0, x1, y1 = marks[0].box
            side = max(x1 - x0, y1 - y0)
            win.view.set_view_rect((x0 - side, y0 - side, x1 + side, y1 + side))
            settle()
            zoom = out / f"nodule_{stem}_zoom.png"
            win.grab().save(str(zoom))
            record["zoomed"] = str(zoom)
            win.view.zoom_fit()
        print(json.dumps(record), flush=True)
    win.shutdown()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
