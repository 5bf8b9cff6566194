"""``mammotriage site migrate``: a standalone archive into a site, with both real servers.

One site server (PostgreSQL + Orthanc on loopback) for the module; each test builds its
own standalone archive (phantom exams with their own UIDs, corrections in the SQLite
chain) in the test's MAMMOTRIAGE_HOME and migrates it with the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from netsupport import free_ports, require_postgres
from orthancsupport import require_orthanc

from mammotriage.cli import main
from mammotriage.net import site
from mammotriage.net.dicomweb import DicomWebArchive
from mammotriage.net.site_migrate import audit_provenance
from mammotriage.phantom import generate_exam
from mammotriage.store.archive import Archive
from mammotriage.store.events import CorrectionLog, event_hash
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.events import SiteCorrectionLog, connect
from mammotriage.store.pg.schema import CHAIN_LOCK

APP = Path(__file__).resolve().parents[2] / "app"


@dataclass
class Site:
    folder: Path
    cluster: PgCluster
    profile: Path
    web: DicomWebArchive


@pytest.fixture(scope="module")
def site_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_orthanc()
    require_postgres()
    # tempfile, not tmp_path: run as root, the cluster is handed to the postgres account
    parent = Path(tempfile.mkdtemp(prefix="mt-migrate-"))
    parent.chmod(0o755)
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    site.init_site(folder, pg_port=pg_port, http_port=http_port, dicom_port=dicom_port)
    try:
        site.start_site(folder)
        cluster, orthanc, _ = site.load_site(folder)
        profile = tmp_path_factory.mktemp("migrate-profile") / "ws.json"
        assert main(["site", "profile", str(folder), "--role", "workstation", "--out", str(profile)]) == 0
        web = DicomWebArchive.for_server(orthanc, tmp_path_factory.mktemp("migrate-cache"), 64 << 20)
        try:
            yield Site(folder, cluster, profile, web)
        finally:
            web.close()
    finally:
        site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


@dataclass
class Standalone:
    home: Path
    files: list[Path]
    sops: list[str]
    studies: list[str]
    archive_id: str


def _standalone(seed: int, exams: int = 2, notes: int = 0) -> Standalone:
    """Phantom exams imported into this test's archive, with corrections on each."""
    home = Path(os.environ["MAMMOTRIAGE_HOME"])
    files: list[Path] = []
    studies: list[str] = []
    for n in range(exams):
        exam = generate_exam(seed, exam_number=n + 1, rows=128, columns=96)
        files += list(exam.save(home / "incoming" / f"exam{n}").values())
        studies.append(exam.study_uid)
    archive_file = home / "archive.sqlite"
    with Archive(archive_file) as archive:
        report = archive.import_paths([home / "incoming"])
        assert not report.rejected and len(report.imported) == len(files)
        records = archive.exams()
    sops = [i.sop_uid for e in records for i in e.images]
    with CorrectionLog(archive_file, "standalone-ws") as log:
        for record in records:
            image = record.images[0]
            add = log.append(reader="dr_a", exam_key=record.exam_key, action="add", study_uid=image.study_uid,
                             series_uid=image.series_uid, sop_uid=image.sop_uid, pixel_sha256="a" * 64,
                             kind="mass", geometry={"type": "box", "box": [10, 10, 40, 30]})
            log.append(reader="dr_a", exam_key=record.exam_key, action="undo", target=add.event_id)
            log.append(reader="dr_a", exam_key=record.exam_key, action="birads", payload={"birads": 4})
            log.append(reader="dr_a", exam_key=record.exam_key, action="density", payload={"density": "C"})
        for i in range(notes):
            log.append(reader="dr_b", exam_key=records[0].exam_key, action="note",
                       payload={"text": f"note {i} \u00e9\n\"q\""})
        assert log.verify().ok
        archive_id = log.archive_id
    return Standalone(home, files, sops, studies, archive_id)


