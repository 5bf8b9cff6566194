"""The site's model registry on a real PostgreSQL: promotions, rollbacks, the queue moving
with them, append-only rows and who may write them."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest
from pgsupport import running_cluster

from mammotriage.store.pg.events import connect
from mammotriage.store.pg.models import RETRIAGE_PRIORITY, SiteModelError, SiteModels


@pytest.fixture(scope="module")
def cluster():
    with running_cluster() as c:
        yield c


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _publish(models: SiteModels, name: str, version: str) -> str:
    sha = _sha(name)
    archive = f"tar of {name}".encode()
    assert models.publish(sha, version, archive, {"weights_sha256": sha, "version": version}, "lead")
    return sha


def _jobs(cluster, sql: str = "", *params: Any) -> list[dict[str, Any]]:
    with connect(cluster.dsn("mt_admin")) as conn:
        return [dict(r) for r in conn.execute(
            "SELECT exam_key, model_sha256, status, priority, reason FROM triage_jobs " + sql
            + " ORDER BY exam_key, model_sha256", params).fetchall()]


def test_promotion_and_rollback_fold_into_one_active_model_and_move_the_queue(cluster) -> None:
    with SiteModels(cluster.dsn("mt_admin")) as models:
        assert models.active() is None and models.versions() == []
        a = _publish(models, "A", "1.0.0")
        assert not models.publish(a, "1.0.0", b"tar of A", {"weights_sha256": a, "version": "1.0.0"}, "x")  # once
        b = _publish(models, "B", "1.1.0")
        assert models.promote(a, "lead", "first site model") == {"superseded": 0, "queued": 0, "retriage": 0}
        assert models.active_sha256() == a
        with pytest.raises(SiteModelError, match="already the site's active model"):
            models.promote(a, "lead", "again")
        with pytest.raises(SiteModelError, match="not published"):
            models.promote(_sha("never published"), "lead", "why")
        with pytest.raises(SiteModelError, match="no earlier site model"):
            models.rollback("lead", "nothing before")

        # the queue as A left it: E1 done, E2 pending (priority 5), E3 failed; E4 pending for B already
        with connect(cluster.dsn("mt_admin")) as conn:
            for exam, sha, status, prio in (("E1", a, "done", 0), ("E2", a, "pending", 5), ("E3", a, "failed", 0),
                                            ("E4", b, "pending", 0), ("E4", a, "pending", 0)):
                conn.execute("INSERT INTO triage_jobs (exam_key, model_sha256, status, priority) "
                             "VALUES (%s, %s, %s, %s)", (exam, sha, status, prio))

        report = {"passed": True, "operating_points": {"likely_normal_below": 0.25}}
        moved = models.promote(b, "lead", "validation gate passed", report)
        assert moved == {"superseded": 2, "queued": 1, "retriage": 2}   # E2 (E4 had a B job); E1, E3 again
        assert models.active_sha256() == b
        assert models.operating_points(b) == {"likely_normal_below": 0.25}
        assert models.operating_points(a) == {}
        jobs = {(j["exam_key"], j["model_sha256"]): j for j in _jobs(cluster)}
        assert jobs[("E2", a)]["status"] == "superseded" and "v1.1.0" in jobs[("E2", a)]["reason"]
        assert jobs[("E2", b)]["status"] == "pending" and jobs[("E2", b)]["priority"] == 5   # same priority
        assert jobs[("E4", a)]["status"] == "superseded" and jobs[("E4", b)]["status"] == "pending"
        assert jobs[("E1", b)]["priority"] == RETRIAGE_PRIORITY == jobs[("E3", b)]["priority"]   # below new work
        assert jobs[("E1", a)]["status"] == "done"   # what A did stays

        back, moved = models.rollback("lead", "B marks the chest wall", retriage=False)
        assert back.weights_sha256 == a and models.active_sha256() == a
        assert moved == {"superseded": 4, "queued": 2, "retriage": 0}   # the pending only: E2, E4 (A's jobs again)
        assert [e["action"] for e in models.history()] == ["promote", "promote", "rollback"]
        assert models.history()[-1]["version"] == "1.0.0" and models.history()[-1]["who"] == "lead"
        # promoting B again is a new promotion: the fold is a stack
        models.promote(b, "lead", "fixed the validation set", retriage=False)
        assert models.active_sha256() == b
        assert models.rollback("lead", "again")[0].weights_sha256 == a


def test_rows_are_append_only_and_only_the_owner_publishes(cluster) -> None:
    with SiteModels(cluster.dsn("mt_admin")) as models:
        sha = _publish(models, "C", "2.0.0")
    with connect(cluster.dsn("mt_admin")) as conn:
        for sql in ("UPDATE site_model_packages SET version = 'x'", "DELETE FROM site_model_packages",
                    "TRUNCATE site_model_events CASCADE", "UPDATE site_model_events SET who = 'x'",
                    "DELETE FROM site_model_events"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
    for role in ("mt_workstation", "mt_worker"):
        with SiteModels(cluster.dsn(role)) as models:
            assert models.get(sha) is not None   # they read
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                models.publish(_sha(role), "3.0.0", b"x", {"weights_sha256": _sha(role), "version": "3.0.0"}, role)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                models.promote(sha, role, "a workstation promoting")


def test_a_package_changed_behind_the_triggers_is_refused(cluster) -> None:
    """The documented admin path (disabling the trigger) can change bytes; the recorded
    sha256 then refuses them."""
    with SiteModels(cluster.dsn("mt_admin")) as models:
        sha = _publish(models, "D", "4.0.0")
        assert models.archive(sha) == b"tar of D"
    with connect(cluster.dsn("mt_admin")) as conn, conn.transaction():
        conn.execute("ALTER TABLE site_model_packages DISABLE TRIGGER site_model_packages_no_update")
        conn.execute("UPDATE site_model_packages SET archive = 'tar of evil' WHERE weights_sha256 = %s", (sha,))
        conn.execute("ALTER TABLE site_model_packages ENABLE TRIGGER site_model_packages_no_update")
    with SiteModels(cluster.dsn("mt_worker")) as models, pytest.raises(SiteModelError, match="recorded sha256"):
        models.archive(sha)


def test_a_stale_queue_move_does_nothing_and_versions_are_plain_and_once(cluster) -> None:
    """Review findings: a worker's move for the model before a promotion moved the queue
    back to it; a version could name a folder outside the models' folder; the same
    weights published again under another version were silently ignored; a promotion
    checked against one active model could land on another."""
    with SiteModels(cluster.dsn("mt_admin")) as models:
        e = _publish(models, "E", "5.0.0")
        f = _publish(models, "F", "5.1.0")
        models.promote(e, "lead", "E first", retriage=False)
        with pytest.raises(SiteModelError, match="changed while this promotion was checked"):
            models.promote(f, "lead", "checked against nothing", expected_active=None)
        models.promote(f, "lead", "F next", retriage=False, expected_active=e)
        with connect(cluster.dsn("mt_admin")) as conn:
            conn.execute("INSERT INTO triage_jobs (exam_key, model_sha256) VALUES ('S1', %s)", (f,))
        with pytest.raises(SiteModelError, match="not a plain version"):
            models.publish(_sha("G"), "../../target", b"x", {"weights_sha256": _sha("G"), "version": "../../target"},
                           "lead")
        with pytest.raises(SiteModelError, match=r"published as v5\.0\.0 already"):
            models.publish(e, "5.0.1", b"y", {"weights_sha256": e, "version": "5.0.1"}, "lead")
    with connect(cluster.dsn("mt_admin")) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO site_model_packages (weights_sha256, version, archive, archive_sha256, metadata, "
                     "published_by) VALUES (%s, '../x', '', %s, '{}', 'x')", (_sha("H"), _sha("H")))
    with SiteModels(cluster.dsn("mt_worker")) as worker:
        assert worker.move_pending(e) == {"superseded": 0, "queued": 0}   # E is no longer active
        assert worker.move_pending(f)["superseded"] >= 0
    assert [j["status"] for j in _jobs(cluster, "WHERE exam_key = 'S1'")] == ["pending"]


def test_a_queue_move_carries_the_exams_newest_image_set(cluster) -> None:
    """Review findings: a late view queued under the model before a promotion was lost
    when the new model had already triaged the exam on fewer images (its done job was
    kept as it was), and a job revived by a promotion kept the image set it was queued
    with, not the one recorded since under the other model."""
    from mammotriage.digest import image_set_digest
    from mammotriage.triage.site_queue import SiteQueue

    x, y = image_set_digest(["9.1"]), image_set_digest(["9.1", "9.2"])

    def claim(exam: str, model: str) -> Any:
        """The job of ``exam`` (the earlier tests' exams, moved to this model too, done on the way)."""
        while (job := queue.claim("w", 30, model)) is not None and job.exam_key != exam:
            queue.complete(job, {})
        return job

    with SiteModels(cluster.dsn("mt_admin")) as models, SiteQueue(cluster.dsn("mt_worker")) as queue:
        c, d = _publish(models, "R-C", "7.0.0"), _publish(models, "R-D", "7.1.0")
        models.promote(c, "lead", "c", retriage=False)
        assert queue.enqueue("R1", c, images=x)
        job = claim("R1", c)
        assert job is not None and queue.complete(job, {"on": "x"}).stored
        models.promote(d, "lead", "d", retriage=False)
        assert queue.enqueue("R1", d, images=x)  # D triages R1 on X too
        job = claim("R1", d)
        assert job is not None and queue.complete(job, {"on": "x"}).stored
        models.rollback("lead", "back to C", retriage=False)
        assert queue.enqueue("R1", c, images=y)  # a late view while C runs: C's job again
        assert queue.enqueue("R2", c, images=x)
        models.promote(d, "lead", "d again", retriage=False)  # C's pending jobs move to D
        r1 = queue.job("R1", d)
        assert r1 is not None and r1["status"] == "pending" and r1["revision"] == 1 and r1["images"] == y
        assert "new images after it was done" in r1["reason"]
        r2 = queue.job("R2", d)
        assert r2 is not None and r2["status"] == "pending" and r2["images"] == x

        models.rollback("lead", "C once more", retriage=False)  # D's pending R2 superseded, C's R2 pending
        assert not queue.enqueue("R2", c, images=y)  # pending: the newer set is recorded on C's job
        models.promote(d, "lead", "d a third time", retriage=False)  # D's R2 revived
        r2 = queue.job("R2", d)
        assert r2 is not None and r2["status"] == "pending" and r2["revision"] == 0 and r2["images"] == y
