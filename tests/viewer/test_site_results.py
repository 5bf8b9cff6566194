"""A site workstation takes the site AI workers' results (viewer.site_results) on a real PostgreSQL.

The site side is the shared queue as a worker uses it (``SiteQueue`` under the worker's
role: enqueue with the study's image set, claim, complete); the workstation side is a
real archive file with the same study imported, its triage job waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mammotriage.digest import image_set_digest
from mammotriage.phantom import generate_exam
from mammotriage.store import Archive
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.triage import TriageQueue
from mammotriage.triage.maps import pack_map
from mammotriage.triage.site_queue import SiteQueue
from mammotriage.viewer.site_results import SiteResultsFeed
from store.pg.pgsupport import running_cluster

VERSION = "7.0.0"


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _workstation(tmp_path: Path, seed: int) -> tuple[Path, str, list[Any]]:
    """An archive holding one phantom exam, its triage job waiting: (file, exam key, images)."""
    generate_exam(seed, exam_number=1, rows=128, columns=96).save(tmp_path / "exam")
    archive_file = tmp_path / "archive.sqlite"
    with Archive(archive_file) as archive:
        archive.import_paths([tmp_path / "exam"])
        (exam,) = archive.exams()
        images = list(exam.images)
    with TriageQueue(archive_file) as queue:
        assert queue.sync(VERSION) == 1
    return archive_file, exam.exam_key, images


def _site_result(images: list[Any], sha: str, *, maps: bool = True) -> dict[str, Any]:
    views = []
    for n, image in enumerate(images):
        suspicion = np.zeros((16, 12), np.float32)
        suspicion[n:n + 4, 2:6] = 0.25 * (n + 1)
        views.append({"sop_uid": image.sop_uid, "laterality": image.laterality.value, "view": image.view.value,
                      "score": 0.2 * (n + 1), "findings": [{"box": [4, 4, 20, 20], "kind": "mass",
                                                           "score": 0.2 * (n + 1)}],
                      "map_factor": 8.0, "stats": None,
                      "suspicion_map": pack_map(suspicion) if maps else None})
    return {"model_sha256": sha, "model_version": VERSION, "revision": 0, "score": 0.8, "images": views}


def _store_site_result(site: PgCluster, exam_key: str, sha: str, result: dict[str, Any],
                       images: str | None) -> None:
    with SiteQueue(site.dsn("mt_worker")) as queue:
        assert queue.enqueue(exam_key, sha, images=images)
        job = queue.claim("w-gpu", 60, sha)
        assert job is not None and job.exam_key == exam_key
        assert queue.complete(job, result).stored


def test_a_workstation_takes_the_site_workers_result_with_its_maps(site: PgCluster, tmp_path: Path) -> None:
    """Before, a site workstation analysed every exam again on its own CPU, for the
    figures the site's AI worker had already stored."""
    archive_file, key, images = _workstation(tmp_path, 11)
    sha = "1a" * 32
    result = _site_result(images, sha)
    said: list[str] = []
    feed = SiteResultsFeed(site.dsn("mt_workstation"), archive_file, tmp_path / "data", say=said.append)
    try:
        assert feed.pull_once() == 0  # no model yet: nothing is asked
        feed.set_model(VERSION, sha)
        assert feed.pull_once() == 0 and feed.away is None  # the site has no result yet: the job waits
        with TriageQueue(archive_file) as queue:
            assert queue.job(key, VERSION).status == "pending"
        _store_site_result(site, key, sha, result, image_set_digest(i.sop_uid for i in images))
        assert feed.pull_once() == 1
        assert feed.take() == [(key, "w-gpu")] and feed.take() == []
        assert feed.pull_once() == 0  # taken once
    finally:
        feed.close()
    assert said == []
    with TriageQueue(archive_file) as queue:
        assert queue.job(key, VERSION).status == "done"  # not analysed here
        (exam,) = queue.exam_results()[key]
        assert exam.weights_sha256 == sha and exam.model_version == VERSION
        for n, image in enumerate(images):
            (stored,) = queue.image_results(image.sop_uid)
            assert stored.score == pytest.approx(0.2 * (n + 1))
            assert stored.findings == result["images"][n]["findings"] and stored.map_factor == 8.0
            assert stored.map_path is not None
            shown = np.load(tmp_path / "data" / stored.map_path).astype(np.float32)
            expected = np.zeros((16, 12), np.float32)
            expected[n:n + 4, 2:6] = 0.25 * (n + 1)
            assert np.abs(shown - expected).max() <= 0.003


