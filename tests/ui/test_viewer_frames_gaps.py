"""benchmarks/viewer_frames.py's event-loop gap under decoding: measured while the
decodes really run (it once printed 0.0, measured after the loader had gone idle)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from mammotriage.phantom import generate_exam
from mammotriage.viewer.decode_pool import ProgressiveLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from viewer_frames import GapMeter, gaps_while_decoding, wait_until


@pytest.fixture
def polled_loader(qtbot):
    """A loader polled from the event loop, as the window's timer does."""
    loader = ProgressiveLoader(workers=1, threads=1)
    timer = QTimer()
    timer.setInterval(15)
    timer.timeout.connect(loader.poll)
    timer.start()
    yield loader
    timer.stop()
    loader.shutdown()


def test_the_gaps_are_measured_while_the_views_decode(polled_loader, tmp_path) -> None:
    files = generate_exam(5, rows=1536, columns=1248, bits_stored=16, transfer_syntax="rle").save(tmp_path)
    paths = sorted(str(p) for p in files.values())
    for path in paths:  # decoded once already: the benchmark must decode them again
        polled_loader.request(path, preview=False)
    app = QApplication.instance()

    wait_until(app, lambda: all(polled_loader.cache.get(p) is not None for p in paths))
    assert not polled_loader.busy
    meter = GapMeter()
    figures = gaps_while_decoding(app, polled_loader, paths, meter)
    assert figures["decoded"] == len(paths) == 4
    assert all(polled_loader.cache.get(p) is not None for p in paths)
    assert 0.5 * figures["window_s"] <= figures["in_flight_s"] <= figures["window_s"] + 0.1
    assert len(meter.gaps) >= 2 and figures["max_gap_ms"] > 0


def test_a_window_with_no_decode_in_flight_is_refused(polled_loader) -> None:
    with pytest.raises(RuntimeError, match="no decode was in flight"):
        gaps_while_decoding(QApplication.instance(), polled_loader, [], GapMeter())
