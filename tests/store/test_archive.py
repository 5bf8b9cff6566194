"""Tests for the local archive (``mammotriage.store``).

Every test uses a real SQLite file under ``tmp_path``; ``MAMMOTRIAGE_HOME`` is pointed
at a temporary folder by the autouse ``isolated_home`` fixture (conftest.py).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from mammotriage.dicom.image import Laterality, MammoMetadata, SpacingSource, View
from mammotriage.dicom.read import read_metadata
from mammotriage.store import (
    SCHEMA_VERSION,
    Archive,
    ImportReport,
    SchemaVersionError,
    db,
    exam_key_for,
    split_view_patient_id,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CBIS_DIR = REPO_ROOT / ".." / "shared" / "data" / "dicom" / "cbis-ddsm"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table_count(archive: Archive, table: str) -> int:
    return int(archive.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# --------------------------------------------------------------------------- database


def test_new_archive_uses_wal_full_sync_foreign_keys_and_schema_version(archive_file: Path) -> None:
    with Archive(archive_file) as archive:
        conn = archive.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.schema_version(conn) == SCHEMA_VERSION >= 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"studies", "series", "images", "rejections"} <= tables
    # WAL is persistent: a plain connection sees it too, and the version is stored in the file.
    raw = sqlite3.connect(archive_file)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_migrations_are_ordered_append_only_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    db.connect(path).close()
    conn = db.connect(path)  # reopening does not re-run migration 1
    assert db.schema_version(conn) == SCHEMA_VERSION
    conn.close()

    extra = db.Migration("later feature", ("CREATE TABLE findings (id INTEGER PRIMARY KEY)",))
    conn = db.connect(path, migrations=[*db.MIGRATIONS, extra])
    assert db.schema_version(conn) == SCHEMA_VERSION + 1
    conn.execute("INSERT INTO findings (id) VALUES (1)")
    conn.close()

    # Code that knows fewer migrations than the file has refuses to open it.
    with pytest.raises(SchemaVersionError):
        db.connect(path)


def test_failed_migration_rolls_back_and_keeps_version(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    db.connect(path).close()
    bad = db.Migration("broken", ("CREATE TABLE half (id INTEGER)", "THIS IS NOT SQL"))
    with pytest.raises(sqlite3.Error):
        db.connect(path, migrations=[*db.MIGRATIONS, bad])
    conn = db.connect(path)
    try:
        assert db.schema_version(conn) == SCHEMA_VERSION
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "half" not in names
    finally:
        conn.close()


def test_migration_11_upgrades_an_existing_v10_archive(tmp_path: Path) -> None:
    path = tmp_path / "v10.sqlite"
    old = db.connect(path, migrations=db.MIGRATIONS[:10])
    assert db.schema_version(old) == 10
    old.execute("INSERT INTO studies (study_uid, patient_id, study_date, exam_key) VALUES ('1.2', 'P1', "
                "'2024-01-02', 'E1')")
    old.execute("INSERT INTO triage_jobs (exam_key, model_version, status, enqueued_at) "
                "VALUES ('E1', 'v1', 'done', '2024-01-02T00:00:00')")
    old.close()
    conn = db.connect(path)  # what the new program does on start
    try:
        assert db.schema_version(conn) == SCHEMA_VERSION >= 11
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"inference_times", "inference_times_weights", "triage_jobs_version", "exam_index",
                "exam_index_insert", "exam_index_date"} <= names
        assert conn.execute("SELECT exam_key FROM studies").fetchall()[0][0] == "E1"  # rows kept
        assert conn.execute("SELECT status FROM triage_jobs").fetchall()[0][0] == "done"
        # the per-exam index is filled from the existing studies, then kept by triggers
        assert [tuple(r) for r in conn.execute("SELECT exam_key, patient_id, study_date, study_uids "
                                               "FROM exam_index")] == [("E1", "P1", "2024-01-02", "1.2")]
        conn.execute("INSERT INTO studies (study_uid, patient_id, study_date, accession, exam_key) "
                     "VALUES ('1.1', 'P1', '2024-01-01', 'ACC9', 'E1')")
        conn.execute("INSERT INTO studies (study_uid, patient_id, exam_key) VALUES ('1.3', 'P2', 'E2')")
        rows = {r[0]: tuple(r) for r in conn.execute("SELECT * FROM exam_index")}
        assert rows["E1"] == ("E1", "P1", "", "2024-01-01", "ACC9", "1.1 1.2")  # earliest date, UID order
        assert rows["E2"] == ("E2", "P2", "", None, "", "1.3")
        conn.execute("UPDATE studies SET exam_key = 'E2' WHERE study_uid = '1.1'")
        conn.execute("DELETE FROM studies WHERE study_uid = '1.2'")
        rows = {r[0]: tuple(r) for r in conn.execute("SELECT exam_key, study_uids FROM exam_index")}
        assert rows == {"E2": ("E2", "1.1 1.3")}
        with pytest.raises(sqlite3.IntegrityError):  # an exam without views has no per-view time
            conn.execute("INSERT INTO inference_times (weights_sha256, model_version, views, seconds, per_view_s,"
                         " at) VALUES ('ab', 'v1', 0, 1.0, 1.0, 'now')")
    finally:
        conn.close()


def test_default_archive_lives_under_mammotriage_home(isolated_home: Path) -> None:
    with Archive() as archive:
        assert archive.path == (isolated_home / "archive.sqlite").resolve()
        assert archive.path.exists()


# --------------------------------------------------------------------------- import


def test_import_folder_imports_valid_and_rejects_broken_without_stopping(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    src = tmp_path / "incoming"
    exam = dicom.exam(src / "exam1")
    hidden = dicom.mg(
        src / ".hidden" / "deep" / "extra.dcm",
        laterality="R",
        view="CC",
        patient_id="PAT002",
        accession="ACC002",
    )
    (src / "notes.txt").write_text("this is not DICOM\n")
    (src / "empty.dcm").write_bytes(b"")
    good = dicom.mg(tmp_path / "scratch" / "full.dcm", patient_id="PAT003", seed=7)
    data = good.read_bytes()
    (src / "truncated_header.dcm").write_bytes(data[:200])  # inside the file meta group
    (src / "truncated_pixels.dcm").write_bytes(data[: len(data) - 1000])
    dicom.chest_cr(src / "chest.dcm")
    dicom.sr(src / "report.dcm")
    dicom.dicomdir(src / "DICOMDIR")

    calls: list[tuple[int, int, str]] = []
    with Archive(archive_file) as archive:
        report = archive.import_paths([src], progress=lambda d, t, p: calls.append((d, t, p)))

        imported = {Path(i.path).name for i in report.imported}
        assert imported == {"RCC.dcm", "LCC.dcm", "RMLO.dcm", "LMLO.dcm", "extra.dcm"}
        assert report.duplicates == []
        rejected = {Path(r.path).name: r for r in report.rejected}
        assert set(rejected) == {
            "notes.txt",
            "empty.dcm",
            "truncated_header.dcm",
            "truncated_pixels.dcm",
            "chest.dcm",
            "report.dcm",
            "DICOMDIR",
        }
        for r in report.rejected:
            assert r.reason.strip(), r
            assert r.code.strip(), r
            assert Path(r.path).is_absolute()
        assert rejected["notes.txt"].code == "not-dicom"
        assert rejected["chest.dcm"].code == "not-a-mammogram"
        assert rejected["report.dcm"].code == "not-an-image"
        assert rejected["DICOMDIR"].code == "dicomdir"
        assert "DICOMDIR" in rejected["DICOMDIR"].reason

        # Progress: once per file, in order, with a constant total.
        assert [c[0] for c in calls] == list(range(1, report.total + 1))
        assert {c[1] for c in calls} == {report.total} == {12}

        # Rows: one study per exam, paths absolute, rejections logged with their reasons.
        assert archive.count() == 5
        assert _table_count(archive, "studies") == 2
        assert _table_count(archive, "series") == 2
        log = archive.rejections()
        assert {(Path(r.path).name, r.code) for r in log} == {
            (Path(r.path).name, r.code) for r in report.rejected
        }
        assert all(r.at.endswith("+00:00") for r in log)
        stored = archive.image(report.imported[0].sop_uid)
        assert stored is not None and Path(stored.path).is_absolute()
        assert Path(stored.path) == Path(report.imported[0].path)
        assert stored.path in {str(p.resolve()) for p in [*exam.values(), hidden]}

        text = report.summary()
        assert "12 files: 5 imported, 0 duplicates, 7 rejected" in text
        assert "notes.txt" in text and "not-dicom" in text


def test_unexpected_reader_exception_becomes_rejection(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    paths = [
        dicom.mg(tmp_path / f"{i}.dcm", seed=i, view="CC" if i % 2 else "MLO") for i in range(3)
    ]

    def flaky(path: Path) -> MammoMetadata:
        if path.name == "1.dcm":
            raise RuntimeError("boom")
        if path.name == "2.dcm":
            raise KeyError("(0028,0010)")
        return read_metadata(path)

    with Archive(archive_file, reader=flaky) as archive:
        report = archive.import_paths(paths)
    assert [Path(i.path).name for i in report.imported] == ["0.dcm"]
    reasons = {Path(r.path).name: (r.reason, r.code) for r in report.rejected}
    assert reasons["1.dcm"] == ("RuntimeError: boom", "unexpected-error")
    assert reasons["2.dcm"][0].startswith("KeyError: ")


def test_missing_path_and_single_path_argument(tmp_path: Path, archive_file: Path, dicom) -> None:
    one = dicom.mg(tmp_path / "one.dcm")
    with Archive(archive_file) as archive:
        report = archive.import_paths(one)  # a single path, not a list
        assert len(report.imported) == 1
        report = archive.import_paths([tmp_path / "nope", tmp_path / "nope.dcm"])
    assert [r.code for r in report.rejected] == ["not-found", "not-found"]


def test_reimport_same_folder_gives_duplicates_and_no_new_rows(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    src = tmp_path / "src"
    dicom.exam(src / "a")
    dicom.exam(src / "b", patient_id="PAT009", accession="ACC009", seed=10)
    with Archive(archive_file) as archive:
        first = archive.import_paths([src])
        assert len(first.imported) == 8
        counts = {t: _table_count(archive, t) for t in ("studies", "series", "images")}
        second = archive.import_paths([src])
        assert second.imported == [] and second.rejected == []
        assert len(second.duplicates) == 8
        assert {d.sop_uid for d in second.duplicates} == {i.sop_uid for i in first.imported}
        assert {t: _table_count(archive, t) for t in counts} == counts
        assert archive.rejections() == []
        assert "8 duplicates" in second.summary()
    # And across a reopen of the same archive file.
    with Archive(archive_file) as archive:
        third = archive.import_paths([src])
        assert len(third.duplicates) == 8 and archive.count() == 8


def test_same_folder_given_twice_in_one_batch_is_handled_once(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    f = dicom.mg(tmp_path / "src" / "x.dcm")
    with Archive(archive_file) as archive:
        report = archive.import_paths([tmp_path / "src", f])
    assert report.total == 1 and len(report.imported) == 1


def test_same_sop_uid_with_different_content_is_rejected(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    uids = {"study_uid": "1.2.3.4.1", "series_uid": "1.2.3.4.2", "sop_uid": "1.2.3.4.3"}
    a = dicom.mg(tmp_path / "a" / "img.dcm", seed=1, **uids)
    b = dicom.mg(tmp_path / "b" / "img.dcm", seed=2, **uids)
    assert _sha(a) != _sha(b)
    with Archive(archive_file) as archive:
        assert len(archive.import_paths([a]).imported) == 1
        report = archive.import_paths([b])
        assert report.imported == [] and report.duplicates == []
        (rej,) = report.rejected
        assert rej.reason.startswith("SOP Instance UID already stored with different content")
        assert rej.code == "sop-uid-conflict"
        # The stored image still points at the first file, with its hash.
        stored = archive.image("1.2.3.4.3")
        assert stored is not None
        assert stored.path == str(a.resolve()) and stored.sha256 == _sha(a)
        assert archive.rejections()[-1].reason == rej.reason


def test_identical_copy_elsewhere_is_a_duplicate_and_follows_a_moved_file(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    a = dicom.mg(tmp_path / "a" / "img.dcm", sop_uid="1.2.3.9")
    copy = tmp_path / "copy" / "img.dcm"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    with Archive(archive_file) as archive:
        archive.import_paths([a])
        report = archive.import_paths([copy])
        assert len(report.duplicates) == 1
        stored = archive.image("1.2.3.9")
        assert stored is not None and stored.path == str(a.resolve())  # original still there
        a.unlink()  # the original went away: a re-import re-points the record
        archive.import_paths([copy])
        stored = archive.image("1.2.3.9")
        assert stored is not None and stored.path == str(copy.resolve())


def test_conflicting_study_or_series_is_rejected_atomically(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    dicom.mg(tmp_path / "a.dcm", study_uid="1.9.1", series_uid="1.9.2", patient_id="ALICE")
    # Same study, different patient.
    dicom.mg(tmp_path / "b.dcm", study_uid="1.9.1", series_uid="1.9.3", patient_id="BOB")
    # New study, but a series UID already used under study 1.9.1.
    dicom.mg(tmp_path / "c.dcm", study_uid="1.9.4", series_uid="1.9.2", patient_id="ALICE")
    with Archive(archive_file) as archive:
        report = archive.import_paths([tmp_path / "a.dcm", tmp_path / "b.dcm", tmp_path / "c.dcm"])
        assert [Path(i.path).name for i in report.imported] == ["a.dcm"]
        codes = {Path(r.path).name: r.code for r in report.rejected}
        assert codes == {"b.dcm": "study-conflict", "c.dcm": "series-conflict"}
        # c.dcm's study row was rolled back with the rest of its transaction.
        uids = {r[0] for r in archive.conn.execute("SELECT study_uid FROM studies")}
        assert uids == {"1.9.1"}
        assert _table_count(archive, "series") == 1


def test_source_files_are_never_modified(tmp_path: Path, archive_file: Path, dicom) -> None:
    files = list(dicom.exam(tmp_path / "src").values())
    (tmp_path / "src" / "junk.bin").write_bytes(b"\x00" * 300)
    files.append(tmp_path / "src" / "junk.bin")
    past = 1_600_000_000
    for f in files:
        os.utime(f, (past, past))
        f.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)  # read-only: any write would fail
    before = {f: (f.stat().st_mtime_ns, f.stat().st_size, _sha(f)) for f in files}
    try:
        with Archive(archive_file) as archive:
            report = archive.import_paths([tmp_path / "src"])
            archive.import_paths([tmp_path / "src"])
        assert len(report.imported) == 4 and len(report.rejected) == 1
        after = {f: (f.stat().st_mtime_ns, f.stat().st_size, _sha(f)) for f in files}
        assert after == before
        assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(f.name for f in files)
    finally:
        for f in files:
            f.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_progress_exception_stops_batch_but_keeps_handled_files(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    dicom.exam(tmp_path / "src")

    class Cancelled(Exception):
        pass

    def cancel_after_two(done: int, total: int, path: str) -> None:
        if done == 2:
            raise Cancelled

    with Archive(archive_file) as archive:
        with pytest.raises(Cancelled):
            archive.import_paths([tmp_path / "src"], progress=cancel_after_two)
        assert archive.count() == 2


# --------------------------------------------------------------------------- queries


def test_query_api(tmp_path: Path, archive_file: Path, dicom) -> None:
    exam = dicom.exam(
        tmp_path / "e", patient_id="PAT100", accession="ACC100", study_date="20230301"
    )
    dicom.mg(
        tmp_path / "other.dcm",
        patient_id="PAT200",
        accession="ACC200",
        study_date="20240501",
        laterality="R",
        view="MLO",
    )
    with Archive(archive_file) as archive:
        archive.import_paths([tmp_path])
        assert archive.count() == 5

        studies = archive.studies()
        assert [s.patient_id for s in studies] == ["PAT200", "PAT100"]  # newest first
        s100 = studies[1]
        assert s100.accession == "ACC100"
        assert s100.study_date == _dt.date(2023, 3, 1)
        assert s100.views == ("RCC", "LCC", "RMLO", "LMLO")
        assert s100.image_count == 4
        assert s100.patient_name == "Test^Patient"
        assert s100.exam_key == s100.study_uid
        assert studies[0].views == ("RMLO",)

        images = archive.images_for_study(s100.study_uid)
        assert [i.label for i in images] == ["RCC", "LCC", "RMLO", "LMLO"]
        lcc = images[1]
        assert lcc.path == str(exam["LCC"].resolve())
        assert lcc.sha256 == _sha(exam["LCC"])
        assert lcc.size == exam["LCC"].stat().st_size
        assert lcc.laterality is Laterality.LEFT and lcc.view is View.CC
        assert (lcc.rows, lcc.columns) == (64, 48)
        assert lcc.photometric == "MONOCHROME2"
        assert lcc.transfer_syntax == "1.2.840.10008.1.2.1"
        assert lcc.modality == "MG" and lcc.manufacturer == "TestVendor"
        assert lcc.spacing is not None
        assert lcc.spacing.row_mm == pytest.approx(0.1) and lcc.spacing.col_mm == pytest.approx(0.1)
        assert isinstance(lcc.spacing.source, SpacingSource)
        imported_at = _dt.datetime.fromisoformat(lcc.imported_at)
        assert imported_at.utcoffset() == _dt.timedelta(0)

        assert archive.image(lcc.sop_uid) == lcc
        assert archive.image("9.9.9.9") is None
        assert archive.images_for_study("9.9.9.9") == []


# --------------------------------------------------------------------------- exams


@pytest.mark.parametrize(
    ("patient_id", "expected"),
    [
        ("Mass-Test_P_00173_LEFT_CC", "Mass-Test_P_00173"),
        ("Calc-Training_P_00005_RIGHT_MLO", "Calc-Training_P_00005"),
        ("p_1_left_ml", "p_1"),
        ("X_RIGHT_LM", "X"),
        ("Mass-Test_P_00173_LEFT_CC_1", None),  # ROI crops/masks: not a full view
        ("P_00173", None),
        ("_LEFT_CC", None),
        ("", None),
    ],
)
def test_split_view_patient_id(patient_id: str, expected: str | None) -> None:
    assert split_view_patient_id(patient_id) == expected


def test_exam_key_rule() -> None:
    d = _dt.date(2016, 10, 4)
    assert exam_key_for("12345", "1.2.3", d) == "1.2.3"
    assert exam_key_for("Mass-Test_P_00173_LEFT_CC", "1.2.3", d) == "Mass-Test_P_00173|20161004"
    assert exam_key_for("Mass-Test_P_00173_right_mlo", "1.2.4", d) == "Mass-Test_P_00173|20161004"
    assert exam_key_for("Mass-Test_P_00173_LEFT_CC", "1.2.3", None) == "Mass-Test_P_00173|"


def test_exams_group_cbis_style_single_view_studies(
    tmp_path: Path, archive_file: Path, dicom
) -> None:
    # CBIS-DDSM layout: one study per view, the view encoded in the PatientID.
    for base in ("Mass-Test_P_00001", "Mass-Test_P_00002"):
        for lat, side in (("L", "LEFT"), ("R", "RIGHT")):
            for view in ("CC", "MLO"):
                dicom.mg(
                    tmp_path / "cbis" / f"{base}_{side}_{view}.dcm",
                    patient_id=f"{base}_{side}_{view}",
                    laterality=lat,
                    view=view,
                    study_date="20161004",
                    accession="",
                )
    # Same patient, another date: a separate exam.
    dicom.mg(
        tmp_path / "cbis" / "later.dcm",
        patient_id="Mass-Test_P_00001_LEFT_CC",
        laterality="L",
        view="CC",
        study_date="20171004",
        accession="",
    )
    # A conventional four-view study: one exam keyed by its StudyInstanceUID.
    dicom.exam(tmp_path / "normal", patient_id="PAT777", study_date="20161004", accession="ACC7")

    with Archive(archive_file) as archive:
        report = archive.import_paths([tmp_path / "cbis", tmp_path / "normal"])
        assert len(report.imported) == 13 and not report.rejected
        assert len(archive.studies()) == 10

        normal_uid = next(s.study_uid for s in archive.studies() if s.patient_id == "PAT777")
        exams = archive.exams()
        keyed = {e.exam_key: e for e in exams}
        assert set(keyed) == {
            "Mass-Test_P_00001|20161004",
            "Mass-Test_P_00002|20161004",
            "Mass-Test_P_00001|20171004",
            normal_uid,
        }
        p1 = keyed["Mass-Test_P_00001|20161004"]
        assert p1.patient_id == "Mass-Test_P_00001"
        assert p1.study_date == _dt.date(2016, 10, 4)
        assert len(p1.study_uids) == 4
        assert p1.views == ("RCC", "LCC", "RMLO", "LMLO")
        assert [i.label for i in p1.images] == ["RCC", "LCC", "RMLO", "LMLO"]
        assert keyed["Mass-Test_P_00001|20171004"].views == ("LCC",)
        normal = next(e for e in exams if e.patient_id == "PAT777")
        assert normal.exam_key == normal.study_uids[0] and len(normal.study_uids) == 1
        assert normal.accessions == ("ACC7",)
        assert len(normal.images) == 4
        assert exams[0].exam_key == "Mass-Test_P_00001|20171004"  # newest first

        assert archive.exam("Mass-Test_P_00002|20161004") == keyed["Mass-Test_P_00002|20161004"]
        assert archive.exam("nope") is None


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.skipif(
    not CBIS_DIR.is_dir(),
    reason=f"CBIS-DDSM sample not found at {CBIS_DIR} (needs ../shared/data beside the repo)",
)
def test_import_cbis_ddsm_sample_gives_two_four_view_exams(archive_file: Path) -> None:
    files = sorted(CBIS_DIR.rglob("*.dcm"))
    assert len(files) == 8
    before = {f: (f.stat().st_mtime_ns, f.stat().st_size) for f in files}
    with Archive(archive_file) as archive:
        report = archive.import_paths([CBIS_DIR])
        assert len(report.imported) == 8, report.summary()
        # labels.csv is not DICOM: rejected, and the batch went on.
        assert [Path(r.path).name for r in report.rejected] == ["labels.csv"]
        exams = archive.exams()
        assert len(exams) == 2
        assert {e.patient_id for e in exams} == {"Mass-Test_P_00173", "Mass-Test_P_00820"}
        for exam in exams:
            assert len(exam.study_uids) == 4
            assert sorted(exam.views) == ["LCC", "LMLO", "RCC", "RMLO"]
        again = archive.import_paths([CBIS_DIR])
        assert len(again.duplicates) == 8 and archive.count() == 8
    assert {f: (f.stat().st_mtime_ns, f.stat().st_size) for f in files} == before


def test_report_summary_counts() -> None:
    report = ImportReport()
    assert report.summary().startswith("0 files: 0 imported, 0 duplicates, 0 rejected")


def test_every_table_owner_shares_one_connection_lifecycle(tmp_path) -> None:
    from mammotriage.net.outbox import Outbox
    from mammotriage.store import db
    from mammotriage.store.events import CorrectionLog

    path = tmp_path / "archive.sqlite"
    for owner, name in ((Archive(path), "archive"), (Outbox(path, folder=tmp_path / "out"), "outbox"),
                        (CorrectionLog(path, workstation="ws"), "database")):
        assert isinstance(owner, db.Connected)
        with owner:
            assert owner.conn.execute("SELECT 1").fetchone()[0] == 1
        owner.close()  # closing twice is harmless
        with pytest.raises(sqlite3.ProgrammingError, match=f"{name} is closed"):
            owner.conn  # noqa: B018 - the property raises
