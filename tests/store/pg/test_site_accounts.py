"""Site accounts on a real PostgreSQL: a reader signs in with their own role and password,
and the server accepts their events only under their sign-in. Before, the reader of an
event was a name any workstation could write (double reading's "two distinct readers"
trusted it)."""

from __future__ import annotations

import psycopg
import pytest
from pgsupport import running_cluster
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mammotriage.store.events import event_fields
from mammotriage.store.pg.accounts import AccountError, SiteAccounts, reader_role, sign_in
from mammotriage.store.pg.buffer import BufferedLog
from mammotriage.store.pg.cluster import DATABASE, SUPERUSER
from mammotriage.store.pg.events import TOKEN, SiteCorrectionLog, connect


@pytest.fixture(scope="module")
def cluster():
    with running_cluster() as c:
        with SiteAccounts(c.dsn("mt_admin"), c.dsn(SUPERUSER)) as accounts:
            accounts.add("dr_a", "password of dr a", "admin", DATABASE)
            accounts.add("dr_b", "password of dr b", "admin", DATABASE)
        yield c


def _as(cluster, reader: str, password: str) -> str:
    info = conninfo_to_dict(cluster.dsn("mt_workstation"))
    return make_conninfo(**{**info, "user": reader_role(reader), "password": password})


def _event(reader: str, token: str | None = None, **extra: str) -> dict[str, str]:
    made = event_fields("ws-1", reader=reader, exam_key="Exam-A", action="note", payload={"text": reader})
    return {**made, **extra, **({TOKEN: token} if token else {})}


def _stored(cluster, event_id: str) -> dict | None:
    with connect(cluster.dsn("mt_admin")) as conn:
        row = conn.execute("SELECT reader, account, session_token FROM correction_events WHERE event_id = %s",
                           (event_id,)).fetchone()
    return dict(row) if row else None


def test_events_are_accepted_only_under_their_readers_sign_in(cluster) -> None:
    with pytest.raises(AccountError, match="wrong name or password"):
        sign_in(_as(cluster, "dr_a", "not the password"), "ws-1")
    a = sign_in(_as(cluster, "dr_a", "password of dr a"), "ws-1")
    assert a.reader == "dr_a" and len(a.token) == 64
    with SiteCorrectionLog(cluster.dsn("mt_workstation"), "ws-1") as log:
        head = log.head()
        mine = _event("dr_a", a.token)
        log.send(mine)
        assert _stored(cluster, mine["event_id"]) == {"reader": "dr_a", "account": "dr_a", "session_token": None}
        log.send(mine)   # a retry of the same event: skipped, not refused
        refusals = [
            (_event("dr_b", a.token), "made as dr_b under the site sign-in of dr_a"),   # dr_a signing as dr_b
            (_event("dr_a", "0" * 64), "unknown site sign-in"),                         # a forged token
            (_event("dr_a", a.token, at="2099-01-01T00:00:00.000000Z"), "after the site sign-in expired"),
            (_event("dr_a", a.token, at="2001-01-01T00:00:00.000000Z"), "dated before its site sign-in"),
        ]
        for fields, why in refusals:
            with pytest.raises(psycopg.errors.CheckViolation, match=why):
                log.send(fields)
            assert _stored(cluster, fields["event_id"]) is None
        # without a sign-in: accepted (no account) until the site requires accounts
        plain = _event("dr_c")
        log.send(plain)
        assert _stored(cluster, plain["event_id"])["account"] is None
        with SiteAccounts(cluster.dsn("mt_admin"), cluster.dsn(SUPERUSER)) as accounts:
            accounts.require(True, "admin")
            try:
                with pytest.raises(psycopg.errors.CheckViolation, match="requires readers to sign in"):
                    log.send(_event("dr_c"))
                log.send(_event("dr_a", a.token))   # signed in: still accepted
                # a disabled account: its sign-ins and new sign-ins are refused
                accounts.set_enabled("dr_a", False, "admin")
                with pytest.raises(psycopg.errors.CheckViolation, match="account is disabled"):
                    log.send(_event("dr_a", a.token))
                with pytest.raises(AccountError, match="disabled"):
                    sign_in(_as(cluster, "dr_a", "password of dr a"), "ws-1")
                accounts.set_enabled("dr_a", True, "admin")
                assert accounts.listing()["required"] is True
                assert [r["reader"] for r in accounts.listing()["readers"]] == ["dr_a", "dr_b"]
            finally:
                accounts.require(False, "admin")
        assert log.head().count == head.count + 3   # the three accepted events, nothing else
        assert log.verify().ok


