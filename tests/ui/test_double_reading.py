"""Double reading in the window: the worklist says "being read by NAME" and each exam's
double-reading state without giving away another reader's read, the Arbitration list
shows both reads side by side, and a third reader's signature on a discordant exam
records the consensus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mammotriage.store.double_reading import DoubleReadingPolicy, ReadingLocks
from mammotriage.store.events import CorrectionLog
from mammotriage.ui.worklist import COL_READ


def _assessment(r: str, l: str, recall: bool) -> dict:  # noqa: E741
    return {"breasts": {"R": {"birads": r, "density": "b"}, "L": {"birads": l, "density": "b"}}, "recall": recall}


@pytest.fixture
def double_reading_on(tmp_path: Path) -> Path:
    """The site's double-reading setting, written before the window opens."""
    return DoubleReadingPolicy(enabled=True, discordance="recall", lease_s=600).save(tmp_path / "home")


def _read_cell(win, key: str, tooltip: bool = False) -> str:
    from PySide6.QtCore import Qt

    row = win.worklist.row_of(key)
    role = Qt.ItemDataRole.ToolTipRole if tooltip else Qt.ItemDataRole.DisplayRole
    return str(win.worklist.data(win.worklist.index(row, COL_READ), role))


def test_double_reading_in_the_window(double_reading_on, reading_room, qtbot, tmp_path) -> None:
    win, _exams = reading_room  # signed in as dr_test
    assert win.arbitration_dock.isVisibleTo(win) and win.worklist.double is not None
    first = win.current.exam_key
    # another workstation holds the second exam: the worklist says so
    second = next(e.exam.exam_key for e in win.worklist.entries if e.exam.exam_key != first)
    with ReadingLocks(win.archive.path, "ws-other") as other:
        assert other.take(second, "dr_other").granted
    assert win.double_feed is None  # a standalone archive: read on the spot
    win.refresh_worklist()
    assert _read_cell(win, second) == "being read by dr_other"
    assert "ws-other" in _read_cell(win, second, tooltip=True)
    # this reader holds the exam on screen
    with ReadingLocks(win.archive.path, "ws-other") as other:
        assert other.holder(first).reader == "dr_test"

    win.sign_in("ann")
    assert win.sign_exam(_assessment("1", "4A", True))
    win.sign_in("bob")
    win.open_exam_key(first)
    assert win.current.exam_key == first
    assert set(win.corrections.labels) == {"bob"}  # blinded: ann's read is not in bob's view
    # the worklist says the exam has its first read, never what it is
    assert _read_cell(win, first) == "first read · ann"
    assert not {"4A", "RECALL", "recall"} & set(_read_cell(win, first, tooltip=True).replace("\n", " ").split())
    assert win.sign_exam(_assessment("1", "1", False))
    assert _read_cell(win, first) == "discordant · arbitration"
    assert "ann: R 1" in _read_cell(win, first, tooltip=True)  # both signed: the reads are shown
    assert win.arbitration.table.rowCount() == 0  # bob read it: not his to arbitrate

    win.sign_in("cat")
    win.refresh_worklist()
    assert win.arbitration.keys == [first]
    cells = [win.arbitration.table.item(0, c).text() for c in range(win.arbitration.table.columnCount())]
    assert cells[1:5] == ["ann", "R 1 · L 4A · RECALL", "bob", "R 1 · L 1 · no recall"]
    assert "low suspicion" in win.arbitration.table.item(0, 2).toolTip()
    assert cells[5] == "recall: recall vs no recall"
    shot = Path(os.environ.get("MT_SCREENSHOT_DIR", tmp_path)) / "double_reading.png"
    assert win.grab().save(str(shot))
    win.arbitration.open_requested.emit(first)
    assert win.current.exam_key == first
    assert set(win.corrections.labels) >= {"ann", "bob", "cat"}  # the arbitrator sees both reads
    assert win.sign_exam(_assessment("1", "4A", True))  # cat's signature is the arbitration
    with CorrectionLog(win.archive.path) as log:
        (arb,) = [e for e in log.events(exam_key=first) if e.action == "arbitrate"]
    assert arb.reader == "cat" and [r["reader"] for r in arb.payload["reads"]] == ["ann", "bob"]
    assert arb.payload["recall"] is True and arb.payload["role"] == "arbitration"
    assert _read_cell(win, first) == "arbitrated · cat"
    assert win.arbitration.keys == []


