"""One reader's session at the workstation, without Qt: the model it follows, the exam it
opens and that exam's AI overlays.

:class:`ReadingSession` holds what the main window used to work out itself. The window
shows what the session says; tests drive the session without a display.

Following the active model costs the UI thread no hashing. The periodic tick
(:meth:`ReadingSession.poll_model`) only compares the registry's active version, its
weights hash as registered and the modification times of its package copy with what it
saw last (an SQL query and two ``stat`` calls). Only when one of them changes is the
package verified again, once, in a worker thread; the tick after the verification ends
adopts the result. A change made in this program (a promotion in the Model panel) is
followed at once with :meth:`ReadingSession.follow_active_model`.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.dicom.hanging import hang
from mammotriage.model.registry import ModelRegistry, active_package
from mammotriage.store.archive import ExamRecord
from mammotriage.store.priors import prior_of
from mammotriage.triage import OperatingPoints, TriageQueue

__all__ = ["ExamOverlays", "ModelState", "OpenedExam", "OverlayData", "ReadingSession", "find_model"]


@dataclass(frozen=True)
class ModelState:
    """The model the session runs: its package folder and verified metadata, or why there is none."""

    folder: Path | None = None
    meta: dict[str, Any] | None = None
    problem: str = ""  # why AI is off, or what is wrong with the site's thresholds
    notice: str = ""  # about a newly shipped version
    points: OperatingPoints | None = None
    version: str | None = None  # the version it runs as (the metadata's)

    @property
    def weights_sha256(self) -> str | None:
        return (self.meta or {}).get("weights_sha256")

    def mark_threshold(self) -> float:
        """Finding-level operating point: the model's "marks" threshold, else the exam one."""
        marks = ((self.meta or {}).get("operating_points") or {}).get("marks")
        if isinstance(marks, dict) and "threshold" in marks:
            return float(marks["threshold"])
        if isinstance(marks, (int, float)):
            return float(marks)
        return self.points.suspicious if self.points is not None else 0.5

    def candidate_point(self) -> float | None:
        """The second, lower finding-level operating point (Shift+A): the model's
        "candidates" threshold when its metadata has one."""
        point = ((self.meta or {}).get("operating_points") or {}).get("candidates")
        if isinstance(point, dict):
            point = point.get("threshold")
        return float(point) if isinstance(point, (int, float)) else None


def find_model(archive_file: str | Path, home: str | Path, model_dir: str | Path | None = None) -> ModelState:
    """The model to read with: the registry's active version (verified), or an explicit
    folder only when it holds the active version's weights; with the site's operating
    points (``<home>/triage.json``) resolved."""
    found = active_package(archive_file, model_dir)
    if not found:
        problem = f"AI off: {found.error}" if found.error else found.reason
        return ModelState(problem=problem, notice=found.notice)
    try:
        points, problem = OperatingPoints.resolve(found.meta, Path(home) / "triage.json"), ""
    except ValueError as exc:
        points, problem = None, str(exc)
    return ModelState(found.folder, found.meta, problem, found.notice, points, (found.meta or {}).get("version"))


@dataclass(frozen=True)
class OverlayData:
    """What the model said about one image, in stored-image coordinates."""

    findings: list[dict[str, Any]]  # {"box": [x0, y0, x1, y1], "kind": str, "score": float}
    image_score: float
    model_version: str
    stale: bool = False  # produced by another model than the active one
    suspicion: np.ndarray | None = field(default=None, repr=False)
    map_factor: float = 1.0  # stored pixels per map pixel
    breast_score: float | None = None
    exam_score: float | None = None


@dataclass(frozen=True)
class ExamOverlays:
    """The AI results of an exam's views, per hanging slot (None: no result)."""

    slots: dict[str, OverlayData | None]
    marks: dict[str, list[dict[str, Any]]]  # SOP Instance UID -> the marks shown (what corrections start from)
    model_version: str  # the version that made the marks shown ("" when none)
    problems: list[str] = field(default_factory=list)  # what could not be read, for the log


@dataclass(frozen=True)
class OpenedExam:
    """An exam as it hangs: screening slot -> file, the extra views, its most recent prior."""

    exam: ExamRecord
    paths: dict[str, str]
    extras: list[Any]
    prior: ExamRecord | None
    prior_paths: dict[str, str]


