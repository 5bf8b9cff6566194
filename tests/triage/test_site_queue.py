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
