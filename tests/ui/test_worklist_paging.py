"""The Qt worklist model on the paged SQL query: a real SQLite archive of a few hundred
tiny exams, lazy fetching, sorts and filters in SQL, the reader's row kept in place."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTableView

from mammotriage.store import Archive
from mammotriage.triage import OperatingPoints, TriageQueue, build_worklist
from mammotriage.triage.pages import WorklistQuery, position_of, worklist_rows
from mammotriage.ui.worklist import COL_DATE, COL_SCORE, COL_STATUS, WorklistFilter, WorklistModel
from mtsupport import tiny_exam_archive

N_EXAMS = 240
POINTS = OperatingPoints(0.5, 0.1)


@pytest.fixture(scope="module")
def archive_file(tmp_path_factory):
    """A few hundred one-view exams, most of them analysed by model "v-1"."""
    return tiny_exam_archive(tmp_path_factory.mktemp("paging"), N_EXAMS)


@pytest.fixture
def model(archive_file, qtbot):
    queue = TriageQueue(archive_file)
    fetched: list[tuple[int, int]] = []

    def fetch(q, offset, limit):
        fetched.append((offset, limit))
        return worklist_rows(queue.conn, q, offset, limit)

    worklist = WorklistModel(fetch, lambda q, key: position_of(queue.conn, q, key), page_rows=50)
    worklist.fetched = fetched  # type: ignore[attr-defined]
    worklist.set_query(WorklistQuery("v-1", POINTS))
    yield worklist, queue
    queue.close()


def _full(archive_file, version="v-1"):
    with Archive(archive_file) as archive, TriageQueue(archive_file) as queue:
        return build_worklist(archive.exams(), queue.jobs(version), queue.exam_results(), version, POINTS)


def test_rows_are_fetched_a_page_at_a_time_as_the_table_scrolls(model, archive_file, qtbot) -> None:
    worklist, _queue = model
    assert worklist.total == N_EXAMS and worklist.rowCount() == 50 and worklist.canFetchMore()
    assert worklist.fetched == [(0, 50)]  # one page: no full build
    table = QTableView()
    qtbot.addWidget(table)
    table.setModel(WorklistFilter(worklist))
    table.resize(600, 400)
    table.show()
    table.scrollToBottom()  # the view asks for more as it reaches the end
    qtbot.waitUntil(lambda: worklist.rowCount() > 50)
    assert worklist.rowCount() % 50 == 0 or worklist.rowCount() == N_EXAMS
    while worklist.canFetchMore():
        worklist.fetchMore()
    assert worklist.rowCount() == N_EXAMS and not worklist.canFetchMore()
    # the triage order is build_worklist's
    assert [e.exam.exam_key for e in worklist.entries] == [e.exam.exam_key for e in _full(archive_file)]


def test_sorts_and_filters_run_in_sql(model, archive_file) -> None:
    worklist, _queue = model
    view = WorklistFilter(worklist)
    full = _full(archive_file)
    view.sort(COL_DATE, Qt.SortOrder.DescendingOrder)
    assert view.sortColumn() == COL_DATE and worklist.rowCount() == 50
    newest = sorted((e.exam.study_date for e in full), reverse=True)[:50]
    assert [e.exam.study_date for e in worklist.entries] == newest
    view.sort(COL_SCORE, Qt.SortOrder.DescendingOrder)
    assert [e.score for e in worklist.entries] == sorted((e.score for e in full if e.score is not None),
                                                        reverse=True)[:50]
    view.sort(-1)
    view.set_filter("AI pending")
    pending = [e for e in full if e.status != "done"]
    assert worklist.total == len(pending) > 0
    assert all(e.status != "done" for e in worklist.entries)
    view.set_filter("suspicious")
    assert worklist.total == sum(e.category == "suspicious" for e in full) > 0
    assert all(e.category == "suspicious" for e in worklist.entries)
    view.set_filter("has priors")
    assert 0 < worklist.total < N_EXAMS and all(worklist.priors[e.exam.exam_key] > 0 for e in worklist.entries)
    view.set_filter("unread")
    assert worklist.total == N_EXAMS
    view.set_filter("all")
    view.set_search("a000123")
    assert worklist.total == 1 and worklist.entries[0].exam.accessions == ("A000123",)


def test_blind_rows_show_no_ai_and_filter_as_unknown(model) -> None:
    worklist, _queue = model
    from dataclasses import replace

    worklist.set_query(replace(worklist.query, blind_reader="dr_blind"))
    assert worklist.blind == {e.exam.exam_key for e in worklist.entries}
    done = next(r for r, e in enumerate(worklist.entries) if e.status == "done")
    assert worklist.data(worklist.index(done, COL_SCORE)) == ""
    assert worklist.data(worklist.index(done, COL_STATUS)).startswith("analysed - AI hidden")
    WorklistFilter(worklist).set_filter("suspicious")
    assert worklist.total == 0


def test_the_window_pages_its_worklist_and_never_builds_every_exam(archive_file, qtbot, tmp_path,
                                                                    monkeypatch) -> None:
    from mammotriage.ui.main_window import MainWindow

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))

    def every_exam(self):
        raise AssertionError("the worklist built every exam record")

    monkeypatch.setattr(Archive, "exams", every_exam)
    archive = Archive(archive_file)
    win = MainWindow(archive=archive, start_triage=False)
    qtbot.addWidget(win)
    try:
        win.model_version = "v-1"
        win.refresh_worklist()
        assert win.worklist.total == N_EXAMS and 0 < win.worklist.rowCount() < N_EXAMS  # one page of rows
        assert win.current is not None and win.worklist_view.row_of(win.current.exam_key) == 0
        win.table.sortByColumn(COL_DATE, Qt.SortOrder.DescendingOrder)
        dates = [e.exam.study_date for e in win.worklist.entries]
        assert dates == sorted(dates, reverse=True)
        win.table.selectRow(3)  # opens that exam (its records load now)
        key = win.current.exam_key
        assert win.current.images and win.worklist.entries[3].exam.exam_key == key
        win.filter_box.setCurrentText("unread")  # every exam is unread: same rows, the same one selected
        assert win.table.currentIndex().row() == 3 and win.current.exam_key == key
        win.search.setText(win.current.accessions[0])
        assert win.worklist.total == 1 and win.table.currentIndex().row() == 0
        win.search.clear()
        win.filter_box.setCurrentText("all")
        assert win.open_next_unread() and win.current.exam_key != key
    finally:
        win.close()
        archive.close()


def test_the_reader_row_stays_put_while_results_arrive(model) -> None:
    worklist, queue = model
    while worklist.rowCount() < 120:
        worklist.fetchMore()
    pending = [e.exam.exam_key for e in worklist.entries if e.status != "done"]
    key = pending[-1]  # the reader is on a waiting exam, at row ...
    row = worklist.row_of(key)
    assert row is not None and row > 0
    # results arrive: this exam ranks first now, another one moves as well
    for job_key, score in ((key, 0.999), (pending[0], 0.998)):
        queue.prioritize(job_key, "v-1")
        job = queue.claim_next("v-1")
        while job.exam_key != job_key:  # claim order is the queue's; give the others no result
            queue.conn.execute("UPDATE triage_jobs SET status = 'pending' WHERE exam_key = ?", (job.exam_key,))
            queue.conn.commit()
            queue.prioritize(job_key, "v-1")
            job = queue.claim_next("v-1")
        sop = queue.conn.execute("SELECT i.sop_uid FROM images i JOIN studies s ON s.study_uid = i.study_uid "
                                 "WHERE s.exam_key = ?", (job_key,)).fetchone()[0]
        queue.complete(job, "ab" * 32, [{"sop_uid": sop, "laterality": "R", "score": score, "findings": []}])
        worklist.set_query(worklist.query, keep=(key, row), rows=worklist.rowCount())
        assert worklist.row_of(key) == row  # the row under the reader did not jump
    assert worklist.entries[row].score == pytest.approx(0.999)
    assert worklist.entries[0].exam.exam_key == pending[0]  # the others re-ordered around it
    while worklist.canFetchMore():
        worklist.fetchMore()
    keys = [e.exam.exam_key for e in worklist.entries]
    assert len(keys) == len(set(keys)) == N_EXAMS  # the held row is not fetched twice
    worklist.set_query(worklist.query)  # nothing held: the triage order is whole again
    assert worklist.entries[0].exam.exam_key == key


def test_a_refresh_fetches_the_rows_on_screen_plus_a_page_not_all_scrolled_through(archive_file, qtbot, tmp_path,
                                                                                    monkeypatch) -> None:
    from mammotriage.ui.main_window import MainWindow

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    archive = Archive(archive_file)
    win = MainWindow(archive=archive, start_triage=False)
    qtbot.addWidget(win)
    fetched: list[int] = []
    page = win.worklist._fetch

    def counting(q, offset, limit):
        total, rows = page(q, offset, limit)
        fetched.append(len(rows))
        return total, rows

    win.worklist._fetch = counting
    try:
        win.resize(1200, 700)
        win.show()
        win.model_version = "v-1"
        win.refresh_worklist()
        page_rows = win.worklist.page_rows
        assert win.worklist.total == N_EXAMS > 2 * page_rows
        win.table.selectRow(3)  # the reader is on row 3
        key = win.current.exam_key
        while win.worklist.canFetchMore():  # ... and scrolls through every row, then back up
            win.worklist.fetchMore()
        win.table.scrollToBottom()
        win.table.scrollToTop()
        qtbot.waitUntil(lambda: win.table.rowAt(0) == 0)
        assert win.worklist.rowCount() == N_EXAMS
        last_visible = win.table.rowAt(win.table.viewport().height() - 1)
        assert 3 < last_visible < page_rows  # a page covers what is on screen
        fetched.clear()
        win.refresh_worklist()
        assert sum(fetched) <= last_visible + 1 + page_rows < N_EXAMS  # was every row scrolled through
        assert win.worklist.rowCount() == sum(fetched)
        assert win.worklist.row_of(key) == 3 and win.table.currentIndex().row() == 3  # the row stayed put
        assert win.worklist.canFetchMore()  # the rest come back as the table scrolls
        while win.worklist.canFetchMore():
            win.worklist.fetchMore()
        keys = [e.exam.exam_key for e in win.worklist.entries]
        assert len(keys) == len(set(keys)) == N_EXAMS
    finally:
        win.close()
        archive.close()


def test_a_refresh_fetches_through_the_held_row_below_the_screen(model) -> None:
    worklist, _queue = model
    while worklist.canFetchMore():
        worklist.fetchMore()
    assert worklist.refresh_rows(19) == 20 + worklist.page_rows  # the screen's rows and a page
    assert worklist.refresh_rows(19, keep_row=150) == 151 + worklist.page_rows  # the reader's row is kept
    assert worklist.refresh_rows(-1) == worklist.page_rows
    key = worklist.entries[150].exam.exam_key
    worklist.set_query(worklist.query, keep=(key, 150), rows=worklist.refresh_rows(19, keep_row=150))
    assert worklist.row_of(key) == 150 and worklist.rowCount() == 151 + worklist.page_rows
