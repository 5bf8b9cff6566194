"""Fine-tune time for 100 corrected exams on this CPU, and the app's longest event-loop gap
meanwhile (the retrain runs as the Model panel's background process).

With ``--job pipeline`` it times the whole ML pipeline instead, from the last correction
to a validated candidate: the panel's "Run pipeline" (``mammotriage pipeline run``:
training snapshot, data tests, retrain, validation gate against the active model), and
prints the gate's verdict (``pipeline_passed``; a promotable candidate is one that passed).

Builds an archive of N phantom exams (default 100, 1024 x 832, the demo size) whose
every lesion a simulated reader recorded, a validation snapshot of a few more exams,
and a training snapshot; then opens the Model panel (offscreen Qt), starts "Retrain…"
and ticks a 5 ms timer in the panel's event loop until the job ends. The parent is the
shipped model when its package verifies (its replay data come from its metadata), else
an ImageNet-initialised package of the shipped architecture (same cost).

Usage: python benchmarks/retrain_time.py [--exams 100] [--threads 1] [--job retrain|pipeline] [--work DIR]
Prints one figure per line.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _parent(work: Path) -> tuple[Path, str]:
    from mammotriage.model.package import ModelPackageError, default_model_dir, verify

    try:
        verify(default_model_dir())
        return default_model_dir(), "shipped"
    except ModelPackageError:
        pass
    import torch

    from mammotriage.model.network import DEFAULT_CONFIG, build_detector, load_pretrained_backbone
    from mammotriage.model.package import save_package
    from mammotriage.model.preprocess import DEFAULT_PARAMS

    torch.manual_seed(0)
    det = build_detector(DEFAULT_CONFIG, train_components=False)
    load_pretrained_backbone(det, DEFAULT_CONFIG)
    training = {"summary": "10 phantom exams", "sources": [{"type": "phantom", "n_exams": 10, "seed": 1000,
                                                           "rows": 1024, "columns": 832}]}
    out = save_package(work / "parent", det, DEFAULT_CONFIG, DEFAULT_PARAMS, version="0.1.0-bench",
                       description="benchmark parent (ImageNet backbone, untrained head)", training=training,
                       hyper_parameters={}, seed=0, eval_metrics={}, operating_points={})
    return out, "imagenet-initialised stand-in (no verified shipped model)"


def _timed_start(panel, snapshot: str | None, out: list[float], job: str = "retrain") -> None:
    t = time.perf_counter()
    if job == "pipeline":
        panel.start_pipeline()
    else:
        panel.start_retrain(snapshot)
    out.append((time.perf_counter() - t) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exams", type=int, default=100)
    ap.add_argument("--validation-exams", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--columns", type=int, default=832)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--job", choices=("retrain", "pipeline"), default="retrain",
                    help="retrain a snapshot, or run the whole pipeline (snapshot, data tests, retrain, gate)")
    ap.add_argument("--extra", default="", help="more job arguments, e.g. '--max-iterations 20'")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    from retrain_sim import import_phantom_exams, phantom_numbers, record_ground_truth

    from mammotriage.model.registry import ModelRegistry
    from mammotriage.store.datasets import create_snapshot

    work = a.work or Path(tempfile.mkdtemp(prefix="mt-retrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "home" / "archive.sqlite"
    t0 = time.monotonic()
    parent, origin = _parent(work)
    if archive.exists():
        raise SystemExit(f"{archive} exists: give an empty --work folder")
    with ModelRegistry(archive) as reg:
        reg.ensure_shipped(parent)
    val = import_phantom_exams(archive, work / "src-val", 77, phantom_numbers(77, a.validation_exams, a.rows, a.columns),
                               a.rows, a.columns)
    record_ground_truth(archive, val, reader="validator")
    create_snapshot(archive, role="validation", name="bench-validation")
    exams = import_phantom_exams(archive, work / "src", 2026, range(1, a.exams + 1), a.rows, a.columns)
    record_ground_truth(archive, exams, reader="reader")
    # the pipeline freezes its own snapshot: its clock starts at the last correction
    snap = create_snapshot(archive, role="training", name=f"bench-{a.exams}") if a.job == "retrain" else None
    setup_s = time.monotonic() - t0

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from mammotriage.ui.model_panel import ModelPanel

    app = QApplication.instance() or QApplication([])
    job = ["--threads", str(a.threads), "--nice", str(a.nice), *a.extra.split()]
    panel = ModelPanel(archive, job_args={a.job: job})
    panel.show()
    gaps: list[float] = []
    # (seconds into the job, gap ms, the UI thread's CPU ms in it, garbage-collector ms in it, panel status)
    long_gaps: list[tuple[float, float, float, float, str]] = []
    last = [time.perf_counter()]
    last_cpu = [time.thread_time()]
    start = [time.perf_counter()]
    gc_ms = [0.0]  # the collector's time since the last tick
    gc_t0 = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_ms[0] += (time.perf_counter() - gc_t0[0]) * 1000

    gc.callbacks.append(on_gc)

    def tick() -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        gaps.append(now - last[0])
        if now - last[0] > 0.02:
            long_gaps.append((now - start[0], (now - last[0]) * 1000, (cpu - last_cpu[0]) * 1000, gc_ms[0],
                              panel.status.text()[:60]))
        last[0], last_cpu[0], gc_ms[0] = now, cpu, 0.0

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    loop = QEventLoop()
    done: list[tuple[str, int]] = []
    panel.job_finished.connect(lambda kind, code: (done.append((kind, code)), loop.quit()))
    t1 = time.monotonic()
    start[0] = time.perf_counter()
    timer.start()
    QTimer.singleShot(50, lambda: _timed_start(panel, snap.sha256 if snap else None, starts, a.job))
    starts: list[float] = []
    loop.exec()
    timer.stop()
    gc.callbacks.remove(on_gc)
    wall = time.monotonic() - t1
    res = panel.job_result or {}
    gaps_ms = sorted(g * 1000 for g in gaps)
    print(f"parent {origin}")
    print(f"corrected_exams {a.exams}")
    print(f"snapshot_images {res.get('images')}")
    print(f"replay_images {res.get('replay_images')}")
    print(f"iterations {res.get('iterations')}")
    print(f"threads {a.threads}")
    print(f"setup_seconds {setup_s:.0f}")
    print(f"{a.job}_exit {done[0][1] if done else 'none'} {panel.status.text()!r}")
    print(f"{a.job}_wall_seconds {wall:.1f}")
    print(f"{a.job}_reported_seconds {res.get('seconds')}")
    if a.job == "pipeline":
        print(f"pipeline_retrain_seconds {res.get('retrain_s')}")
        print(f"pipeline_passed {res.get('passed')}")
        for reason in res.get("reasons") or []:
            print(f"pipeline_reason {reason!r}")
        if a.exams:
            print(f"pipeline_seconds_per_exam {wall / a.exams:.1f}")
    if starts:
        print(f"ui_job_start_call_ms {starts[0]:.1f}")
    if gaps_ms:
        print(f"ui_longest_gap_ms {gaps_ms[-1]:.1f}")
        for at, ms, cpu_ms, collect_ms, status in sorted(long_gaps, key=lambda g: -g[1])[:5]:
            print(f"ui_gap_at {at:.1f}s {ms:.1f}ms cpu {cpu_ms:.1f}ms gc {collect_ms:.1f}ms {status!r}")
        # wall gaps far above the UI thread's own CPU in them: the cores were taken by others
        print(f"ui_max_cpu_in_a_gap_ms {max((g[2] for g in long_gaps), default=0.0):.1f}")
        print(f"ui_gap_p99_ms {gaps_ms[int(0.99 * (len(gaps_ms) - 1))]:.1f}")
        print(f"ui_ticks {len(gaps_ms)}")
    panel.close()
    panel.deleteLater()
    app.processEvents()
    timer.deleteLater()
    if not a.keep and a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
