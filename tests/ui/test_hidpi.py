"""HiDPI: on a screen of device pixel ratio 2 (QT_SCALE_FACTOR=2, a real offscreen
QApplication in a child process, since the ratio is fixed when the application starts)
the pane's raster is made at device pixels and blitted unscaled; the geometry in
logical pixels is that of ratio 1, so nothing moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mtsupport import write_mg

PROBE = r"""
import json, sys
import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication
from mammotriage.ui.image_pane import ImagePane
from mammotriage.viewer.loader import load_view
from mammotriage.viewer.state import PaneState

app = QApplication([])
pane = ImagePane("LCC", PaneState())
pane.show_text = False  # only the image in the grab (no corner text, no focus frame)
pane.setFocusPolicy(Qt.FocusPolicy.NoFocus)
pane.resize(240, 300)
pane.set_view(load_view(sys.argv[1]))
pane.show()
app.processEvents()
image, level, origin = pane.display_image()
grab = pane.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
def pixels(img):
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    return np.frombuffer(bytes(img.constBits()), dtype=np.uint32).reshape(h, bpl // 4)[:, :w]
raster = pixels(image)
ratio = pane.devicePixelRatioF()
x0, y0 = round(origin.x() * ratio), round(origin.y() * ratio)
blit = pixels(grab)[y0:y0 + raster.shape[0], x0:x0 + raster.shape[1]]
rect = pane.image_rect()
print(json.dumps({"ratio": ratio, "image_ratio": image.devicePixelRatio(), "level": level,
                  "raster": list(raster.shape), "grab": [grab.height(), grab.width()],
                  "blit_equal": bool(blit.shape == raster.shape and (blit == raster).all()),
                  "rect": [rect.x(), rect.y(), rect.width(), rect.height()]}))
"""


def _probe(path: Path, scale: str) -> dict:
    app = Path(__file__).resolve().parents[2] / "app"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_SCALE_FACTOR=scale,
               PYTHONPATH=os.pathsep.join([str(app), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_raster_is_made_at_device_pixels_on_a_hidpi_screen(tmp_path) -> None:
    yy, xx = np.mgrid[0:1200, 0:960]
    pixels = ((xx * 7 + yy * 3) % 4096).astype(np.uint16)  # fine detail: a level shows in the raster
    path = write_mg(tmp_path / "LCC.dcm", rows=1200, columns=960, laterality="L", view="CC", pixels=pixels)
    one, two = _probe(path, "1"), _probe(path, "2")
    assert one["ratio"] == 1 and two["ratio"] == 2 and two["image_ratio"] == 2
    assert two["grab"] == [2 * one["grab"][0], 2 * one["grab"][1]]
    # the same place in logical pixels (no jump), twice the device pixels in the raster
    assert np.allclose(one["rect"], two["rect"], atol=0.01)
    assert abs(two["raster"][0] - 2 * one["raster"][0]) <= 2 and abs(two["raster"][1] - 2 * one["raster"][1]) <= 2
    assert two["level"] < one["level"]  # a finer pyramid level for the finer screen
    # blitted as it is: every device pixel on screen is the raster's
    assert one["blit_equal"] and two["blit_equal"]