def test_a_result_for_another_image_set_or_one_that_lies_is_not_taken(site: PgCluster, tmp_path: Path) -> None:
    archive_file, key, images = _workstation(tmp_path, 12)
    sha = "2b" * 32
    # the site's job is for a set with a view this workstation does not hold yet
    _store_site_result(site, key, sha, _site_result(images, sha), image_set_digest(
        [i.sop_uid for i in images] + ["1.2.3.999"]))
    said: list[str] = []
    feed = SiteResultsFeed(site.dsn("mt_workstation"), archive_file, tmp_path / "data", say=said.append)
    try:
        feed.set_model(VERSION, sha)
        assert feed.pull_once() == 0 and said == []
        # another model's exam whose result names an image not held here, or whose map lies
        for n, bad in enumerate(("image", "map", "score", "huge", "finding")):
            other = f"{n + 3}c" * 32
            result = _site_result(images, other)
            if bad == "image":
                result["images"][0]["sop_uid"] = "1.2.3.404"
            elif bad == "map":
                result["images"][1]["suspicion_map"]["shape"] = [16, 13]
            elif bad == "score":
                result["images"][2]["score"] = 7.5
            elif bad == "huge":
                result["images"][2]["score"] = 10 ** 400
            else:
                result["images"][3]["findings"] = [{"box": [1, 2, 3], "kind": "mass", "score": 0.5}]
            result["images"][0]["stats"] = {"mean": 1.0}  # statistics that lie are dropped, not fatal
            _store_site_result(site, key, other, result, None)
            feed.set_model(VERSION, other)
            assert feed.pull_once() == 0
            assert feed.pull_once() == 0  # said once
        assert len(said) == 5, said
        assert "names image 1.2.3.404, which this workstation does not hold" in said[0]
        assert "suspicion map" in said[1] and "does not hold 16x13" in said[1]
        assert "7.5" in said[2] and "not a number in [0, 1]" in said[3] and "not four numbers" in said[4]
        assert all("it is analysed here" in s for s in said)
        # one bad result costs only its exam: a good one of the same turn is taken
        good = "9a" * 32
        _store_site_result(site, key, good, dict(_site_result(images, good)), None)
        feed.set_model(VERSION, good)
        assert feed.pull_once() == 1
    finally:
        feed.close()
    with TriageQueue(archive_file) as queue:
        assert queue.job(key, VERSION).status == "done"
        assert [r.weights_sha256 for r in queue.exam_results()[key]] == [good]


def test_a_result_without_a_recorded_image_set_is_taken_only_on_every_image(
        site: PgCluster, tmp_path: Path) -> None:
    archive_file, key, images = _workstation(tmp_path, 13)
    # a view short (not taken), then on every image (taken); neither records its image set
    for sha, held, taken in (("6d" * 32, images[:3], 0), ("7e" * 32, images, 1)):
        _store_site_result(site, key, sha, _site_result(held, sha, maps=False), None)
        feed = SiteResultsFeed(site.dsn("mt_workstation"), archive_file, tmp_path / "data")
        try:
            feed.set_model(VERSION, sha)
            assert feed.pull_once() == taken
        finally:
            feed.close()
    with TriageQueue(archive_file) as queue:
        assert all(r.map_path is None for i in images for r in queue.image_results(i.sop_uid))