class ReadingSession:
    """The exam on screen, its overlays, and the active model it follows (no Qt)."""

    def __init__(self, archive_file: str | Path, home: str | Path, queue: TriageQueue,
                 model_dir: str | Path | None = None):
        self.archive_file = Path(archive_file)
        self.home = Path(home)
        self.queue = queue
        self.explicit_model = model_dir
        #: An explicit model (a ``model_dir``, or one given to :meth:`pin`): the session
        #: runs it until it closes and never follows the registry's active version.
        self.pinned = model_dir is not None
        self.model = find_model(self.archive_file, self.home, model_dir)
        self._registry: ModelRegistry | None = None
        self._seen = self._fingerprint()
        self._verifying: cf.Future[ModelState] | None = None
        self._pool: cf.ThreadPoolExecutor | None = None

    def pin(self, model: ModelState) -> None:
        """Run ``model`` from now on, whatever the registry's active version becomes: the
        periodic check and :meth:`follow_active_model` leave it in place (a verification
        already under way is dropped, not adopted)."""
        self.pinned = True
        self._seen = None
        if self._verifying is not None:
            self._verifying.cancel()
            self._verifying = None
        self.model = model

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    # ----------------------------------------------------------------- the active model
    def _fingerprint(self) -> tuple[object, ...] | None:
        if self.pinned:
            return None
        if self._registry is None:
            self._registry = ModelRegistry(self.archive_file)
        return self._registry.active_fingerprint()

    def _adopt(self, state: ModelState) -> bool:
        if state.version == self.model.version:
            return False
        self.model = state
        return True

    def follow_active_model(self) -> bool:
        """Follow a change made in this program now (verifying it here, once). True if
        the active model changed."""
        if self.pinned:
            return False
        self._seen = self._fingerprint()
        return self._adopt(find_model(self.archive_file, self.home))

    def poll_model(self) -> bool:
        """The periodic check (cheap; see the module docstring). True when a change
        verified in the background has just been adopted."""
        if self.pinned:
            return False
        if self._verifying is not None:
            if not self._verifying.done():
                return False
            future, self._verifying = self._verifying, None
            return self._adopt(future.result())
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-verify")
        self._verifying = self._pool.submit(find_model, self.archive_file, self.home)
        return False

    @property
    def verifying(self) -> bool:
        """A changed model is being verified in the background."""
        return self._verifying is not None and not self._verifying.done()

    # ----------------------------------------------------------------- exams
    def prioritize(self, exam_key: str) -> None:
        """The exam on screen is triaged next (queued first when it has no job yet)."""
        version = self.model.version
        if not version:
            return
        if not self.queue.prioritize(exam_key, version) and self.queue.job(exam_key, version) is None:
            self.queue.sync(version)
            self.queue.prioritize(exam_key, version)

    def open_exam(self, exam: ExamRecord, priors: dict[str, list[ExamRecord]]) -> OpenedExam:
        """Hang ``exam`` and find its most recent prior; the exam is triaged next."""
        self.prioritize(exam.exam_key)
        slots, extras = hang(exam.images)
        prior = prior_of(exam, priors)
        prior_paths = {slot: image.path for slot, image in hang(prior.images)[0].items()} if prior else {}
        return OpenedExam(exam, {slot: image.path for slot, image in slots.items()}, list(extras),
                          prior, prior_paths)

    def overlays(self, exam: ExamRecord, paths: dict[str, str]) -> ExamOverlays:
        """AI results of ``exam``'s hung views: the active weights' when there are some
        (whatever version name they carry), else the newest, marked stale."""
        sha, version = self.model.weights_sha256, self.model.version

        def current(r: Any) -> bool:
            return r.model_version == version or bool(sha and r.weights_sha256 == sha)

        exam_result = next((r for r in self.queue.exam_results().get(exam.exam_key, []) if current(r)), None)
        slots: dict[str, OverlayData | None] = {}
        marks: dict[str, list[dict[str, Any]]] = {}
        shown_version, problems = "", []
        for slot, path in paths.items():
            image = next((i for i in exam.images if i.path == path), None)
            if image is None:
                slots[slot] = None
                continue
            records = self.queue.image_results(image.sop_uid)
            record = next((r for r in records if current(r)), None)
            stale = record is None and bool(records)
            record = record or (records[0] if records else None)
            if record is None:
                slots[slot] = None
                continue
            marks[image.sop_uid] = record.findings
            shown_version = record.model_version
            suspicion = None
            if record.map_path:
                try:
                    suspicion = np.load(self.home / record.map_path)
                except (OSError, ValueError) as exc:
                    problems.append(f"suspicion map unreadable for {image.path}: {exc}")
            breast = None
            if exam_result is not None and not stale:
                breast = exam_result.score_left if image.laterality.value == "L" else exam_result.score_right
            slots[slot] = OverlayData(
                findings=record.findings, image_score=record.score, model_version=record.model_version,
                stale=stale, suspicion=suspicion, map_factor=record.map_factor or 1.0,
                breast_score=breast, exam_score=exam_result.score if exam_result and not stale else None)
        return ExamOverlays(slots, marks, shown_version, problems)
