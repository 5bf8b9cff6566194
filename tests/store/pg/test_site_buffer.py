"""The workstation's event buffer against a real PostgreSQL that stops and restarts."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgsupport import finish, running_cluster, spawn, wait_until

from mammotriage.store.events import CorrectionError, event_fields
from mammotriage.store.pg.buffer import BufferedLog
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.events import SiteCorrectionLog, connect


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _count(site: PgCluster, exam_prefix: str = "") -> int:
    with connect(site.dsn("mt_admin")) as conn:
        row = conn.execute("SELECT COUNT(*) AS n FROM correction_events WHERE exam_key LIKE %s",
                           (exam_prefix + "%",)).fetchone()
    return int(row["n"])


def test_events_made_while_the_server_is_away_are_kept_in_order_and_sent_once(
        site: PgCluster, tmp_path: Path) -> None:
    buffer = tmp_path / "buffer.sqlite"
    with BufferedLog(site.dsn("mt_workstation"), buffer, "ws-away") as log:
        online = log.append(reader="dr_a", exam_key="Away-0", action="note", payload={"text": "before"})
        assert online.event is not None and online.pending == 0
        site.stop()
        try:
            made = [log.append(reader="dr_a", exam_key=f"Away-{i}", action="note", payload={"text": str(i)})
                    for i in range(1, 6)]
            assert all(m.event is None for m in made)
            assert [m.pending for m in made] == [1, 2, 3, 4, 5]
            assert log.away_reason
            with pytest.raises(CorrectionError):  # an invalid event is refused at once, never kept
                log.append(reader="dr_a", exam_key="Away-x", action="birads", payload={"birads": 9})
            assert log.flush() == 0 and log.pending() == 5
        finally:
            site.start()
    # A new process (the workstation restarted) finds them in the file and sends them.
    with BufferedLog(site.dsn("mt_workstation"), buffer, "ws-away") as log:
        assert log.pending() == 5
        assert log.drain(timeout_s=60)
        assert log.flush() == 0
    with SiteCorrectionLog(site.dsn("mt_workstation")) as site_log:
        stored = [e for e in site_log.events() if e.exam_key.startswith("Away-")]
        assert site_log.verify().ok
    assert [e.event_id for e in stored] == [online.event_id, *(m.event_id for m in made)]
    assert [e.payload["text"] for e in stored] == ["before", "1", "2", "3", "4", "5"]
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)


def test_a_lost_acknowledgement_is_not_stored_twice(site: PgCluster, tmp_path: Path) -> None:
    with BufferedLog(site.dsn("mt_workstation"), tmp_path / "b.sqlite", "ws-ack") as log:
        fields = event_fields("ws-ack", reader="dr_a", exam_key="Ack-1", action="note", payload={"text": "once"})
        log.buffer.put(fields)
        log.log.send(fields)   # the server stored it; the answer never reached the buffer
        assert log.flush() == 1 and log.pending() == 0
    assert _count(site, "Ack-") == 1


def test_an_event_the_server_refuses_does_not_block_the_others(site: PgCluster, tmp_path: Path) -> None:
    with BufferedLog(site.dsn("mt_workstation"), tmp_path / "b.sqlite", "ws-bad") as log:
        first = log.append(reader="dr_a", exam_key="Bad-1", action="note", payload={"text": "a"})
        assert first.event is not None
        clash = event_fields("ws-bad", reader="dr_a", exam_key="Bad-2", action="note", payload={"text": "b"})
        clash["event_id"] = first.event_id   # same uuid, other content (a damaged buffer)
        log.buffer.put(clash)
        after = log.append(reader="dr_a", exam_key="Bad-3", action="note", payload={"text": "c"})
        assert after.event is not None and log.pending() == 0
        refused = log.buffer.refused()
        assert [r[0] for r in refused] == [first.event_id] and "different content" in refused[0][1]
    assert _count(site, "Bad-") == 2


def test_two_writers_append_500_events_across_a_server_restart(site: PgCluster) -> None:
    before = _count(site)
    with tempfile.TemporaryDirectory() as tmp:
        writers = [spawn("writer", site.dsn("mt_workstation"), str(Path(tmp) / f"w{i}.sqlite"), f"ws{i}", "250",
                         "0.01")
                   for i in range(2)]
        try:
            started = wait_until(lambda: _count(site) - before >= 100 or any(w.poll() is not None for w in writers),
                                 timeout=120)
            assert started, "the writers did not start"
            site.restart()
            results = [finish(w)[-1] for w in writers]
        finally:
            for w in writers:
                if w.poll() is None:
                    w.kill()
    assert all(r["drained"] and r["pending"] == 0 and r["refused"] == [] for r in results)
    assert sum(r["buffered"] for r in results) >= 1, "no event waited in a buffer: the restart came too late"
    made = {f"ws{i}": r["made"] for i, r in enumerate(results)}
    with SiteCorrectionLog(site.dsn("mt_admin")) as log:
        everything = log.events()
        report = log.verify()
    assert report.ok, report.problems
    stored = [e for e in everything if e.workstation in made]
    ids = [e.event_id for e in stored]
    assert len(ids) == 500 and len(set(ids)) == 500          # 0 duplicated
    assert set(ids) == set(made["ws0"]) | set(made["ws1"])    # 0 lost
    for ws, order in made.items():                            # each writer's order kept
        assert [e.event_id for e in stored if e.workstation == ws] == order
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))  # one chain, no gaps


def _ids(site: PgCluster, exam_prefix: str) -> list[str]:
    with connect(site.dsn("mt_admin")) as conn:
        return [r["event_id"] for r in conn.execute(
            "SELECT event_id FROM correction_events WHERE exam_key LIKE %s ORDER BY seq", (exam_prefix + "%",))]


def test_the_buffer_is_sent_in_batches_one_transaction_each(site: PgCluster, tmp_path: Path) -> None:
    with BufferedLog(site.dsn("mt_workstation"), tmp_path / "b.sqlite", "ws-batch", batch_size=40) as log:
        made = [log.keep(reader="dr_a", exam_key=f"Batch-{i % 7}", action="note", payload={"text": str(i)})
                for i in range(100)]
        batches: list[list[str]] = []
        log.on_sent = lambda events: batches.append([e.event_id for e in events])
        sent = log.flush_events()
        assert log.pending() == 0
    assert [len(b) for b in batches] == [40, 40, 20]
    assert [e.event_id for e in sent] == [m["event_id"] for m in made] == _ids(site, "Batch-")
    assert [e.seq for e in sent] == list(range(sent[0].seq, sent[0].seq + 100))  # one run of the chain
    with connect(site.dsn("mt_admin")) as conn:  # each row's xmin is the transaction that stored it
        row = conn.execute("SELECT COUNT(DISTINCT xmin::text) AS n FROM correction_events "
                           "WHERE exam_key LIKE 'Batch-%'").fetchone()
    assert row["n"] == 3


def test_a_batch_partly_stored_by_an_earlier_attempt_is_retried_whole_without_duplicates(
        site: PgCluster, tmp_path: Path) -> None:
    with BufferedLog(site.dsn("mt_workstation"), tmp_path / "b.sqlite", "ws-part") as log:
        made = [log.keep(reader="dr_a", exam_key="Part-1", action="note", payload={"text": str(i)})
                for i in range(10)]
        for fields in made[:4]:     # the server has these; their acknowledgements were lost
            log.log.send(fields)
        sent = log.flush_events()
        assert log.pending() == 0 and [e.event_id for e in sent] == [m["event_id"] for m in made]
    assert _ids(site, "Part-") == [m["event_id"] for m in made]


def test_the_server_killed_mid_batch_loses_and_duplicates_nothing(site: PgCluster, tmp_path: Path) -> None:
    """The first batch commits; the second's transaction is open on the server (its first
    row waits for the chain lock, taken by another session once the first batch was
    acknowledged) when PostgreSQL is killed (immediate stop: no clean shutdown). After the
    restart the second batch and the rest are sent whole, the first is not sent again."""
    import threading

    from mammotriage.store.pg.schema import CHAIN_LOCK

    with BufferedLog(site.dsn("mt_workstation"), tmp_path / "b.sqlite", "ws-kill", batch_size=50) as log:
        made = [log.keep(reader="dr_a", exam_key=f"Kill-{i % 5}", action="note", payload={"text": str(i)})
                for i in range(120)]
        holder = connect(site.dsn("postgres"))
        batches: list[int] = []

        def lock_after_the_first(events: list) -> None:
            if not batches:
                holder.execute("BEGIN")
                holder.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
            batches.append(len(events))

        log.on_sent = lock_after_the_first
        result: dict[str, list] = {}
        sender = threading.Thread(target=lambda: result.update(sent=log.flush_events()), daemon=True)
        sender.start()
        with connect(site.dsn("postgres")) as watcher:
            waiting = wait_until(lambda: watcher.execute(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE usename = 'mt_workstation' "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'").fetchone()["n"], timeout=60)
        assert waiting, "the second batch never reached the chain lock"
        site.stop(mode="immediate")
        holder.close()
        sender.join(timeout=60)
        assert not sender.is_alive() and log.away_reason
        assert [e.event_id for e in result["sent"]] == [m["event_id"] for m in made[:50]] and log.pending() == 70
        site.start()
        assert log.drain(timeout_s=60)
        assert batches == [50, 50, 20]
    assert _ids(site, "Kill-") == [m["event_id"] for m in made]  # 0 lost, 0 duplicated, the order kept
    with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
        report = admin.verify()
    assert report.ok, report.problems
