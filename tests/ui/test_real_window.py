"""Start the real app in a real X server (Xvfb, xcb platform), screenshot the demo exam."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from mtsupport import require_tool


@pytest.mark.slow
def test_app_under_xvfb_shows_demo_exam(tmp_path: Path) -> None:
    xvfb_run = require_tool("xvfb-run")
    shot = tmp_path / "demo.png"
    env = dict(os.environ, MAMMOTRIAGE_HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="xcb")
    cmd = [xvfb_run, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m", "mammotriage", "app",
           "--screenshot", str(shot), "--quit-after", "240"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert shot.exists(), result.stdout + result.stderr
    image = QImage(str(shot)).convertToFormat(QImage.Format.Format_Grayscale8)
    assert image.width() >= 1000 and image.height() >= 600
    w, h, bpl = image.width(), image.height(), image.bytesPerLine()
    pixels = np.frombuffer(bytes(image.constBits()), dtype=np.uint8).reshape(h, bpl)[:, :w]
    # not blank: a real spread of grey levels from the mammograms
    assert pixels.std() > 20
    assert len(np.unique(pixels)) > 64
    # the demo archive was created in MAMMOTRIAGE_HOME, not in the user's data folder
    assert (tmp_path / "home" / "archive.sqlite").exists()
