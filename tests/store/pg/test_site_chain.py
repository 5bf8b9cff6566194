"""The site store on a real PostgreSQL: the cluster, the roles, the server-extended chain."""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pgsupport import require_postgres, running_cluster

from mammotriage.store.events import event_fields, event_hash
from mammotriage.store.pg import cluster as cluster_module
from mammotriage.store.pg.cluster import PgCluster, PgError, PgMissingError, find_bindir
from mammotriage.store.pg.events import SiteCorrectionLog, connect


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _fields(**kw: object) -> dict[str, str]:
    base: dict[str, object] = {"reader": "dr_a", "exam_key": "E1", "action": "note", "payload": {"text": "x"}}
    base.update(kw)
    return event_fields("ws-test", **base)  # type: ignore[arg-type]


# ----------------------------------------------------------------- the cluster
def test_cluster_is_local_scram_only_with_private_passwords(site: PgCluster) -> None:
    assert stat.S_IMODE(site.secrets.stat().st_mode) == 0o700
    for role in ("postgres", "mt_admin", "mt_workstation", "mt_worker"):
        assert stat.S_IMODE(site.password_file(role).stat().st_mode) == 0o600
    hba = (site.data / "pg_hba.conf").read_text()
    assert "trust" not in hba and "scram-sha-256" in hba
    status = site.status()
    assert status.initialised and status.running and status.pid
    with connect(site.dsn("mt_admin")) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == {"listen_addresses": "127.0.0.1"}
        assert conn.execute("SHOW password_encryption").fetchone() == {"password_encryption": "scram-sha-256"}
    bad = site.dsn("mt_workstation").replace(site.password("mt_workstation"), "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(bad)


def test_init_refuses_a_folder_that_holds_a_cluster(site: PgCluster) -> None:
    with pytest.raises(PgError, match="already holds"):
        PgCluster(site.folder, site.port).init()


def test_status_of_an_empty_folder(tmp_path: Path) -> None:
    status = PgCluster(tmp_path / "nothing", 1).status()
    assert not status.initialised and not status.running and status.pid is None


def test_missing_binaries_name_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cluster_module.ENV_BINDIR, str(tmp_path))
    with pytest.raises(PgMissingError, match="does not hold initdb"):
        find_bindir()
    monkeypatch.delenv(cluster_module.ENV_BINDIR)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cluster_module, "_DEBIAN_ROOT", tmp_path / "none")
    with pytest.raises(PgMissingError, match="apt-get install postgresql"):
        find_bindir()


def test_missing_binaries_skip_here_and_fail_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cluster_module.ENV_BINDIR, str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="does not hold initdb"):
        require_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install the Debian package postgresql"):
        require_postgres()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="only a root run hands the folder over")
def test_as_root_a_folder_the_server_account_cannot_reach_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(PgError, match="cannot enter"):
        PgCluster(private / "site", 1).init()


# ----------------------------------------------------------------- roles
def test_workstation_may_append_and_read_but_not_update_or_delete(site: PgCluster) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-roles") as log:
        event = log.append(reader="dr_a", exam_key="E-roles", action="birads", payload={"birads": 2})
        assert event.seq >= 1 and [e.event_id for e in log.events("E-roles")] == [event.event_id]
    with connect(site.dsn("mt_workstation")) as conn:
        for statement in ("UPDATE correction_events SET reader = 'x'", "DELETE FROM correction_events",
                          "TRUNCATE correction_events", "UPDATE audit_head SET count = 0",
                          "SELECT * FROM mt_private.audit_key"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # The server assigns the chain: a workstation cannot even name the columns.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO correction_events (event_id, at, reader, workstation, exam_key, action, hash) "
                         "VALUES ('forged', 'now', 'dr_a', 'ws', 'E', 'note', 'abc')")


def test_the_owner_is_refused_by_the_triggers(site: PgCluster) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-owner") as log:
        log.append(reader="dr_a", exam_key="E-owner", action="note", payload={"text": "keep"})
    with connect(site.dsn("mt_admin")) as conn:
        for statement in ("UPDATE correction_events SET payload = '' WHERE exam_key = 'E-owner'",
                          "DELETE FROM correction_events WHERE exam_key = 'E-owner'",
                          "TRUNCATE correction_events", "UPDATE audit_head SET count = 0",
                          "DELETE FROM audit_head", "UPDATE site_identity SET archive_id = 'other'"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)