def test_a_prior_exams_reads_are_shown_whoever_made_them(double_reading_on, prior_room) -> None:
    win, _exams = prior_room
    with_prior = None
    for entry in list(win.worklist.entries):
        win.open_exam(entry.exam)
        if win.prior is not None:
            with_prior = entry.exam
            break
    assert with_prior is not None
    with CorrectionLog(win.archive.path) as log:  # the prior was read by one reader, long ago
        log.append(reader="ann", exam_key=win.prior.exam_key, action="sign", payload=_assessment("2", "1", False))
    win.sign_in("bob")
    win.open_exam(with_prior)
    assert "ann" in win.prior_corrections.labels  # history: not blinded
    assert set(win.corrections.labels) == {"bob"}  # the exam being double-read is


def test_the_worklist_follows_other_workstations(double_reading_on, reading_room, qtbot) -> None:
    from mammotriage.store.double_reading import DoubleReadingLog

    win, _exams = reading_room
    other_key = next(e.exam.exam_key for e in win.worklist.entries if e.exam.exam_key != win.current.exam_key)
    assert _read_cell(win, other_key) == "unread"
    with ReadingLocks(win.archive.path, "ws-2") as locks:
        assert locks.take(other_key, "eve").granted
    qtbot.waitUntil(lambda: _read_cell(win, other_key) == "being read by eve", timeout=30_000)  # no refresh
    with ReadingLocks(win.archive.path, "ws-2") as locks, \
            DoubleReadingLog(win.archive.path, "eve", win.double_policy, "ws-2") as log:
        log.append(reader="eve", exam_key=other_key, action="sign", payload=_assessment("1", "1", False))
        assert locks.release(other_key, "eve")
    qtbot.waitUntil(lambda: _read_cell(win, other_key) == "first read · eve", timeout=30_000)


# --------------------------------------------------------------------------- site mode


