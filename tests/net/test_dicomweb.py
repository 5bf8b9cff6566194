"""net.dicomweb against a real Orthanc on loopback: storescu in, QIDO/WADO/STOW out, stable studies.

One Orthanc for the module (free ports, a temporary folder, stable age 2 s). dcmtk's
storescu sends 100 demo images (25 four-view exams from the demo's phantom writer,
small: 128 x 96 pixels; 20 uncompressed, 5 JPEG 2000 lossless). The tests run in file
order: the stable-study test comes before STOW adds an SR to one of the studies.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from netsupport import storescu
from orthancsupport import running_server

from mammotriage.dicom.sr import AlgorithmInfo, FindingRecord, write_findings_sr
from mammotriage.net.dicomweb import (
    DicomWebArchive,
    DicomWebError,
    InstanceCache,
    StableStudyWatcher,
)
from mammotriage.net.orthanc import OrthancServer
from mammotriage.phantom import write_demo_set

ROWS, COLUMNS = 128, 96


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(tmp_path_factory.mktemp("site-archive"), stable_age_s=2) as site:
        yield site


@pytest.fixture(scope="module")
def sent(server: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SOP Instance UID -> the file storescu sent (all 100 arrive)."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_set(root / "plain", 20, seed=1901, rows=ROWS, columns=COLUMNS)
    write_demo_set(root / "j2k", 5, seed=1902, rows=ROWS, columns=COLUMNS, transfer_syntax="jpeg2000")
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == 100
    for folder, propose in (("plain", ()), ("j2k", ("-xv",))):  # -xv: propose JPEG 2000 lossless
        batch = sorted((root / folder).rglob("*.dcm"))
        result = storescu(server.dicom_port, batch, calling="MODALITY", called=server.aet, extra=propose)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "Failed" not in output and "Error" not in output, output[-2000:]
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


@pytest.fixture(scope="module")
def studies(sent: dict[str, Path]) -> dict[str, set[str]]:
    """Study Instance UID -> its SOP Instance UIDs, as sent."""
    out: dict[str, set[str]] = collections.defaultdict(set)
    for sop, path in sent.items():
        out[str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)].add(sop)
    return dict(out)


@pytest.fixture
def archive(server: OrthancServer, tmp_path: Path):
    with DicomWebArchive.for_server(server, tmp_path / "cache", 256 * 1024 * 1024) as client:
        yield client


def test_qido_finds_every_study_and_instance(archive: DicomWebArchive, studies: dict[str, set[str]],
                                             sent: dict[str, Path]) -> None:
    found = archive.find_studies()
    assert {s.study_uid for s in found} == set(studies)
    assert all(s.instances == 4 and s.patient_id for s in found)
    one = next(iter(studies))
    assert {i.sop_uid for i in archive.find_instances(one)} == studies[one]
    every = archive.find_instances()
    assert {i.sop_uid for i in every} == set(sent)
    archive.qido_page = 7  # page by page: 15 pages, nothing lost or repeated
    paged = archive.find_instances()
    assert len(paged) == 100 and {i.sop_uid for i in paged} == set(sent)
    assert {i.sop_class_uid for i in every} == {"1.2.840.10008.5.1.4.1.1.1.2"}


def test_wado_fetch_gives_the_sent_pixels(archive: DicomWebArchive, sent: dict[str, Path]) -> None:
    records = archive.find_instances()
    assert len(records) == 100
    for record in records:
        path = archive.fetch_instance(record.study_uid, record.series_uid, record.sop_uid)
        got, want = pydicom.dcmread(path), pydicom.dcmread(sent[record.sop_uid])
        assert got.SOPInstanceUID == record.sop_uid
        assert got.file_meta.TransferSyntaxUID == want.file_meta.TransferSyntaxUID  # as stored
        assert np.array_equal(got.pixel_array, want.pixel_array)
    assert len(archive.cache) == 100
    # a second fetch is a cache hit: the same file
    first = records[0]
    assert archive.fetch_instance(first.study_uid, first.series_uid, first.sop_uid) == \
        archive.cache.path_of(first.sop_uid)


def test_fetch_study_and_unknown_instance(archive: DicomWebArchive, studies: dict[str, set[str]]) -> None:
    one = next(iter(studies))
    result = archive.fetch_study(one)
    assert set(result.paths) == studies[one] and result.errors == []
    series = archive.find_instances(one)[0].series_uid
    with pytest.raises(DicomWebError) as caught:
        archive.fetch_instance(one, series, "1.2.3.4.5.6.7")
    assert caught.value.code == "http" and caught.value.status == 404
    assert "1.2.3.4.5.6.7" in str(caught.value) and one in str(caught.value)
    with pytest.raises(DicomWebError, match="not a valid UID"):
        archive.fetch_instance(one, series, "../../etc/passwd")


def test_cache_evicts_by_bytes_and_refetches_a_corrupt_entry(server: OrthancServer, tmp_path: Path,
                                                             sent: dict[str, Path]) -> None:
    with DicomWebArchive.for_server(server, tmp_path / "probe", 256 * 1024 * 1024) as probe:
        records = sorted(probe.find_instances(), key=lambda r: r.sop_uid)[:6]
        sizes = [probe.fetch_instance(r.study_uid, r.series_uid, r.sop_uid).stat().st_size for r in records]
    budget = int(sum(sorted(sizes)[-3:]) * 1.05)  # room for the three largest, never for four
    assert budget < sum(sorted(sizes)[:4])
    with DicomWebArchive.for_server(server, tmp_path / "small", budget) as archive:
        a, b, c, d = records[:4]
        for r in (a, b, c):
            archive.fetch_instance(r.study_uid, r.series_uid, r.sop_uid)
        assert archive.cache.uids() == [a.sop_uid, b.sop_uid, c.sop_uid]
        archive.fetch_instance(a.study_uid, a.series_uid, a.sop_uid)  # a hit: a is now the newest
        archive.fetch_instance(d.study_uid, d.series_uid, d.sop_uid)
        assert b.sop_uid not in archive.cache and a.sop_uid in archive.cache
        assert archive.cache.total_bytes <= budget
        assert sum(p.stat().st_size for p in (tmp_path / "small").iterdir()) <= budget

        # corrupt an entry on disk: it is fetched again, not trusted
        path = archive.cache.path_of(c.sop_uid)
        assert path is not None
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF
        path.write_bytes(bytes(raw))
        again = archive.fetch_instance(c.study_uid, c.series_uid, c.sop_uid)
        assert np.array_equal(pydicom.dcmread(again).pixel_array, pydicom.dcmread(sent[c.sop_uid]).pixel_array)
        assert again.read_bytes() != bytes(raw)

    # the order survives a restart: a new cache on the folder knows its entries
    reopened = InstanceCache(tmp_path / "small", budget)
    assert set(reopened.uids()) == {a.sop_uid, c.sop_uid, d.sop_uid}
    assert reopened.get(c.sop_uid) is not None


def test_stable_study_watcher_reports_each_study_once(server: OrthancServer, studies: dict[str, set[str]],
                                                      tmp_path: Path) -> None:
    state = tmp_path / "watcher.json"
    with DicomWebArchive.for_server(server, tmp_path / "cache", 1024 * 1024) as archive:
        watcher = StableStudyWatcher(archive, state_file=state)
        seen: list[str] = []
        stop = threading.Event()
        deadline = time.monotonic() + 90

        def collect() -> None:
            for uid in watcher.follow(stop, interval_s=0.5):
                seen.append(uid)
                if set(seen) >= set(studies) or time.monotonic() > deadline:
                    stop.set()

        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        thread.join(timeout=120)
        stop.set()
        assert set(seen) == set(studies)
        counts = collections.Counter(seen)
        assert max(counts.values()) == 1, counts.most_common(3)
        assert watcher.poll() == []  # nothing new
        # a watcher restarted on the same state file goes on where it stopped
        restarted = StableStudyWatcher(archive, state_file=state)
        assert restarted.since == watcher.since > 0
        assert restarted.poll() == []
        # a watcher from the start of the feed sees the same studies, once each
        fresh = StableStudyWatcher(archive).poll()
        assert sorted(fresh) == sorted(seen)
        # a watcher from the end of the feed waits for what comes next
        from_now = StableStudyWatcher(archive, since=None)
        assert from_now.since >= watcher.since and from_now.poll() == []
        from_now.close()
        # a state file that cannot be written: a warning, the watcher still reports
        (tmp_path / "a-file").write_text("not a folder")
        unsaved = StableStudyWatcher(archive, state_file=tmp_path / "a-file" / "state.json")
        assert sorted(unsaved.poll()) == sorted(seen) and unsaved.since == watcher.since
        for w in (watcher, restarted, unsaved):
            w.close()


def test_watcher_follows_a_study_sent_while_it_runs(server: OrthancServer, tmp_path: Path) -> None:
    exam_dir = tmp_path / "late"
    write_demo_set(exam_dir, 1, seed=1903, rows=ROWS, columns=COLUMNS)
    files = sorted(exam_dir.rglob("*.dcm"))
    late_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with DicomWebArchive.for_server(server, tmp_path / "cache", 1024 * 1024) as archive:
        watcher = StableStudyWatcher(archive, since=None)  # only what comes from now on
        seen: list[str] = []
        stop = threading.Event()
        deadline = time.monotonic() + 60

        def collect() -> None:
            for uid in watcher.follow(stop, interval_s=0.3):
                seen.append(uid)
                if uid == late_uid:
                    stop.set()

        def watchdog() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.2)
            stop.set()

        threads = [threading.Thread(target=collect, daemon=True), threading.Thread(target=watchdog, daemon=True)]
        for t in threads:
            t.start()
        result = storescu(server.dicom_port, files, calling="MODALITY", called=server.aet)
        assert result.returncode == 0, result.stdout[-2000:]
        for t in threads:
            t.join(timeout=90)
        watcher.close()
    assert seen == [late_uid]


def test_stow_stores_the_ai_sr_and_qido_finds_it(archive: DicomWebArchive, studies: dict[str, set[str]],
                                                 sent: dict[str, Path]) -> None:
    study = sorted(studies)[0]
    sources = [pydicom.dcmread(sent[sop], stop_before_pixels=True) for sop in sorted(studies[study])]
    algorithm = AlgorithmInfo(name="mt-detector", version="0.3.0", weights_sha256="ab" * 32)
    finding = FindingRecord(str(sources[0].SOPInstanceUID), (10.0, 12.0, 40.0, 44.0), "mass", 0.81)
    sr = write_findings_sr(sources, [finding], algorithm, exam_score=0.81)
    broken = pydicom.Dataset()  # no UIDs: refused here, the SR still goes
    result = archive.store([sr, broken])
    assert result.stored == [str(sr.SOPInstanceUID)]
    assert len(result.failed) == 1 and "no valid SOP" in result.failed[0][1]

    instances = archive.find_instances(study)
    assert str(sr.SOPInstanceUID) in {i.sop_uid for i in instances}
    sr_record = next(i for i in instances if i.sop_uid == str(sr.SOPInstanceUID))
    assert sr_record.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
    fetched = pydicom.dcmread(archive.fetch_instance(study, sr_record.series_uid, sr_record.sop_uid))
    assert fetched.ContentSequence and fetched.Modality == "SR"
    # storing the same SR again is not a failure of the batch (Orthanc keeps the first copy)
    assert archive.store([sr]).stored == [str(sr.SOPInstanceUID)]