# ----------------------------------------------------------------- the chain
def test_the_server_hash_is_event_hash_and_the_mac_is_the_site_key(site: PgCluster) -> None:
    awkward = 'quote " backslash \\ newline \n tab \t bell \x07 \x1f é ü 乳 😀 \u2028 </script> \x7f'
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-é " + awkward) as log:
        event = log.append(reader="dr_" + awkward, exam_key="E-awk" + awkward, action="note",
                           payload={"text": awkward})
    with connect(site.dsn("mt_admin")) as conn:
        row = conn.execute("SELECT * FROM correction_events WHERE event_id = %s", (event.event_id,)).fetchone()
        secret = bytes(conn.execute("SELECT secret FROM mt_private.audit_key").fetchone()["secret"])
    assert row["reader"] == "dr_" + awkward  # stored as sent, not escaped
    assert event_hash(row) == event.hash == row["hash"]
    assert hmac.new(secret, event.hash.encode(), "sha256").hexdigest() == event.mac


def test_sending_twice_stores_once_and_other_content_is_refused(site: PgCluster) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation")) as log:
        fields = _fields(exam_key="E-idem")
        first = log.send(fields)
        head = log.head()
        again = log.send(dict(fields))
        assert again == first and log.head() == head
        assert len(log.events("E-idem")) == 1
        with pytest.raises(psycopg.errors.UniqueViolation, match="different content"):
            log.send(dict(fields, payload='{"text": "changed"}'))
        with pytest.raises(psycopg.errors.CheckViolation):
            log.send(dict(_fields(), action="erase"))
        assert log.head() == head


def test_verify_as_owner_and_as_workstation(site: PgCluster) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation")) as log:
        for i in range(3):
            log.append(reader="dr_b", exam_key="E-verify", action="birads", payload={"birads": i})
        ws = log.verify()
    assert ws.ok, ws.problems
    assert not ws.macs_checked
    with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
        report = admin.verify()
    assert report.ok, report.problems
    assert report.macs_checked and report.events >= 3
    assert report.head is not None and report.head["count"] == report.events