@pytest.fixture
def site_cluster():
    """A fresh site server per test: the phantom exams' keys are the same in every test."""
    from store.pg.pgsupport import running_cluster

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def joined_site(site_cluster, tmp_path: Path) -> str:
    """The data directory's settings name a site profile (File > Join a site), before the
    window opens; returns the workstation role's connection string."""
    import json

    from PySide6.QtCore import QSettings

    profile = tmp_path / "workstation.json"
    profile.write_text(json.dumps({
        "format": "mammotriage-site-profile/1", "role": "workstation",
        "postgres": {"host": site_cluster.host, "port": site_cluster.port, "database": "mammotriage",
                     "user": "mt_workstation", "password": site_cluster.password("mt_workstation")},
        "dicomweb": {"url": "http://127.0.0.1:9/dicom-web", "user": "unused", "password": "unused"}}))
    profile.chmod(0o600)
    settings = QSettings(str(tmp_path / "home" / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("site/profile", str(profile))
    settings.sync()
    return site_cluster.dsn("mt_workstation")


def test_a_site_workstation_double_reads_on_the_site_store(double_reading_on, joined_site, reading_room,
                                                           qtbot) -> None:
    """Started in site mode with double reading on, the window reads and writes the site's
    store: another workstation's lock shows, its reader's read stays hidden until both have
    signed, and the arbitration recorded in the window is in the site's chain. The states
    and locks come from the feed's thread (the window never waits on the server), so the
    test waits for them."""
    from mammotriage.store.pg.double_reading import SiteDoubleReadingLog, SiteReadingLocks
    from mammotriage.store.pg.events import SiteCorrectionLog

    win, _exams = reading_room  # signed in as dr_test
    assert isinstance(win.corrections_log, SiteDoubleReadingLog) and isinstance(win.locks, SiteReadingLocks)
    assert win.arbitration_dock.isVisibleTo(win) and win.site_label is not None
    first = win.current.exam_key
    second = next(e.exam.exam_key for e in win.worklist.entries if e.exam.exam_key != first)
    with SiteReadingLocks(joined_site, "ws-other") as other:
        assert other.holder(first).reader == "dr_test"  # the window's lock is on the site store
        assert other.take(second, "dr_other").granted
    assert win.double_feed is not None
    win.refresh_worklist()
    qtbot.waitUntil(lambda: _read_cell(win, second) == "being read by dr_other", timeout=30_000)

    win.sign_in("ann")
    assert win.sign_exam(_assessment("1", "4A", True))
    with SiteDoubleReadingLog(joined_site, "bob", win.double_policy, "ws-bob") as bob:  # another workstation
        assert {e.reader for e in bob.events(exam_key=first)} == set()  # blinded: ann's read is not shown
        bob.append(reader="bob", exam_key=first, action="sign", payload=_assessment("1", "1", False))
    win.refresh_worklist()
    qtbot.waitUntil(lambda: _read_cell(win, first) == "discordant · arbitration", timeout=30_000)

    win.sign_in("cat")
    win.refresh_worklist()
    qtbot.waitUntil(lambda: win.arbitration.keys == [first], timeout=30_000)
    win.arbitration.open_requested.emit(first)
    assert set(win.corrections.labels) >= {"ann", "bob", "cat"}  # the arbitrator sees both reads
    assert win.sign_exam(_assessment("1", "4A", True))  # cat's signature is the arbitration
    with SiteCorrectionLog(joined_site) as site_log:
        (arb,) = [e for e in site_log.events(exam_key=first) if e.action == "arbitrate"]
    assert arb.reader == "cat" and [r["reader"] for r in arb.payload["reads"]] == ["ann", "bob"]
    qtbot.waitUntil(lambda: _read_cell(win, first) == "arbitrated · cat" and win.arbitration.keys == [],
                    timeout=30_000)


def test_a_site_workstation_says_so_when_the_server_is_away(double_reading_on, joined_site, site_cluster,
                                                            reading_room, qtbot) -> None:
    """Double reading needs the server for every checked append: while it is away the
    window says so and records nothing, what is open stays readable; afterwards it signs."""
    from mammotriage.store.pg.events import SiteCorrectionLog

    win, _exams = reading_room
    key = win.current.exam_key
    assert win.corrections.set_birads(2) is not None
    shown = dict(win.corrections.labels)
    site_cluster.stop()
    try:
        assert not win._record(type(win.corrections).set_density, "C")  # refused, never raised
        assert "cannot be reached" in win.status_label.text() or "cannot be reached" in win.log.toPlainText()
        assert not win.sign_exam(_assessment("1", "1", False))
        assert "not signed" in win.log.toPlainText()
        win.refresh_worklist()  # the states and locks last read; no exception
        win.open_exam(win.current)  # what is open stays readable: the last events read
        assert set(win.corrections.labels) == set(shown)
    finally:
        site_cluster.start()
    # the feed's thread finds the server again; until then the window's calls were refused at once
    qtbot.waitUntil(lambda: win.double_feed.away is None and win.locks.backend.watch.away is None, timeout=60_000)
    win.open_exam(win.current)  # the lock is taken again
    assert win.sign_exam(_assessment("1", "1", False))
    with SiteCorrectionLog(joined_site) as site_log:
        assert [e.action for e in site_log.events(exam_key=key) if e.reader == "dr_test"] == ["birads", "sign"]
