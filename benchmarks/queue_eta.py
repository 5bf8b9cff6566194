"""Queue ETA error: how far the worklist's ``eta_s`` is from when results really arrive.

A queue of 10 demo exams (``mammotriage demo``, 1024 x 832, 4 views each) is analysed by
the triage worker loop (one process, one torch thread, the registry's active model, as
in the app). The ETAs are taken once, before the queue starts, from the per-view times
the same model measured on this machine on a few warm-up exams (persisted, p95), exactly
as ``mammotriage worklist --json`` computes them.

Prints one figure per line:
  per_view_p95_s        the measured per-view p95 the ETAs use
  eta_error_mean_pct    mean of (eta - actual) / actual over the 10 exams
  eta_error_max_abs_pct the worst exam (goal: within +-30 %)
  eta_last_s / actual_last_s  the whole queue

Usage: python benchmarks/queue_eta.py [--exams 10] [--warmup 3] [--rows 1024 --columns 832]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4, help="exams analysed first to measure the model")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--columns", type=int, default=832)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAMMOTRIAGE_HOME"] = str(Path(tmp) / "home")
        from mammotriage.config import archive_path, data_dir
        from mammotriage.model.registry import ModelRegistry
        from mammotriage.phantom import write_demo_set
        from mammotriage.store import Archive
        from mammotriage.triage.queue import TriageQueue
        from mammotriage.triage.worker import load_model, process_one

        archive_file = archive_path()
        with ModelRegistry(archive_file) as registry:
            registry.ensure_shipped()
            active, folder, _meta = registry.active_package()
        model = load_model(folder, threads=args.threads, expected_sha256=active.weights_sha256)
        maps = data_dir() / "ai_maps"
        with Archive(archive_file) as archive, TriageQueue(archive_file) as queue:
            write_demo_set(Path(tmp) / "warm", n_exams=args.warmup, seed=77, priors=0, rows=args.rows,
                           columns=args.columns)
            archive.import_paths(sorted(p for p in (Path(tmp) / "warm").iterdir() if p.is_dir()))
            queue.sync(model.version)
            while process_one(queue, archive, model, maps) is not None:
                pass
            write_demo_set(Path(tmp) / "queue", n_exams=args.exams, seed=2026, priors=0, rows=args.rows,
                           columns=args.columns)
            archive.import_paths(sorted(p for p in (Path(tmp) / "queue").iterdir() if p.is_dir()))
            queue.sync(model.version)
            p95 = queue.per_view_p95(model.weights_sha256)
            etas = queue.etas(model.version, p95)
            start = time.monotonic()
            actual: dict[str, float] = {}
            while (outcome := process_one(queue, archive, model, maps)) is not None:
                actual[outcome.exam_key] = time.monotonic() - start
        keys = [k for k in etas if k in actual]
        with TriageQueue(archive_file) as queue:
            measured = [r[0] for r in queue.conn.execute("SELECT seconds FROM inference_times ORDER BY id")]
        print("exam seconds (warm-up, then the queue):", " ".join(f"{v:.1f}" for v in measured), file=sys.stderr)
        err = np.array([(etas[k] - actual[k]) / actual[k] for k in keys]) * 100
        print(f"queue_exams {len(keys)}")
        print(f"per_view_p95_s {p95:.3f}")
        print(f"eta_error_mean_pct {err.mean():+.1f}")
        print(f"eta_error_max_abs_pct {np.abs(err).max():.1f}")
        print(f"eta_last_s {etas[keys[-1]]:.1f}")
        print(f"actual_last_s {actual[keys[-1]]:.1f}")


if __name__ == "__main__":
    main()
