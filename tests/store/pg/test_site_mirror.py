"""The copy of the site's chain a workstation's worklist reads (store.pg.mirror) on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgsupport import running_cluster

from mammotriage.phantom import generate_exam
from mammotriage.store import Archive, db
from mammotriage.store.assessment import read_states
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.events import SiteCorrectionLog
from mammotriage.store.pg.mirror import SiteEventMirror
from mammotriage.triage.pages import WorklistQuery, worklist_rows

SIGNED = {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": "1", "density": "b"}}, "recall": False}


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _copied(archive_file: Path) -> list[tuple]:
    conn = db.connect(archive_file)
    try:
        return [tuple(r) for r in conn.execute("SELECT seq, exam_key, reader, action FROM site_events ORDER BY seq")]
    finally:
        conn.close()


def test_the_copy_takes_the_chain_in_order_and_only_what_is_new(site: PgCluster, tmp_path: Path) -> None:
    archive_file = tmp_path / "archive.sqlite"
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-1") as log, \
            SiteEventMirror(site.dsn("mt_workstation"), archive_file, batch=3) as mirror:
        start = mirror.pull()  # whatever other tests of the module stored
        before = _copied(archive_file)
        assert len(before) == start
        for n in range(7):
            log.append(reader="dr_a", exam_key=f"M{n % 2}", action="note", payload={"text": str(n)})
        assert mirror.pull() == 7 and mirror.states_moved  # three batches of at most 3; new exams
        assert mirror.pull() == 0 and not mirror.states_moved
        log.append(reader="dr_a", exam_key="M1", action="note", payload={"text": "again"})
        assert mirror.pull() == 1 and not mirror.states_moved  # a note on a started exam: no redraw
        log.append(reader="dr_b", exam_key="M1", action="sign", payload=SIGNED)
        assert mirror.pull() == 1 and mirror.states_moved
        server = [(e.seq, e.exam_key, e.reader, e.action) for e in log.events()]
    assert _copied(archive_file) == server  # the same events, the same sequence numbers

    with SiteEventMirror(site.dsn("mt_workstation"), archive_file) as mirror:
        assert mirror.pull() == 0 and not mirror.reset  # the same chain: nothing again

    # a copy that is not of this chain is taken again whole: ahead of the server (a site
    # restored from an older backup), another event under the copy's last seq (restored,
    # then grown again), another site's (the workstation joined elsewhere)
    def ahead(conn) -> None:
        conn.execute("INSERT INTO site_events (seq, exam_key, reader, action, at, hash) "
                     "VALUES (?, 'ghost', 'x', 'sign', '', 'h')", (server[-1][0] + 100,))

    def other_event(conn) -> None:
        conn.execute("UPDATE site_events SET hash = 'not-this-chain', exam_key = 'ghost' "
                     "WHERE seq = (SELECT MAX(seq) FROM site_events)")

    def other_site(conn) -> None:
        conn.execute("UPDATE site_events_source SET archive_id = 'another-site'")

    for forge in (ahead, other_event, other_site):
        conn = db.connect(archive_file)
        with db.transaction(conn):
            forge(conn)
        conn.close()
        with SiteEventMirror(site.dsn("mt_workstation"), archive_file) as mirror:
            assert mirror.pull() == len(server) and mirror.reset, forge.__name__
            assert mirror.pull() == 0 and not mirror.reset
        assert _copied(archive_file) == server, forge.__name__

    # a pull asked to stop between batches leaves the old copy as it was
    conn = db.connect(archive_file)
    with db.transaction(conn):
        other_site(conn)
    conn.close()
    with SiteEventMirror(site.dsn("mt_workstation"), archive_file, batch=2) as mirror:
        asked: list[int] = []
        assert mirror.pull(stop=lambda: (asked.append(1), len(asked) > 2)[1]) == 0 and len(asked) == 3
    assert _copied(archive_file) == server


def test_a_site_worklist_reads_its_states_from_the_copy_not_the_workstations_own_log(
        site: PgCluster, tmp_path: Path) -> None:
    archive_file = tmp_path / "archive.sqlite"
    exam_dir = tmp_path / "exam"
    generate_exam(41, exam_number=1, rows=128, columns=96).save(exam_dir)
    with Archive(archive_file) as archive:
        archive.import_paths([exam_dir])
        key = archive.exams()[0].exam_key
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-2") as log:
        log.append(reader="dr_c", exam_key=key, action="sign", payload=SIGNED)
        log.append(reader="dr_c", exam_key="other", action="note", payload={"text": "another exam"})
    with SiteEventMirror(site.dsn("mt_workstation"), archive_file) as mirror:
        mirror.pull()
    conn = db.connect(archive_file)
    try:
        for site_reads, state in ((False, "unread"), (True, "signed")):
            q = WorklistQuery(None, None, site_reads=site_reads)
            assert worklist_rows(conn, q)[1][0].read.state == state
            unread = WorklistQuery(None, None, site_reads=site_reads, filter="unread")
            assert worklist_rows(conn, unread)[0] == (1 if state == "unread" else 0)
        assert read_states(conn, [key], table="site_events")[key].reader == "dr_c"
    finally:
        conn.close()
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-3") as log, \
            SiteEventMirror(site.dsn("mt_workstation"), archive_file) as mirror:
        log.append(reader="dr_d", exam_key=key, action="amend", payload={"reason": "second look"})
        mirror.pull()
    conn = db.connect(archive_file)
    try:
        (row,) = worklist_rows(conn, WorklistQuery(None, None, site_reads=True))[1]
        assert (row.read.state, row.read.reader) == ("reopened", "dr_d")
        assert worklist_rows(conn, WorklistQuery(None, None, site_reads=True, filter="unread"))[0] == 1
        with pytest.raises(ValueError, match="read states come from"):
            read_states(conn, [key], table="images; DROP TABLE images")
    finally:
        conn.close()
