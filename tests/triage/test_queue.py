"""Triage queue, worker loop and worklist ordering on a real SQLite archive."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mammotriage.store import Archive
from mammotriage.triage import OperatingPoints, TriageQueue, build_worklist
from mammotriage.triage.worker import LoadedModel, process_one, run_worker
from mtsupport import write_mg


@dataclass
class _Finding:
    box: tuple[float, float, float, float]
    kind: str
    score: float

    def to_json(self) -> dict:
        return {"box": list(self.box), "kind": self.kind, "score": self.score}


@dataclass
class _Result:
    findings: list
    score: float
    suspicion: np.ndarray
    map_factor: float


class BrightSpotModel:
    """A transparent stand-in detector for queue tests: the score is the fraction of
    pixels above 3500 (the synthetic 'lesion' value), the box is their bounding box."""

    version = "test-1"

    def __init__(self) -> None:
        self.calls = 0

    def predict_images(self, images: list) -> list:
        self.calls += 1
        out = []
        for im in images:
            hot = im.pixels > 3500
            score = float(min(1.0, hot.mean() * 50))
            findings = []
            if hot.any():
                rows, cols = np.nonzero(hot)
                findings.append(_Finding((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1), "mass", score))
            out.append(_Result(findings, score, hot[::4, ::4].astype(np.float32), 4.0))
        return out


def _exam(folder: Path, patient: str, uid: str, lesion: bool) -> None:
    for lat in "RL":
        for view in ("CC", "MLO"):
            pixels = np.full((64, 48), 1500, np.uint16)
            if lesion and lat == "L":
                pixels[20:30, 10:20] = 4000
            write_mg(folder / f"{patient}{lat}{view}.dcm", rows=64, columns=48, laterality=lat, view=view,
                     pixels=pixels, study_uid=uid, patient_id=patient)


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "in"
    _exam(data / "a", "NORMAL1", "1.2.3.1", lesion=False)
    _exam(data / "b", "CANCER1", "1.2.3.2", lesion=True)
    _exam(data / "c", "NORMAL2", "1.2.3.3", lesion=False)
    archive = Archive(tmp_path / "archive.sqlite")
    for sub in ("a", "b", "c"):  # import order = queue order (oldest first)
        archive.import_paths([data / sub])
        time.sleep(0.01)
    queue = TriageQueue(archive.path)
    model = LoadedModel(BrightSpotModel(), "test-1", "ab" * 32, {})
    yield archive, queue, model, tmp_path
    queue.close()
    archive.close()


def test_sync_enqueues_each_exam_once_per_version(setup) -> None:
    _archive, queue, _model, _ = setup
    assert queue.sync("test-1") == 3
    assert queue.sync("test-1") == 0
    assert queue.sync("test-2") == 3  # a new model version analyses everything again
    assert queue.counts("test-1") == {"pending": 3, "running": 0, "done": 0, "failed": 0}


def test_oldest_first_and_opened_exam_jumps_the_queue(setup) -> None:
    archive, queue, model, tmp = setup
    queue.sync("test-1")
    keys = [j.exam_key for j in queue.jobs("test-1")]
    assert keys == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert queue.prioritize("1.2.3.3", "test-1")
    first = process_one(queue, archive, model, tmp / "maps")
    assert first.exam_key == "1.2.3.3"
    second = process_one(queue, archive, model, tmp / "maps")
    assert second.exam_key == "1.2.3.1"


def test_etas_follow_claim_order_from_the_measured_per_view_p95(setup) -> None:
    archive, queue, model, tmp = setup
    queue.sync("test-1")
    assert queue.per_view_p95(model.weights_sha256) is None
    assert queue.etas("test-1", None) == {}  # nothing measured yet: no ETA rather than a guess
    first = process_one(queue, archive, model, tmp / "maps")  # analysing measures the weights
    assert first.exam_key == "1.2.3.1"
    (row,) = queue.conn.execute("SELECT views, seconds, per_view_s FROM inference_times").fetchall()
    assert row["views"] == 4 and row["seconds"] > 0 and row["per_view_s"] == pytest.approx(row["seconds"] / 4)
    assert queue.per_view_p95(model.weights_sha256) == pytest.approx(row["per_view_s"])
    assert queue.per_view_p95("cd" * 32) is None  # other weights are not measured by it
    for seconds in (4.0, 8.0, 2000.0):  # the p95 of the window, not the mean or the worst
        queue.record_time("ef" * 32, "test-2", 4, seconds)
    assert 2.0 <= queue.per_view_p95("ef" * 32) <= 500.0
    queue.prioritize("1.2.3.3", "test-1")
    etas = queue.etas("test-1", 1.5)
    assert list(etas) == ["1.2.3.3", "1.2.3.2"]  # claim order; the done exam has none
    assert etas["1.2.3.3"] == pytest.approx(6.0) and etas["1.2.3.2"] == pytest.approx(12.0)
    two = queue.etas("test-1", 1.5, workers=2)  # two workers take one exam each
    assert two["1.2.3.3"] == pytest.approx(6.0) and two["1.2.3.2"] == pytest.approx(6.0)
    job = queue.claim_next("test-1")  # running: what it has spent already is taken off
    assert job.exam_key == "1.2.3.3"
    running = queue.etas("test-1", 1.5)
    assert 0.0 <= running["1.2.3.3"] <= 6.0 and running["1.2.3.2"] == pytest.approx(running["1.2.3.3"] + 6.0)
    entries = build_worklist(archive.exams(), queue.jobs("test-1"), queue.exam_results(), "test-1", None,
                             etas=running)
    by_key = {e.exam.exam_key: e for e in entries}
    assert by_key["1.2.3.1"].eta_s == 0.0 and by_key["1.2.3.2"].eta_s == running["1.2.3.2"]


def test_results_stored_with_version_hash_and_maps(setup) -> None:
    archive, queue, model, tmp = setup
    queue.sync("test-1")
    while process_one(queue, archive, model, tmp / "ai_maps") is not None:
        pass
    results = queue.exam_results()
    assert set(results) == {"1.2.3.1", "1.2.3.2", "1.2.3.3"}
    cancer = results["1.2.3.2"][0]
    assert cancer.model_version == "test-1" and cancer.weights_sha256 == "ab" * 32
    assert cancer.score_left > 0.5 and cancer.score_right == 0.0 and cancer.score == cancer.score_left
    assert results["1.2.3.1"][0].score == 0.0
    left_cc = next(i for i in archive.exam("1.2.3.2").images if i.label == "LCC")
    (rec,) = queue.image_results(left_cc.sop_uid)
    assert rec.findings[0]["box"] == [10, 20, 20, 30]  # stored-image (column, row) box
    assert (tmp / rec.map_path).exists() and np.load(tmp / rec.map_path).max() == 1.0


def test_failing_exam_is_marked_and_does_not_block(setup) -> None:
    archive, queue, model, tmp = setup
    for image in archive.exam("1.2.3.1").images:
        Path(image.path).unlink()  # files vanished after import
    queue.sync("test-1")
    outcomes = [process_one(queue, archive, model, tmp / "maps") for _ in range(3)]
    job = queue.job("1.2.3.1", "test-1")
    assert job.status == "failed" and "no view could be analysed" in job.reason
    assert queue.counts("test-1") == {"pending": 0, "running": 0, "done": 2, "failed": 1}
    assert process_one(queue, archive, model, tmp / "maps") is None
    assert sum(1 for o in outcomes if hasattr(o, "score")) == 2


def test_an_exam_scored_without_one_of_its_views_says_so(setup) -> None:
    archive, queue, model, tmp = setup
    lost = archive.exam("1.2.3.2").images[0].path
    Path(lost).unlink()
    queue.sync("test-1")
    said: list[str] = []
    while process_one(queue, archive, model, tmp / "maps", on_error=said.append) is not None:
        pass
    assert queue.job("1.2.3.2", "test-1").status == "done"  # the other three views were scored
    assert len(said) == 1 and "1.2.3.2" in said[0] and Path(lost).name in said[0]


def test_jobs_of_some_statuses_are_chosen_by_the_database(setup) -> None:
    """The site results feed asks for the waiting jobs only (before, it read every job of
    the version on each 5-s turn and filtered them itself)."""
    archive, queue, model, tmp = setup
    queue.sync("test-1")
    queue.sync("test-2")
    done = process_one(queue, archive, model, tmp / "maps")
    claimed = queue.claim_next("test-1")
    waiting = queue.jobs("test-1", statuses=("pending", "failed"))
    assert {j.status for j in waiting} == {"pending"}
    assert {j.exam_key for j in waiting} == {"1.2.3.1", "1.2.3.2", "1.2.3.3"} - {done.exam_key, claimed.exam_key}
    assert [j.exam_key for j in queue.jobs("test-1", statuses=("running",))] == [claimed.exam_key]
    assert len(queue.jobs(statuses=("pending",))) == 1 + 3   # both versions
    assert queue.jobs("test-1", statuses=()) == []
    with pytest.raises(TypeError, match="not one string"):
        queue.jobs("test-1", statuses="pending")
    with pytest.raises(ValueError, match="unknown job status"):
        queue.jobs("test-1", statuses=("pending'; DROP TABLE triage_jobs; --",))


def test_restart_recovers_running_jobs(setup) -> None:
    _archive, queue, _model, _tmp = setup
    queue.sync("test-1")
    claimed = queue.claim_next("test-1")  # the worker dies here
    assert queue.recover() == 1
    assert queue.job(claimed.exam_key, "test-1").status == "pending"
    queue.claim_next("test-1")
    queue.recover()
    queue.claim_next("test-1")  # second crash on the same exam
    queue.recover()
    job = queue.job(claimed.exam_key, "test-1")
    assert job.status == "failed" and "worker stopped" in job.reason


def test_worklist_orders_by_suspicion_pending_never_normal(setup) -> None:
    archive, queue, model, tmp = setup
    points = OperatingPoints(suspicious=0.5, likely_normal=0.1)
    queue.sync("test-1")
    process_one(queue, archive, model, tmp / "maps")  # NORMAL1 done
    entries = build_worklist(archive.exams(), queue.jobs(), queue.exam_results(), "test-1", points)
    by_key = {e.exam.exam_key: e for e in entries}
    assert by_key["1.2.3.1"].category == "likely normal"
    assert by_key["1.2.3.2"].category == "pending" and by_key["1.2.3.2"].score is None
    while process_one(queue, archive, model, tmp / "maps") is not None:
        pass
    entries = build_worklist(archive.exams(), queue.jobs(), queue.exam_results(), "test-1", points)
    assert next(e.exam.exam_key for e in entries) == "1.2.3.2"
    assert entries[0].category == "suspicious" and entries[0].breasts["L"] > 0.5
    # a new model version: old results are shown, flagged stale, and the exam is pending again
    queue.sync("test-2")
    entries = build_worklist(archive.exams(), queue.jobs(), queue.exam_results(), "test-2", points)
    assert all(e.stale and e.status == "pending" and e.model_version == "test-1" for e in entries)
    assert all(e.category == "pending" for e in entries)


def test_paged_worklist_query_agrees_with_the_full_worklist(setup) -> None:
    from mammotriage.triage.worklist import PAGE_FILTERS, worklist_page

    archive, queue, model, tmp = setup
    points = OperatingPoints(suspicious=0.5, likely_normal=0.1)
    queue.sync("test-1")
    process_one(queue, archive, model, tmp / "maps")  # NORMAL1 done, the others pending
    process_one(queue, archive, model, tmp / "maps")  # CANCER1 done
    full = build_worklist(archive.exams(), queue.jobs(), queue.exam_results(), "test-1", points)
    total, rows = worklist_page(queue.conn, "test-1", points)
    assert total == 3 and [r["exam_key"] for r in rows] == [e.exam.exam_key for e in full]
    assert [r["ai_category"] for r in rows] == ["suspicious", "pending", "likely normal"]
    assert [r["ai_status"] for r in rows] == [e.status for e in full]
    assert rows[0]["patient_id"] == "CANCER1" and rows[0]["study_uids"] == ["1.2.3.2"]
    counts = {name: worklist_page(queue.conn, "test-1", points, filter=name)[0] for name in PAGE_FILTERS}
    assert counts == {"all": 3, "suspicious": 1, "likely normal": 1, "AI pending": 1}
    assert [r["exam_key"] for r in worklist_page(queue.conn, "test-1", points, search="normal")[1]] == [
        "1.2.3.3", "1.2.3.1"]  # case-insensitive, in triage order
    assert worklist_page(queue.conn, "test-1", points, search="50%_")[0] == 0  # wildcards are literal
    page = worklist_page(queue.conn, "test-1", points, sort="patient", offset=1, limit=1)
    assert page[0] == 3 and [r["patient_id"] for r in page[1]] == ["NORMAL1"]
    assert worklist_page(queue.conn, "test-2", points)[1][0]["ai_status"] == "not queued"
    with pytest.raises(ValueError):
        worklist_page(queue.conn, "test-1", points, sort="size")


def _plan(conn, sql: str, params: tuple = ()) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


def test_worklist_and_queue_queries_use_indexes_not_table_scans(setup) -> None:
    """The query plans (not timings) of what the worklist runs at 10,000 exams."""
    import mammotriage.triage.worklist as worklist

    _, queue, _, _ = setup
    plans: list[list[str]] = []

    class Planner:  # runs each statement and records SQLite's plan for it
        def __init__(self, conn) -> None:
            self.conn = conn

        def execute(self, sql: str, params: tuple = ()):
            plans.append(_plan(self.conn, sql, params))
            return self.conn.execute(sql, params)

    points = OperatingPoints(suspicious=0.5, likely_normal=0.1)
    for kwargs in ({}, {"filter": "suspicious", "sort": "date"}, {"search": "NORMAL"}):
        worklist.worklist_page(Planner(queue.conn), "test-1", points, **kwargs)
    n_worklist = len(plans)
    for plan in plans:
        text = " | ".join(plan)
        assert "studies" not in text, text  # one row an exam, no grouping of studies
        assert "images" not in text  # nor the image table (4 rows an exam)
        assert "SCAN r" not in text and "SCAN j" not in text, text  # results and jobs by primary key
        if "SEARCH r" in text:
            assert "sqlite_autoindex_ai_exam_results_1 (exam_key=? AND model_version=?)" in text, text
            assert "sqlite_autoindex_triage_jobs_1 (exam_key=? AND model_version=?)" in text, text
    assert sum("SEARCH r" in " ".join(p) for p in plans) >= 3  # every page joined them so
    # date order without a filter walks the date index and stops after the page
    plans.clear()
    worklist.worklist_page(Planner(queue.conn), "test-1", points, sort="date")
    assert plans[0][0] == "SCAN e USING INDEX exam_index_date" and "TEMP B-TREE" not in " ".join(plans[0])
    n_worklist = len(plans)
    own = queue.conn
    queue._conn = Planner(own)  # the queue's own statements, planned the same way
    try:
        queue.jobs("test-1")
        queue.counts("test-1")
        queue.per_view_p95("ab" * 32)
        queue.etas("test-1", 1.0)
    finally:
        queue._conn = own
    text = " | ".join(" | ".join(p) for p in plans[n_worklist:])
    assert "SCAN" not in text, text
    assert text.count("USING INDEX triage_jobs_version") + text.count("USING COVERING INDEX triage_jobs_version") == 3
    assert "USING INDEX inference_times_weights" in text and "USING INDEX images_study" in text


def test_operating_points_from_metadata_and_site_file(tmp_path) -> None:
    meta = {"operating_points": {"suspicious": {"threshold": 0.4, "sensitivity": 0.9},
                                 "likely_normal": {"threshold": 0.05}}}
    p = OperatingPoints.resolve(meta)
    assert (p.suspicious, p.likely_normal) == (0.4, 0.05)
    site = tmp_path / "triage.json"
    site.write_text('{"suspicious": 0.6, "likely_normal": 0.2}')
    with pytest.raises(ValueError, match="reason"):  # never moved without a reason
        OperatingPoints.resolve(meta, site)
    site.write_text('{"suspicious": 0.6, "likely_normal": 0.2, "reason": "local recall-rate audit 2026"}')
    moved = OperatingPoints.resolve(meta, site)
    assert moved.suspicious == 0.6 and moved.reason == "local recall-rate audit 2026"
    assert "local recall-rate audit" in moved.describe() and "site" in moved.describe()
    site.write_text('{"suspicious": 0.1, "likely_normal": 0.2, "reason": "x"}')
    with pytest.raises(ValueError):
        OperatingPoints.resolve(meta, site)
    with pytest.raises(ValueError, match="no operating points"):
        OperatingPoints.resolve({})


def test_worker_loop_processes_everything_then_idles(setup) -> None:
    archive, queue, model, tmp = setup
    stop = threading.Event()
    import queue as q

    status = q.Queue()
    worker = threading.Thread(target=run_worker, args=(str(archive.path), str(tmp), None, stop),
                              kwargs={"loader": lambda *a, **k: model, "status": status, "idle_s": 0.05,
                                      "settle_s": 0.0})
    worker.start()
    deadline = time.monotonic() + 30
    while queue.counts("test-1")["done"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(10)
    assert queue.counts("test-1")["done"] == 3
    messages = []
    while not status.empty():
        messages.append(status.get())
    assert messages[0] == ("ready", "test-1")
    assert sorted(m[1] for m in messages if m[0] == "done") == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]


def test_dicom_results_written_per_exam(setup) -> None:
    import subprocess

    import pydicom

    from mtsupport import require_tool

    archive, queue, model, tmp = setup
    dciodvfy = require_tool("dciodvfy")
    errors: list[str] = []
    queue.sync("test-1")
    while process_one(queue, archive, model, tmp / "maps", results_dir=tmp / "results",
                      on_error=errors.append) is not None:
        pass
    assert not errors
    files = sorted((tmp / "results" / "test-1").rglob("*.dcm"))
    srs = [f for f in files if f.name.startswith("sr-")]
    segs = [f for f in files if f.name.startswith("seg-")]
    assert len(srs) == 3 and len(segs) == 12
    cancer_sr = next(pydicom.dcmread(f) for f in srs if pydicom.dcmread(f).StudyInstanceUID == "1.2.3.2")
    assert cancer_sr.ContributingEquipmentSequence[0].SoftwareVersions == "test-1"
    for f in (srs[0], segs[0]):
        out = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True)
        assert not [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")], f


def test_a_result_of_the_active_weights_is_never_older(setup) -> None:
    """The same weights registered under another version name: their results are current."""
    archive, queue, model, tmp = setup
    points = OperatingPoints(suspicious=0.5, likely_normal=0.1)
    queue.sync("test-1")
    while process_one(queue, archive, model, tmp / "maps") is not None:
        pass
    queue.sync("test-1-renamed")
    entries = build_worklist(archive.exams(), queue.jobs("test-1-renamed"), queue.exam_results(), "test-1-renamed",
                             points, current_sha256=model.weights_sha256)
    assert entries and not any(e.stale for e in entries)
    assert all(e.status == "done" and e.category != "pending" for e in entries)
    other = build_worklist(archive.exams(), queue.jobs("test-1-renamed"), queue.exam_results(), "test-1-renamed",
                           points, current_sha256="f" * 64)
    assert all(e.stale for e in other)


def test_a_job_queued_again_while_it_runs_runs_again(setup) -> None:
    """Before, ``complete`` marked the job done whatever happened meanwhile: an exam whose
    late views arrived (and was queued again) during its analysis kept the result of the
    views it had, and was never analysed with the others."""
    archive, queue, _model, _ = setup
    queue.sync("test-1")
    job = queue.claim_next("test-1")
    assert job is not None
    sop = archive.exam(job.exam_key).images[0].sop_uid
    queue.requeue(job.exam_key, "test-1")  # new images of it arrived while it ran
    queue.complete(job, "ab" * 32, [{"sop_uid": sop, "laterality": "L", "score": 0.5, "findings": []}])
    status = queue.conn.execute("SELECT status FROM triage_jobs WHERE exam_key = ? AND model_version = 'test-1'",
                                (job.exam_key,)).fetchone()[0]
    assert status == "pending"  # it runs again, on the exam as it is now
    again = queue.claim_next("test-1")
    assert again is not None and again.exam_key == job.exam_key
    queue.complete(again, "ab" * 32, [{"sop_uid": sop, "laterality": "L", "score": 0.6, "findings": []}])
    assert queue.conn.execute("SELECT status FROM triage_jobs WHERE exam_key = ? AND model_version = 'test-1'",
                              (job.exam_key,)).fetchone()[0] == "done"


def test_a_held_queue_leaves_new_jobs_to_the_site_but_takes_an_opened_or_old_one(setup) -> None:
    """A site workstation's worker waits ``hold_s`` for the site AI workers' result;
    before, it took every exam at once and analysed each a second time."""
    archive, queue, model, tmp = setup
    queue.sync("test-1")
    assert queue.claim_next("test-1", hold_s=600) is None  # all three are new: left to the site
    assert process_one(queue, archive, model, tmp / "maps", hold_s=600) is None
    assert queue.prioritize("1.2.3.2", "test-1")  # a reader opened it: analysed here at once
    job = queue.claim_next("test-1", hold_s=600)
    assert job is not None and job.exam_key == "1.2.3.2"
    queue.conn.execute("UPDATE triage_jobs SET queued_at = '2020-01-01T00:00:00+00:00' "
                       "WHERE exam_key = '1.2.3.3'")  # waited past the hold: the site did not answer
    late = queue.claim_next("test-1", hold_s=600)
    assert late is not None and late.exam_key == "1.2.3.3"
    assert queue.claim_next("test-1", hold_s=600) is None
    first = queue.claim_next("test-1")  # no hold (standalone): at once
    assert first is not None and first.exam_key == "1.2.3.1"
    # the hold counts from when a job was queued, not from the images' import: a new
    # model's jobs on old exams and an exam queued again for new images wait too
    queue.conn.execute("UPDATE images SET imported_at = '2020-01-01T00:00:00+00:00'")
    assert queue.sync("test-2") == 3
    assert queue.claim_next("test-2", hold_s=600) is None
    queue.complete(first, "ab" * 32, [{"sop_uid": archive.exam("1.2.3.1").images[0].sop_uid, "laterality": "L",
                                       "score": 0.5, "findings": []}])
    queue.requeue("1.2.3.1", "test-1")
    assert queue.claim_next("test-1", hold_s=600) is None


def test_a_held_exams_eta_waits_for_its_hold(setup) -> None:
    """Before, a site workstation showed "result in ~6 s" for an exam it leaves to the site
    for 10 minutes (the ETA ignored the hold)."""
    _archive, queue, _model, _tmp = setup
    queue.sync("test-1")
    plain = queue.etas("test-1", 1.5)
    assert plain == pytest.approx({"1.2.3.1": 6.0, "1.2.3.2": 12.0, "1.2.3.3": 18.0})
    held = queue.etas("test-1", 1.5, hold_s=600)
    assert 590 <= held["1.2.3.1"] - 6.0 <= 600.5
    assert held["1.2.3.2"] == pytest.approx(held["1.2.3.1"] + 6.0)
    assert held["1.2.3.3"] == pytest.approx(held["1.2.3.1"] + 12.0)
    queue.prioritize("1.2.3.3", "test-1")   # opened by a reader: taken here at once
    queue.conn.execute("UPDATE triage_jobs SET queued_at = '2020-01-01T00:00:00+00:00' "
                       "WHERE exam_key = '1.2.3.2'")  # waited past its hold already
    held = queue.etas("test-1", 1.5, hold_s=600)
    assert list(held) == ["1.2.3.3", "1.2.3.2", "1.2.3.1"]  # the held one is passed over, as claim_next does
    assert held["1.2.3.3"] == pytest.approx(6.0) and held["1.2.3.2"] == pytest.approx(12.0)
    assert 590 <= held["1.2.3.1"] - 6.0 <= 600.5
    two = queue.etas("test-1", 1.5, workers=2, hold_s=600)
    assert two["1.2.3.3"] == pytest.approx(6.0) and two["1.2.3.2"] == pytest.approx(6.0)
    assert 590 <= two["1.2.3.1"] - 6.0 <= 600.5
    assert queue.claim_next("test-1", hold_s=600).exam_key == "1.2.3.3"
    assert queue.claim_next("test-1", hold_s=600).exam_key == "1.2.3.2"
    assert queue.claim_next("test-1", hold_s=600) is None


def test_no_finite_per_view_time_gives_no_eta_and_is_never_recorded(setup) -> None:
    """Before, a NaN per-view time (a p95 over an infinite record) made the held-jobs
    loop pop an empty heap: IndexError inside the worklist's refresh."""
    _archive, queue, _model, _tmp = setup
    queue.sync("test-1")
    for bad in (float("nan"), float("inf"), -1.0):
        assert queue.etas("test-1", bad, hold_s=600) == {}
        assert queue.etas("test-1", bad) == {}
    queue.record_time("sha", "test-1", 4, float("inf"))
    queue.record_time("sha", "test-1", 4, float("nan"))
    assert queue.per_view_p95("sha") is None
    queue.record_time("sha", "test-1", 4, 6.0)
    assert queue.per_view_p95("sha") == pytest.approx(1.5)


