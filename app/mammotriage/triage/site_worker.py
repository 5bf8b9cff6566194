"""The site's AI worker: jobs from the shared queue, images from the archive, results back.

One :class:`SiteWorker` per process (a CPU machine, a GPU machine: they serve one
queue). For each job it

1. claims it from :class:`~mammotriage.triage.site_queue.SiteQueue` (``SKIP LOCKED``,
   a lease) and renews the lease from a heartbeat thread while it works;
2. gets the exam's image files from an injected :class:`ExamImageSource` (the
   composition root gives the DICOMweb one: QIDO-RS the study's instances, WADO-RS them
   into the byte-bounded cache; :mod:`mammotriage.net.site_io`), so triage knows
   nothing of the network;
3. decodes each with the app's own reader and its safety checks
   (:func:`mammotriage.dicom.read_image`: a non-mammogram, a file that does not decode,
   a decompression bomb is a problem of that view, with its reason);
4. runs the model the job names (``model_sha256``): a worker runs only the packages it
   holds (:func:`~mammotriage.triage.worker.load_model`, verified), claims only their
   jobs and says which pending jobs need a model it does not hold;
5. writes the SR and SEGs with stable UIDs (derived from exam, weights and source:
   :func:`~mammotriage.triage.dicom_results.result_uid`) and hands them to the
   injected :class:`~mammotriage.triage.sink.ResultSink` (STOW-RS to the archive)
   *before* storing the result: an archive that keeps the first copy of an instance then
   holds each exam's SR once, even when a killed worker's job is done again elsewhere;
6. stores the result with :meth:`~SiteQueue.complete`, which keeps exactly one per exam
   and model; a late result (the lease ran out and another worker took the job) is
   discarded and logged.

A job whose views are all unusable fails with the reasons; an archive that cannot be
reached (or does not take the results) gives the job back (:meth:`SiteQueue.release`);
the loop goes on in both cases.

:func:`enqueue_stable` is the enqueuer: the archive's stable-study signal
(:class:`mammotriage.net.dicomweb.StableStudyWatcher`, connected by the composition
root) becomes one job per study and model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mammotriage.dicom import MammoReadError, read_image
from mammotriage.dicom.image import Laterality, MammoImage, View
from mammotriage.triage.dicom_results import write_result_files
from mammotriage.triage.sink import ResultSink, result_kind
from mammotriage.triage.site_queue import SiteJob, SiteQueue
from mammotriage.triage.worker import LoadedModel, analyse_views

__all__ = ["ExamImageSource", "JobOutcome", "SiteWorker", "enqueue_stable"]

log = logging.getLogger(__name__)


class ExamImageSource(Protocol):
    """Where a worker gets an exam's images (the exam key is its Study Instance UID)."""

    def exam_files(self, exam_key: str) -> tuple[list[Path], list[str]]:
        """(local files of the exam's images, one text per instance that could not be had).

        Raises :class:`ConnectionError` when the source cannot be reached now (the job
        goes back to the queue); any other exception fails the job with its message.
        """
        ...


@dataclass
class JobOutcome:
    """What became of one claimed job (one line of the worker's log)."""

    exam_key: str
    model_sha256: str
    #: "done", "failed", "released" (given back: try later), "discarded" (a late result)
    status: str
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    score: float | None = None
    views: int = 0
    #: seconds: "fetch" (image source), "decode", "model", "results" (write + sink), "total"
    timing: dict[str, float] = field(default_factory=dict)
    #: the study's image-set revision the job was for (0 until it receives new images)
    revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"exam_key": self.exam_key, "model_sha256": self.model_sha256, "status": self.status,
                "reason": self.reason, "problems": self.problems, "score": self.score, "views": self.views,
                "timing": {k: round(v, 4) for k, v in self.timing.items()}, "revision": self.revision}


