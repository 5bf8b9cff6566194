"""The site AI worker with both real servers: Orthanc (DICOMweb) and PostgreSQL, started here.

One site server folder for the module (``site init``, free ports, stable age 2 s);
dcmtk's storescu sends 100 demo images (25 four-view exams, 128 x 96 pixels) to its
Orthanc; a tiny, randomly initialised model package keeps CPU inference short.

The tests run in file order: the two-worker acceptance test first (its model's jobs are
the 25 studies), then the bad-input test with a second model (its own jobs).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "store" / "pg"))
sys.path.insert(0, str(REPO / "tests" / "net"))

from netsupport import storescu  # noqa: E402
from orthancsupport import require_orthanc  # noqa: E402
from pgsupport import free_port, require_postgres, wait_until  # noqa: E402

from mammotriage.net import site  # noqa: E402
from mammotriage.net.dicomweb import DicomWebArchive  # noqa: E402
from mammotriage.net.orthanc import OrthancServer  # noqa: E402
from mammotriage.store.pg.events import connect  # noqa: E402

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
ROWS, COLUMNS = 128, 96


@pytest.fixture(scope="module")
def site_dir() -> Iterator[Path]:
    """A started site server (PostgreSQL + Orthanc) in a folder the postgres account can reach."""
    require_orthanc()
    require_postgres()
    root = Path(tempfile.mkdtemp(prefix="mt-site-worker-"))
    root.chmod(0o755)
    folder = root / "server"
    ports: list[int] = []
    while len(ports) < 3:
        p = free_port()
        if p not in ports:
            ports.append(p)
    try:
        site.init_site(folder, pg_port=ports[0], http_port=ports[1], dicom_port=ports[2])
        made = OrthancServer.load(folder / "orthanc")  # a short stable age: the test waits for it
        OrthancServer(made.folder, made.http_port, made.dicom_port, made.aet, stable_age_s=2,  # TLS as made
                      tls_pem=made.tls_pem, tls_ca=made.tls_ca, tls_check_hostname=made.tls_check_hostname,
                      dicom_tls=made.dicom_tls).write_config()
        site.start_site(folder)
        yield folder
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def studies(site_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Study Instance UID -> SOP Instance UIDs of the 100 images storescu sent to Orthanc."""
    from mammotriage.phantom import write_demo_set

    root = tmp_path_factory.mktemp("demo")
    write_demo_set(root, 25, seed=1931, rows=ROWS, columns=COLUMNS)
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == 100
    _, orthanc, _ = site.load_site(site_dir)
    result = storescu(orthanc.dicom_port, files, calling="MODALITY", called=orthanc.aet)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Failed" not in output and "Error" not in output, output[-2000:]
    out: dict[str, set[str]] = collections.defaultdict(set)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.StudyInstanceUID)].add(str(ds.SOPInstanceUID))
    assert len(out) == 25
    return dict(out)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retrain_sim import tiny_parent

    return tiny_parent(tmp_path_factory.mktemp("model") / "m", config=_few_findings(), seed=2, version="9.1.0")


def _few_findings() -> Any:
    """A tiny network that proposes 2 candidates a view: an untrained one's 20 a view
    would make every SR 80 findings long, and writing those (highdicom) the test's cost."""
    from mammotriage.model.network import NetworkConfig

    return NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=2)