def test_an_adopted_result_is_stored_with_its_maps_and_marks_a_waiting_job_done(setup) -> None:
    archive, queue, _model, tmp = setup
    queue.sync("test-1")
    exam = archive.exam("1.2.3.2")
    suspicion = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    images = [{"sop_uid": i.sop_uid, "laterality": i.laterality.value, "view": i.view.value,
               "score": 0.9 if i.laterality.value == "L" else 0.2,
               "findings": [{"box": [1, 2, 3, 4], "kind": "mass", "score": 0.9}],
               "suspicion": suspicion, "map_factor": 2.0} for i in exam.images]
    from mammotriage.digest import image_set_digest

    held = image_set_digest(i.sop_uid for i in exam.images)
    assert queue.adopt("1.2.3.2", "test-1", "cd" * 32, images, image_set="0" * 64) is None  # not its images
    assert queue.job("1.2.3.2", "test-1").status == "pending" and queue.exam_results() == {}
    result = queue.adopt("1.2.3.2", "test-1", "cd" * 32, images, maps_dir=tmp / "data" / "ai_maps", image_set=held)
    assert result is not None and result.score_left == pytest.approx(0.9) and result.score_right == pytest.approx(0.2)
    assert queue.job("1.2.3.2", "test-1").status == "done"
    stored = queue.image_results(exam.images[0].sop_uid)[0]
    assert stored.weights_sha256 == "cd" * 32 and stored.findings[0]["kind"] == "mass"
    assert stored.map_factor == 2.0
    assert np.allclose(np.load(tmp / "data" / stored.map_path), suspicion, atol=1e-3)
    # a job running here is not touched: its own result (same model) comes when it ends
    job = queue.claim_next("test-1")
    assert job is not None and job.exam_key == "1.2.3.1"
    other = archive.exam("1.2.3.1")
    other_set = image_set_digest(i.sop_uid for i in other.images)
    assert queue.adopt("1.2.3.1", "test-1", "cd" * 32, [dict(images[0], sop_uid=other.images[0].sop_uid)],
                       image_set=other_set) is None
    assert queue.job("1.2.3.1", "test-1").status == "running" and queue.image_results(other.images[0].sop_uid) == []
