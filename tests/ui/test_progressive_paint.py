"""Early first-level paint for files without reduced resolutions of their own: a real
pane shows the preview first, then the full view in its place, with the same geometry
and window (no visible jump)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtGui import QImage

from mammotriage.phantom import generate_exam
from mammotriage.ui.image_pane import ImagePane
from mammotriage.viewer.decode_pool import ProgressiveLoader
from mammotriage.viewer.loader import LoadedView
from mammotriage.viewer.state import PaneState


def _grey(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_Grayscale8)
    w, h, bpl = image.width(), image.height(), image.bytesPerLine()
    return np.frombuffer(bytes(image.constBits()), dtype=np.uint8).reshape(h, bpl)[:, :w].astype(np.int16)


@pytest.mark.parametrize("syntax", ["explicit", "rle"])
def test_the_pane_paints_the_first_level_then_the_full_view_in_its_place(qtbot, tmp_path, syntax) -> None:
    files = generate_exam(8, rows=1536, columns=1248, bits_stored=16, transfer_syntax=syntax).save(tmp_path)
    path = str(files["LCC"])
    pane = ImagePane("LCC", PaneState())
    qtbot.addWidget(pane)
    pane.show_text = False
    pane.resize(300, 360)
    pane.show()
    qtbot.waitExposed(pane)
    loader = ProgressiveLoader(workers=1, threads=1)
    painted: list[dict] = []
    try:
        loader.on_screen = {path}
        assert loader.request(path) is None
        end = time.monotonic() + 300
        while not painted or painted[-1]["preview"]:
            assert time.monotonic() < end, "decode did not finish"
            for result in loader.poll():  # each result is painted, in the order they come
                assert isinstance(result, LoadedView)
                before = pane.paints
                pane.set_view(result)
                qtbot.waitUntil(lambda before=before: pane.paints > before)  # painted by the event loop
                rect = pane.image_rect()
                painted.append({"preview": result.preview, "paints": pane.paints,
                                "rect": (rect.x(), rect.y(), rect.width(), rect.height()),
                                "table": pane._lut.table.copy(), "level_rows": result.levels[0].shape[0],
                                "pixels": _grey(pane.grab().toImage())})
            time.sleep(0.01)
    finally:
        loader.shutdown()
    assert [p["preview"] for p in painted] == [True, False]  # the first level painted first, then replaced
    first, full = painted
    assert first["paints"] >= 1 and full["paints"] > first["paints"]
    assert first["level_rows"] == 384 and full["level_rows"] == 1536
    assert first["rect"] == pytest.approx(full["rect"])  # the same geometry ...
    assert np.array_equal(first["table"], full["table"])  # ... and the same window
    diff = np.abs(first["pixels"] - full["pixels"])
    assert diff.mean() < 6 and (diff > 64).mean() < 0.02  # what the reader sees does not jump