def test_a_server_away_takes_nothing_and_says_why(tmp_path: Path) -> None:
    archive_file, key, _images = _workstation(tmp_path, 14)
    said: list[str] = []
    feed = SiteResultsFeed("host=127.0.0.1 port=9 dbname=x user=y password=z connect_timeout=2",
                           archive_file, tmp_path / "data", say=said.append)
    try:
        feed.set_model(VERSION, "8f" * 32)
        assert feed.pull_once() == 0 and feed.away is not None
        assert feed.pull_once() == 0
    finally:
        feed.close()
    with TriageQueue(archive_file) as queue:
        assert queue.job(key, VERSION).status == "pending"
    # before, the window was never told: its exams waited for the local worker's delay unexplained
    assert len(said) == 1 and "the site's AI results cannot be read (" in said[0], said
    assert "waiting exams are analysed here after their wait" in said[0] and "\n" not in said[0]


def test_the_window_is_told_when_the_site_results_can_be_read_again(tmp_path: Path) -> None:
    archive_file, _key, _images = _workstation(tmp_path, 15)
    said: list[str] = []
    with running_cluster() as site:
        feed = SiteResultsFeed(site.dsn("mt_workstation"), archive_file, tmp_path / "data", say=said.append)
        try:
            feed.set_model(VERSION, "8f" * 32)
            assert feed.pull_once() == 0 and feed.away is None and said == []
            site.stop(mode="fast")
            assert feed.pull_once() == 0 and feed.away is not None
            site.start()
            assert feed.pull_once() == 0 and feed.away is None
        finally:
            feed.close()
    assert len(said) == 2 and "cannot be read" in said[0], said
    assert said[1] == "the site's AI results are read again"


def test_closing_during_a_long_turn_leaves_its_connections_to_the_turn(tmp_path: Path) -> None:
    """Before, ``close`` closed the archive's connections after a 2 s join even while a
    turn still used them (a large adopt, a slow server): the turn then failed on a closed
    connection. Now the turn closes them itself when it stops."""
    import sqlite3
    import threading

    archive_file, key, _images = _workstation(tmp_path, 15)
    feed = SiteResultsFeed("host=127.0.0.1 port=9 dbname=x user=y password=z connect_timeout=2",
                           archive_file, tmp_path / "data", every_s=60)
    asked, release = threading.Event(), threading.Event()

    def slow_current(sha: str, keys: list[str]) -> list[dict[str, Any]]:
        asked.set()
        release.wait(30)
        return []

    feed._site.current = slow_current  # type: ignore[method-assign]
    feed.set_model(VERSION, "8f" * 32)
    feed.start()
    assert asked.wait(30)
    queue = feed._queue
    assert queue is not None
    feed.close(timeout=0.2)
    assert feed._thread.is_alive()
    assert queue.job(key, VERSION).status == "pending"   # still open for the turn
    release.set()
    feed._thread.join(30)
    assert not feed._thread.is_alive() and feed._queue is None
    with pytest.raises(sqlite3.ProgrammingError):   # closed by the turn as it stopped
        queue.job(key, VERSION)
    feed.close()   # again: nothing left to close


def test_a_connection_a_turn_opens_after_close_is_closed_by_the_turn(site: PgCluster, tmp_path: Path) -> None:
    """Before, ``close`` closed the server connection while a turn was still under way; a
    connection that turn opened afterwards (a connect in progress, a reconnect) was never
    closed. Now the thread closes its connection when it stops."""
    import threading

    archive_file, _key, _images = _workstation(tmp_path, 16)
    feed = SiteResultsFeed(site.dsn("mt_workstation"), archive_file, tmp_path / "data", every_s=60)
    asked, release = threading.Event(), threading.Event()

    def late_current(sha: str, keys: list[str]) -> list[dict[str, Any]]:
        asked.set()
        release.wait(30)
        feed._site.conn()  # the turn (re)connects after close has run
        return []

    feed._site.current = late_current  # type: ignore[method-assign]
    feed.set_model(VERSION, "8f" * 32)
    feed.start()
    assert asked.wait(30)
    feed.close(timeout=0.2)
    assert feed._thread.is_alive()
    release.set()
    feed._thread.join(30)
    assert not feed._thread.is_alive()
    assert not feed._site.connected
