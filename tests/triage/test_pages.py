"""The paged worklist query (triage/pages.py) on a real archive of a few hundred tiny
exams: its query plans look rows up by index, and it agrees with the full worklist."""

from __future__ import annotations

import pytest

from mammotriage.store import Archive
from mammotriage.store.priors import link_priors
from mammotriage.triage import OperatingPoints, TriageQueue, build_worklist
from mammotriage.triage.pages import (
    FILTERS,
    SORTS,
    WorklistQuery,
    position_of,
    prior_study_uids,
    worklist_rows,
)
from mtsupport import tiny_exam_archive

POINTS = OperatingPoints(0.5, 0.1)


@pytest.fixture(scope="module")
def archive_file(tmp_path_factory):
    return tiny_exam_archive(tmp_path_factory.mktemp("pages"), 150)


class Planner:
    """A connection that records SQLite's plan of each statement it runs."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.plans: list[str] = []

    def execute(self, sql: str, params=()):
        self.plans.append(" | ".join(r[3] for r in self.conn.execute("EXPLAIN QUERY PLAN " + sql, params)))
        return self.conn.execute(sql, params)


def test_every_sort_and_filter_looks_rows_up_by_index(archive_file) -> None:
    with TriageQueue(archive_file) as queue:
        planner = Planner(queue.conn)
        for sort in SORTS:
            for name in FILTERS:
                for site_reads, double in ((False, None), (True, None), (False, "dr"), (True, "dr")):
                    q = WorklistQuery("v-1", POINTS, "ab" * 32, sort=sort, filter=name, blind_reader="dr",
                                      site_reads=site_reads, double_reader=double)
                    total, rows = worklist_rows(planner, q, 0, 20)
                    assert len(rows) == min(total, 20)
        position_of(planner, WorklistQuery("v-1", POINTS, search="P000"), rows[0].entry.exam.exam_key)
    for plan in planner.plans:
        # one pass over the per-exam index at most; every other table by an index
        for table in ("studies", "images", "ai_exam_results", "triage_jobs", "correction_events", "site_events",
                      "initial_reads"):
            assert f"SCAN {table}" not in plan, plan
        for alias in ("s", "i", "r", "x", "j", "c", "ir"):
            assert f"SCAN {alias} " not in plan + " " and not plan.endswith(f"SCAN {alias}"), plan


def test_the_pages_agree_with_the_full_worklist(archive_file) -> None:
    with Archive(archive_file) as archive, TriageQueue(archive_file) as queue:
        exams = archive.exams()
        full = build_worklist(exams, queue.jobs("v-1"), queue.exam_results(), "v-1", POINTS)
        total, first = worklist_rows(queue.conn, WorklistQuery("v-1", POINTS), 0, 100)
        _total, rest = worklist_rows(queue.conn, WorklistQuery("v-1", POINTS), 100, 100)
        linked = link_priors(exams)
        uids = prior_study_uids(queue.conn, [e.exam_key for e in exams])
    rows = first + rest
    assert total == len(full) == len(rows) == 150
    for row, entry in zip(rows, full, strict=True):
        assert row.entry.exam.exam_key == entry.exam.exam_key
        assert (row.entry.status, row.entry.category, row.entry.score) == (entry.status, entry.category, entry.score)
        assert row.entry.exam.views == entry.exam.views and row.entry.exam.study_date == entry.exam.study_date
        assert row.priors == len(linked.get(entry.exam.exam_key, []))
    assert uids == {k: [p.study_uids[0] for p in v] for k, v in linked.items()}
    assert any(uids.values())


def test_under_double_reading_unread_is_what_still_wants_this_readers_read(tmp_path) -> None:
    """Before, the "unread" filter dropped an exam once any reader had signed it: under
    double reading the second reader's exams (one read of two) left their "unread" list."""
    from mammotriage.store.events import CorrectionLog

    signed = {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": "1", "density": "b"}},
              "recall": False}
    archive_file = tiny_exam_archive(tmp_path, 4)
    with Archive(archive_file) as archive:
        one, two, none, arbitrated = sorted(e.exam_key for e in archive.exams())
    with CorrectionLog(archive_file) as log:
        signs = {}
        for reader, key in (("dr_a", one), ("dr_a", two), ("dr_b", two), ("dr_a", arbitrated), ("dr_b", arbitrated)):
            signs[reader, key] = log.append(reader=reader, exam_key=key, action="sign", payload=signed)
        reads = [{"reader": r, "seq": signs[r, arbitrated].seq} for r in ("dr_a", "dr_b")]
        log.append(reader="dr_c", exam_key=arbitrated, action="arbitrate",
                   payload={**signed, "rule": "recall", "reasons": ["recall"], "reads": reads})
    with TriageQueue(archive_file) as queue:
        def unread(double: str | None) -> set[str]:
            q = WorklistQuery("v-1", POINTS, filter="unread", double_reader=double)
            total, rows = worklist_rows(queue.conn, q, 0, 50)
            assert total == len(rows)
            return {r.entry.exam.exam_key for r in rows}

        assert unread(None) == {none}  # single reading: one signature is a read
        assert unread("dr_b") == {one, none}  # dr_a's read awaits dr_b's
        assert unread("dr_a") == {none}
        assert unread("dr_c") == {one, none}  # two reads, or arbitrated: nothing left for a third

    # a signature stands until its reader's amendment: a re-opened read wants reading again
    with CorrectionLog(archive_file) as log:
        log.append(reader="dr_a", exam_key=one, action="amend", payload={"reason": "second look"})
        log.append(reader="dr_a", exam_key=two, action="amend", payload={"reason": "second look"})
    with TriageQueue(archive_file) as queue:
        assert unread("dr_a") == {one, two, none}  # both of dr_a's reads re-opened
        assert unread("dr_b") == {one, none}  # dr_b's read of two stands
        assert unread("dr_c") == {one, two, none}  # one standing signature of two
