"""A headless reading session in site mode against a real PostgreSQL that stops and restarts.

The corrections code (``ExamCorrections``) writes through ``SiteLog`` exactly as it does
through the standalone ``CorrectionLog``; what is open stays readable and editable while
the server is away, and the buffer drains, in order and once, when it is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mammotriage.store.events import CorrectionError
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.events import SiteCorrectionLog
from mammotriage.viewer.corrections import ExamCorrections, ImageInfo
from mammotriage.viewer.site_log import BUFFER_FILE, SiteLog, site_status_text
from store.pg.pgsupport import free_port, running_cluster, wait_until

BOX = {"type": "box", "box": [10.0, 10.0, 40.0, 40.0]}
SOP = "1.2.3.4.1"


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _open(log: SiteLog, exam_key: str, reader: str = "dr_a") -> ExamCorrections:
    c = ExamCorrections(log, exam_key, reader)
    c.set_image(ImageInfo(SOP, "1.2.3", "1.2.3.4", "a" * 64))
    return c


def _kinds(c: ExamCorrections) -> list[str]:
    return sorted(lab.kind for lab in c.labels_for(SOP))


def _server_events(site: PgCluster, exam_key: str) -> list:
    with SiteCorrectionLog(site.dsn("mt_workstation")) as log:
        return log.events(exam_key=exam_key)


def test_reading_goes_on_while_the_server_is_away_and_the_buffer_drains(site: PgCluster, tmp_path: Path) -> None:
    with SiteLog(site.dsn("mt_workstation"), tmp_path / BUFFER_FILE, "ws-1", retry_s=0.2, probe_s=0.2) as log:
        exam = _open(log, "Exam-1")
        first = exam.add(SOP, "mass", BOX)
        assert first.seq == 0  # kept locally and returned at once: sending is the background thread's
        assert wait_until(lambda: log.status().waiting == 0, 60)
        assert [e.event_id for e in _server_events(site, "Exam-1")] == [first.event_id]
        assert site_status_text(log.status()) == ""

        site.stop()
        try:
            assert wait_until(lambda: not log.status().reachable, 60)
            status = log.status()
            assert status.since is not None and status.reason
            # what is open stays editable: the events wait in the buffer, the labels include them
            second = exam.add(SOP, "calcification", BOX)
            exam.add(SOP, "asymmetry", BOX)
            assert exam.undo() is not None  # undo of an event the server has not seen yet
            exam.set_birads(4)
            assert _kinds(exam) == ["calcification", "mass"]
            assert log.status().waiting == 4
            text = site_status_text(log.status())
            assert text.startswith("site server unreachable since ")
            assert "— 4 corrections waiting — showing what this workstation has (as of " in text
            # re-opening the exam (or another window on it) reads the offline events too
            again = _open(log, "Exam-1")
            assert _kinds(again) == ["calcification", "mass"] and again.mine().birads == 4
            with pytest.raises(CorrectionError):  # a bad event is still refused at once, never kept
                exam.set_birads(9)
            assert log.status().waiting == 4
        finally:
            site.start()
        assert wait_until(lambda: log.status().reachable and log.status().waiting == 0, 60)
        assert site_status_text(log.status()) == ""
        stored = _server_events(site, "Exam-1")
        assert [e.event_id for e in stored] == [e.event_id for e in exam._events]  # in order, once each
        assert stored[1].event_id == second.event_id and all(e.seq > 0 for e in stored)
        assert [e.seq for e in stored] == sorted(e.seq for e in stored)
        reopened = _open(log, "Exam-1")
        assert _kinds(reopened) == ["calcification", "mass"] and all(e.seq > 0 for e in reopened._events)
    with SiteCorrectionLog(site.dsn("mt_admin")) as admin:
        assert admin.verify().ok


def test_a_session_started_while_the_server_is_away_sends_what_it_made_later(
        site: PgCluster, tmp_path: Path) -> None:
    buffer = tmp_path / BUFFER_FILE
    site.stop()
    try:
        with SiteLog(site.dsn("mt_workstation"), buffer, "ws-2", retry_s=0.2, probe_s=0.2) as log:
            exam = _open(log, "Exam-2")
            assert exam.labels_for(SOP) == []  # nothing read from the server, nothing invented
            made = [exam.add(SOP, "mass", BOX), exam.set_note("seen offline")]
            assert wait_until(lambda: not log.status().reachable, 60)
            assert log.status().waiting == 2
        # the workstation closes with the server still away: the events stay in the file
    finally:
        site.start()
    with SiteLog(site.dsn("mt_workstation"), buffer, "ws-2", retry_s=0.2, probe_s=0.2) as log:
        assert wait_until(lambda: log.status().waiting == 0, 60)
        opened = _open(log, "Exam-2")  # not read in this session yet: the sender reads it
        assert wait_until(lambda: log.synced("Exam-2"), 60)
        opened.reload()
        assert [e.event_id for e in opened._events] == [e.event_id for e in made]
    assert [e.event_id for e in _server_events(site, "Exam-2")] == [e.event_id for e in made]


def test_two_workstations_see_each_others_sent_corrections(site: PgCluster, tmp_path: Path) -> None:
    dsn = site.dsn("mt_workstation")
    with SiteLog(dsn, tmp_path / "a.sqlite3", "ws-a", retry_s=0.2) as a, \
            SiteLog(dsn, tmp_path / "b.sqlite3", "ws-b", retry_s=0.2) as b:
        _open(a, "Exam-3", "dr_a").add(SOP, "mass", BOX)
        assert wait_until(lambda: a.status().waiting == 0, 60)
        theirs = _open(b, "Exam-3", "dr_a")  # the same reader at another workstation
        assert wait_until(lambda: b.synced("Exam-3"), 60)
        theirs.reload()
        assert _kinds(theirs) == ["mass"] and theirs._events[0].workstation == "ws-a"


def test_the_status_line_in_every_state() -> None:
    from datetime import UTC, datetime

    from mammotriage.viewer.site_log import SiteStatus

    since = datetime(2026, 3, 1, 9, 5, tzinfo=UTC)
    hhmm = since.astimezone().strftime("%H:%M")  # shown in the workstation's local time
    assert site_status_text(SiteStatus(True, None, 0)) == ""
    assert site_status_text(SiteStatus(True, None, 3)) == "sending 3 corrections to the site server"
    assert site_status_text(SiteStatus(False, since, 1, "refused")) == \
        f"site server unreachable since {hhmm} — 1 correction waiting — showing what this workstation has"
    synced = datetime(2026, 3, 1, 9, 4, tzinfo=UTC)
    assert site_status_text(SiteStatus(False, since, 0, synced_at=synced)) == (
        f"site server unreachable since {hhmm} — 0 corrections waiting — showing what this workstation has "
        f"(as of {synced.astimezone().strftime('%H:%M')})")
    assert site_status_text(SiteStatus(True, None, 0, refused=2)) == "2 corrections refused by the site server"
    assert site_status_text(SiteStatus(False, None, 4, refused=1)) == \
        ("site server unreachable since ? — 4 corrections waiting — showing what this workstation has"
         " · 1 correction refused by the site server")


def test_a_refused_correction_is_counted_and_does_not_block_the_others(site: PgCluster, tmp_path: Path) -> None:
    from mammotriage.store.events import event_fields

    with SiteLog(site.dsn("mt_workstation"), tmp_path / BUFFER_FILE, "ws-bad", retry_s=0.2, probe_s=0.2) as log:
        exam = _open(log, "Exam-4")
        first = exam.set_note("a")
        assert wait_until(lambda: log.status().waiting == 0, 60)
        clash = event_fields("ws-bad", reader="dr_a", exam_key="Exam-4", action="note", payload={"text": "b"})
        clash["event_id"] = first.event_id  # same uuid, other content (a damaged buffer file)
        log.buffered.buffer.put(clash)
        exam.set_note("c")
        assert wait_until(lambda: log.status().waiting == 0 and log.status().refused == 1, 60)
        assert site_status_text(log.status()) == "1 correction refused by the site server"
    assert [e.payload["text"] for e in _server_events(site, "Exam-4")] == ["a", "c"]


class BlackHole:
    """A TCP listener on the server's address that accepts every connection and never
    answers (what a hung server, or an attacker in its place, looks like to a client)."""

    def __init__(self, host: str, port: int):
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read from, never written to

    def close(self) -> None:
        import contextlib
        import socket

        with contextlib.suppress(OSError):  # not connected: nothing to shut down
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=10)
        for conn in self.accepted:
            conn.close()


@pytest.fixture()
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(thread name, connection string) of every PostgreSQL connection opened (the real ones)."""
    import threading

    import psycopg

    made: list[tuple[str, str]] = []
    real = psycopg.connect

    def recording(conninfo: str = "", *args, **kwargs):
        made.append((threading.current_thread().name, conninfo))
        return real(conninfo, *args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", recording)
    return made


def _hole_dsn(site: PgCluster, name: str, connect_timeout: int = 2) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(site.dsn("mt_workstation", connect_timeout=connect_timeout), application_name=name)


def test_reads_are_served_locally_while_the_server_is_a_black_hole(site: PgCluster, tmp_path: Path,
                                                                  connects: list[tuple[str, str]]) -> None:
    import threading

    dsn = _hole_dsn(site, "ws-hole")
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-other") as other:
        theirs = other.append(reader="dr_b", exam_key="Exam-5", action="note", payload={"text": "theirs"})
    with SiteLog(dsn, tmp_path / BUFFER_FILE, "ws-hole", retry_s=0.2, probe_s=0.2) as log:
        arrived: list[list] = []
        log.add_listener(arrived.append)
        assert log.events("Exam-5") == []  # not read yet: the sender reads it, the caller does not wait
        assert wait_until(lambda: log.synced("Exam-5"), 60)
        assert ["Exam-5"] in arrived
        assert [e.event_id for e in log.events("Exam-5")] == [theirs.event_id]

        site.stop()
        hole = BlackHole(site.host, site.port)
        try:
            mine = log.append(reader="dr_a", exam_key="Exam-5", action="note", payload={"text": "mine"})
            assert wait_until(lambda: not log.status().reachable, 60)
            assert wait_until(lambda: hole.accepted, 60), "the sender never reached the listener"
            for _ in range(20):  # each answered from the local copy while the sender hangs in the hole
                assert [e.event_id for e in log.events("Exam-5")] == [theirs.event_id, mine.event_id]
                assert log.events("Exam-6") == []  # never read: nothing invented
            status = log.status()
            assert status.waiting == 1 and status.synced_at is not None
            assert "showing what this workstation has (as of " in site_status_text(status)
        finally:
            hole.close()
            site.start()
        assert wait_until(lambda: log.status().reachable and log.status().waiting == 0, 60)
        with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-other") as other:
            later = other.append(reader="dr_b", exam_key="Exam-5", action="note", payload={"text": "later"})
        # the events arrive once the server is back: another workstation's too
        assert wait_until(lambda: [e.event_id for e in log.events("Exam-5")]
                          == [theirs.event_id, mine.event_id, later.event_id], 60)
        assert all(e.seq > 0 for e in log.events("Exam-5"))
    ours = [thread for thread, conninfo in connects if "ws-hole" in conninfo]
    assert len(ours) >= 3  # the first, the attempts into the hole, the one after
    assert set(ours) == {"site-log-sender"}, f"connections opened off the sender: {ours}"
    assert threading.main_thread().name not in ours


def test_a_sender_stuck_on_a_silent_server_makes_the_status_say_away(site: PgCluster, tmp_path: Path,
                                                                    connects: list[tuple[str, str]]) -> None:
    """The connect itself hangs (long connect timeout): the status says so while the
    sender is still stuck; closing does not wait for it."""
    port = free_port()
    hole = BlackHole(site.host, port)
    try:
        from psycopg.conninfo import make_conninfo

        dsn = make_conninfo(site.dsn("mt_workstation", connect_timeout=20), port=port, application_name="ws-stuck")
        log = SiteLog(dsn, tmp_path / BUFFER_FILE, "ws-stuck", retry_s=0.2, probe_s=0.2, stall_s=0.5)
        try:
            exam = _open(log, "Exam-7")
            exam.set_note("made while the server is silent")
            assert wait_until(lambda: hole.accepted, 60)
            assert wait_until(lambda: not log.status().reachable, 60)
            status = log.status()
            assert status.reason.startswith("no answer from the site server for ") and status.waiting == 1
            assert _kinds(exam) == [] and exam.mine().note == "made while the server is silent"
        finally:
            log.close(wait_s=0.5)   # the sender is in its connect: left behind, the event stays in the file
    finally:
        hole.close()
    assert {thread for thread, conninfo in connects if "ws-stuck" in conninfo} == {"site-log-sender"}


def test_the_exams_read_next_are_read_ahead_into_the_local_copy(site: PgCluster, tmp_path: Path) -> None:
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-other") as other:
        theirs = other.append(reader="dr_b", exam_key="Exam-next", action="note", payload={"text": "ahead"})
    with SiteLog(site.dsn("mt_workstation"), tmp_path / BUFFER_FILE, "ws-ahead", retry_s=0.2, probe_s=0.2) as log:
        for i in range(12):  # more exams opened than are watched
            log.events(f"Exam-seen-{i}")
        log.watch(["Exam-next"])
        assert wait_until(lambda: log.synced("Exam-next"), 60)
        assert [e.event_id for e in log.events("Exam-next")] == [theirs.event_id]  # at once, from the copy


def test_a_server_process_that_stops_answering_mid_connection_is_cut_and_the_sender_goes_on(
        site: PgCluster, tmp_path: Path) -> None:
    """The sender's own backend is frozen (SIGSTOP) with its connection open: the next
    call waits for an answer that never comes. The watchdog cuts the connection, the
    sender reconnects to a fresh backend, and the event is stored once."""
    import os
    import signal

    from mammotriage.store.pg.events import connect

    dsn = _hole_dsn(site, "ws-frozen", connect_timeout=5)
    with SiteLog(dsn, tmp_path / BUFFER_FILE, "ws-frozen", retry_s=0.2, probe_s=0.2, stall_s=1.0) as log:
        exam = _open(log, "Exam-8")
        assert wait_until(lambda: log.synced("Exam-8"), 60)
        with connect(site.dsn("postgres")) as admin:
            pids = [r["pid"] for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'ws-frozen'").fetchall()]
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGSTOP)
        try:
            made = exam.set_note("sent past a frozen backend")
            assert wait_until(lambda: log.cuts >= 1, 60), "the stuck connection was never cut"
            assert wait_until(lambda: log.status().waiting == 0 and log.status().reachable, 60)
        finally:
            os.kill(pids[0], signal.SIGCONT)
    assert [e.event_id for e in _server_events(site, "Exam-8")] == [made.event_id]