def _admin_sql(site: PgCluster, *statements: str, params: tuple[object, ...] = ()) -> None:
    """The documented admin path: the owner disables the triggers, changes rows, re-enables them."""
    with connect(site.dsn("mt_admin")) as conn, conn.transaction():
        conn.execute("ALTER TABLE correction_events DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement, params or None)
        conn.execute("ALTER TABLE correction_events ENABLE TRIGGER USER")


def test_verify_finds_what_the_admin_path_changed(site: PgCluster) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation")) as log:
        made = [log.append(reader="dr_c", exam_key="E-tamper", action="note", payload={"text": str(i)})
                for i in range(4)]
    admin = SiteCorrectionLog(site.dsn("mt_admin"))
    with connect(site.dsn("mt_admin")) as conn:
        rows = {r["seq"]: r for r in conn.execute("SELECT * FROM correction_events WHERE exam_key = 'E-tamper'")}
    columns = list(next(iter(rows.values())))
    insert = f"INSERT INTO correction_events ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"

    def restore(seq: int) -> None:
        with connect(site.dsn("mt_admin")) as conn, conn.transaction():
            conn.execute("ALTER TABLE correction_events DISABLE TRIGGER USER")
            conn.execute(f"DELETE FROM correction_events WHERE seq = {seq:d}")
            conn.execute(insert, [rows[seq][c] for c in columns])
            conn.execute("ALTER TABLE correction_events ENABLE TRIGGER USER")

    middle, last = made[1].seq, made[-1].seq
    try:
        _admin_sql(site, f"UPDATE correction_events SET payload = '{{\"text\": \"edited\"}}' WHERE seq = {middle:d}")
        assert any(f"event {middle} " in p and "content changed" in p for p in admin.verify().problems)
        restore(middle)
        _admin_sql(site, f"UPDATE correction_events SET mac = repeat('0', 64) WHERE seq = {middle:d}")
        assert any("MAC does not match" in p for p in admin.verify().problems)
        restore(middle)
        assert admin.verify().ok
        _admin_sql(site, f"DELETE FROM correction_events WHERE seq = {middle:d}")
        problems = admin.verify().problems
        assert any("are missing (deleted)" in p for p in problems), problems
        restore(middle)
        _admin_sql(site, f"DELETE FROM correction_events WHERE seq = {last:d}")
        problems = admin.verify().problems
        assert any("truncated" in p for p in problems), problems
        restore(last)
        assert admin.verify().ok
    finally:
        admin.close()


def test_verify_finds_a_head_record_changed_without_the_key(site: PgCluster) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation")) as log:
        log.append(reader="dr_e", exam_key="E-head", action="note", payload={"text": "h"})
    with connect(site.dsn("mt_admin")) as conn:
        head = conn.execute("SELECT count, last_seq, last_hash, mac FROM audit_head").fetchone()
    change = "UPDATE audit_head SET count = count + 1"
    undo = "UPDATE audit_head SET count = %s, last_seq = %s, last_hash = %s, mac = %s"
    with connect(site.dsn("mt_admin")) as conn, conn.transaction():
        conn.execute("ALTER TABLE audit_head DISABLE TRIGGER USER")
        conn.execute(change)
        conn.execute("ALTER TABLE audit_head ENABLE TRIGGER USER")
    try:
        with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
            problems = admin.verify().problems
        assert any("head record has a wrong MAC" in p for p in problems), problems
    finally:
        with connect(site.dsn("mt_admin")) as conn, conn.transaction():
            conn.execute("ALTER TABLE audit_head DISABLE TRIGGER USER")
            conn.execute(undo, (head["count"], head["last_seq"], head["last_hash"], head["mac"]))
            conn.execute("ALTER TABLE audit_head ENABLE TRIGGER USER")
    with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
        assert admin.verify().ok


def test_a_repeatable_read_transaction_cannot_extend_the_chain(site: PgCluster) -> None:
    fields = _fields(exam_key="E-iso")
    columns = [c for c in fields if c != "prev_hash"]
    with connect(site.dsn("mt_workstation")) as conn, \
            pytest.raises(psycopg.errors.RaiseException, match="READ COMMITTED"), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(f"INSERT INTO correction_events ({', '.join(columns)}) "
                     f"VALUES ({', '.join(['%s'] * len(columns))})", [fields[c] for c in columns])
    with SiteCorrectionLog(site.dsn("mt_workstation")) as log:
        assert log.events("E-iso") == []


def test_backup_and_restore_keep_the_chain_and_its_key(site: PgCluster, tmp_path: Path) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-backup") as log:
        log.append(reader="dr_d", exam_key="E-backup", action="note", payload={"text": "kept"})
    dump = site.backup(tmp_path / "site.dump")
    with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
        original = admin.verify()
    with running_cluster() as other:
        other.restore(dump)
        with SiteCorrectionLog(other.dsn("mt_admin")) as admin:
            restored = admin.verify()
            assert restored.ok and restored.macs_checked, restored.problems
            assert (restored.events, restored.head) == (original.events, original.head)
        with SiteCorrectionLog(other.dsn("mt_workstation"), "ws-after") as log:
            after = log.append(reader="dr_d", exam_key="E-after", action="note", payload={"text": "next"})
        assert after.seq == original.events + 1
        with SiteCorrectionLog(other.dsn("mt_admin")) as admin:
            assert admin.verify().ok
    with pytest.raises(PgError, match="no backup"):
        site.restore(tmp_path / "missing.dump")


def test_the_site_schema_accepts_every_action_of_the_local_log() -> None:
    from mammotriage.store.events import ACTIONS
    from mammotriage.store.pg.schema import SITE_ACTIONS

    assert set(ACTIONS) == set(SITE_ACTIONS), "a new action needs a site migration that widens the CHECK"


def test_an_arbitration_is_chained_on_the_site_server(site: PgCluster) -> None:
    """Double reading's ``arbitrate`` event (schema version 3 widens version 1's CHECK)."""
    payload = {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": "4A", "density": "b"}},
               "recall": True, "rule": "recall", "reasons": ["recall differs"],
               "reads": [{"reader": "dr_a", "seq": 1}, {"reader": "dr_b", "seq": 2}]}
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-arb") as log:
        event = log.append(reader="dr_c", exam_key="E-arb", action="arbitrate", payload=payload)
    assert event.action == "arbitrate" and event.seq > 0
    with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
        assert admin.verify().ok
