"""The site's shared triage queue on PostgreSQL: several workers, one result per exam and model.

Rules
-----
- One job per exam and model (the sha256 of the model package's weights):
  :meth:`SiteQueue.enqueue` is idempotent.
- :meth:`SiteQueue.claim` takes the next pending job (highest priority, then oldest)
  with ``SELECT ... FOR UPDATE SKIP LOCKED``, so workers never wait on each other and
  never take the same job. A claim carries a lease (``lease_s``, renewed by
  :meth:`heartbeat`) and a fresh claim token.
- A worker that dies (kill -9, a lost machine) stops renewing its lease: once the lease
  has run out its job goes back to pending (:meth:`requeue_expired`, which every claim
  runs first) and another worker takes it; after ``max_attempts`` claims it fails with
  the reason.
- :meth:`complete` stores the result only while the claim is still the worker's (same
  token, job still running). A slow worker whose lease ran out and whose job was
  claimed again gets ``stored=False`` and the reason: its late result is discarded.
  ``triage_results`` has one row per (exam, model sha256, image-set revision) (primary
  key), so exactly one result is ever stored for an image set.
- Every time (enqueue, lease, expiry) is the server's clock, so workers on machines
  whose clocks disagree still agree on leases.
- **New images after triage.** A job records the image set it is for (``images``: the
  sha256 of the study's image SOP Instance UIDs, :func:`mammotriage.digest.image_set_digest`). When the
  archive declares a study stable again with another image set (a retake, a late view),
  :meth:`enqueue` queues its done, running or failed job again under the next
  ``revision``: a result computed on fewer images is never the exam's last word, and a
  worker still busy with the old set has its claim voided (its result is discarded).
  ``triage_results`` keeps one row per exam, model and revision; :meth:`result` is the
  newest. The same set again (the results stored into the study make it stable again)
  queues nothing. A job from before the image set was recorded (``images`` NULL) only
  records it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mammotriage.store.pg.events import SERVER_AWAY, PgConnected
from mammotriage.store.pg.schema import NEW_IMAGES_ON_CONFLICT

__all__ = ["SERVER_AWAY", "Completion", "SiteJob", "SiteQueue"]

@dataclass(frozen=True)
class SiteJob:
    id: int
    exam_key: str
    model_sha256: str
    worker_id: str
    claim_token: str
    attempts: int
    lease_s: float
    revision: int = 0  # the image set's revision the job is for (its result is stored under it)


@dataclass(frozen=True)
class Completion:
    #: True when this call stored the result; False when it was discarded.
    stored: bool
    reason: str = ""


class SiteQueue(PgConnected):
    """The shared queue, for one worker or workstation (``PgCluster.dsn("mt_worker")``)."""

    def __init__(self, dsn: str, *, max_attempts: int = 3):
        super().__init__(dsn)
        self.max_attempts = max_attempts

    # ----------------------------------------------------------------- producers
    def enqueue(self, exam_key: str, model_sha256: str, priority: int = 0, images: str | None = None) -> bool:
        """Queue an exam for a model; True when a job is new, or queued again for new images
        (False: it exists already for this image set). ``images``: :func:`mammotriage.digest.image_set_digest`
        of the study's images now, or None when unknown (nothing is compared)."""
        if len(model_sha256) != 64:
            raise ValueError(f"model_sha256 must be a 64-character sha256, got {model_sha256!r}")
        if images is not None and (len(images) != 64 or images.strip("0123456789abcdef")):
            raise ValueError(f"images must be a lower-case sha256, got {images!r}")
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO triage_jobs (exam_key, model_sha256, priority, images, images_at) "
                "VALUES (%s, %s, %s, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE clock_timestamp() END)"
                + NEW_IMAGES_ON_CONFLICT + " RETURNING xmax = 0 AS inserted, enqueued_at = now() AS again",
                (exam_key, model_sha256, priority, images, images)).fetchone()
        return row is not None and bool(row["inserted"] or row["again"])

    # ----------------------------------------------------------------- workers
    def requeue_expired(self) -> int:
        """Running jobs whose lease ran out go back to pending (or fail after max_attempts)."""
        with self.conn.transaction():
            cur = self.conn.execute(
                """
                UPDATE triage_jobs SET
                    status = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'pending' END,
                    reason = CASE WHEN attempts >= %(max)s
                             THEN 'the lease of ' || claimed_by || ' ran out ' || attempts || ' times'
                             ELSE 'the lease of ' || claimed_by || ' ran out' END,
                    finished_at = CASE WHEN attempts >= %(max)s THEN clock_timestamp() END,
                    claim_token = NULL, lease_until = NULL
                WHERE status = 'running' AND lease_until < clock_timestamp()
                """, {"max": self.max_attempts})
        return cur.rowcount

    def claim(self, worker_id: str, lease_s: float, model_sha256: str | None = None) -> SiteJob | None:
        """Take the next pending job (of ``model_sha256``, or any); None when there is none."""
        if not lease_s > 0:
            raise ValueError("lease_s must be positive")
        self.requeue_expired()
        with self.conn.transaction():
            row = self.conn.execute(
                """
                UPDATE triage_jobs SET status = 'running', claimed_by = %(worker)s,
                       claim_token = gen_random_uuid(), claimed_at = clock_timestamp(),
                       lease_until = clock_timestamp() + make_interval(secs => %(lease)s),
                       attempts = attempts + 1
                WHERE id = (
                    SELECT id FROM triage_jobs
                    WHERE status = 'pending' AND (%(model)s::text IS NULL OR model_sha256 = %(model)s::text)
                    ORDER BY priority DESC, enqueued_at, id
                    FOR UPDATE SKIP LOCKED LIMIT 1)
                RETURNING id, exam_key, model_sha256, claim_token, attempts, revision
                """, {"worker": worker_id, "lease": float(lease_s), "model": model_sha256}).fetchone()
        if row is None:
            return None
        return SiteJob(int(row["id"]), str(row["exam_key"]), str(row["model_sha256"]), worker_id,
                       str(row["claim_token"]), int(row["attempts"]), float(lease_s), int(row["revision"]))

    def heartbeat(self, job: SiteJob, lease_s: float | None = None) -> bool:
        """Renew the lease; False when the claim is no longer this worker's (stop working on it)."""
        with self.conn.transaction():
            cur = self.conn.execute(
                "UPDATE triage_jobs SET lease_until = clock_timestamp() + make_interval(secs => %s) "
                "WHERE id = %s AND claim_token = %s AND status = 'running'",
                (float(lease_s or job.lease_s), job.id, job.claim_token))
        return cur.rowcount == 1

    def complete(self, job: SiteJob, result: dict[str, Any]) -> Completion:
        """Store the job's result and mark it done, if the claim is still this worker's.

        Returns ``Completion(False, reason)`` (nothing stored) for a late result: the lease
        ran out and the job was re-queued or claimed by another worker, or a result for
        this exam and model exists already.
        """
        payload = json.dumps(result, sort_keys=True, allow_nan=False)
        with self.conn.transaction():
            row = self.conn.execute(
                "SELECT status, claim_token::text AS token, claimed_by, revision FROM triage_jobs "
                "WHERE id = %s FOR UPDATE", (job.id,)).fetchone()
            if row is None:
                return Completion(False, f"job {job.id} does not exist")
            if int(row["revision"]) != job.revision:
                return Completion(False, f"result of {job.worker_id} for {job.exam_key} discarded: the study "
                                         f"received new images (revision {job.revision} -> {row['revision']})")
            if row["status"] != "running" or row["token"] != job.claim_token:
                now = (f"claimed by {row['claimed_by']}" if row["status"] == "running"
                       else f"{row['status']}")
                return Completion(False, f"late result of {job.worker_id} for {job.exam_key} discarded: its "
                                         f"lease ran out and the job is now {now}")
            cur = self.conn.execute(
                "INSERT INTO triage_results (exam_key, model_sha256, revision, job_id, worker_id, result) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (exam_key, model_sha256, revision) DO NOTHING",
                (job.exam_key, job.model_sha256, job.revision, job.id, job.worker_id, payload))
            self.conn.execute(
                "UPDATE triage_jobs SET status = 'done', finished_at = clock_timestamp(), lease_until = NULL, "
                "reason = NULL WHERE id = %s", (job.id,))
        if cur.rowcount != 1:
            return Completion(False, f"a result for {job.exam_key}, this model and image set was stored already")
        return Completion(True)

    def fail(self, job: SiteJob, reason: str) -> bool:
        """Mark the job failed with ``reason``; False when the claim was no longer this worker's."""
        with self.conn.transaction():
            cur = self.conn.execute(
                "UPDATE triage_jobs SET status = 'failed', reason = %s, finished_at = clock_timestamp(), "
                "lease_until = NULL WHERE id = %s AND claim_token = %s AND status = 'running'",
                (reason[:2000], job.id, job.claim_token))
        return cur.rowcount == 1

    def release(self, job: SiteJob, reason: str) -> bool:
        """Give the job back to the queue now (the archive was away, the worker is stopping),
        with ``reason``; after ``max_attempts`` claims it fails instead. False when the
        claim was no longer this worker's."""
        with self.conn.transaction():
            cur = self.conn.execute(
                """
                UPDATE triage_jobs SET
                    status = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'pending' END,
                    finished_at = CASE WHEN attempts >= %(max)s THEN clock_timestamp() END,
                    reason = %(reason)s, claim_token = NULL, lease_until = NULL
                WHERE id = %(id)s AND claim_token = %(token)s AND status = 'running'
                """, {"max": self.max_attempts, "reason": reason[:2000], "id": job.id, "token": job.claim_token})
        return cur.rowcount == 1

    # ----------------------------------------------------------------- reading
    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        rows = self.conn.execute("SELECT status, COUNT(*) AS n FROM triage_jobs GROUP BY status").fetchall()
        return {str(r["status"]): int(r["n"]) for r in rows}

    def pending_models(self) -> dict[str, int]:
        """Pending jobs per model sha256 (a worker says which ones it cannot run)."""
        rows = self.conn.execute(
            "SELECT model_sha256, COUNT(*) AS n FROM triage_jobs WHERE status = 'pending' GROUP BY model_sha256"
        ).fetchall()
        return {str(r["model_sha256"]): int(r["n"]) for r in rows}

    def job(self, exam_key: str, model_sha256: str) -> dict[str, Any] | None:
        """The job of an exam and model (status, attempts, claimed_by, reason) or None."""
        row = self.conn.execute(
            "SELECT id, status, attempts, claimed_by, reason, images, revision FROM triage_jobs "
            "WHERE exam_key = %s AND model_sha256 = %s",
            (exam_key, model_sha256)).fetchone()
        return dict(row) if row else None

    def result(self, exam_key: str, model_sha256: str) -> dict[str, Any] | None:
        """The newest stored result (``result``, ``worker_id``, ``job_id``, ``revision``) or None."""
        row = self.conn.execute(
            "SELECT result, worker_id, job_id, revision FROM triage_results WHERE exam_key = %s AND model_sha256 = %s "
            "ORDER BY revision DESC LIMIT 1", (exam_key, model_sha256)).fetchone()
        return dict(row) if row else None

    def current(self, model_sha256: str, exam_keys: list[str]) -> list[dict[str, Any]]:
        """The jobs of ``exam_keys`` under one model, each with its result for the image set
        it is for now (``result`` and ``worker_id`` None while there is none: pending,
        running, failed, or only a result of an older image set). Keys: ``exam_key``,
        ``status``, ``revision``, ``images``, ``reason``, ``worker_id``, ``result``.
        A workstation reads this (:mod:`mammotriage.viewer.site_results`)."""
        if not exam_keys:
            return []
        rows = self.conn.execute(
            """
            SELECT j.exam_key, j.status, j.revision, j.images, j.reason, r.worker_id, r.result
            FROM triage_jobs j LEFT JOIN triage_results r
              ON r.exam_key = j.exam_key AND r.model_sha256 = j.model_sha256 AND r.revision = j.revision
            WHERE j.model_sha256 = %s AND j.exam_key = ANY(%s)
            """, (model_sha256, list(exam_keys))).fetchall()
        return [dict(r) for r in rows]
