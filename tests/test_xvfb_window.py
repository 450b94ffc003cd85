"""A real X window: start Xvfb, run the installed app on the bundled samples, take a screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "out" / "screenshots"


@pytest.mark.xvfb
def test_app_opens_samples_in_a_real_x_window(xvfb_display, tmp_path):
    out = tmp_path / "xvfb_window.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env.update(DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb", HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_viewer", str(REPO / "resources" / "samples"), "--screenshot", str(out)],
        env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists(), proc.stderr[-3000:]
    grey = np.asarray(Image.open(out).convert("L"))
    assert grey.shape[0] > 400 and grey.shape[1] > 600
    assert grey.std() > 20, "the window looks blank"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(out, SCREENSHOTS / "xvfb_window.png")