def _source_events(home: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(home / "archive.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM correction_events ORDER BY seq").fetchall()
    finally:
        conn.close()


def _migrate(s: Site, home: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["site", "migrate", "--profile", str(s.profile), "--home", str(home), "--json", *extra])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def _held(s: Site, studies: list[str]) -> set[str]:
    return {i.sop_uid for uid in studies for i in s.web.find_instances(uid)}


def _site_rows(s: Site, archive_id: str) -> list[dict[str, Any]]:
    with connect(s.cluster.dsn("mt_admin")) as conn:
        return conn.execute(
            "SELECT c.*, m.source_archive, m.source_seq, m.source_prev_hash, m.source_hash, m.source_mac, "
            "m.migrated_by FROM migrated_events m JOIN correction_events c USING (event_id) "
            "WHERE m.source_archive = %s ORDER BY c.seq", (archive_id,)).fetchall()


def _check_site_copy(s: Site, local: Standalone) -> None:
    """The site holds every standalone event once, in order, with provenance, and verifies."""
    source = _source_events(local.home)
    rows = _site_rows(s, local.archive_id)
    assert [r["event_id"] for r in rows] == [r["event_id"] for r in source]  # each once, in order
    for got, orig in zip(rows, source, strict=True):
        assert (got["source_seq"], got["source_hash"], got["source_prev_hash"], got["source_mac"]) == (
            orig["seq"], orig["hash"], orig["prev_hash"], orig["mac"])
        for name in ("at", "reader", "workstation", "exam_key", "sop_uid", "action", "target", "geometry",
                     "payload"):
            assert got[name] == orig[name]
        assert event_hash(dict(got, prev_hash=got["source_prev_hash"])) == orig["hash"]
        # re-chained by the server: its hash over its own previous hash, its MAC under the site's key
        assert got["hash"] == event_hash(got) and got["mac"] != orig["mac"]
        assert got["migrated_by"] == "mt_workstation"
    with SiteCorrectionLog(s.cluster.dsn("mt_admin")) as admin:
        report = admin.verify()
        assert report.ok and report.macs_checked, report.problems
        assert audit_provenance(admin, local.archive_id) == []


def _blocked_migration(s: Site, home: Path, action: Callable[[subprocess.Popen[str]], object]
                       ) -> tuple[int, str]:
    """Run ``site migrate`` in a child process while the test holds the chain's lock; once
    the child's first batch waits for it (inside its transaction), do ``action`` to it,
    then let go. Returns the child's exit status and stdout."""
    env = dict(os.environ, PYTHONPATH=str(APP), OMP_NUM_THREADS="1")
    holder = psycopg.connect(s.cluster.dsn("mt_admin"), autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
    proc = subprocess.Popen([sys.executable, "-m", "mammotriage", "site", "migrate", "--profile", str(s.profile),
                             "--home", str(home), "--batch", "10", "--quiet", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        waiting = 0
        while time.monotonic() < deadline and proc.poll() is None:
            row = holder.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND NOT granted").fetchone()
            waiting = int(row[0]) if row else 0
            if waiting:
                break
            time.sleep(0.1)
        assert waiting, f"the migration never reached the chain (exit {proc.poll()})"
        action(proc)
    finally:
        with contextlib.suppress(psycopg.Error):
            holder.execute("SELECT pg_advisory_unlock(%s)", (CHAIN_LOCK,))
        holder.close()
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc.returncode, out


# ----------------------------------------------------------------- the tests

def test_dry_run_then_migrate_then_nothing_twice(site_server: Site, capsys: pytest.CaptureFixture[str]) -> None:
    local = _standalone(seed=7101, notes=3)
    n_events = len(_source_events(local.home))
    with SiteCorrectionLog(site_server.cluster.dsn()) as log:
        head_before = log.head()

    code, dry, err = _migrate(site_server, local.home, "--dry-run", capsys=capsys)
    assert code == 0, err
    assert dry["dry_run"] and dry["images"]["to_send"] == len(local.sops) and dry["images"]["sent"] == 0
    assert dry["events"]["to_migrate"] == n_events and dry["events"]["migrated"] == 0
    assert _held(site_server, local.studies) == set() and _site_rows(site_server, local.archive_id) == []
    with SiteCorrectionLog(site_server.cluster.dsn()) as log:
        assert log.head() == head_before  # nothing sent

    code, first, err = _migrate(site_server, local.home, capsys=capsys)
    assert code == 0, err
    assert first["ok"] and first["source"]["archive_id"] == local.archive_id
    assert first["images"] == {"total": len(local.sops), "sent": len(local.sops), "skipped": 0, "failed": 0,
                               "verified": len(local.sops), "to_send": 0, "problems": []}
    assert first["events"]["migrated"] == n_events and first["events"]["skipped"] == 0
    assert first["site"]["chain_ok"] and first["site"]["provenance_ok"]
    assert "migrate: images" in err and "migrate: corrections" in err  # progress on stderr
    assert _held(site_server, local.studies) == set(local.sops)
    _check_site_copy(site_server, local)
    assert all(f.exists() for f in local.files)  # nothing deleted locally
    with CorrectionLog(local.home / "archive.sqlite") as log:
        assert log.verify().ok and len(log.events()) == n_events

    code, second, err = _migrate(site_server, local.home, capsys=capsys)
    assert code == 0, err
    assert (second["images"]["sent"], second["images"]["skipped"]) == (0, len(local.sops))
    assert (second["events"]["migrated"], second["events"]["skipped"]) == (0, n_events)
    assert second["site"]["head"] == first["site"]["head"]  # the site chain did not move
    _check_site_copy(site_server, local)

    # the workstation went on standalone: only the new event moves, after the others
    with CorrectionLog(local.home / "archive.sqlite", "standalone-ws") as log:
        log.append(reader="dr_a", exam_key="late", action="note", payload={"text": "after the first migration"})
    code, third, _ = _migrate(site_server, local.home, capsys=capsys)
    assert code == 0 and third["events"]["migrated"] == 1 and third["events"]["skipped"] == n_events
    _check_site_copy(site_server, local)

    text_code = main(["site", "migrate", "--profile", str(site_server.profile), "--home", str(local.home),
                      "--quiet"])
    said = capsys.readouterr()
    assert text_code == 0 and "chain verified" in said.out and "0 migrated" in said.out and said.err == ""


def test_a_limit_then_a_kill_mid_transaction_then_a_rerun_moves_everything_once(
        site_server: Site, capsys: pytest.CaptureFixture[str]) -> None:
    local = _standalone(seed=7202, notes=40)
    n_events = len(_source_events(local.home))
    assert n_events > 40

    # a staged run stops at the limit (exit 1, says so); what it moved is complete
    code, first, _ = _migrate(site_server, local.home, "--limit", "5", "--batch", "4", capsys=capsys)
    assert code == 1 and "--limit 5" in first["stopped"]
    assert first["images"]["sent"] == 5 and first["events"]["migrated"] == 0
    code, second, _ = _migrate(site_server, local.home, "--limit", "25", "--batch", "10", capsys=capsys)
    assert code == 1 and second["images"]["sent"] == len(local.sops) - 5 and second["events"]["migrated"] == 25
    assert len(_site_rows(site_server, local.archive_id)) == 25

    # a run killed (SIGKILL) while its batch waits on the chain's lock, inside its transaction
    code, _ = _blocked_migration(site_server, local.home, lambda proc: proc.send_signal(signal.SIGKILL))
    assert code == -signal.SIGKILL
    assert len(_site_rows(site_server, local.archive_id)) == 25  # the killed batch left nothing

    code, last, err = _migrate(site_server, local.home, capsys=capsys)
    assert code == 0, err
    assert last["events"]["migrated"] == n_events - 25 and last["events"]["skipped"] == 25
    assert last["images"]["skipped"] == len(local.sops) and last["images"]["sent"] == 0
    _check_site_copy(site_server, local)
    assert _held(site_server, local.studies) == set(local.sops)


def test_a_forged_chain_is_refused_and_nothing_moves(site_server: Site, capsys: pytest.CaptureFixture[str]) -> None:
    local = _standalone(seed=7303)
    conn = sqlite3.connect(local.home / "archive.sqlite")
    conn.execute("DROP TRIGGER correction_events_no_update")
    conn.execute("UPDATE correction_events SET payload = '{\"birads\": 1}' WHERE seq = 3")
    conn.commit()
    conn.close()
    code = main(["site", "migrate", "--profile", str(site_server.profile), "--home", str(local.home)])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert "does not verify, nothing was migrated" in out.err and "event 3 (" in out.err
    assert "content changed" in out.err
    assert _held(site_server, local.studies) == set() and _site_rows(site_server, local.archive_id) == []


def test_unreadable_files_are_reported_and_the_rest_migrates(site_server: Site,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    local = _standalone(seed=7404)
    gone, garbage = local.files[0], local.files[5]
    gone.unlink()
    size = garbage.stat().st_size
    garbage.write_bytes(b"\0not dicom" * (size // 10) + b"x" * (size % 10))  # same size, other content
    code, report, err = _migrate(site_server, local.home, capsys=capsys)
    assert code == 1
    images = report["images"]
    assert (images["sent"], images["failed"], images["verified"]) == (len(local.sops) - 2, 2, len(local.sops) - 2)
    reasons = {p["file"]: p["reason"] for p in images["problems"]}
    assert "no such file" in reasons[str(gone)] and "sha256 differs" in reasons[str(garbage)]
    assert str(gone) in err and str(garbage) in err  # said on stderr as it happened
    assert report["events"]["migrated"] == len(_source_events(local.home))  # the corrections moved anyway
    _check_site_copy(site_server, local)
    assert garbage.exists() and garbage.stat().st_size == size  # nothing deleted or repaired locally
    assert len(_held(site_server, local.studies)) == len(local.sops) - 2

    code, again, _ = _migrate(site_server, local.home, capsys=capsys)
    assert code == 1 and again["images"]["sent"] == 0 and again["images"]["failed"] == 2
    assert again["images"]["skipped"] == len(local.sops) - 2 and again["events"]["migrated"] == 0


def test_false_provenance_is_refused_by_the_server(site_server: Site) -> None:
    with SiteCorrectionLog(site_server.cluster.dsn()) as log:
        event = log.append(reader="dr_c", exam_key="E-prov", action="note", payload={"text": "site-born"})
        with pytest.raises(psycopg.errors.CheckViolation, match="does not hash to its source hash"):
            log.conn.execute("INSERT INTO migrated_events (event_id, source_archive, source_seq, "
                             "source_prev_hash, source_hash) VALUES (%s, 'x', 1, %s, %s)",
                             (event.event_id, "0" * 64, "f" * 64))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            log.conn.execute("DELETE FROM migrated_events")
    with connect(site_server.cluster.dsn("mt_admin")) as owner:  # append-only for the owner too
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            owner.execute("UPDATE migrated_events SET source_seq = source_seq + 1")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            owner.execute("TRUNCATE migrated_events")


def test_errors_before_anything_moves(site_server: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["site", "migrate", "--profile", str(site_server.profile), "--home", str(tmp_path / "none")])
    assert code == 2 and "no standalone archive there" in capsys.readouterr().err
    code = main(["site", "migrate", "--profile", str(tmp_path / "missing.json"), "--home", str(tmp_path)])
    assert code == 2 and "no such site profile" in capsys.readouterr().err
    local = _standalone(seed=7505, exams=1)
    code = main(["site", "migrate", "--profile", str(site_server.profile), "--home", str(local.home),
                 "--batch", "0"])
    assert code == 2 and "--batch must be at least 1" in capsys.readouterr().err


def test_the_store_restarting_midway_stops_the_run_and_a_rerun_completes(
        site_server: Site, capsys: pytest.CaptureFixture[str]) -> None:
    local = _standalone(seed=7606, notes=20)
    n_events = len(_source_events(local.home))
    code, out = _blocked_migration(site_server, local.home, lambda proc: site_server.cluster.restart())
    assert code == 1, out
    report = json.loads(out)
    assert report["stopped"].startswith("the site store") and report["events"]["migrated"] == 0
    assert report["images"]["sent"] == len(local.sops)  # the images went before the store was lost
    assert _site_rows(site_server, local.archive_id) == []  # the batch cut off by the restart left nothing
    code, again, err = _migrate(site_server, local.home, capsys=capsys)
    assert code == 0, err
    assert again["events"]["migrated"] == n_events and again["images"]["skipped"] == len(local.sops)
    _check_site_copy(site_server, local)
