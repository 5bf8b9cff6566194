"""Reading-workstation benchmarks: window/level frame time, exam hang time, UI gaps.

Prints one figure per line (``name value``). Run offscreen or under Xvfb:
  QT_QPA_PLATFORM=offscreen python benchmarks/viewer_frames.py

1. Window/level frame time on a 4096 x 3328 16-bit view, replaying N synthetic
   right-drag events: one pane, and four linked panes. Each event changes the window
   and repaints synchronously (the time a reader waits for the frame).
   Goals: p95 <= 16.7 ms (one pane), <= 25 ms (four panes).
   In the same run pyqtgraph's ImageItem re-levels the same image in a view of the
   same size; ratio = ours / pyqtgraph (goal <= 0.25).
2. Exam hang time (open -> all four panes painted) for full-size JPEG 2000 views,
   cold (nothing decoded) and with prefetch (decoded ahead while the previous exam
   was read).
3. Longest UI event-loop gap while a neighbouring exam decodes (goal <= 50 ms).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def report(prefix: str, times_s: list[float]) -> None:
    ms = [t * 1000 for t in times_s]
    print(f"{prefix}_p50_ms {pct(ms, 50):.2f}")
    print(f"{prefix}_p95_ms {pct(ms, 95):.2f}")
    print(f"{prefix}_max_ms {max(ms):.2f}")


def drag_deltas(n: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(0)
    # a wandering drag: small steps, like a mouse moving at 60-120 Hz
    return [(float(rng.normal(0, 6)), float(rng.normal(0, 6))) for _ in range(n)]


def bench_window_level(app: QApplication, views: dict, n: int) -> dict[str, float]:
    from mammotriage.ui.hanging_view import HangingView

    results = {}
    for label, slots in (("wl_one_pane", ["LCC"]), ("wl_four_linked", ["RCC", "LCC", "RMLO", "LMLO"])):
        hanging = HangingView()
        hanging.resize(1600, 1000) if len(slots) == 4 else hanging.resize(800, 1000)
        hanging.state.link_mode = "all"
        for slot in hanging.state.slots:
            if slot in slots:
                hanging.set_view(slot, views[slot])
            else:
                hanging.panes[slot].hide()
        hanging.show()
        app.processEvents()
        for pane in hanging.panes.values():
            pane.repaint()
        times = []
        for dy, dx in drag_deltas(n):
            t0 = time.perf_counter()
            hanging._on_window_drag(slots[0], dy * 5, dx * 5)
            for slot in slots:
                hanging.panes[slot].repaint()
            times.append(time.perf_counter() - t0)
        report(label, times)
        results[label] = pct(times, 50)
        results[label + "_p95"] = pct(times, 95)
        hanging.close()
    return results


def bench_pyqtgraph(app: QApplication, image: np.ndarray, n: int) -> tuple[float, float]:
    import pyqtgraph as pg

    view = pg.GraphicsView()
    view.resize(800, 1000)
    vb = pg.ViewBox(lockAspect=True)
    view.setCentralItem(vb)
    item = pg.ImageItem(image.T, autoDownsample=True)  # pyqtgraph is column-major
    vb.addItem(item)
    vb.autoRange(padding=0)
    view.show()
    app.processEvents()
    lo, hi = float(image.min()), float(image.max())
    center, width = (lo + hi) / 2, hi - lo
    times = []
    for dy, dx in drag_deltas(n):
        center += dy * 5 * width / 300
        width = max(2.0, width + dx * 5 * width / 300)
        t0 = time.perf_counter()
        item.setLevels([center - width / 2, center + width / 2])
        view.viewport().repaint()
        times.append(time.perf_counter() - t0)
    report("pyqtgraph_imageitem_relevel", times)
    view.hide()
    return pct(times, 50), pct(times, 95)


def wait_until(app: QApplication, predicate, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("benchmark step timed out")
        app.processEvents()
        time.sleep(0.002)


def bench_hang_and_gaps(app: QApplication, exam_dirs: list[Path]) -> None:
    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    with tempfile.TemporaryDirectory() as tmp:
        archive = Archive(Path(tmp) / "a.sqlite")
        window = MainWindow(archive=archive)  # empty worklist
        archive.import_paths(exam_dirs)
        for _ in range(2):  # start the decode workers (a running app has them already)
            window.loader._pool.submit(int).result()
        window.resize(1600, 1000)
        window.show()
        shown: list[float] = []
        window.exam_shown.connect(lambda _k: shown.append(time.perf_counter()))

        def painted() -> bool:
            return bool(shown) and all(p.paints > 0 and p.view is not None for p in window.hanging.panes.values())

        # cold: the first exam, nothing decoded (worker processes already started)
        for pane in window.hanging.panes.values():
            pane.paints = 0
        shown.clear()
        t0 = time.perf_counter()
        window.refresh_worklist()  # selects and opens the first exam
        wait_until(app, painted)
        print(f"hang_cold_s {time.perf_counter() - t0:.3f}")
        # the next exam is prefetched while the first is read: measure the UI meanwhile
        gaps: list[float] = []
        timer = QElapsedTimer()
        timer.start()
        last = [timer.elapsed()]

        def tick() -> None:
            now = timer.elapsed()
            gaps.append(now - last[0])
            last[0] = now

        ticker = QTimer()
        ticker.setInterval(5)
        ticker.timeout.connect(tick)
        ticker.start()
        wait_until(app, lambda: not window.loader.busy)
        ticker.stop()
        print(f"ui_max_event_loop_gap_during_decode_ms {max(gaps):.1f}")
        print(f"ui_p99_event_loop_gap_during_decode_ms {pct(gaps, 99):.1f}")
        for pane in window.hanging.panes.values():
            pane.paints = 0
        shown.clear()
        t0 = time.perf_counter()
        window.open_row(1)
        wait_until(app, painted)
        print(f"hang_prefetched_s {time.perf_counter() - t0:.3f}")
        window.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    from mammotriage.phantom import generate_exam
    from mammotriage.viewer.loader import load_view

    with tempfile.TemporaryDirectory() as tmp:
        exam_dirs = []
        for k in (1, 2):
            exam = generate_exam(21, exam_number=k, rows=4096, columns=3328, bits_stored=16,
                                 transfer_syntax="jpeg2000")
            folder = Path(tmp) / f"exam{k}"
            exam.save(folder)
            exam_dirs.append(folder)
        views = {p.stem: load_view(str(p)) for p in sorted(exam_dirs[0].glob("*.dcm"))}
        ours = bench_window_level(app, views, args.events)
        pg50, pg95 = bench_pyqtgraph(app, views["LCC"].levels[0], args.events)
        print(f"ratio_wl_one_pane_to_pyqtgraph_p50 {ours['wl_one_pane'] / pg50:.3f}")
        print(f"ratio_wl_one_pane_to_pyqtgraph_p95 {ours['wl_one_pane_p95'] / pg95:.3f}")
        bench_hang_and_gaps(app, exam_dirs)
    sys.stdout.flush()
    # pyqtgraph's items crash PySide6 6.12 during interpreter finalisation (refcount
    # error in garbage collection); every figure is printed, so leave without it.
    os._exit(0)


if __name__ == "__main__":
    main()