def test_a_buffered_event_carries_its_sign_in_and_a_false_one_is_refused_not_lost(cluster, tmp_path) -> None:
    b = sign_in(_as(cluster, "dr_b", "password of dr b"), "ws-2")
    with BufferedLog(cluster.dsn("mt_workstation"), tmp_path / "buffer.sqlite3", "ws-2") as log:
        good = log.keep(reader="dr_b", exam_key="Exam-B", action="note", payload={"text": "b"}, session_token=b.token)
        bad = log.keep(reader="dr_a", exam_key="Exam-B", action="note", payload={"text": "as a"},
                       session_token=b.token)
        assert log.flush() == 1
        assert _stored(cluster, good["event_id"])["account"] == "dr_b"
        refused = log.buffer.refused()
        assert [event_id for event_id, _ in refused] == [bad["event_id"]]
        assert "under the site sign-in of dr_b" in refused[0][1]
        kept = log.buffer.conn.execute("SELECT fields FROM refused").fetchone()[0]
        assert b.token not in kept   # a refused event keeps no sign-in


def test_double_reading_says_a_refused_event_was_not_recorded(cluster) -> None:
    """Review finding: under double reading the server's refusal was a raw psycopg error in a Qt slot."""
    from mammotriage.store.double_reading import DoubleReadingPolicy
    from mammotriage.store.events import CorrectionError
    from mammotriage.store.pg.double_reading import SiteDoubleReadingLog

    with SiteAccounts(cluster.dsn("mt_admin"), cluster.dsn(SUPERUSER)) as accounts:
        accounts.require(True, "admin")
        try:
            with SiteDoubleReadingLog(cluster.dsn("mt_workstation"), "dr_b", DoubleReadingPolicy(enabled=True),
                                      "ws-3") as log:
                with pytest.raises(CorrectionError, match=r"not recorded: the site refused it.*requires readers"):
                    log.append(reader="dr_b", exam_key="Exam-DR", action="note", payload={"text": "x"})
                log.sign_ins["dr_b"] = sign_in(_as(cluster, "dr_b", "password of dr b"), "ws-3").token
                assert log.append(reader="dr_b", exam_key="Exam-DR", action="note", payload={"text": "y"}).seq > 0
        finally:
            accounts.require(False, "admin")


def test_readers_roles_can_sign_in_and_nothing_else(cluster) -> None:
    dsn = _as(cluster, "dr_b", "password of dr b")
    with connect(dsn) as conn:
        for statement in ("SELECT * FROM correction_events", "SELECT * FROM mt_private.reader_sessions",
                          "INSERT INTO site_readers (reader, role, added_by) VALUES ('x', 'y', 'z')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with connect(cluster.dsn("mt_workstation")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM mt_private.reader_sessions")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # the workstation cannot sign anyone in
            conn.execute("SELECT mt_reader_sign_in('ws')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO correction_events (event_id, account) VALUES ('x', 'dr_a')")
    with SiteAccounts(cluster.dsn("mt_admin"), cluster.dsn(SUPERUSER)) as accounts:
        with pytest.raises(AccountError, match="already"):
            accounts.add("dr_a", "another password!", "admin", DATABASE)
        with pytest.raises(AccountError, match="at least 12"):
            accounts.add("dr_new", "short", "admin", DATABASE)