def enqueue_stable(queue: SiteQueue, studies: Iterable[str], model_sha256: str,
                   on_new: Callable[[str], None] | None = None,
                   images_of: Callable[[str], str | None] | None = None) -> int:
    """One job per stable study for the model. Idempotent for one image set: a study the
    archive declares stable again after the results were stored into it is not queued
    twice; with ``images_of`` (a study's :func:`~mammotriage.digest.image_set_digest` in
    the archive now) a study that received new images is queued again
    (:meth:`SiteQueue.enqueue`; None: the set is not known, nothing compared). An
    exception of ``images_of`` (the archive away) stops the pass: the study is offered
    again. Returns the number of jobs queued."""
    new = 0
    for study_uid in studies:
        images = images_of(study_uid) if images_of is not None else None
        if queue.enqueue(study_uid, model_sha256, images=images):
            new += 1
            if on_new is not None:
                on_new(study_uid)
    return new


class _Heartbeat:
    """Renews a job's lease every third of it from its own connection until stopped.

    ``lost`` is set when the server says the claim is no longer the worker's.
    """

    def __init__(self, dsn: str, job: SiteJob) -> None:
        self.job = job
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dsn,), name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self, dsn: str) -> None:
        period = max(self.job.lease_s / 3.0, 0.05)
        queue: SiteQueue | None = None
        try:
            while not self._stop.wait(period):
                try:
                    if queue is None:
                        queue = SiteQueue(dsn)
                    if not queue.heartbeat(self.job):
                        self.lost.set()
                        return
                except Exception as exc:  # noqa: BLE001 - server away: try again next period
                    log.warning("heartbeat of job %s: %s", self.job.id, exc)
                    if queue is not None:
                        queue.close()
                        queue = None
        finally:
            if queue is not None:
                queue.close()


