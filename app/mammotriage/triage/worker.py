"""The triage worker: a process that takes jobs from the queue and runs the model.

It owns the model (torch) and writes results; the UI and the CLI only read the queue.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mammotriage.dicom import MammoReadError, read_image
from mammotriage.dicom.image import Laterality, MammoImage, View
from mammotriage.dicom.voi import image_statistics, render_8bit
from mammotriage.lifetime import die_with_parent
from mammotriage.store import Archive
from mammotriage.triage.queue import ExamResult, Job, TriageQueue
from mammotriage.triage.sink import ResultSink, result_kind


class Predictor(Protocol):
    """What the worker needs from a model engine."""

    version: str

    def predict_images(self, images: list) -> list: ...


@dataclass
class LoadedModel:
    engine: Predictor
    version: str
    weights_sha256: str
    metadata: dict[str, Any]


def load_model(model_dir: str | Path | None = None, device: str | None = None, threads: int = 2,
               expected_sha256: str | None = None) -> LoadedModel:
    """Load and verify a model package (sha256 checked) for triage; with
    ``expected_sha256`` (the registry's active weights) any other weights are refused."""
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import ModelPackageError, default_model_dir, verify

    folder = Path(model_dir) if model_dir else default_model_dir()
    meta = verify(folder)
    if expected_sha256 and meta.get("weights_sha256") != expected_sha256:
        raise ModelPackageError(f"{folder}: weights {str(meta.get('weights_sha256'))[:12]}... are not the "
                                f"registry's active model ({expected_sha256[:12]}...): refusing to run them")
    engine = Engine.from_package(folder, device=device, threads=threads)
    return LoadedModel(engine, str(meta.get("version", "")), str(meta["weights_sha256"]), meta)


def analyse_exam(model: LoadedModel, archive: Archive, exam_key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the model over the breast images of one exam.

    Returns one result dict per analysed image and the problems met (unreadable
    views are skipped with their reason; an exam with no readable view raises).
    """
    exam = archive.exam(exam_key)
    if exam is None:
        raise LookupError(f"exam {exam_key} is no longer in the archive")
    images, problems = [], []
    for record in exam.images:
        if record.laterality not in (Laterality.LEFT, Laterality.RIGHT):
            problems.append(f"{record.path}: laterality unknown, not analysed")
            continue
        try:
            image = read_image(record.path)
            images.append((record, image))
            problems.extend(f"{record.path}: {w}" for w in image.meta.warnings)
        except MammoReadError as exc:
            problems.append(f"{record.path}: {exc.reason}")
        except OSError as exc:
            problems.append(f"{record.path}: {exc}")
    return analyse_views(model, [(record.sop_uid, record.laterality, record.view, im) for record, im in images],
                         problems), problems


def analyse_views(model: LoadedModel, views: list[tuple[str, Laterality, View, MammoImage]],
                  problems: list[str]) -> list[dict[str, Any]]:
    """Run the model over decoded views (SOP Instance UID, laterality, view, image): one
    result dict per view. No view at all raises, with ``problems`` as the reason."""
    if not views:
        raise RuntimeError("no view could be analysed: " + "; ".join(problems or ["no images"]))
    results = model.engine.predict_images([im for *_, im in views])
    out = []
    for (sop_uid, lat, view, im), result in zip(views, results, strict=True):
        stats = image_statistics(render_8bit(im.meta, im.pixels[::4, ::4]))
        out.append({
            "sop_uid": sop_uid,
            "laterality": lat.value,
            "view": view.value,
            "score": float(result.score),
            "findings": [f.to_json() if hasattr(f, "to_json") else dict(f) for f in result.findings],
            "suspicion": getattr(result, "suspicion", None),
            "map_factor": float(getattr(result, "map_factor", 1.0)),
            "stats": stats,
        })
    return out


def process_one(queue: TriageQueue, archive: Archive, model: LoadedModel, maps_dir: Path,
                results_dir: Path | None = None, on_error: Callable[[str], None] | None = None,
                sink: ResultSink | None = None, hold_s: float = 0.0) -> ExamResult | Job | None:
    """Claim and analyse the next job. Returns the result, the failed job, or None if idle.
    ``hold_s``: see :meth:`TriageQueue.claim_next` (a site workstation waits for the site's result).

    With ``results_dir`` the exam's results are also written as DICOM (SR + SEG) and
    handed to ``sink`` (the outbox, when the composition root gives one); a failure
    there is reported through ``on_error`` and does not fail the triage.
    """
    job = queue.claim_next(model.version, hold_s=hold_s)
    if job is None:
        return None
    started = time.perf_counter()
    try:
        images, problems = analyse_exam(model, archive, job.exam_key)
        result = queue.complete(job, model.weights_sha256, images, maps_dir=maps_dir)
    except Exception as exc:  # noqa: BLE001 - a failing exam never blocks the queue
        queue.fail(job, f"{type(exc).__name__}: {exc}")
        return job
    if problems and on_error is not None:
        # scored on the views that could be read, or with an attribute set aside: said
        on_error(f"exam {job.exam_key} analysed with problems: " + "; ".join(problems))
    if results_dir is not None:
        try:
            from mammotriage.dicom.content import AlgorithmInfo
            from mammotriage.triage.dicom_results import write_exam_results

            name = str(model.metadata.get("name") or "mammotriage-detector")
            breasts = {k: v for k, v in (("L", result.score_left), ("R", result.score_right)) if v is not None}
            paths = write_exam_results(archive, job.exam_key, images,
                                       AlgorithmInfo(name, model.version, model.weights_sha256),
                                       results_dir / model.version, breast_scores=breasts, exam_score=result.score)
            if sink is not None:
                for path in paths:
                    sink.queue(path, result_kind(path))
        except Exception as exc:  # noqa: BLE001 - the triage result stands; report the DICOM problem
            if on_error is not None:
                on_error(f"DICOM results for {job.exam_key} not written: {type(exc).__name__}: {exc}")
    # the queue's ETAs: per view, everything the worker did for the exam before the next one
    queue.record_time(model.weights_sha256, model.version, len(images), time.perf_counter() - started)
    return result


def _limit_memory(device: str | None) -> None:
    """Bound the worker's address space when the model runs on the CPU (see dicom.limits)."""
    from mammotriage.dicom.limits import TRIAGE_WORKER_LIMIT, limit_address_space

    if device is not None and not str(device).startswith("cpu"):
        return  # CUDA reserves address space far beyond any useful limit
    if device is None:
        import torch

        if torch.cuda.is_available():
            return
    limit_address_space(TRIAGE_WORKER_LIMIT)


def run_worker(archive_path: str, data_dir: str, model_dir: str | None, stop: Any,
               device: str | None = None, threads: int = 2, idle_s: float = 0.5,
               loader: Callable[..., LoadedModel] = load_model, status: Any = None,
               settle_s: float = 3.0, expected_sha256: str | None = None,
               sink: ResultSink | None = None, hold_s: float = 0.0) -> None:
    """Worker-process main loop: sync the queue, take jobs, store results, until ``stop`` is set.
    The DICOM results go to ``sink`` (see :mod:`mammotriage.triage.sink`).

    ``status`` (a multiprocessing queue, optional) receives ``("ready", version)``,
    ``("done", exam_key)``, ``("failed", exam_key, reason)`` and ``("error", text)``.
    """
    def say(*msg: object) -> None:
        if status is not None:
            status.put(msg)

    _limit_memory(device)
    try:
        model = (loader(model_dir, device=device, threads=threads, expected_sha256=expected_sha256)
                 if expected_sha256 else loader(model_dir, device=device, threads=threads))
    except Exception as exc:  # noqa: BLE001 - reported to the UI, which keeps working
        say("error", f"cannot load the model: {type(exc).__name__}: {exc}")
        return
    say("ready", model.version)
    maps_dir = Path(data_dir) / "ai_maps"
    with TriageQueue(archive_path) as queue, Archive(archive_path) as archive:
        queue.recover()
        last_sync = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now - last_sync > 2.0:
                queue.sync(model.version, settle_s=settle_s)
                last_sync = now
            try:
                outcome = process_one(queue, archive, model, maps_dir, results_dir=Path(data_dir) / "results",
                                      on_error=lambda text: say("error", text), sink=sink, hold_s=hold_s)
            except Exception:  # noqa: BLE001 - database trouble: report and retry later
                say("error", traceback.format_exc(limit=3))
                stop.wait(idle_s)
                continue
            if outcome is None:
                stop.wait(idle_s)
            elif isinstance(outcome, ExamResult):
                say("done", outcome.exam_key)
            else:
                say("failed", outcome.exam_key)


def _worker_main(parent_pid: int, *args: Any, **kwargs: Any) -> None:
    """The worker process: tied to the app's lifetime, then :func:`run_worker`."""
    die_with_parent(parent_pid)
    run_worker(*args, **kwargs)


class TriageService:
    """Starts and stops the worker process (used by the app).

    The worker exits when the app does, also when the app is killed; a job it was
    running is then put back in the queue by the next worker's ``recover()``.
    """

    def __init__(self, archive_path: str | Path, data_dir: str | Path, model_dir: str | Path | None = None,
                 device: str | None = None, threads: int = 1, expected_sha256: str | None = None,
                 sink: ResultSink | None = None, hold_s: float = 0.0):
        ctx = mp.get_context("spawn")
        self.stop_event = ctx.Event()
        self.status = ctx.Queue()
        self.process = ctx.Process(
            target=_worker_main, name="mammotriage-triage", daemon=True,
            args=(os.getpid(), str(archive_path), str(data_dir), str(model_dir) if model_dir else None,
                  self.stop_event),
            kwargs={"device": device, "threads": threads, "status": self.status,
                    "expected_sha256": expected_sha256, "sink": sink, "hold_s": hold_s})

    def start(self) -> None:
        self.process.start()

    def messages(self) -> list[tuple]:
        out = []
        while True:
            try:
                out.append(self.status.get_nowait())
            except Exception:  # noqa: BLE001 - queue.Empty
                return out

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.process.is_alive():
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
