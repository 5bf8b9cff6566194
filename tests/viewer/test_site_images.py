"""A site workstation's exams come from the site archive over DICOMweb (a real Orthanc on loopback).

dcmtk's storescu sends small demo exams to Orthanc; the feed takes the newest into the
workstation's own index through WADO-RS, then what becomes stable; a view the
byte-bounded cache evicted is fetched again when the loader wants it; the archive
stopping is said once, and coming back too. The tests run in file order (the last one
stops and restarts the module's archive).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "net"))

from netsupport import storescu  # noqa: E402
from orthancsupport import running_server  # noqa: E402

from mammotriage.dicom import read_image  # noqa: E402
from mammotriage.dicom.image import pixel_sha256  # noqa: E402
from mammotriage.net.dicomweb import DicomWebArchive, DicomWebError, StableStudyWatcher  # noqa: E402
from mammotriage.net.orthanc import OrthancServer  # noqa: E402
from mammotriage.phantom import write_demo_set  # noqa: E402
from mammotriage.store.archive import Archive  # noqa: E402
from mammotriage.viewer.decode_pool import ProgressiveLoader  # noqa: E402
from mammotriage.viewer.loader import LoadedView, LoadError  # noqa: E402
from mammotriage.viewer.site_images import (  # noqa: E402
    BACKFILL_FILE,
    RETRY_FILE,
    SiteImageFetcher,
    SiteStudyFeed,
)

ROWS, COLUMNS = 128, 96


def _send(server: OrthancServer, files: list[Path]) -> None:
    result = storescu(server.dicom_port, files, calling="MODALITY", called=server.aet)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Failed" not in output and "Error" not in output, output[-2000:]


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with running_server(tmp_path_factory.mktemp("site-archive"), stable_age_s=1) as site:
        yield site


@pytest.fixture(scope="module")
def exams(server: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Three 4-view exams in the archive, oldest study date first."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_set(root, 3, seed=2311, rows=ROWS, columns=COLUMNS)
    out = [sorted((root / f"exam{n:03d}").glob("*.dcm")) for n in (1, 2, 3)]
    _send(server, [f for exam in out for f in exam])
    out.sort(key=lambda exam: str(pydicom.dcmread(exam[0], stop_before_pixels=True).StudyDate))
    assert len({str(pydicom.dcmread(exam[0], stop_before_pixels=True).StudyDate) for exam in out}) == 3
    # stable before the tests start (a study that becomes stable after a feed's start is new to it)
    with _client(server, root / "cache") as client:
        watcher = StableStudyWatcher(client, since=0)
        stable: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(stable) < 3:
            stable |= set(watcher.poll())
            time.sleep(0.2)
        watcher.close()
    assert stable == {_study(exam[0]) for exam in out}
    return out


def _client(server: OrthancServer, folder: Path, max_bytes: int = 64 * 1024 * 1024) -> DicomWebArchive:
    return DicomWebArchive.for_server(server, folder, max_bytes)


def _wait_arrivals(feed: SiteStudyFeed, want: str, timeout_s: float = 60) -> list:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        seen += feed.run_once()
        if any(a.study_uid == want for a in seen):
            return seen
        time.sleep(0.3)
    raise AssertionError(f"study {want} never came: {seen}")


def test_the_feed_backfills_the_newest_studies_then_takes_what_becomes_stable(
        server: OrthancServer, exams: list[list[Path]], tmp_path: Path) -> None:
    index_file = tmp_path / "archive.sqlite"
    arrived: list[str] = []
    said: list[str] = []
    with _client(server, tmp_path / "cache") as client:
        feed = SiteStudyFeed(client, index_file, tmp_path, backfill=2, arrived=arrived.append, say=said.append)
        first = feed.run_once()
        newest = [_study(exams[2][0]), _study(exams[1][0])]
        assert [a.study_uid for a in first][:2] == newest[::-1]  # the 2 newest, the older first (newest stay cached)
        assert sorted(arrived) == sorted(newest) and not said
        assert json.loads((tmp_path / BACKFILL_FILE).read_text())["done"] is True
        with Archive(index_file) as index:
            held = {img.study_uid: img for exam in index.exams() for img in exam.images}
            assert set(held) == set(newest)  # the oldest study was not taken
            for exam in exams[1:]:
                for sent in exam:
                    ds = pydicom.dcmread(sent, stop_before_pixels=True)
                    record = index.image(str(ds.SOPInstanceUID))
                    assert record is not None and Path(record.path).parent == client.cache.folder
                    assert np.array_equal(read_image(record.path).pixels, read_image(sent).pixels)

        # an exam the archive receives now comes in once it is stable; nothing else is fetched
        late_dir = tmp_path / "late"
        write_demo_set(late_dir, 1, seed=2312, rows=ROWS, columns=COLUMNS)
        late = sorted(late_dir.rglob("*.dcm"))
        _send(server, late)
        cached = len(client.cache)
        got = _wait_arrivals(feed, _study(late[0]))
        new = [a for a in got if a.indexed]
        assert [a.study_uid for a in new] == [_study(late[0])] and new[0].indexed == 4
        assert len(client.cache) == cached + 4

        # a study held already costs a listing, not a fetch
        again = feed.take(newest[0])
        assert (again.images, again.indexed, again.problems) == (4, 0, [])
        assert len(client.cache) == cached + 4
        feed.stop()

    # a restart goes on where the feed stopped: no second backfill, nothing fetched again
    arrived.clear()
    with _client(server, tmp_path / "cache") as client:
        feed = SiteStudyFeed(client, index_file, tmp_path, backfill=2, arrived=arrived.append, say=said.append)
        assert [a for a in feed.run_once() if a.indexed] == [] and arrived == []
        feed.stop()
    with Archive(index_file) as index:
        assert len(index.exams()) == 3 and not said


def test_a_study_with_an_image_that_could_not_be_had_is_tried_again_and_reported_once_complete(
        server: OrthancServer, exams: list[list[Path]], tmp_path: Path) -> None:
    """Before, an image that failed (here a connection cut in the middle of its body) was
    lost for good: the study was reported with 3 of its 4 views and never tried again."""
    index_file = tmp_path / "archive.sqlite"
    arrived: list[str] = []
    said: list[str] = []
    with _client(server, tmp_path / "cache") as client:
        feed = SiteStudyFeed(client, index_file, tmp_path, backfill=0, retry_s=0.0,
                             arrived=arrived.append, say=said.append)
        feed.run_once()
        late_dir = tmp_path / "late"
        write_demo_set(late_dir, 1, seed=2314, rows=ROWS, columns=COLUMNS)
        files = sorted(late_dir.rglob("*.dcm"))
        study = _study(files[0])
        real, calls = client.fetch_instance, [0]

        def cut_once(study_uid: str, series_uid: str, sop_uid: str) -> Path:
            calls[0] += 1
            if calls[0] == 2:
                raise DicomWebError(f"instance {sop_uid}", "the archive answered HTTP 404 Not Found", "http", 404)
            return real(study_uid, series_uid, sop_uid)

        client.fetch_instance = cut_once  # type: ignore[method-assign]
        _send(server, files)
        first = _wait_arrivals(feed, study)
        assert [a.indexed for a in first if a.study_uid == study] == [3] and arrived == []  # not complete
        assert (tmp_path / RETRY_FILE).exists() and any("404" in s for s in said)
        again = feed.run_once()  # due again at once (retry_s 0)
        assert [(a.study_uid, a.indexed, a.problems) for a in again] == [(study, 1, [])]
        assert arrived == [study]  # reported once, complete
        assert feed.run_once() == [] and arrived == [study]
    with Archive(index_file) as index:
        assert len(index.images_for_study(study)) == 4


def test_a_cut_body_is_the_archive_away_not_a_bad_answer() -> None:
    import requests

    from mammotriage.net.dicomweb import _request_error
    from mammotriage.net.site_io import is_away

    error = _request_error("instance 1.2.3", requests.exceptions.ChunkedEncodingError("connection reset"))
    assert error.code == "unreachable" and is_away(error)


def test_the_fetcher_owns_the_cache_through_a_symlinked_data_directory_and_tries_an_old_failure_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammotriage.net.dicomweb import InstanceCache
    from mammotriage.viewer import site_images

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    client = DicomWebArchive("http://127.0.0.1:9", None, InstanceCache(link / "site-cache", 10**6))
    fetcher = SiteImageFetcher(client, link / "archive.sqlite")
    try:
        indexed = str((link / "site-cache" / "1.2.3.abc.dcm").resolve())  # the index keeps resolved paths
        assert fetcher.owns(indexed) and fetcher.ready(indexed) is False  # fetched, not left to fail
        deadline = time.monotonic() + 10
        while fetcher._fetches[indexed][0].done() is False and time.monotonic() < deadline:
            time.sleep(0.01)
        error = fetcher.ready(indexed)
        assert isinstance(error, LoadError) and "not an indexed image" in error.reason  # a fresh failure: said
        assert fetcher.ready(indexed) is False  # asked again: tried again
        monkeypatch.setattr(site_images, "STALE_FAILURE_S", 0.0)
        while fetcher._fetches[indexed][0].done() is False and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert fetcher.ready(indexed) is False  # an old failure is not served: a new try started
        fetcher.cancel(indexed)
    finally:
        fetcher.shutdown()


def _collect(loader: ProgressiveLoader, paths: set[str], timeout_s: float = 60) -> dict[str, LoadedView | LoadError]:
    deadline = time.monotonic() + timeout_s
    out: dict[str, LoadedView | LoadError] = {}
    while time.monotonic() < deadline and not paths <= set(out):
        for result in loader.poll():
            if isinstance(result, LoadError) or not result.preview:
                out[result.path] = result
        time.sleep(0.02)
    assert paths <= set(out), f"not loaded: {paths - set(out)}"
    return out


def test_a_view_the_cache_evicted_is_fetched_again_when_it_is_wanted_and_an_away_archive_is_its_error(
        server: OrthancServer, exams: list[list[Path]], tmp_path: Path) -> None:
    one = max(f.stat().st_size for f in exams[0])
    index_file = tmp_path / "archive.sqlite"
    said: list[str] = []
    with _client(server, tmp_path / "cache", max_bytes=2 * one + 4096) as client:  # two views fit
        feed = SiteStudyFeed(client, index_file, tmp_path, backfill=0, say=said.append)
        arrival = feed.sync_study(_study(exams[0][0]))
        assert (arrival.images, arrival.indexed, arrival.problems) == (4, 4, [])
        with Archive(index_file) as index:
            images = index.images_for_study(_study(exams[0][0]))
        missing = {img.path for img in images if not Path(img.path).exists()}
        assert len(missing) >= 2  # evicted by the views fetched after them
        fetcher = SiteImageFetcher(client, index_file)
        loader = ProgressiveLoader(workers=1, threads=1)
        loader.fetcher = fetcher
        try:
            wanted = sorted(missing)[:2]
            loader.on_screen = set(wanted)
            for path in wanted:
                assert loader.request(path) is None
            results = _collect(loader, set(wanted))
            for path in wanted:
                view = results[path]
                assert isinstance(view, LoadedView), view
                sop = ".".join(Path(path).name.split(".")[:-2])  # <SOP Instance UID>.<sha256>.dcm
                sent = next(f for f in exams[0] if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == sop)
                assert view.pixel_sha256 == pixel_sha256(read_image(sent).pixels)
            assert fetcher.fetched == 2

            # the archive stops: a view still to fetch is an error naming it; the feed says so once
            evicted = sorted(p for p in (img.path for img in images) if not Path(p).exists())
            assert evicted
            feed.every_s = 0.2
            feed.start()
            server.stop()
            try:
                loader.on_screen = {evicted[0]}
                assert loader.request(evicted[0]) is None
                error = _collect(loader, {evicted[0]})[evicted[0]]
                assert isinstance(error, LoadError) and error.code == "site-fetch"
                assert error.reason.startswith("site archive: instance "), error.reason
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not any("away" in s for s in said):
                    time.sleep(0.1)
                time.sleep(1.0)
                assert [s for s in said if "away" in s][:1] and len([s for s in said if "away" in s]) == 1, said
            finally:
                server.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("site archive back" in s for s in said):
                time.sleep(0.2)
            assert any("site archive back" in s for s in said), said
            # and the view comes once asked again
            assert loader.request(evicted[0]) is None
            again = _collect(loader, {evicted[0]})[evicted[0]]
            assert isinstance(again, LoadedView), again
        finally:
            feed.stop()
            loader.shutdown()
            fetcher.shutdown()