class SiteWorker:
    """Claims jobs of the models it holds and triages them (see the module docstring).

    Parameters
    ----------
    dsn
        The site store (``PgCluster.dsn("mt_worker")``); the worker opens one connection
        for the queue and one per job for the heartbeat.
    models
        The packages this worker holds, by weights sha256.
    source, sink
        Where images come from and where the DICOM results go.
    work_dir
        Scratch folder for the result files while they are handed to the sink.
    follow
        Asked before every claim: a newly active model (:class:`~mammotriage.net.site_models.ModelFollower`'s
        ``poll``, the site registry's promotion) replaces the models held, or None to keep them.
    """

    def __init__(self, dsn: str, models: Mapping[str, LoadedModel], source: ExamImageSource, sink: ResultSink, *,
                 worker_id: str, lease_s: float = 60.0, work_dir: str | Path | None = None,
                 max_attempts: int = 3, say: Callable[[str], None] | None = None,
                 follow: Callable[[], LoadedModel | None] | None = None) -> None:
        if not models:
            raise ValueError("a site worker needs at least one model package")
        self.dsn = dsn
        self.models = dict(models)
        self.source = source
        self.sink = sink
        self.worker_id = worker_id
        self.lease_s = float(lease_s)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="mt-site-worker-"))
        self.queue = SiteQueue(dsn, max_attempts=max_attempts)
        self.say = say or (lambda text: log.info("%s", text))
        self._told: set[str] = set()
        self.follow = follow

    def close(self) -> None:
        self.queue.close()

    def __enter__(self) -> SiteWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop
    def claim(self) -> SiteJob | None:
        """The next pending job of a model this worker holds (None when there is none)."""
        if self.follow is not None and (newer := self.follow()) is not None:
            self.models = {newer.weights_sha256: newer}
            self._told.clear()
        for sha in self.models:
            job = self.queue.claim(self.worker_id, self.lease_s, sha)
            if job is not None:
                return job
        self._tell_unheld()
        return None

    def _tell_unheld(self) -> None:
        """Say once per model which pending jobs this worker cannot run (it refuses them)."""
        for sha, n in sorted(self.queue.pending_models().items()):
            if sha not in self.models and sha not in self._told:
                self._told.add(sha)
                self.say(f"worker {self.worker_id}: {n} pending job(s) are for model {sha[:12]}..., which this "
                         f"worker does not hold (it runs {', '.join(s[:12] + '...' for s in self.models)}); "
                         "they wait for a worker with that model")

    def run_once(self) -> JobOutcome | None:
        """Claim and process one job; None when the queue has nothing for this worker."""
        job = self.claim()
        if job is None:
            return None
        return self.process(job)

    def run(self, stop: threading.Event, *, once: bool = False, idle_s: float = 1.0,
            on_outcome: Callable[[JobOutcome], None] | None = None) -> list[JobOutcome]:
        """Work until ``stop`` is set (with ``once``: until no job is left for this worker).

        Database trouble (the server restarting) is said and retried after ``idle_s``.
        Returns the outcomes (kept only with ``once``, so a long-running worker does
        not grow).
        """
        outcomes: list[JobOutcome] = []
        while not stop.is_set():
            try:
                outcome = self.run_once()
            except Exception as exc:  # noqa: BLE001 - the store is away: say so and retry
                self.say(f"worker {self.worker_id}: site store: {type(exc).__name__}: {exc}")
                self.queue.close()
                stop.wait(idle_s)
                continue
            if outcome is None:
                if once:
                    break
                stop.wait(idle_s)
                continue
            if once:
                outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return outcomes

    # ------------------------------------------------------------------ one job
    def process(self, job: SiteJob) -> JobOutcome:
        """Triage one claimed job; every outcome is also said (see :class:`JobOutcome`)."""
        outcome = JobOutcome(job.exam_key, job.model_sha256, "failed", revision=job.revision)
        started = time.perf_counter()
        model = self.models.get(job.model_sha256)
        if model is None:  # claim() asks only for held models; a job handed in by hand may not be
            outcome.status, outcome.reason = "released", (
                f"worker {self.worker_id} does not hold model {job.model_sha256[:12]}...: job left for a worker "
                "that does")
            self.queue.release(job, outcome.reason)
            return self._said(outcome)
        with _Heartbeat(self.dsn, job) as beat:
            try:
                self._triage(job, model, outcome, beat)
            except ConnectionError as exc:
                outcome.status, outcome.reason = "released", f"the archive is away: {exc}"
                self._give_back(job, outcome)
            except Exception as exc:  # noqa: BLE001 - a bad exam fails alone; the loop goes on
                outcome.status, outcome.reason = "failed", f"{type(exc).__name__}: {exc}"
                if not self.queue.fail(job, outcome.reason):
                    outcome.reason += " (the job was no longer this worker's)"
        outcome.timing["total"] = time.perf_counter() - started
        return self._said(outcome)

    def _give_back(self, job: SiteJob, outcome: JobOutcome) -> None:
        if not self.queue.release(job, outcome.reason):
            outcome.reason += " (the job was no longer this worker's)"

    def _said(self, outcome: JobOutcome) -> JobOutcome:
        text = f"{outcome.status}: exam {outcome.exam_key}"
        if outcome.revision:
            text += f" (images revision {outcome.revision})"
        if outcome.score is not None:
            text += f" score {outcome.score:.3f} ({outcome.views} views)"
        if outcome.reason:
            text += f": {outcome.reason}"
        if outcome.problems:
            text += " [problems: " + "; ".join(outcome.problems) + "]"
        self.say(text)
        return outcome

    def _triage(self, job: SiteJob, model: LoadedModel, outcome: JobOutcome, beat: _Heartbeat) -> None:
        t = time.perf_counter()
        paths, problems = self.source.exam_files(job.exam_key)
        outcome.timing["fetch"] = time.perf_counter() - t
        t = time.perf_counter()
        views, sources = decode_views(paths, problems)
        outcome.timing["decode"] = time.perf_counter() - t
        outcome.problems = problems
        t = time.perf_counter()
        images = analyse_views(model, views, problems)  # raises when no view is usable
        outcome.timing["model"] = time.perf_counter() - t
        from mammotriage.model.scoring import exam_scores

        breasts, score = exam_scores((i["laterality"], i["view"], float(i["score"])) for i in images)
        outcome.score, outcome.views = score, len(images)
        if beat.lost.is_set() or not self.queue.heartbeat(job):
            outcome.status = "discarded"
            now = self.queue.job(job.exam_key, job.model_sha256) or {}
            if int(now.get("revision") or 0) != job.revision:
                outcome.reason = (f"result of {self.worker_id} for {job.exam_key} discarded: the study received "
                                  f"new images (revision {job.revision} -> {now.get('revision')})")
            else:
                outcome.reason = (f"late result of {self.worker_id} for {job.exam_key} discarded: its lease ran "
                                  "out and the job went to another worker")
            return
        t = time.perf_counter()
        delivered = self._deliver(job, model, images, sources, breasts, score)
        outcome.timing["results"] = time.perf_counter() - t
        if delivered:
            outcome.status, outcome.reason = "released", f"the archive did not take the results: {delivered}"
            self._give_back(job, outcome)
            return
        result = {
            "model_sha256": model.weights_sha256, "model_version": model.version, "revision": job.revision,
            "score": score,
            "score_left": breasts.get("L"), "score_right": breasts.get("R"), "problems": problems,
            "images": [_result_image(i) for i in images],
            "timing": {k: round(v, 4) for k, v in outcome.timing.items()},
        }
        done = self.queue.complete(job, result)
        if done.stored:
            outcome.status = "done"
        else:
            outcome.status, outcome.reason = "discarded", done.reason

    def _deliver(self, job: SiteJob, model: LoadedModel, images: list[dict[str, Any]], sources: dict[str, Path],
                 breasts: dict[str, float], score: float) -> str:
        """Write the SR and SEGs and hand them to the sink; "" when all went, else what did not."""
        from mammotriage.dicom.content import AlgorithmInfo

        name = str(model.metadata.get("name") or "mammotriage-detector")
        folder = self.work_dir / f"job-{job.id}-r{job.revision}-{job.attempts}"
        try:
            paths = write_result_files(job.exam_key, images, sources,
                                       AlgorithmInfo(name, model.version, model.weights_sha256), folder,
                                       breast_scores=breasts, exam_score=score, stable_uids=True,
                                       revision=job.revision)
            refused = [p.name for p in paths if not self.sink.queue(p, result_kind(p))]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return ", ".join(refused)


