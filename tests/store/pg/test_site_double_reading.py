"""Double reading's store rules on both backends (a real SQLite file, a real PostgreSQL):
blinding across workstations, the roles under racing appends, soft locks that show their
holder, expire, go to exactly one of two racing workstations, and cannot be deleted."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from drsupport import BACKENDS, DoubleStore, double_store
from pgsupport import running_cluster

from mammotriage.store.double_reading import StatusIndex, StoreUnreachable, exam_statuses
from mammotriage.store.events import CorrectionError
from mammotriage.store.labels import fold
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.schema import SCHEMA_VERSION, schema_version

SHA = "cd" * 32
SOP = "1.2.3.4.5"
BOX = {"type": "box", "box": [1, 1, 9, 9]}
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def site_cluster() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DoubleStore]:
    yield from double_store(request, tmp_path)


def _assessment(birads: str, recall: bool) -> dict:
    return {"breasts": {"R": {"birads": birads, "density": "b"}, "L": {"birads": "1", "density": "b"}},
            "recall": recall}


def _race(calls: list[Callable[[], Any]]) -> list[str]:
    """Run the calls at the same moment, one thread each; "ok" or the refusal of each."""
    barrier, outcome, guard = threading.Barrier(len(calls)), [], threading.Lock()

    def go(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            result = call()
            text = "ok" if getattr(result, "granted", True) else "refused"
        except CorrectionError as exc:
            text = str(exc)
        with guard:
            outcome.append(text)

    threads = [threading.Thread(target=go, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcome


def test_blinding_across_workstations(store: DoubleStore) -> None:
    key = store.key(1)
    a, b = store.log("ann"), store.log("bob")
    a.append(reader="ann", exam_key=key, action="add", sop_uid=SOP, pixel_sha256=SHA, kind="mass", geometry=BOX)
    a.append(reader="ann", exam_key=key, action="sign", payload=_assessment("4A", True))
    b.append(reader="bob", exam_key=key, action="note", payload={"text": "looking"})
    # bob's workstation sees nothing of ann's read, through every query the viewer makes
    assert {e.reader for e in b.events(exam_key=key)} == {"bob"}
    assert {e.reader for e in b.events(sop_uid=SOP)} == set()
    assert set(fold(b.events(exam_key=key))) == {"bob"}
    assert b.status(key).state == "first read"
    assert {e.reader for e in store.stored()} == {"ann", "bob"}  # the store holds both
    assert store.site().case(key).labels == {}  # nor does the side-by-side view show it yet
    b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("1", False))
    assert {e.reader for e in b.events(exam_key=key)} == {"ann", "bob"}
    assert {e.reader for e in a.events(sop_uid=SOP)} == {"ann"}
    status = a.status(key)
    assert status.state == "discordant" and status.readers == ("ann", "bob")
    assert [s.exam_key for s in store.site().arbitration_list() if s.exam_key.startswith(store.prefix)] == [key]
    assert store.verify().ok


def test_roles_hold_when_workstations_race(store: DoubleStore) -> None:
    """Of two readers racing for one place (second reader; arbitrator), exactly one gets it."""
    ann, bob, cat, dan, eve = (store.log(n) for n in ("ann", "bob", "cat", "dan", "eve"))
    for n in range(4):
        key = store.key(f"race{n}")
        ann.append(reader="ann", exam_key=key, action="sign", payload=_assessment("4A", True))
        seconds = _race([lambda log=log, key=key: log.append(reader=log.reader, exam_key=key, action="sign",
                                                             payload=_assessment("1", False)) for log in (bob, cat)])
        assert seconds.count("ok") == 1, seconds
        status = dan.status(key)
        assert status.state == "discordant"
        third = next(log for log in (bob, cat) if log.reader not in status.readers)
        payload = {**_assessment("4A", True), "rule": "recall", "reasons": list(status.reasons),
                   "reads": [{"reader": r.reader, "seq": r.seq} for r in status.reads]}
        arbitrations = _race([lambda log=log, key=key, payload=payload: log.append(
            reader=log.reader, exam_key=key, action="arbitrate", payload=payload) for log in (third, dan)])
        assert arbitrations.count("ok") == 1, arbitrations
        with pytest.raises(CorrectionError, match="double-read by ann and"):
            eve.append(reader="eve", exam_key=key, action="sign", payload=_assessment("1", False))
    events = store.stored()
    assert sum(e.action == "arbitrate" for e in events) == 4 and sum(e.action == "sign" for e in events) == 8
    assert store.verify().ok


def test_status_index_follows_the_store(store: DoubleStore) -> None:
    a, b = store.log("ann"), store.log("bob")
    backend = store.site().backend
    k1, k2 = store.key(1), store.key(2)
    index = StatusIndex("recall")
    index.update(backend)  # whatever other tests left: caught up
    a.append(reader="ann", exam_key=k1, action="sign", payload=_assessment("4A", True))
    a.append(reader="ann", exam_key=k2, action="sign", payload=_assessment("1", False))
    assert index.update(backend) == {k1, k2}
    assert index.update(backend) == set()
    b.append(reader="bob", exam_key=k1, action="sign", payload=_assessment("1", False))
    b.append(reader="bob", exam_key=k2, action="note", payload={"text": "not a state event"})
    assert index.update(backend) == {k1}
    assert index.statuses[k1].state == "discordant" and index.statuses[k2].state == "first read"
    assert index.get([k1, k2]) == exam_statuses(backend, "recall", [k1, k2])


def test_lock_shows_the_holder_and_expires(store: DoubleStore) -> None:
    key = store.key("lock")
    one, two = store.locks("ws-1", lease_s=300), store.locks("ws-2")
    assert one.take(key, "ann", T0).granted
    refused = two.take(key, "bob", T0 + dt.timedelta(seconds=60))
    assert not refused.granted and (refused.lock.reader, refused.lock.workstation) == ("ann", "ws-1")
    assert refused.lock.text == "being read by ann"
    assert two.holders(T0 + dt.timedelta(seconds=60), keys=[key])[key].reader == "ann"
    assert one.take(key, "ann", T0 + dt.timedelta(seconds=200)).granted  # renewed: the expiry moves on
    assert two.holder(key, T0 + dt.timedelta(seconds=400)).reader == "ann"
    later = T0 + dt.timedelta(seconds=200 + 300 + 1)
    assert two.holder(key, later) is None and key not in two.holders(later)  # expired: free
    assert two.take(key, "bob", later).granted
    assert not one.release(key, "ann", later)  # not ann's any more
    assert two.release(key, "bob", later) and one.holder(key, later) is None


def test_a_lease_runs_on_the_stores_clock(store: DoubleStore) -> None:
    """Without a given time the lease is the store's clock's (the site server's on PostgreSQL)."""
    key = store.key("clock")
    taken = store.locks("ws-1", lease_s=300).take(key, "ann")
    assert taken.granted
    start, end = (dt.datetime.fromisoformat(t) for t in (taken.lock.at, taken.lock.expires_at))
    assert end - start == dt.timedelta(seconds=300)
    assert abs(start - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert store.locks("ws-2").holder(key).reader == "ann"


def test_two_workstations_opening_an_exam_at_once_get_one_lock(store: DoubleStore) -> None:
    """Two real connections (threads) take the same exam at the same moment, 25 exams in a
    row: every time exactly one is granted and the other is told who holds it."""
    one, two = store.locks("ws-1"), store.locks("ws-2")
    for n in range(25):
        key = store.key(f"open{n}")
        outcome = _race([lambda key=key: one.take(key, "ann", T0), lambda key=key: two.take(key, "bob", T0)])
        assert sorted(outcome) == ["ok", "refused"], (n, outcome)
        holder = one.holder(key, T0)
        assert holder is not None and holder.reader in ("ann", "bob")
        assert two.holders(T0, keys=[key])[key] == holder


# --------------------------------------------------------------------------- append-only, roles


def test_sqlite_locks_are_append_only(tmp_path: Path) -> None:
    import sqlite3

    store = DoubleStore("sqlite", tmp_path)
    try:
        locks = store.locks("ws-1")
        assert locks.take("exam-1", "ann", T0).granted
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            locks.conn.execute("DELETE FROM reading_locks")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            locks.conn.execute("UPDATE reading_locks SET reader = 'eve'")
    finally:
        store.close()


def test_site_locks_a_workstation_cannot_delete_nor_the_owner(site_cluster: PgCluster) -> None:
    with psycopg.connect(site_cluster.dsn("mt_admin"), autocommit=True) as admin:
        assert schema_version(admin) == SCHEMA_VERSION
    store = DoubleStore("postgres", Path("."), site_cluster)
    key = store.key("append-only")
    try:
        assert store.locks("ws-1").take(key, "ann", T0).granted
    finally:
        store.close()
    with psycopg.connect(site_cluster.dsn("mt_workstation"), autocommit=True) as ws:
        for sql in ("DELETE FROM reading_locks", "UPDATE reading_locks SET reader = 'eve'",
                    "TRUNCATE reading_locks"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ws.execute(sql)
        assert ws.execute("SELECT count(*) FROM reading_locks WHERE exam_key = %s", (key,)).fetchone() == (1,)
    with psycopg.connect(site_cluster.dsn("mt_admin"), autocommit=True) as owner:  # the owner: the triggers
        for sql in ("DELETE FROM reading_locks", "UPDATE reading_locks SET reader = 'eve'", "TRUNCATE reading_locks"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                owner.execute(sql)
    with psycopg.connect(site_cluster.dsn("mt_worker"), autocommit=True) as worker, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):  # a worker reads only
        worker.execute("INSERT INTO reading_locks (exam_key, reader, workstation, action, at, expires_at) "
                       "VALUES ('x', 'w', 'w', 'take', '', '')")


def test_site_server_away_is_a_clear_refusal_and_reads_keep_the_last(site_cluster: PgCluster) -> None:
    """A stopped server: an append is refused with a message (nothing recorded, no crash),
    the open exam's events are the last ones read; after the restart appends go on."""
    store = DoubleStore("postgres", Path("."), site_cluster)
    key = store.key("away")
    try:
        log, locks = store.log("ann"), store.locks("ws-1")
        log.append(reader="ann", exam_key=key, action="note", payload={"text": "before"})
        before = log.events(exam_key=key)
        site_cluster.stop()
        try:
            with pytest.raises(StoreUnreachable, match="cannot be reached"):
                log.append(reader="ann", exam_key=key, action="sign", payload=_assessment("1", False))
            with pytest.raises(StoreUnreachable):
                locks.take(key, "ann")
            assert log.events(exam_key=key) == before
        finally:
            site_cluster.start()
        assert log.append(reader="ann", exam_key=key, action="sign", payload=_assessment("1", False)).seq > 0
        assert locks.take(key, "ann").granted
        assert [e.action for e in store.stored()] == ["note", "sign"]
    finally:
        store.close()


def test_an_exam_held_by_another_workstation_is_a_prompt_refusal_not_a_wait(site_cluster: PgCluster) -> None:
    """Another client holds the exam's lock (a stalled workstation mid-change): an append
    and a lock take on that exam are refused within the lock wait (the reader's window
    does not freeze until that client lets go), nothing is recorded, and after it lets
    go the same append goes through. It used to wait as long as the other held on."""
    from mammotriage.store.pg.double_reading import EXAM_LOCK, LOCK_WAIT_S

    store = DoubleStore("postgres", Path("."), site_cluster)
    key = store.key("held")
    holder = psycopg.connect(site_cluster.dsn("mt_workstation"))
    try:
        log, locks = store.log("ann"), store.locks("ws-1")
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (EXAM_LOCK, key))  # its transaction stays open
        outcome: list[BaseException | str] = []

        def append() -> None:
            try:
                log.append(reader="ann", exam_key=key, action="note", payload={"text": "while held"})
                outcome.append("recorded")
            except BaseException as exc:  # noqa: BLE001 - the test reads it
                outcome.append(exc)

        started = time.monotonic()
        worker = threading.Thread(target=append, daemon=True)
        worker.start()
        worker.join(timeout=LOCK_WAIT_S + 20)
        waited = time.monotonic() - started
        alive = worker.is_alive()
        if alive:
            holder.rollback()  # let the blocked append finish before the test fails
            worker.join(timeout=30)
        assert not alive, "the append waited for the other workstation"
        assert waited < LOCK_WAIT_S + 10, waited
        [refusal] = outcome
        assert isinstance(refusal, StoreUnreachable), refusal
        assert "another workstation" in str(refusal) and "nothing was recorded" in str(refusal), refusal
        with pytest.raises(StoreUnreachable, match="another workstation"):
            locks.take(key, "ann")
        assert store.stored() == []
        holder.rollback()
        assert log.append(reader="ann", exam_key=key, action="note", payload={"text": "after"}).seq > 0
        assert log.events(exam_key=key)[-1].payload == {"text": "after"}
    finally:
        holder.close()
        store.close()


def test_a_site_database_from_before_double_reading_says_so_until_migrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site created before double reading's migration has no ``reading_locks``: a clear refusal
    (never an SQL error), and once its migrations ran as mt_admin the locks work."""
    from mammotriage.store.pg import schema
    from mammotriage.store.pg.double_reading import SiteReadingLocks

    before = schema.READING_LOCKS_VERSION - 1
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:before])
    with running_cluster() as old:
        monkeypatch.undo()
        with SiteReadingLocks(old.dsn("mt_workstation"), "ws-1") as locks:
            with pytest.raises(StoreUnreachable, match=f"predates version {schema.READING_LOCKS_VERSION}"):
                locks.take("exam-1", "ann", T0)
            with psycopg.connect(old.dsn("mt_admin"), autocommit=True) as admin:
                assert schema_version(admin) == before
                assert schema.migrate(admin) == SCHEMA_VERSION
            assert locks.take("exam-1", "ann", T0).granted


def test_a_server_that_stops_answering_costs_a_window_one_deadline_then_nothing(site_cluster: PgCluster) -> None:
    """The server process behind the window's connection freezes (SIGSTOP: the socket
    stays open, nothing answers). Before, a checked append or a lock take waited on it
    until TCP gave up (tcp_user_timeout, 30 s) or longer, with the window frozen. Now the
    call is cut at its deadline and refused; the window's next calls are refused at once
    without trying, until the background reader (a probe) reaches the server again."""
    import os
    import signal

    from psycopg.conninfo import make_conninfo

    from mammotriage.store.double_reading import DoubleReadingPolicy
    from mammotriage.store.pg.double_reading import (
        ServerWatch,
        SiteDoubleReadingLog,
        SiteReadingLocks,
    )
    from mammotriage.store.pg.events import connect

    dsn = make_conninfo(site_cluster.dsn("mt_workstation"), application_name="ws-frozen-dr")
    watch = ServerWatch()
    policy = DoubleReadingPolicy(enabled=True)
    with SiteDoubleReadingLog(dsn, "ann", policy, "ws-frozen-dr", deadline_s=1.0, watch=watch) as log, \
            SiteReadingLocks(dsn, "ws-frozen-dr", deadline_s=1.0, watch=watch) as locks, \
            SiteReadingLocks(site_cluster.dsn("mt_workstation"), "ws-probe", watch=watch, probe=True) as probe:
        key = "1.2.826.0.1.3680043.10.995.1"
        log.append(reader="ann", exam_key=key, action="note", payload={"text": "before"})
        assert [e.payload["text"] for e in log.events(exam_key=key)] == ["before"]  # the exam on screen
        with connect(site_cluster.dsn("postgres")) as admin:
            pids = [r["pid"] for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'ws-frozen-dr'").fetchall()]
        assert len(pids) == 1  # the log's connection (the locks have not connected yet)
        os.kill(pids[0], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreUnreachable, match="did not answer within 1 s"):
                log.append(reader="ann", exam_key=key, action="note", payload={"text": "while frozen"})
            assert time.monotonic() - t0 < 10
            assert watch.away is not None
            t0 = time.monotonic()
            with pytest.raises(StoreUnreachable, match="is away since"):
                locks.take(key, "ann")  # refused without trying (it would reach a live backend)
            assert [e.payload["text"] for e in log.events(exam_key=key)] == ["before"]  # the last read
            assert time.monotonic() - t0 < 0.5
        finally:
            os.kill(pids[0], signal.SIGCONT)
        assert probe.holders(keys=[key]) == {} and watch.away is None  # the probe reached it: cleared
        assert locks.take(key, "ann").granted
        log.append(reader="ann", exam_key=key, action="note", payload={"text": "after"})
        assert [e.payload["text"] for e in log.events(exam_key=key)] == ["before", "after"]


def test_an_exam_held_elsewhere_is_refused_as_busy_and_does_not_mark_the_server_away(
        site_cluster: PgCluster) -> None:
    """Review finding: with the window's deadline equal to the exam lock's wait, the cut
    came first, so a busy exam read as a server that was away and the window's other
    calls were refused. The window's deadline is now above LOCK_WAIT_S."""
    from mammotriage.store.pg.double_reading import (
        EXAM_LOCK,
        SITE_CALL_S,
        ServerWatch,
        SiteReadingLocks,
    )

    deadline = SITE_CALL_S  # the window's
    watch = ServerWatch()
    key = "1.2.826.0.1.3680043.10.995.2"
    holder = psycopg.connect(site_cluster.dsn("mt_workstation"))
    try:
        with SiteReadingLocks(site_cluster.dsn("mt_workstation"), "ws-busy", deadline_s=deadline,
                              watch=watch) as locks:
            holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (EXAM_LOCK, key))
            with pytest.raises(StoreUnreachable, match="being changed on another workstation"):
                locks.take(key, "ann")
            assert watch.away is None  # the server answered: nothing else is refused
            assert locks.take("1.2.826.0.1.3680043.10.995.3", "ann").granted
            holder.rollback()
            assert locks.take(key, "ann").granted
    finally:
        holder.close()
