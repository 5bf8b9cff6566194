"""The shared triage queue on a real PostgreSQL: SKIP LOCKED claims, leases, late results."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store" / "pg"))

from pgsupport import finish, running_cluster, spawn, wait_until

from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.events import connect
from mammotriage.triage.site_queue import SiteQueue

MODEL = hashlib.sha256(b"model v1").hexdigest()


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def queue(site: PgCluster) -> Iterator[SiteQueue]:
    with SiteQueue(site.dsn("mt_worker"), max_attempts=2) as q:
        yield q


def _model(tag: str) -> str:
    """A model sha256 of the test's own, so tests do not see each other's jobs."""
    return hashlib.sha256(tag.encode()).hexdigest()


def _lease_ran_out(site: PgCluster, job_id: int) -> bool:
    with connect(site.dsn("mt_admin")) as conn:
        row = conn.execute("SELECT lease_until < clock_timestamp() AS out FROM triage_jobs WHERE id = %s",
                           (job_id,)).fetchone()
    return bool(row and row["out"])


def test_enqueue_is_idempotent_and_checks_the_model_hash(queue: SiteQueue) -> None:
    model = _model("enqueue")
    assert queue.enqueue("E1", model) is True
    assert queue.enqueue("E1", model) is False
    with pytest.raises(ValueError, match="sha256"):
        queue.enqueue("E1", "v1")


def test_claim_skips_a_locked_job_and_takes_the_next(site: PgCluster, queue: SiteQueue) -> None:
    model = _model("skip-locked")
    queue.enqueue("S1", model)
    queue.enqueue("S2", model)
    with connect(site.dsn("mt_admin")) as other, other.transaction():
        other.execute("SELECT id FROM triage_jobs WHERE exam_key = 'S1' AND model_sha256 = %s FOR UPDATE",
                      (model,))
        job = queue.claim("w1", 30, model)   # does not wait for the lock on S1
        assert job is not None and job.exam_key == "S2"
    job1 = queue.claim("w1", 30, model)
    assert job1 is not None and job1.exam_key == "S1"
    assert queue.claim("w1", 30, model) is None


def test_complete_stores_one_result_and_a_late_result_is_discarded(site: PgCluster, queue: SiteQueue) -> None:
    model = _model("late")
    queue.enqueue("L1", model)
    slow = queue.claim("slow", 0.5, model)
    assert slow is not None and queue.heartbeat(slow, 0.5)
    assert wait_until(lambda: _lease_ran_out(site, slow.id), timeout=30)
    fast = queue.claim("fast", 30, model)
    assert fast is not None and fast.id == slow.id and fast.attempts == 2
    assert not queue.heartbeat(slow)                       # the slow worker learns it lost the job
    late = queue.complete(slow, {"score": 0.1})
    assert not late.stored and "discarded" in late.reason and "claimed by fast" in late.reason
    assert queue.complete(fast, {"score": 0.9}).stored
    again = queue.complete(slow, {"score": 0.1})
    assert not again.stored and "discarded" in again.reason
    stored = queue.result("L1", model)
    assert stored is not None and stored["worker_id"] == "fast" and stored["result"] == {"score": 0.9}
    assert not queue.fail(slow, "too late to fail")


def test_a_job_whose_lease_keeps_running_out_fails_with_the_reason(site: PgCluster, queue: SiteQueue) -> None:
    model = _model("poison")
    queue.enqueue("P1", model)
    for _ in range(2):   # max_attempts = 2
        job = queue.claim("crashy", 0.3, model)
        assert job is not None
        assert wait_until(lambda j=job: _lease_ran_out(site, j.id), timeout=30)
    assert queue.claim("crashy", 0.3, model) is None
    with connect(site.dsn("mt_admin")) as conn:
        row = conn.execute("SELECT status, reason FROM triage_jobs WHERE exam_key = 'P1' AND model_sha256 = %s",
                           (model,)).fetchone()
    assert row["status"] == "failed" and "ran out 2 times" in row["reason"]


def test_a_workstation_can_read_the_queue_but_not_take_jobs(site: PgCluster) -> None:
    import psycopg

    with SiteQueue(site.dsn("mt_workstation")) as ws:
        assert isinstance(ws.counts(), dict)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ws.enqueue("W1", _model("ws"))


def _drain_all(site: PgCluster) -> None:
    """Earlier tests' leftovers would keep the worker processes waiting: finish them."""
    with connect(site.dsn("mt_admin")) as conn:
        conn.execute("UPDATE triage_jobs SET status = 'failed', reason = 'test cleanup' "
                     "WHERE status IN ('pending', 'running')")


def test_two_worker_processes_drain_30_jobs_each_exactly_once(site: PgCluster, queue: SiteQueue) -> None:
    _drain_all(site)
    for i in range(30):
        queue.enqueue(f"D{i:02d}", MODEL)
    workers = [spawn("worker", site.dsn("mt_worker"), f"w{i}", "30", "0.02") for i in range(2)]
    outputs = [finish(w) for w in workers]
    completed = [line["completed"] for out in outputs for line in out if "completed" in line]
    assert len(completed) == 30 and len(set(completed)) == 30
    assert all(line["stored"] for out in outputs for line in out if "completed" in line)
    with connect(site.dsn("mt_admin")) as conn:
        rows = conn.execute("SELECT j.exam_key, j.attempts, j.status, r.worker_id FROM triage_jobs j "
                            "JOIN triage_results r USING (exam_key, model_sha256) WHERE j.model_sha256 = %s",
                            (MODEL,)).fetchall()
    assert len(rows) == 30
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    assert {r["worker_id"] for r in rows} <= {"w0", "w1"}


