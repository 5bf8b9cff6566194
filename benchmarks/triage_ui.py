"""Background triage while the reading UI runs: event-loop gaps and triage throughput.

Prints one figure per line. Imports freshly generated demo exams into a new archive,
opens the workstation (offscreen) with its triage worker and measures, until every
exam is analysed:
  ui_max_event_loop_gap_ms   longest gap between 5 ms timer ticks (goal <= 50)
  ui_p99_event_loop_gap_ms
  triage_seconds_per_exam    wall time per 4-view exam in the background worker
  malignant_rank_ok          1 if every exam with a malignant lesion ranks above every normal exam

Usage: QT_QPA_PLATFORM=offscreen python benchmarks/triage_ui.py [--exams 6] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
from PySide6.QtCore import QElapsedTimer, QTimer
from PySide6.QtWidgets import QApplication


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=6)
    parser.add_argument("--model", default=None, help="model package (default: the shipped one)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAMMOTRIAGE_HOME"] = str(Path(tmp) / "home")
        app = QApplication.instance() or QApplication([])
        from mammotriage.phantom import write_demo_set
        from mammotriage.store import Archive
        from mammotriage.ui.main_window import MainWindow

        gt_path = write_demo_set(Path(tmp) / "demo", n_exams=args.exams, seed=2026, rows=1024, columns=832)
        truth = json.loads(Path(gt_path).read_text())
        archive = Archive(Path(tmp) / "home" / "archive.sqlite")
        archive.import_paths(sorted(p for p in (Path(tmp) / "demo").iterdir() if p.is_dir()))
        window = MainWindow(archive=archive, model_dir=args.model)
        if window.triage is None:
            print(f"no model: {window.model_problem}", file=sys.stderr)
            raise SystemExit(2)
        window.resize(1600, 1000)
        window.show()
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
        t0 = time.monotonic()
        ready_at = None
        while time.monotonic() - t0 < args.timeout:
            app.processEvents()
            time.sleep(0.001)
            counts = window.queue.counts(window.model_version)
            if os.environ.get("MT_BENCH_DEBUG") and int(time.monotonic() - t0) % 10 == 0:
                print("debug", round(time.monotonic() - t0), counts, window.triage.process.is_alive(), flush=True)
            if ready_at is None and counts["running"] + counts["done"] + counts["failed"] > 0:
                ready_at = time.monotonic()
            if counts["done"] + counts["failed"] == args.exams:
                break
        ticker.stop()
        total = time.monotonic() - (ready_at or t0)
        window.refresh_worklist()
        order = [e.exam.study_uids[0] for e in window.worklist.entries]
        malignant = {e["study_uid"] for e in truth["exams"] if any(les["malignant"] for les in e["lesions"])}
        normal = {e["study_uid"] for e in truth["exams"] if e["normal"]}
        worst_malignant = max((order.index(u) for u in malignant if u in order), default=-1)
        best_normal = min((order.index(u) for u in normal if u in order), default=len(order))
        print(f"exams {args.exams}")
        print(f"ui_max_event_loop_gap_ms {max(gaps):.1f}")
        print(f"ui_p99_event_loop_gap_ms {np.percentile(gaps, 99):.1f}")
        print(f"triage_seconds_per_exam {total / args.exams:.2f}")
        print(f"malignant_rank_ok {int(worst_malignant < best_normal)}", flush=True)
        window.close()
    sys.stdout.flush()
    # PySide6 6.12 can abort in garbage collection at interpreter exit after this
    # script's timers and temporary folders are torn down; every figure is printed.
    os._exit(0)


if __name__ == "__main__":
    main()
