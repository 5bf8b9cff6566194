"""Back-fill triage of a whole archive: a pool of worker processes over all cores.

``mammotriage backfill`` analyses every exam that has no result of the registry's
active model yet. It uses the same persistent queue as the app's background worker
(:mod:`mammotriage.triage.queue`), so it is resumable by construction:

- every exam is one job; a finished job is ``done`` in the archive file and is never
  analysed again by a later run;
- a run that is killed leaves its exams in analysis ``running``; the next run puts
  them back (:meth:`TriageQueue.recover`, at most ``max_attempts`` tries each) and goes on;
- the workers claim jobs in one SQLite transaction each, so no exam is analysed twice
  at the same time.

Each worker process loads the model once (one torch thread: the parallelism is the
processes) and dies with the command (``die_with_parent``). Progress and the ETA (from
the measured per-view p95 of the model, see :meth:`TriageQueue.etas`) go to stderr.
Run it while the app is closed: the app's own worker would recover the same jobs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammotriage.triage.queue import TriageQueue


@dataclass
class BackfillReport:
    model_version: str
    workers: int
    done_before: int  # exams that already had a result of this model (not redone)
    analysed: int     # exams this run finished
    failed: int       # exams that failed (each with its reason in the queue)
    remaining: int    # still waiting (the run was stopped)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _worker(parent_pid: int, archive_file: str, data_dir: str, model_dir: str, expected_sha256: str,
            device: str | None, version: str) -> None:
    """One pool process: claim, analyse and store exams until none is pending."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mammotriage.lifetime import die_with_parent

    die_with_parent(parent_pid)
    from mammotriage.store import Archive
    from mammotriage.triage.worker import _limit_memory, load_model, process_one

    _limit_memory(device)
    model = load_model(model_dir, device=device, threads=1, expected_sha256=expected_sha256)
    if model.version != version:
        raise SystemExit(f"{model_dir}: model {model.version} is not the active {version}")
    with TriageQueue(archive_file) as queue, Archive(archive_file) as archive:
        def say(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

        while process_one(queue, archive, model, Path(data_dir) / "ai_maps", results_dir=Path(data_dir) / "results",
                          on_error=say) is not None:
            pass


def _progress_line(counts: dict[str, int], total: int, eta_s: float | None, rate: float | None) -> str:
    finished = counts["done"] + counts["failed"]
    text = f"backfill {finished}/{total} exams"
    if counts["failed"]:
        text += f" ({counts['failed']} failed)"
    if rate:
        text += f" · {rate * 60:.1f} exams/min"
    if eta_s is not None and finished < total:
        text += f" · about {eta_s / 60:.1f} min left" if eta_s >= 90 else f" · about {eta_s:.0f} s left"
    return text


def backfill(archive_file: Path, data_dir: Path, workers: int | None = None, device: str | None = None,
             model_dir: str | Path | None = None, poll_s: float = 0.5, quiet: bool = False) -> BackfillReport:
    """Analyse every exam of the archive without a result of the active model."""
    from mammotriage.model.registry import ModelRegistry

    with ModelRegistry(archive_file) as registry:
        registry.ensure_shipped()
        version, folder, _meta = registry.active_package()
    if model_dir is not None:
        with ModelRegistry(archive_file) as registry:
            registry.check_runs(model_dir)  # only the active weights, from wherever they are
        folder = Path(model_dir)
    workers = max(1, int(workers or os.cpu_count() or 1))
    started = time.monotonic()
    with TriageQueue(archive_file) as queue:
        queue.recover()  # exams a killed run was analysing go back to the queue
        queue.sync(version.version)
        counts = queue.counts(version.version)
        done_before, failed_before = counts["done"], counts["failed"]
        total = sum(counts.values())
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, name=f"mammotriage-backfill-{n}", daemon=True,
                             args=(os.getpid(), str(archive_file), str(data_dir), str(folder),
                                   version.weights_sha256, device, version.version))
                 for n in range(min(workers, counts["pending"]))]
        for proc in procs:
            proc.start()
        last, last_at = -1, 0.0
        try:
            while any(p.is_alive() for p in procs):
                time.sleep(poll_s)
                counts = queue.counts(version.version)
                finished = counts["done"] + counts["failed"] - done_before - failed_before
                if quiet or (finished == last and time.monotonic() - last_at < 30):
                    continue  # a line per finished exam, else one every 30 s
                last, last_at = finished, time.monotonic()
                etas = queue.etas(version.version, queue.per_view_p95(version.weights_sha256), len(procs))
                elapsed = time.monotonic() - started
                print(_progress_line(counts, total, max(etas.values(), default=0.0) if etas else None,
                                     finished / elapsed if finished and elapsed > 0 else None),
                      file=sys.stderr, flush=True)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join(5)
        counts = queue.counts(version.version)
    return BackfillReport(version.version, len(procs), done_before, counts["done"] - done_before,
                          counts["failed"] - failed_before, counts["pending"] + counts["running"],
                          round(time.monotonic() - started, 1))


def add_backfill_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backfill", help="triage every exam of the archive with the active model (all cores, resumable)",
        description="Back-fill triage: analyse every archived exam that has no result of the registry's "
        "active model, with a pool of worker processes. Stopped or killed, it resumes where it was: "
        "finished exams are never analysed again. Run it while the app is closed.")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_backfill)


def cmd_backfill(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path, data_dir
    from mammotriage.model.package import ModelPackageError
    from mammotriage.model.registry import RegistryError

    try:
        report = backfill(archive_path(), data_dir(), workers=args.workers, device=args.device)
    except (RegistryError, ModelPackageError) as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"model {report.model_version}: {report.analysed} exam(s) analysed, {report.failed} failed, "
              f"{report.done_before} already done, {report.remaining} waiting, with {report.workers} "
              f"worker(s) in {report.seconds:.0f} s")
    return 0 if report.remaining == 0 and report.failed == 0 else 1