def test_a_killed_worker_s_job_completes_elsewhere_after_its_lease(site: PgCluster, queue: SiteQueue) -> None:
    _drain_all(site)
    model = _model("kill")
    for i in range(3):
        queue.enqueue(f"K{i}", model)
    doomed = spawn("worker", site.dsn("mt_worker"), "doomed", "2", "0", "hang")
    try:
        assert doomed.stdout is not None
        claimed = doomed.stdout.readline()   # it has claimed a job and hangs on it
        assert '"claimed"' in claimed, claimed
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    rescuer = finish(spawn("worker", site.dsn("mt_worker"), "rescuer", "30", "0"))
    assert sum(1 for line in rescuer if line.get("stored")) == 3
    with connect(site.dsn("mt_admin")) as conn:
        rows = conn.execute("SELECT j.exam_key, j.attempts, r.worker_id FROM triage_jobs j JOIN triage_results r "
                            "USING (exam_key, model_sha256) WHERE j.model_sha256 = %s ORDER BY j.exam_key",
                            (model,)).fetchall()
    assert [r["worker_id"] for r in rows] == ["rescuer"] * 3
    assert sorted(r["attempts"] for r in rows) == [1, 1, 2]   # the killed worker's job was claimed twice


def _images(*uids: str) -> str:
    from mammotriage.digest import image_set_digest

    return image_set_digest(uids)


def test_a_study_that_receives_new_images_after_triage_is_queued_again(queue: SiteQueue) -> None:
    """Before, enqueue ignored a study the archive declared stable again: a late view
    (or a retake) never reached the model and the result on three views stayed the
    exam's last word."""
    model = _model("new-images")
    three, four = _images("1.1", "1.2", "1.3"), _images("1.3", "1.2", "1.1", "1.4")
    assert queue.enqueue("N1", model, images=three)
    job = queue.claim("w1", 30, model)
    assert job is not None and job.revision == 0
    assert queue.complete(job, {"views": 3}).stored
    assert queue.enqueue("N1", model, images=_images("1.2", "1.1", "1.3")) is False  # the same set: nothing
    assert queue.enqueue("N1", model) is False                                      # unknown set: nothing
    assert queue.job("N1", model)["status"] == "done"
    assert queue.enqueue("N1", model, images=four) is True
    state = queue.job("N1", model)
    assert state["status"] == "pending" and state["revision"] == 1 and state["images"] == four
    assert "received new images after it was done" in state["reason"]
    again = queue.claim("w2", 30, model)
    assert again is not None and again.id == job.id and again.revision == 1 and again.attempts == 1
    assert queue.complete(again, {"views": 4}).stored
    newest = queue.result("N1", model)
    assert newest is not None and newest["revision"] == 1 and newest["result"] == {"views": 4}
    assert queue.enqueue("N1", model, images=four) is False  # the results stored into the study: nothing


def test_a_worker_busy_with_the_old_image_set_has_its_result_discarded(queue: SiteQueue) -> None:
    model = _model("busy-old-set")
    assert queue.enqueue("B1", model, images=_images("2.1", "2.2"))
    busy = queue.claim("w-busy", 30, model)
    assert busy is not None
    assert queue.enqueue("B1", model, images=_images("2.1", "2.2", "2.3")) is True  # while it runs
    assert not queue.heartbeat(busy)  # the busy worker learns its claim is void
    late = queue.complete(busy, {"views": 2})
    assert not late.stored and "discarded: the study received new images (revision 0 -> 1)" in late.reason
    assert queue.result("B1", model) is None
    fresh = queue.claim("w-fresh", 30, model)
    assert fresh is not None and fresh.revision == 1
    assert queue.complete(fresh, {"views": 3}).stored
    assert queue.result("B1", model)["worker_id"] == "w-fresh"


def test_new_images_reach_a_failed_job_but_only_update_a_pending_or_older_one(
        site: PgCluster, queue: SiteQueue) -> None:
    model = _model("failed-pending-older")
    assert queue.enqueue("F1", model, images=_images("3.1"))
    job = queue.claim("w1", 30, model)
    assert job is not None and queue.fail(job, "no view could be analysed")
    assert queue.enqueue("F1", model, images=_images("3.1", "3.2")) is True  # a usable view came later
    state = queue.job("F1", model)
    assert state["status"] == "pending" and state["revision"] == 1 and state["attempts"] == 0
    # a pending job fetches the study as it is when claimed: the set is recorded, nothing else
    assert queue.enqueue("F1", model, images=_images("3.1", "3.2", "3.3")) is False
    state = queue.job("F1", model)
    assert state["revision"] == 1 and state["images"] == _images("3.1", "3.2", "3.3")
    # a job queued before image sets were recorded (images NULL): the first set is only recorded
    with connect(site.dsn("mt_admin")) as admin:
        admin.execute("INSERT INTO triage_jobs (exam_key, model_sha256, status, finished_at) "
                      "VALUES ('O1', %s, 'done', clock_timestamp())", (model,))
    assert queue.enqueue("O1", model, images=_images("4.1")) is False
    state = queue.job("O1", model)
    assert state["status"] == "done" and state["revision"] == 0 and state["images"] == _images("4.1")
    with pytest.raises(ValueError, match="sha256"):
        queue.enqueue("F1", model, images="ABC")
