"""GUI responsiveness: the longest event-loop stall (a 5 ms heartbeat timer) while the worker
scores a whole folder, and while single images are opened and scored. Target: <= 50 ms.

    QT_QPA_PLATFORM=offscreen python bench/gui_responsiveness.py [FOLDER] [--model FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from cxr_viewer.ai.model_store import default_model_path
    from cxr_viewer.gui.app import configure_pyqtgraph
    from cxr_viewer.gui.main_window import MainWindow
    from cxr_viewer.gui.settings import Settings

    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", default=str(REPO / "resources" / "samples"))
    ap.add_argument("--model", default=default_model_path())
    args = ap.parse_args()
    _app = QApplication.instance() or QApplication([])  # kept alive for the whole run
    configure_pyqtgraph()
    import tempfile

    win = MainWindow(Settings(os.path.join(tempfile.mkdtemp(), "s.ini")), load_default_model=False)
    win.resize(1400, 900)
    win.show()

    def wait(signal, timeout_s=600):
        loop = QEventLoop()
        signal.connect(loop.quit)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()

    gaps: list[float] = []
    last = [time.perf_counter()]

    def beat():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    win.load_model(args.model)
    wait(win.model_changed)
    timer = QTimer()
    timer.timeout.connect(beat)
    last[0] = time.perf_counter()
    timer.start(5)
    t0 = time.perf_counter()
    win.open_paths([args.folder])
    wait(win.scored)
    open_to_scores = time.perf_counter() - t0
    open_gaps, gaps[:] = list(gaps), []
    last[0] = time.perf_counter()
    t0 = time.perf_counter()
    win.score_all()
    wait(win.worklist_runner.finished)
    folder_s = time.perf_counter() - t0
    timer.stop()
    win.shutdown()
    n = win.worklist.table.rowCount()
    print(json.dumps({
        "folder": args.folder, "images": n, "device": win.model_summary.device,
        "open_folder_to_first_scores_s": round(open_to_scores, 2),
        "max_stall_ms_while_opening_and_scoring_first_image": round(max(open_gaps) * 1000, 1),
        "max_stall_ms_while_scoring_folder": round(max(gaps) * 1000, 1),
        "median_tick_ms": round(sorted(gaps)[len(gaps) // 2] * 1000, 1),
        "ticks_while_scoring_folder": len(gaps),
        "folder_seconds": round(folder_s, 1), "folder_img_s": round(n / folder_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