def decode_views(paths: Iterable[Path], problems: list[str]) -> tuple[
        list[tuple[str, Laterality, View, MammoImage]], dict[str, Path]]:
    """Decode each file with the app's reader; what cannot be used is added to ``problems``
    (file and reason). Returns the views for the model and SOP Instance UID -> file."""
    views: list[tuple[str, Laterality, View, MammoImage]] = []
    sources: dict[str, Path] = {}
    for path in paths:
        try:
            image = read_image(path)
        except MammoReadError as exc:
            problems.append(f"{path.name}: {exc.reason}")
            continue
        except (OSError, MemoryError, ValueError) as exc:
            problems.append(f"{path.name}: cannot be read ({type(exc).__name__}: {exc})")
            continue
        meta = image.meta
        if meta.laterality not in (Laterality.LEFT, Laterality.RIGHT):
            problems.append(f"{path.name}: laterality unknown, not analysed")
            continue
        problems.extend(f"{path.name}: {w}" for w in meta.warnings)
        views.append((meta.sop_instance_uid, meta.laterality, meta.view, image))
        sources[meta.sop_instance_uid] = path
    return views, sources


def _result_image(item: dict[str, Any]) -> dict[str, Any]:
    """One view's part of the stored result: its scores and findings, and its suspicion
    map packed (:func:`mammotriage.triage.maps.pack_map`) so that a workstation taking
    the result shows the map without analysing the exam again."""
    from mammotriage.triage.maps import MapError, pack_map

    out = {k: v for k, v in item.items() if k != "suspicion"}
    try:
        out["suspicion_map"] = pack_map(item.get("suspicion"))
    except MapError as exc:  # the result stands without its map; the SEG in the archive has it
        log.warning("exam result: suspicion map of %s not stored in the result: %s", item.get("sop_uid"), exc)
        out["suspicion_map"] = None
    return out