@pytest.fixture(scope="module")
def model2(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second tiny model, loaded in this process (its jobs are apart from the acceptance test's)."""
    from retrain_sim import tiny_parent

    from mammotriage.triage.worker import load_model

    return load_model(tiny_parent(tmp_path_factory.mktemp("m2") / "m", config=_few_findings(), seed=3,
                                  version="9.2.0"), device="cpu", threads=1)


def _admin(site_dir: Path) -> str:
    cluster, _, _ = site.load_site(site_dir)
    return cluster.dsn("mt_admin")


def _rows(dsn: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with connect(dsn) as conn:
        return [dict(r) for r in conn.execute(sql, params).fetchall()]


def _worker(site_dir: Path, model: Path, worker_id: str, home: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"), OMP_NUM_THREADS="1", MAMMOTRIAGE_HOME=str(home))
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "mammotriage", "site-worker", str(site_dir), "--model", str(model),
         "--worker-id", worker_id, "--lease", "3", "--json"],
        stdout=subprocess.PIPE, stderr=(home / "stderr.txt").open("w"), text=True, env=env)


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The complete JSON lines of a worker's stdout (a killed one may end mid-line)."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _sha(model: Path) -> str:
    return str(json.loads((model / "configs" / "metadata.json").read_text())["weights_sha256"])


def test_two_workers_triage_every_exam_once_and_a_killed_workers_job_completes_elsewhere(
        site_dir: Path, studies: dict[str, set[str]], tiny_model: Path, tmp_path: Path) -> None:
    admin, sha = _admin(site_dir), _sha(tiny_model)
    a = _worker(site_dir, tiny_model, "wA", tmp_path / "a")
    b = _worker(site_dir, tiny_model, "wB", tmp_path / "b")
    try:
        def a_mid_job() -> list[dict[str, Any]]:
            assert a.poll() is None, (tmp_path / "a" / "stderr.txt").read_text()[-3000:]
            assert b.poll() is None, (tmp_path / "b" / "stderr.txt").read_text()[-3000:]
            done = _rows(admin, "SELECT count(*) AS n FROM triage_results WHERE worker_id = 'wA'")[0]["n"]
            running = _rows(admin, "SELECT id, exam_key FROM triage_jobs WHERE status = 'running' "
                                   "AND claimed_by = 'wA' AND model_sha256 = %s", sha)
            return running if done >= 1 else []

        killed = None
        for _ in range(20):
            assert wait_until(a_mid_job, timeout=240, interval=0.02), "worker A never started a second job"
            a.send_signal(signal.SIGSTOP)  # frozen, A cannot finish the job between our look and the kill
            running = a_mid_job()
            if running:
                killed = running[0]
                a.send_signal(signal.SIGKILL)
                a.wait(timeout=30)
                break
            a.send_signal(signal.SIGCONT)  # it finished that one just before: try the next
        assert killed is not None

        def finished() -> bool:
            assert b.poll() is None, (tmp_path / "b" / "stderr.txt").read_text()[-3000:]
            counts = _rows(admin, "SELECT status, count(*) AS n FROM triage_jobs WHERE model_sha256 = %s "
                                  "GROUP BY status", sha)
            return {r["status"]: r["n"] for r in counts} == {"done": 25}

        assert wait_until(finished, timeout=240, interval=0.2)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        b_out, _ = b.communicate(timeout=60)
        a_out, _ = a.communicate(timeout=60)
    assert b.returncode == 0, (tmp_path / "b" / "stderr.txt").read_text()[-3000:]

    # every exam triaged exactly once: one stored result per exam and model, all 25
    results = _rows(admin, "SELECT exam_key, worker_id, job_id FROM triage_results WHERE model_sha256 = %s", sha)
    assert sorted(r["exam_key"] for r in results) == sorted(studies)
    assert {r["worker_id"] for r in results} == {"wA", "wB"}   # both workers did some
    # the killed worker's job completed elsewhere, after its lease ran out
    redone = _rows(admin, "SELECT j.attempts, r.worker_id FROM triage_jobs j JOIN triage_results r "
                          "ON r.job_id = j.id WHERE j.id = %s", killed["id"])
    assert redone and redone[0]["worker_id"] == "wB" and redone[0]["attempts"] >= 2
    # the watcher enqueued each stable study once (both workers watch; enqueueing is idempotent)
    jobs = _rows(admin, "SELECT exam_key FROM triage_jobs WHERE model_sha256 = %s", sha)
    assert sorted(j["exam_key"] for j in jobs) == sorted(studies)
    logs = (tmp_path / "a" / "stderr.txt").read_text() + (tmp_path / "b" / "stderr.txt").read_text()
    queued = collections.Counter(line.split()[1] for line in logs.splitlines() if line.startswith("queued "))
    assert set(queued) <= set(studies) and all(n == 1 for n in queued.values())
    # one JSON line per job on stdout; B reports its jobs as done
    b_lines = _json_lines(b_out)
    assert b_lines and {o["status"] for o in b_lines} <= {"done", "discarded"}
    assert any(o["status"] == "done" for o in _json_lines(a_out))  # A, up to its kill
    assert all(o["timing"]["fetch"] >= 0 and o["views"] == 4 for o in b_lines if o["status"] == "done")
    # the SR of each exam is in Orthanc exactly once (QIDO-RS), the killed job's included
    _, orthanc, _ = site.load_site(site_dir)
    with DicomWebArchive.for_server(orthanc, tmp_path / "qido-cache", 64 * 1024 * 1024) as archive:
        for study in studies:
            instances = archive.find_instances(study)
            srs = [i for i in instances if i.sop_class_uid == SR_CLASS]
            assert len(srs) == 1, (study, srs)
            assert {i.sop_uid for i in instances} >= studies[study]


def test_bad_input_fails_its_job_with_the_reason_and_the_loop_goes_on(
        site_dir: Path, studies: dict[str, set[str]], model2: Any, tmp_path: Path) -> None:
    import threading

    from hostile import _j2k_siz_bomb
    from mammotriage.net.site_io import DicomWebExamSource, StowSink
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import SiteWorker
    from mtsupport import make_mg_dataset

    cluster, orthanc, _ = site.load_site(site_dir)
    model = model2
    bomb = pydicom.dcmread(_j2k_siz_bomb(tmp_path / "bomb.dcm"))
    chest = make_mg_dataset(patient_id="CHEST1")
    chest.Modality, chest.BodyPartExamined = "CR", "CHEST"
    chest.SOPClassUID = chest.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image
    chest.save_as(tmp_path / "chest.dcm", enforce_file_format=True)
    chest = pydicom.dcmread(tmp_path / "chest.dcm")  # as a modality sends it: a Part 10 file
    good = sorted(studies)[0]
    said: list[str] = []
    with DicomWebArchive.for_server(orthanc, tmp_path / "cache", 64 * 1024 * 1024) as archive:
        assert archive.store([bomb, chest]).failed == []
        srs_before = sum(i.sop_class_uid == SR_CLASS for i in archive.find_instances(good))
        with SiteQueue(cluster.dsn("mt_worker")) as queue:
            for key in (str(bomb.StudyInstanceUID), str(chest.StudyInstanceUID), "1.2.3.4.5.404", good):
                assert queue.enqueue(key, model.weights_sha256)
            other = hashlib.sha256(b"a model this worker does not hold").hexdigest()
            queue.enqueue(good, other)
            with SiteWorker(cluster.dsn("mt_worker"), {model.weights_sha256: model}, DicomWebExamSource(archive),
                            StowSink(archive), worker_id="w-bad", lease_s=30, work_dir=tmp_path / "work",
                            say=said.append) as worker:
                outcomes = worker.run(threading.Event(), once=True)
            by_exam = {o.exam_key: o for o in outcomes}
            assert [o.exam_key for o in outcomes] == [str(bomb.StudyInstanceUID), str(chest.StudyInstanceUID),
                                                      "1.2.3.4.5.404", good]
            bomb_out = by_exam[str(bomb.StudyInstanceUID)]
            assert bomb_out.status == "failed" and "no view could be analysed" in bomb_out.reason
            assert "46000" in bomb_out.reason and str(bomb.SOPInstanceUID) in bomb_out.reason
            chest_out = by_exam[str(chest.StudyInstanceUID)]
            assert chest_out.status == "failed" and "not a mammogram" in chest_out.reason
            assert by_exam["1.2.3.4.5.404"].status == "failed"
            assert "holds no image" in by_exam["1.2.3.4.5.404"].reason
            assert by_exam[good].status == "done" and by_exam[good].views == 4
            for key, out in by_exam.items():
                job = queue.job(key, model.weights_sha256)
                assert job is not None and job["status"] == ("done" if key == good else "failed")
                assert out.status == "done" or job["reason"] == out.reason
            # the job of a model the worker does not hold is said and left for another worker
            assert any("does not hold" in text and other[:12] in text for text in said)
            held = queue.job(good, other)
            assert held is not None and held["status"] == "pending"
            stored = queue.result(good, model.weights_sha256)
            assert stored is not None and stored["worker_id"] == "w-bad"
            assert stored["result"]["model_sha256"] == model.weights_sha256
            assert len(stored["result"]["images"]) == 4
            # each view's suspicion map travels with the result: a workstation takes it as it is
            from mammotriage.viewer.site_results import result_images

            views = result_images(stored["result"], studies[good])
            assert len(views) == 4
            assert all(v["suspicion"].ndim == 2 and v["suspicion"].size > 1 for v in views)
            assert all(0.0 <= float(v["suspicion"].min()) <= float(v["suspicion"].max()) <= 1.0 for v in views)
        assert sum(i.sop_class_uid == SR_CLASS for i in archive.find_instances(good)) == srs_before + 1


def test_an_archive_that_is_away_gives_the_job_back_with_the_reason(site_dir: Path, tmp_path: Path) -> None:
    import threading

    from retrain_sim import tiny_parent

    from mammotriage.net.dicomweb import InstanceCache
    from mammotriage.net.site_io import DicomWebExamSource, StowSink
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import SiteWorker
    from mammotriage.triage.worker import load_model

    cluster, _, _ = site.load_site(site_dir)
    model = load_model(tiny_parent(tmp_path / "m3", config=_few_findings(), seed=4, version="9.3.0"),
                       device="cpu", threads=1)
    away = DicomWebArchive(f"http://127.0.0.1:{free_port()}", None, InstanceCache(tmp_path / "c", 1 << 20),
                           timeout_s=2)
    with SiteQueue(cluster.dsn("mt_worker"), max_attempts=2) as queue:
        assert queue.enqueue("1.2.3.4.6", model.weights_sha256)
        with SiteWorker(cluster.dsn("mt_worker"), {model.weights_sha256: model}, DicomWebExamSource(away),
                        StowSink(away), worker_id="w-away", lease_s=30, work_dir=tmp_path / "w",
                        max_attempts=2) as worker:
            first = worker.run_once()
            assert first is not None and first.status == "released" and "the archive is away" in first.reason
            job = queue.job("1.2.3.4.6", model.weights_sha256)
            assert job is not None and job["status"] == "pending" and "cannot reach the archive" in job["reason"]
            # given back at once, claimed again; after max_attempts claims it fails, with the reason
            second = worker.run_once()
            assert second is not None and second.status == "released"
            job = queue.job("1.2.3.4.6", model.weights_sha256)
            assert job is not None and job["status"] == "failed" and job["attempts"] == 2
            assert worker.run(threading.Event(), once=True) == []  # nothing left; the loop ends


def test_a_late_result_is_discarded_and_nothing_is_sent(site_dir: Path, studies: dict[str, set[str]],
                                                       model2: Any, tmp_path: Path) -> None:
    from mammotriage.net.site_io import DicomWebExamSource, StowSink
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import SiteWorker

    cluster, orthanc, _ = site.load_site(site_dir)
    study = sorted(studies)[1]
    admin = _admin(site_dir)
    with DicomWebArchive.for_server(orthanc, tmp_path / "cache", 64 * 1024 * 1024) as archive, \
            SiteQueue(cluster.dsn("mt_worker")) as other, \
            SiteWorker(cluster.dsn("mt_worker"), {model2.weights_sha256: model2}, DicomWebExamSource(archive),
                       StowSink(archive), worker_id="w-slow", lease_s=0.5, work_dir=tmp_path / "w") as slow:
        srs_before = sum(i.sop_class_uid == SR_CLASS for i in archive.find_instances(study))
        assert other.enqueue(study, model2.weights_sha256)
        job = slow.queue.claim("w-slow", 0.5, model2.weights_sha256)
        assert job is not None and job.exam_key == study
        assert wait_until(lambda: _rows(admin, "SELECT 1 FROM triage_jobs WHERE id = %s AND lease_until < "
                                               "clock_timestamp()", job.id), timeout=30)
        fast = other.claim("w-fast", 60, model2.weights_sha256)   # the lease ran out: another worker's now
        assert fast is not None and fast.id == job.id
        outcome = slow.process(job)
        assert outcome.status == "discarded" and "late result of w-slow" in outcome.reason
        assert other.result(study, model2.weights_sha256) is None   # nothing stored for the slow one
        assert sum(i.sop_class_uid == SR_CLASS for i in archive.find_instances(study)) == srs_before  # nor sent
        state = other.job(study, model2.weights_sha256)
        assert state is not None and state["status"] == "running" and state["claimed_by"] == "w-fast"


def test_stable_result_uids_are_the_same_for_the_same_exam_and_model(tmp_path: Path) -> None:
    from mammotriage.dicom.content import AlgorithmInfo
    from mammotriage.phantom import write_demo_set
    from mammotriage.triage.dicom_results import write_result_files

    write_demo_set(tmp_path / "d", 1, seed=7, rows=ROWS, columns=COLUMNS)
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
               for f in sorted((tmp_path / "d").rglob("*.dcm"))}
    items = [{"sop_uid": sop, "findings": [{"box": [10, 10, 30, 30], "kind": "mass", "score": 0.5}],
              "suspicion": None} for sop in sources]

    def uids(out: str, sha: str, stable: bool, revision: int = 0) -> set[str]:
        paths = write_result_files("E1", items, sources, AlgorithmInfo("m", "1", sha), tmp_path / out,
                                   stable_uids=stable, revision=revision)
        return {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}

    first = uids("a", "ab" * 32, True)
    assert first == uids("b", "ab" * 32, True)        # done again elsewhere: the same SR
    assert first.isdisjoint(uids("c", "cd" * 32, True))  # another model: another SR
    assert first.isdisjoint(uids("d", "ab" * 32, False))  # the standalone worker: new UIDs
    assert first.isdisjoint(uids("e", "ab" * 32, True, revision=1))  # the study got new images: a new SR
    assert uids("f", "ab" * 32, True, revision=1) == uids("g", "ab" * 32, True, revision=1)


def test_a_study_that_receives_a_late_view_after_triage_is_triaged_again_once(
        site_dir: Path, studies: dict[str, set[str]], tmp_path: Path) -> None:
    """Before, a study Orthanc declared stable again was not queued again: the view that
    came after triage never reached the model. Now the new image set queues the done job
    again (revision 1), its result is a new SR beside the first, and the results stored
    into the study (which make it stable again too) queue nothing."""
    from pydicom.uid import generate_uid
    from retrain_sim import tiny_parent

    from mammotriage.net.dicomweb import StableStudyWatcher
    from mammotriage.net.site_io import DicomWebExamSource, StowSink
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import SiteWorker, enqueue_stable
    from mammotriage.triage.worker import load_model

    cluster, orthanc, _ = site.load_site(site_dir)
    model = load_model(tiny_parent(tmp_path / "m7", config=_few_findings(), seed=7, version="9.7.0"),
                       device="cpu", threads=1)
    sha, study, dsn = model.weights_sha256, sorted(studies)[5], cluster.dsn("mt_worker")
    with DicomWebArchive.for_server(orthanc, tmp_path / "cache", 64 * 1024 * 1024) as archive, \
            SiteQueue(dsn) as queue, \
            SiteWorker(dsn, {sha: model}, DicomWebExamSource(archive), StowSink(archive), worker_id="w-late",
                       lease_s=30, work_dir=tmp_path / "w") as worker:
        source = DicomWebExamSource(archive)
        watcher = StableStudyWatcher(archive, since=None)  # from now on

        def stable_again() -> int | None:
            """Jobs queued once the watcher reports the study stable again (None: not yet)."""
            seen = watcher.poll()
            return enqueue_stable(queue, seen, sha, images_of=source.image_set) if study in seen else None

        try:
            assert enqueue_stable(queue, [study], sha, images_of=source.image_set) == 1
            first = worker.run_once()
            assert first is not None and first.status == "done" and first.views == 4 and first.revision == 0
            queued: list[int | None] = []
            assert wait_until(lambda: queued.append(stable_again()) or queued[-1] is not None, timeout=60)
            assert queued[-1] == 0  # stable again for its own results: nothing to do

            paths, problems = source.exam_files(study)
            assert problems == [] and len(paths) == 4
            late = pydicom.dcmread(paths[0])  # a retake of one view, sent after triage
            late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            assert archive.store([late]).failed == []
            queued.clear()
            assert wait_until(lambda: queued.append(stable_again()) or queued[-1] is not None, timeout=60)
            assert queued[-1] == 1
            job = queue.job(study, sha)
            assert job is not None and job["status"] == "pending" and job["revision"] == 1
            assert "new images after it was done" in job["reason"]
            second = worker.run_once()
            assert second is not None and second.status == "done" and second.views == 5 and second.revision == 1
            stored = queue.result(study, sha)
            assert stored is not None and stored["revision"] == 1 and len(stored["result"]["images"]) == 5
            srs = [i for i in archive.find_instances(study) if i.sop_class_uid == SR_CLASS]
            assert len({i.sop_uid for i in srs}) == len(srs) and len(srs) >= 2  # a new SR beside the first
            queued.clear()
            assert wait_until(lambda: queued.append(stable_again()) or queued[-1] is not None, timeout=60)
            assert queued[-1] == 0 and queue.job(study, sha)["status"] == "done"
            assert _rows(_admin(site_dir), "SELECT revision FROM triage_results WHERE exam_key = %s AND "
                                           "model_sha256 = %s ORDER BY revision", study, sha) == [
                {"revision": 0}, {"revision": 1}]
        finally:
            watcher.close()


def test_a_study_whose_image_set_cannot_be_listed_is_queued_without_it_and_the_feed_goes_on(
        site_dir: Path, tmp_path: Path) -> None:
    """Review finding: the image-set check raised for a study the archive cannot list (a
    Study Instance UID over 64 characters in Orthanc's feed), and the watcher retried that
    same study forever: no later study was ever queued. Now such a study is queued
    without a set (its triage says why) and the next one is queued too; an archive that
    is away still stops the pass (ConnectionError: the study is offered again)."""
    from mammotriage.net.dicomweb import InstanceCache
    from mammotriage.net.site_io import DicomWebExamSource
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import enqueue_stable

    cluster, orthanc, _ = site.load_site(site_dir)
    sha = hashlib.sha256(b"a model of the unlistable-study test").hexdigest()
    bad, good = "1." + "2" * 70, "1.2.826.0.1.3680043.10.993.1"
    with DicomWebArchive.for_server(orthanc, tmp_path / "cache", 1 << 20) as archive, \
            SiteQueue(cluster.dsn("mt_worker")) as queue:
        source = DicomWebExamSource(archive)
        assert source.image_set(bad) is None
        assert enqueue_stable(queue, [bad, good], sha, images_of=source.image_set) == 2
        job = queue.job(bad, sha)
        assert job is not None and job["images"] is None and queue.job(good, sha)["images"] is not None
        while (taken := queue.claim("w-none", 30, sha)) is not None:  # not left pending for the next test
            queue.fail(taken, "the test's own job")
    away = DicomWebExamSource(DicomWebArchive(f"http://127.0.0.1:{free_port()}", None,
                                              InstanceCache(tmp_path / "c2", 1 << 20), timeout_s=2))
    with pytest.raises(ConnectionError):
        away.image_set(good)


def test_the_command_names_a_folder_that_is_not_a_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mammotriage.cli import main

    assert main(["site-worker", str(tmp_path), "--once"]) == 2
    err = capsys.readouterr().err
    assert "not a site server folder" in err and str(tmp_path) in err


def test_workers_run_the_sites_active_model_and_follow_its_promotions(
        site_dir: Path, studies: dict[str, set[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Last in the file: a promotion moves every pending job to the new model.

    Before, a worker ran the package it was started with (or its own machine's registry)
    until restarted, and a worker on another machine could not start at all."""
    from retrain_sim import tiny_parent

    from mammotriage.cli import main
    from mammotriage.net.site_io import DicomWebExamSource, StowSink
    from mammotriage.net.site_models import ModelFollower
    from mammotriage.net.site_profile import write_profile
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import SiteWorker
    from mammotriage.triage.worker import load_model

    pkg_a = tiny_parent(tmp_path / "a", config=_few_findings(), seed=5, version="9.5.0")
    pkg_b = tiny_parent(tmp_path / "b", config=_few_findings(), seed=6, version="9.6.0")
    a, b = _sha(pkg_a), _sha(pkg_b)
    admin = _admin(site_dir)
    cluster, orthanc, _ = site.load_site(site_dir)
    dsn = cluster.dsn("mt_worker")
    exams = sorted(studies)[2:5]

    # the first site model, by an override that is logged (no gate report for it)
    capsys.readouterr()
    assert main(["site", "models", "promote", str(site_dir), str(pkg_a), "--who", "lead",
                 "--force-reason", "the first site model", "--no-retriage", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["promoted"] == "9.5.0" and out["weights_sha256"] == a and out["published"] is True

    said: list[str] = []

    def load(path: Path, version: Any, points: dict[str, Any]) -> Any:
        model = load_model(path, device="cpu", threads=1, expected_sha256=version.weights_sha256)
        if points:
            model.metadata = {**model.metadata, "operating_points": points}
        return model

    follower = ModelFollower(dsn, tmp_path / "followed", load, every_s=0, say=said.append)
    with DicomWebArchive.for_server(orthanc, tmp_path / "cache", 64 * 1024 * 1024) as archive, \
            SiteQueue(dsn) as queue:
        first = follower.first()
        assert first.weights_sha256 == a and (tmp_path / "followed" / a / "9.5.0").is_dir()
        for exam in exams:
            queue.enqueue(exam, a)
        with SiteWorker(dsn, {a: first}, DicomWebExamSource(archive), StowSink(archive), worker_id="w-follow",
                        lease_s=30, work_dir=tmp_path / "w", follow=follower.poll, say=said.append) as worker:
            done_a = worker.run_once()
            assert done_a is not None and done_a.status == "done" and done_a.model_sha256 == a

            # a gate report for another model, or one that failed, is refused and nothing changes
            report = {"passed": True, "reasons": [], "operating_points": {"suspicious_at": 0.77},
                      "candidate": {"version": "9.6.0", "weights_sha256": b},
                      "parent": {"version": "9.5.0", "weights_sha256": a}}
            wrong = tmp_path / "wrong.json"
            wrong.write_text(json.dumps({**report, "candidate": {"version": "9.5.0", "weights_sha256": a}}))
            assert main(["site", "models", "promote", str(site_dir), str(pkg_b), "--who", "lead",
                         "--gate-report", str(wrong)]) == 2
            assert "not for v9.6.0" in capsys.readouterr().err
            failed = tmp_path / "failed.json"
            failed.write_text(json.dumps({**report, "passed": False, "reasons": ["FROC lower by 0.2"]}))
            assert main(["site", "models", "promote", str(site_dir), str(pkg_b), "--who", "lead",
                         "--gate-report", str(failed)]) == 2
            assert "FROC lower by 0.2" in capsys.readouterr().err
            assert _rows(admin, "SELECT count(*) AS n FROM site_model_packages WHERE weights_sha256 = %s",
                         b)[0]["n"] == 0

            gate = tmp_path / "gate.json"
            gate.write_text(json.dumps(report))
            assert main(["site", "models", "promote", str(site_dir), str(pkg_b), "--who", "lead",
                         "--gate-report", str(gate), "--no-retriage"]) == 0
            assert "pending jobs moved to it" in capsys.readouterr().out
            states = {r["exam_key"]: r["status"] for r in _rows(
                admin, "SELECT exam_key, status FROM triage_jobs WHERE model_sha256 = %s", a)}
            assert states[done_a.exam_key] == "done" and set(states) >= set(exams)
            assert {k for k, v in states.items() if v != "done"} == set(states) - {done_a.exam_key}
            assert {v for k, v in states.items() if k != done_a.exam_key} == {"superseded"}

            # between two jobs the worker takes the new model from the server, with the gate's points
            done_b = worker.run_once()
            assert done_b is not None and done_b.status == "done"
            assert set(worker.models) == {b}
            assert worker.models[b].metadata["operating_points"] == {"suspicious_at": 0.77}
            stored = queue.result(done_b.exam_key, b)
            assert stored is not None and stored["result"]["model_sha256"] == b
            assert any("site model v9.6.0" in text and "is active" in text for text in said)

    # a worker on another machine: the worker profile, no --model, no site folder
    profile = write_profile(site_dir, "worker", tmp_path / "worker-profile.json")
    home = tmp_path / "remote"
    home.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"), OMP_NUM_THREADS="1", MAMMOTRIAGE_HOME=str(home))
    run = subprocess.run([sys.executable, "-m", "mammotriage", "site-worker", "--profile", str(profile.path),
                          "--worker-id", "w-remote", "--once", "--no-watch", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "following the site's active model" in run.stderr and "9.6.0" in run.stderr
    lines = _json_lines(run.stdout)
    assert lines and {o["status"] for o in lines} == {"done"}
    left = _rows(admin, "SELECT status, count(*) AS n FROM triage_jobs WHERE model_sha256 = %s GROUP BY status", b)
    assert {r["status"]: r["n"] for r in left} == {"done": len(lines) + 1}
    assert {o["exam_key"] for o in lines} | {done_b.exam_key} == set(states) - {done_a.exam_key}
    # the package came from the site store into the remote worker's own folder
    assert [p.name for p in (home / "site-worker" / "w-remote" / "models" / b).iterdir()] == ["9.6.0"]


def test_the_command_needs_a_site_folder_or_a_profile(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mammotriage.cli import main

    assert main(["site-worker", "--once"]) == 2
    assert "give the site server folder DIR or --profile PROFILE" in capsys.readouterr().err
    workstation = tmp_path / "p.json"
    workstation.write_text("{}")
    workstation.chmod(0o600)
    assert main(["site-worker", "--profile", str(workstation), "--once"]) == 2
    assert str(workstation) in capsys.readouterr().err