def test_a_password_never_reaches_the_servers_log(cluster) -> None:
    """Review finding: ``CREATE/ALTER ROLE ... PASSWORD`` sent the password as a literal, which
    the server writes into its log with the statement (``log_statement``, or any failing
    statement). Now the workstation side sends libpq's SCRAM-SHA-256 verifier."""
    with psycopg.connect(cluster.dsn(SUPERUSER, database="postgres"), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'ddl'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        with SiteAccounts(cluster.dsn("mt_admin"), cluster.dsn(SUPERUSER)) as accounts:
            accounts.add("dr_logged", "first secret of dr logged", "admin", DATABASE)
            accounts.password("dr_logged", "second secret of dr logged")
        assert sign_in(_as(cluster, "dr_logged", "second secret of dr logged"), "ws-1").reader == "dr_logged"
        with pytest.raises(AccountError, match="wrong name or password"):
            sign_in(_as(cluster, "dr_logged", "first secret of dr logged"), "ws-1")
    finally:
        with psycopg.connect(cluster.dsn(SUPERUSER, database="postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("SELECT pg_reload_conf()")
    log = cluster.log.read_text(encoding="utf-8", errors="replace")
    assert "ALTER ROLE" in log                                   # the statements were logged ...
    assert "secret of dr logged" not in log                      # ... without the passwords
    assert "SCRAM-SHA-256$4096:" in log
    with psycopg.connect(cluster.dsn(SUPERUSER, database="postgres")) as conn:
        for role in ("mt_admin", "mt_workstation", "mt_worker", reader_role("dr_logged")):
            stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0]
            assert stored.startswith("SCRAM-SHA-256$")


def test_a_soft_lock_is_taken_only_under_its_readers_sign_in(cluster) -> None:
    """Before, a workstation could show "being read by dr_a" for any name it gave: the
    lock's reader was not checked against a sign-in, even where the site requires accounts."""
    from mammotriage.store.events import CorrectionError
    from mammotriage.store.pg.double_reading import SiteReadingLocks

    def stored(exam: str) -> list[dict]:
        with connect(cluster.dsn("mt_admin")) as conn:
            return [dict(r) for r in conn.execute(
                "SELECT reader, action, account, session_token FROM reading_locks WHERE exam_key = %s ORDER BY id",
                (exam,)).fetchall()]

    a = sign_in(_as(cluster, "dr_a", "password of dr a"), "ws-7")
    with SiteReadingLocks(cluster.dsn("mt_workstation"), "ws-7") as locks:
        assert locks.take("Exam-L1", "dr_c").granted  # no sign-in, accounts not required: taken, no account
        locks.sign_ins["dr_a"] = a.token
        assert locks.take("Exam-L2", "dr_a").granted and locks.release("Exam-L2", "dr_a")
        locks.sign_ins["dr_b"] = a.token  # dr_a's sign-in offered for dr_b
        with pytest.raises(CorrectionError, match="taken as dr_b under the site sign-in of dr_a"):
            locks.take("Exam-L3", "dr_b")
        locks.sign_ins["dr_b"] = "0" * 64
        with pytest.raises(CorrectionError, match="unknown site sign-in"):
            locks.take("Exam-L3", "dr_b")
        with SiteAccounts(cluster.dsn("mt_admin"), cluster.dsn(SUPERUSER)) as accounts:
            accounts.require(True, "admin")
            try:
                with pytest.raises(CorrectionError, match="requires readers to sign in"):
                    locks.take("Exam-L4", "dr_c")
                assert locks.take("Exam-L4", "dr_a").granted  # signed in: taken
            finally:
                accounts.require(False, "admin")
    assert stored("Exam-L1") == [{"reader": "dr_c", "action": "take", "account": None, "session_token": None}]
    assert [(r["action"], r["account"], r["session_token"]) for r in stored("Exam-L2")] == [
        ("take", "dr_a", None), ("release", "dr_a", None)]
    assert stored("Exam-L3") == []
    assert [r["reader"] for r in stored("Exam-L4")] == ["dr_a"]


def test_a_sign_in_knows_when_it_ends_and_a_plain_token_never_does() -> None:
    from mammotriage.store.events import CorrectionError
    from mammotriage.store.pg.accounts import SignIn, SignInExpired, SignIns
    from mammotriage.store.pg.schema import SIGN_IN_HOURS

    now = [1_000_000.0]
    tokens = SignIns(clock=lambda: now[0])
    tokens.put(SignIn("dr_a", "t-a", now[0] + SIGN_IN_HOURS * 3600))
    tokens["dr_b"] = "t-b"   # set as a plain item (no end known here)
    assert tokens.token_for("dr_a") == "t-a" and tokens.token_for("dr_b") == "t-b"
    assert tokens.token_for("dr_c") is None and tokens.ends_at("dr_c") is None
    now[0] += SIGN_IN_HOURS * 3600
    with pytest.raises(SignInExpired, match=r"sign-in of dr_a ended at \d\d:\d\d .*12 hours.*sign in again"):
        tokens.token_for("dr_a")
    assert issubclass(SignInExpired, CorrectionError)  # said as "not recorded" wherever a change is refused
    assert tokens.token_for("dr_b") == "t-b"
    tokens["dr_a"] = "t-a2"  # replaced as a plain item: the old end goes with the old token
    assert tokens.token_for("dr_a") == "t-a2" and tokens.ends_at("dr_a") is None
    tokens.put(SignIn("dr_a", "t-a3", now[0] - 1))
    tokens.pop("dr_a")
    assert tokens.token_for("dr_a") is None and tokens.ends_at("dr_a") is None
    assert SignIn("x", "y").expires_at == float("inf")  # a sign-in made without an end never lapses here


def test_no_way_of_setting_a_token_keeps_the_end_of_the_sign_in_it_replaces() -> None:
    import copy

    from mammotriage.store.pg.accounts import SignIn, SignInExpired, SignIns

    now = [1_000_000.0]
    ended = SignIn("dr_a", "old", now[0] - 1)
    for renew in (lambda t: t.update({"dr_a": "new"}), lambda t: t.update(dr_a="new"),
                  lambda t: t.__ior__({"dr_a": "new"}), lambda t: (t.clear(), t.setdefault("dr_a", "new")),
                  lambda t: (t.popitem(), t.update([("dr_a", "new")]))):
        tokens = SignIns(clock=lambda: now[0])
        tokens.put(ended)
        with pytest.raises(SignInExpired):
            tokens.token_for("dr_a")
        renew(tokens)
        assert tokens.token_for("dr_a") == "new" and tokens.ends_at("dr_a") is None
    tokens = SignIns(clock=lambda: now[0])
    tokens.put(ended)
    for twin in (tokens.copy(), copy.copy(tokens)):
        assert isinstance(twin, SignIns)
        with pytest.raises(SignInExpired):
            twin.token_for("dr_a")
        twin["dr_a"] = "other"  # the copy's own book: the original's sign-in stays ended
        with pytest.raises(SignInExpired):
            tokens.token_for("dr_a")


def test_an_ended_sign_in_records_nothing_in_double_reading_and_takes_no_lock(cluster) -> None:
    """Before, the workstation sent a change under an ended sign-in and the server refused it
    (or, buffered, kept it refused where the reader never looked)."""
    import time

    from mammotriage.store.double_reading import DoubleReadingPolicy
    from mammotriage.store.pg.accounts import SignInExpired
    from mammotriage.store.pg.double_reading import SiteDoubleReadingLog, SiteReadingLocks
    from mammotriage.store.pg.schema import SIGN_IN_HOURS

    a = sign_in(_as(cluster, "dr_a", "password of dr a"), "ws-8")
    assert abs(a.expires_at - (time.time() + SIGN_IN_HOURS * 3600)) < 60  # when it was asked for, plus the hours
    with SiteDoubleReadingLog(cluster.dsn("mt_workstation"), "dr_a", DoubleReadingPolicy(enabled=True),
                              "ws-8") as log, SiteReadingLocks(cluster.dsn("mt_workstation"), "ws-8") as locks:
        for x in (log.sign_ins, locks.sign_ins):
            x.put(a)
        assert log.append(reader="dr_a", exam_key="Exam-END", action="note", payload={"text": "in time"}).seq > 0
        assert locks.take("Exam-END", "dr_a").granted
        for x in (log.sign_ins, locks.sign_ins):
            x.clock = lambda: a.expires_at + 1
        with pytest.raises(SignInExpired, match="sign in again"):
            log.append(reader="dr_a", exam_key="Exam-END", action="note", payload={"text": "too late"})
        with pytest.raises(SignInExpired):
            locks.take("Exam-END2", "dr_a")
    with connect(cluster.dsn("mt_admin")) as conn:
        notes = [r["payload"] for r in conn.execute(
            "SELECT payload FROM correction_events WHERE exam_key = 'Exam-END' ORDER BY seq").fetchall()]
        assert conn.execute("SELECT count(*) AS n FROM reading_locks WHERE exam_key = 'Exam-END2'").fetchone()["n"] == 0
    assert len(notes) == 1 and "in time" in notes[0]


def _admin_path(cluster, statement: str, params: tuple[object, ...]) -> None:
    """The documented admin path: the owner disables the table's triggers, changes a row."""
    with connect(cluster.dsn("mt_admin")) as conn, conn.transaction():
        conn.execute("ALTER TABLE correction_events DISABLE TRIGGER USER")
        conn.execute(statement, params)
        conn.execute("ALTER TABLE correction_events ENABLE TRIGGER USER")


def test_an_events_account_is_sealed_so_verify_finds_it_changed(cluster) -> None:
    """Before, ``account`` was outside the chain's hash and MAC: the admin path could give a
    signed event to another reader (or an unsigned one to anybody) and ``verify`` said ok."""
    a = sign_in(_as(cluster, "dr_a", "password of dr a"), "ws-1")
    with SiteCorrectionLog(cluster.dsn("mt_workstation"), "ws-1") as log:
        signed, plain = _event("dr_a", a.token), _event("dr_c")
        log.send(signed)
        log.send(plain)
    with connect(cluster.dsn("mt_admin")) as conn:
        rows = {r["event_id"]: r for r in conn.execute(
            "SELECT seq, event_id, account, account_mac FROM correction_events WHERE event_id IN (%s, %s)",
            (signed["event_id"], plain["event_id"]))}
    mine, other = rows[signed["event_id"]], rows[plain["event_id"]]
    assert mine["account"] == "dr_a" and other["account"] is None
    assert len(mine["account_mac"]) == 64 and len(other["account_mac"]) == 64
    admin = SiteCorrectionLog(cluster.dsn("mt_admin"))
    station = SiteCorrectionLog(cluster.dsn("mt_workstation"))
    try:
        report = admin.verify()
        assert report.ok, report.problems
        assert report.accounts_unsealed == 0   # this site sealed from its first event
        changes = [
            (mine, "account", "dr_b", "the account it shows ('dr_b') is not the one the server sealed"),
            (other, "account", "dr_a", "the account it shows ('dr_a') is not the one the server sealed"),
            (mine, "account", None, "the account it shows (none) is not the one the server sealed"),
        ]
        for row, column, value, why in changes:
            _admin_path(cluster, f"UPDATE correction_events SET {column} = %s WHERE seq = %s", (value, row["seq"]))
            problems = admin.verify().problems
            assert any(f"event {row['seq']} " in p and why in p for p in problems), problems
            assert station.verify().ok   # without the key the account's change cannot be seen ...
            _admin_path(cluster, f"UPDATE correction_events SET {column} = %s WHERE seq = %s",
                        (row[column], row["seq"]))
        # ... but a seal taken away can: by anyone who may verify
        _admin_path(cluster, "UPDATE correction_events SET account_mac = NULL WHERE seq = %s", (mine["seq"],))
        for log in (admin, station):
            problems = log.verify().problems
            assert any(f"event {mine['seq']} " in p and "account seal is missing" in p for p in problems), problems
        _admin_path(cluster, "UPDATE correction_events SET account_mac = %s WHERE seq = %s",
                    (mine["account_mac"], mine["seq"]))
        assert admin.verify().ok
    finally:
        admin.close()
        station.close()


def test_events_from_before_account_seals_are_counted_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site upgraded to version 10: its older events have no seal (counted as unsealed,
    not problems); what it stores from then on is sealed, and a seal cannot be faked by
    stripping it from a newer event."""
    from mammotriage.store.pg import schema

    before = schema.ACCOUNT_SEAL_VERSION - 1
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:before])
    with running_cluster() as old:
        monkeypatch.undo()
        with SiteCorrectionLog(old.dsn("mt_workstation"), "ws-1") as log:
            for i in range(3):
                log.append(reader="dr_c", exam_key="E-old", action="note", payload={"text": str(i)})
        with psycopg.connect(old.dsn("mt_admin"), autocommit=True) as conn:
            assert schema.migrate(conn) == schema.SCHEMA_VERSION
        with SiteCorrectionLog(old.dsn("mt_workstation"), "ws-1") as log:
            new = log.append(reader="dr_c", exam_key="E-new", action="note", payload={"text": "new"})
        with SiteCorrectionLog(old.dsn("mt_admin")) as admin:
            report = admin.verify()
            assert report.ok, report.problems
            assert (report.events, report.accounts_unsealed) == (4, 3)
            _admin_path(old, "UPDATE correction_events SET account_mac = NULL WHERE seq = %s", (new.seq,))
            assert any(f"event {new.seq} " in p and "seal is missing" in p for p in admin.verify().problems)


def test_stripping_every_seal_and_their_start_is_found_too() -> None:
    """Review finding: with the start of sealing written by the first sealed event, the
    admin path could strip every seal and that record, and verify (with or without the
    key) said ok, counting every event as from before sealing. The migration writes it now."""
    with running_cluster() as site:
        with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-1") as log:
            log.append(reader="dr_c", exam_key="E-strip", action="note", payload={"text": "x"})
        with connect(site.dsn("mt_admin")) as conn, conn.transaction():
            conn.execute("ALTER TABLE correction_events DISABLE TRIGGER USER")
            conn.execute("ALTER TABLE account_seal_from DISABLE TRIGGER USER")
            conn.execute("UPDATE correction_events SET account_mac = NULL")
            conn.execute("DELETE FROM account_seal_from")
            conn.execute("ALTER TABLE account_seal_from ENABLE TRIGGER USER")
            conn.execute("ALTER TABLE correction_events ENABLE TRIGGER USER")
        for dsn in (site.dsn("mt_admin"), site.dsn("mt_workstation")):
            with SiteCorrectionLog(dsn) as log:
                report = log.verify()
            assert not report.ok and any("account_seal_from) is missing" in p for p in report.problems), \
                report.problems
