"""Persistent triage job queue: one job per exam and model version.

Rules
-----
- Every exam in the archive is analysed once per model version: :meth:`TriageQueue.sync`
  enqueues the exams that have no job for that version yet.
- Jobs run oldest-first (by enqueue time) unless a reader opens an exam:
  :meth:`TriageQueue.prioritize` makes it jump the queue.
- A job that fails is marked ``failed`` with its reason and never blocks the queue.
- The queue survives restarts: jobs left ``running`` by a dead worker go back to
  ``pending`` on :meth:`TriageQueue.recover` (up to ``max_attempts``).
- Results are stored with the model version and the weights hash that produced them;
  results of older versions are kept.

ETAs
----
Each analysed exam records its wall time per view (read + model + store) for the
weights that ran (:meth:`TriageQueue.record_time`). :meth:`TriageQueue.etas` gives
every waiting exam its expected time to a result: the p95 of the last measured
per-view times of those weights, times the views of the exams ahead of it in claim
order (plus its own), less what the running exam has already spent. Inference is
constant-time per view (the detector's candidate, speck and cluster caps bound it),
so the p95 is an honest upper estimate.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.clock import utc_datetime, utc_now
from mammotriage.digest import image_set_digest
from mammotriage.model.scoring import exam_scores
from mammotriage.store import db

STATUSES = ("pending", "running", "done", "failed")
#: Per-view times the ETA p95 is taken over (the latest ones of the weights).
ETA_WINDOW = 200


@dataclass(frozen=True)
class Job:
    exam_key: str
    model_version: str
    status: str
    priority: int
    enqueued_at: str
    attempts: int
    reason: str | None


@dataclass(frozen=True)
class ImageResultRecord:
    sop_uid: str
    model_version: str
    weights_sha256: str
    score: float
    findings: list[dict[str, Any]]
    map_path: str | None
    map_factor: float | None


@dataclass(frozen=True)
class ExamResult:
    exam_key: str
    model_version: str
    weights_sha256: str
    score: float
    score_left: float | None
    score_right: float | None
    created_at: str


class TriageQueue(db.Connected):
    """The job queue and AI results tables of an archive file."""

    def __init__(self, archive_path: str | Path, max_attempts: int = 2):
        super().__init__(archive_path)
        self.max_attempts = max_attempts

    # ----------------------------------------------------------------- queue
    def sync(self, model_version: str, settle_s: float = 0.0) -> int:
        """Enqueue every exam without a job for ``model_version``; returns how many.

        ``settle_s``: only exams whose last image arrived at least that long ago, so an
        exam still being received (or imported) is not analysed half-complete.
        """
        cutoff = (utc_datetime() - _dt.timedelta(seconds=settle_s)).isoformat(timespec="seconds")
        with db.transaction(self.conn):
            cur = self.conn.execute(
                """
                INSERT INTO triage_jobs (exam_key, model_version, status, enqueued_at, queued_at)
                SELECT s.exam_key, ?, 'pending', MIN(i.imported_at), ?
                FROM studies s JOIN images i ON i.study_uid = s.study_uid
                WHERE NOT EXISTS (SELECT 1 FROM triage_jobs j
                                  WHERE j.exam_key = s.exam_key AND j.model_version = ?)
                GROUP BY s.exam_key
                HAVING MAX(i.imported_at) <= ?
                """,
                (model_version, utc_now("milliseconds"), model_version, cutoff),
            )
        return cur.rowcount

    def requeue(self, exam_key: str, model_version: str) -> None:
        """Analyse an exam again (e.g. after new images of it arrived)."""
        now = utc_now("milliseconds")
        with db.transaction(self.conn):
            self.conn.execute(
                """
                INSERT INTO triage_jobs (exam_key, model_version, status, enqueued_at, queued_at)
                VALUES (?, ?, 'pending', ?, ?)
                ON CONFLICT (exam_key, model_version) DO UPDATE
                SET status = 'pending', attempts = 0, reason = NULL, started_at = NULL, finished_at = NULL,
                    queued_at = excluded.queued_at
                """,
                (exam_key, model_version, now, now),
            )

    def prioritize(self, exam_key: str, model_version: str) -> bool:
        """A reader opened the exam: it jumps the queue. True if it is still waiting."""
        with db.transaction(self.conn):
            top = self.conn.execute("SELECT COALESCE(MAX(priority), 0) FROM triage_jobs").fetchone()[0]
            cur = self.conn.execute(
                "UPDATE triage_jobs SET priority = ? WHERE exam_key = ? AND model_version = ? AND status = 'pending'",
                (top + 1, exam_key, model_version),
            )
        return cur.rowcount > 0

    def claim_next(self, model_version: str, hold_s: float = 0.0) -> Job | None:
        """Take the next pending job (highest priority, then oldest) and mark it running.

        ``hold_s`` > 0 (a site workstation, whose site AI workers analyse the same exams):
        a job is taken only once it has waited that long since it was (last) queued
        (``queued_at``: a new model's jobs and an exam queued again for new images wait
        too), or at once when a reader opened
        its exam (:meth:`prioritize`); until then the site's result may arrive
        (:meth:`adopt`) and the exam is not analysed twice.
        """
        cutoff = (utc_datetime() - _dt.timedelta(seconds=max(0.0, hold_s))).isoformat(timespec="milliseconds")
        with db.transaction(self.conn):
            row = self.conn.execute(
                """
                SELECT * FROM triage_jobs WHERE status = 'pending' AND model_version = ?
                AND (? OR priority > 0 OR COALESCE(queued_at, enqueued_at) <= ?)
                ORDER BY priority DESC, enqueued_at, exam_key LIMIT 1
                """,
                (model_version, hold_s <= 0, cutoff),
            ).fetchone()
            if row is None:
                return None
            self.conn.execute(
                """
                UPDATE triage_jobs SET status = 'running', started_at = ?, attempts = attempts + 1
                WHERE exam_key = ? AND model_version = ?
                """,
                (utc_now("milliseconds"), row["exam_key"], model_version),
            )
        return Job(row["exam_key"], model_version, "running", row["priority"], row["enqueued_at"],
                   row["attempts"] + 1, None)

    def fail(self, job: Job, reason: str) -> None:
        with db.transaction(self.conn):
            self.conn.execute(
                """
                UPDATE triage_jobs SET status = 'failed', reason = ?, finished_at = ?
                WHERE exam_key = ? AND model_version = ?
                """,
                (reason[:2000], utc_now("milliseconds"), job.exam_key, job.model_version),
            )

    def recover(self) -> int:
        """After a crash: running jobs go back to pending (or fail after max_attempts)."""
        with db.transaction(self.conn):
            failed = self.conn.execute(
                """
                UPDATE triage_jobs SET status = 'failed', finished_at = ?,
                       reason = 'worker stopped during analysis ' || attempts || ' times'
                WHERE status = 'running' AND attempts >= ?
                """,
                (utc_now("milliseconds"), self.max_attempts),
            ).rowcount
            back = self.conn.execute("UPDATE triage_jobs SET status = 'pending' WHERE status = 'running'").rowcount
        return back + failed

    def complete(self, job: Job, weights_sha256: str, images: list[dict[str, Any]],
                 maps_dir: Path | None = None) -> ExamResult:
        """Store the results of one exam atomically and mark the job done (unless it was
        queued again while it ran: then it stays pending and runs again on the exam's
        images as they are now).

        ``images``: one dict per analysed image with ``sop_uid``, ``laterality``,
        ``score``, ``findings`` (JSON-ready, stored coordinates) and optionally
        ``suspicion`` (2-D array) and ``map_factor``. The breast score is the highest
        image score of that breast; the exam score the highest breast score.
        """
        result = self._store(job.exam_key, job.model_version, weights_sha256, images, maps_dir, ("running",))
        assert result is not None  # complete stores unconditionally
        return result

    def adopt(self, exam_key: str, model_version: str, weights_sha256: str, images: list[dict[str, Any]],
              maps_dir: Path | None = None, *, image_set: str) -> ExamResult | None:
        """Store results another machine computed with the same model (a site AI worker's,
        see :mod:`mammotriage.viewer.site_results`) as :meth:`complete` stores this
        machine's, and mark the exam's waiting or failed job done: it is not analysed
        here. Only while the job still waits (pending or failed) and the exam's images
        here are still ``image_set`` (:func:`mammotriage.digest.image_set_digest`),
        checked in the storing transaction: a view that arrived meanwhile, or the job
        taken by this machine's worker, stores nothing (None)."""
        if not self._adoptable(exam_key, model_version, image_set):
            return None  # checked first too: no map file is written for nothing
        return self._store(exam_key, model_version, weights_sha256, images, maps_dir, ("pending", "failed"),
                           check=lambda: self._adoptable(exam_key, model_version, image_set))

    def _adoptable(self, exam_key: str, model_version: str, image_set: str) -> bool:
        job = self.conn.execute("SELECT status FROM triage_jobs WHERE exam_key = ? AND model_version = ?",
                                (exam_key, model_version)).fetchone()
        if job is None or job["status"] not in ("pending", "failed"):
            return False
        sops = [r[0] for r in self.conn.execute(
            "SELECT i.sop_uid FROM images i JOIN studies s ON s.study_uid = i.study_uid WHERE s.exam_key = ?",
            (exam_key,))]
        return image_set_digest(sops) == image_set

    def _store(self, exam_key: str, model_version: str, weights_sha256: str, images: list[dict[str, Any]],
               maps_dir: Path | None, done_from: tuple[str, ...],
               check: Callable[[], bool] | None = None) -> ExamResult | None:
        written: list[tuple[str, str | None, float | None]] = []
        for item in images:
            rel = None
            if maps_dir is not None and item.get("suspicion") is not None:
                folder = maps_dir / _safe(model_version)
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / f"{_safe(item['sop_uid'])}.npy"
                # the window's feed and the worker process may write one view's map at once
                tmp = target.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npy")
                np.save(tmp, np.asarray(item["suspicion"], dtype=np.float16))
                tmp.replace(target)
                rel = str(target.relative_to(maps_dir.parent)) if maps_dir.parent in target.parents else str(target)
            written.append((item["sop_uid"], rel, item.get("map_factor")))
        breasts, score = exam_scores((i.get("laterality"), i.get("view"), float(i["score"])) for i in images)
        created = utc_now("milliseconds")
        with db.transaction(self.conn):
            if check is not None and not check():
                return None
            for item, (sop, rel, factor) in zip(images, written, strict=True):
                self.conn.execute(
                    """
                    INSERT OR REPLACE INTO ai_image_results
                    (sop_uid, model_version, weights_sha256, score, findings, map_path, map_factor, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    (sop, model_version, weights_sha256, float(item["score"]),
                     json.dumps(item["findings"], default=_json_number), rel, factor, created),
                )
            self.conn.execute(
                """
                INSERT OR REPLACE INTO ai_exam_results
                (exam_key, model_version, weights_sha256, score, score_left, score_right, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """,
                (exam_key, model_version, weights_sha256, score, breasts.get("L"), breasts.get("R"), created),
            )
            for item in images:
                st = item.get("stats")
                if st:
                    self.conn.execute(
                        "INSERT OR REPLACE INTO image_stats (sop_uid, mean, std, p05, p95, breast_frac, computed_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (item["sop_uid"], st["mean"], st["std"], st["p05"], st["p95"], st["breast_frac"], created))
            # a job queued again while it ran (new images arrived) stays pending: it runs again
            marks = ", ".join("?" * len(done_from))
            self.conn.execute(
                f"UPDATE triage_jobs SET status = 'done', finished_at = ?, reason = NULL "
                f"WHERE exam_key = ? AND model_version = ? AND status IN ({marks})",
                (created, exam_key, model_version, *done_from),
            )
        return ExamResult(exam_key, model_version, weights_sha256, score, breasts.get("L"),
                          breasts.get("R"), created)

    # ----------------------------------------------------------------- ETAs
    def record_time(self, weights_sha256: str, model_version: str, views: int, seconds: float) -> None:
        """Persist the measured wall time of one analysed exam (``views`` > 0)."""
        if views <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        with db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO inference_times (weights_sha256, model_version, views, seconds, per_view_s, at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (weights_sha256, model_version, int(views), float(seconds), float(seconds) / views, utc_now("milliseconds")))

    def per_view_p95(self, weights_sha256: str, window: int = ETA_WINDOW) -> float | None:
        """p95 of the latest ``window`` measured per-view times of these weights on this
        archive's machine, or ``None`` before the first exam was analysed."""
        rows = self.conn.execute(
            "SELECT per_view_s FROM inference_times WHERE weights_sha256 = ? ORDER BY id DESC LIMIT ?",
            (weights_sha256, int(window))).fetchall()
        if not rows:
            return None
        return float(np.percentile([r[0] for r in rows], 95))

    def etas(self, model_version: str, per_view_s: float | None, workers: int = 1,
             hold_s: float = 0.0) -> dict[str, float]:
        """Expected seconds until each waiting exam (pending or running) has its result.

        Claim order is :meth:`claim_next`'s; ``workers`` processes share the queue (the
        app runs one). With ``hold_s`` (a site workstation leaving exams to the site's AI
        workers that long) a held job starts no sooner than its hold ends: the figure is
        when this workstation would have the result, the site's may come first. Empty
        without a measured (finite) per-view time."""
        if per_view_s is None or not math.isfinite(per_view_s) or per_view_s < 0:
            return {}
        rows = self.conn.execute(
            """
            SELECT j.exam_key, j.status, j.started_at, j.priority, COALESCE(j.queued_at, j.enqueued_at) AS queued,
                   (SELECT COUNT(*) FROM studies s JOIN images i ON i.study_uid = s.study_uid
                    WHERE s.exam_key = j.exam_key AND i.laterality IN ('L', 'R')) AS views
            FROM triage_jobs j
            WHERE j.model_version = ? AND j.status IN ('running', 'pending')
            ORDER BY j.status = 'pending', j.priority DESC, j.enqueued_at, j.exam_key
            """, (model_version,)).fetchall()
        now = _dt.datetime.now(_dt.UTC)
        ready: list[tuple[int, str, float]] = []       # (claim order, exam, seconds it needs)
        held: list[tuple[float, int, str, float]] = []  # (seconds until its hold ends, ...)
        for order, r in enumerate(rows):
            need = max(1, int(r["views"])) * per_view_s
            if r["status"] == "running" and r["started_at"]:
                try:
                    spent = (now - _dt.datetime.fromisoformat(r["started_at"])).total_seconds()
                except ValueError:
                    spent = 0.0
                need = max(0.0, need - max(0.0, spent))
            release = 0.0
            if hold_s > 0 and r["status"] == "pending" and int(r["priority"]) <= 0:
                try:
                    release = hold_s - max(0.0, (now - _dt.datetime.fromisoformat(r["queued"])).total_seconds())
                except (TypeError, ValueError):
                    release = 0.0
            if release > 0:
                held.append((release, order, r["exam_key"], need))
            else:
                ready.append((order, r["exam_key"], need))
        # the worker free first takes the first job in claim order whose hold has ended
        heapq.heapify(ready)
        held.sort()
        lanes = [0.0] * max(1, int(workers))
        out: dict[str, float] = {}
        i = 0
        while ready or i < len(held):
            lane = min(range(len(lanes)), key=lanes.__getitem__)
            t = lanes[lane]
            if not ready and held[i][0] > t:
                t = held[i][0]  # idle until the next hold ends
            while i < len(held) and held[i][0] <= t:
                heapq.heappush(ready, held[i][1:])
                i += 1
            _, key, need = heapq.heappop(ready)
            lanes[lane] = t + need
            out[key] = lanes[lane]
        return out

    # ----------------------------------------------------------------- queries
    def jobs(self, model_version: str | None = None, statuses: Sequence[str] | None = None) -> list[Job]:
        """The jobs (of one model version; with ``statuses``, only those in them), in claim order."""
        where, params = [], []
        if model_version is not None:
            where.append("model_version = ?")
            params.append(model_version)
        if isinstance(statuses, str):
            raise TypeError("statuses: a sequence of job statuses, not one string")
        if statuses is not None:
            bad = set(statuses) - set(STATUSES)
            if bad:
                raise ValueError(f"unknown job status {sorted(bad)}")
            where.append(f"status IN ({', '.join('?' * len(statuses))})" if statuses else "0")
            params.extend(statuses)
        sql = "SELECT * FROM triage_jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY priority DESC, enqueued_at"
        return [Job(r["exam_key"], r["model_version"], r["status"], r["priority"], r["enqueued_at"],
                    r["attempts"], r["reason"]) for r in self.conn.execute(sql, params)]

    def job(self, exam_key: str, model_version: str) -> Job | None:
        r = self.conn.execute("SELECT * FROM triage_jobs WHERE exam_key = ? AND model_version = ?",
                              (exam_key, model_version)).fetchone()
        if r is None:
            return None
        return Job(r["exam_key"], r["model_version"], r["status"], r["priority"], r["enqueued_at"],
                   r["attempts"], r["reason"])

    def counts(self, model_version: str) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.conn.execute("SELECT status, COUNT(*) n FROM triage_jobs WHERE model_version = ? "
                                   "GROUP BY status", (model_version,)):
            out[r["status"]] = r["n"]
        return out

    def exam_results(self) -> dict[str, list[ExamResult]]:
        """All exam results, newest model version first per exam (by creation time)."""
        out: dict[str, list[ExamResult]] = {}
        for r in self.conn.execute("SELECT * FROM ai_exam_results ORDER BY created_at DESC"):
            out.setdefault(r["exam_key"], []).append(
                ExamResult(r["exam_key"], r["model_version"], r["weights_sha256"], r["score"],
                           r["score_left"], r["score_right"], r["created_at"]))
        return out

    def image_results(self, sop_uid: str) -> list[ImageResultRecord]:
        """Results for one image, newest first (every model version that analysed it)."""
        rows = self.conn.execute(
            "SELECT * FROM ai_image_results WHERE sop_uid = ? ORDER BY created_at DESC", (sop_uid,))
        return [ImageResultRecord(r["sop_uid"], r["model_version"], r["weights_sha256"], r["score"],
                                  json.loads(r["findings"]), r["map_path"], r["map_factor"]) for r in rows]


def _json_number(value: Any) -> float | int:
    """numpy scalars in findings (a model may return them) -> plain numbers."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
