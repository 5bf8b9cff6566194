"""The worklist a page at a time: order, sorts, filters, search and blind mode in SQL.

:func:`worklist_rows` is what the app's worklist and ``mammotriage worklist`` show, for
archives of tens of thousands of exams: SQLite orders and filters the per-exam index
(``exam_index``) and only the rows of the page asked for become Python objects. Building
every exam record (:meth:`Archive.exams`) and then sorting in Python takes seconds at
10,000 exams; a page takes tens of milliseconds (``benchmarks/archive_scale.py``).

Rules are :func:`build_worklist`'s, with two approximations:

* sorting by the AI columns uses the current model's score (an older model's score is
  shown, marked, but sorts as no result), and sorting by "Views" sorts by their number;
* the prior count links exams by the Patient ID as stored (and the issuer), not by the
  one-view-per-study Patient ID stripped of its view suffix.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mammotriage.dicom.hanging import split_view_patient_id
from mammotriage.store.archive import stored_label, view_sort_key
from mammotriage.store.assessment import UNREAD, ReadState, read_states
from mammotriage.triage.worklist import OperatingPoints, WorklistEntry

__all__ = ["FILTERS", "SORTS", "ExamSummary", "WorklistQuery", "WorklistRow", "position_of", "prior_study_uids", "worklist_rows"]

#: ``WorklistQuery.sort``: the triage order, or one worklist column.
SORTS = ("triage", "patient", "date", "status", "score", "views", "accession", "name", "read", "priors")
FILTERS = ("all", "unread", "suspicious", "likely normal", "AI pending", "has priors")
_CHUNK = 500  # SQL variables a query


@dataclass(frozen=True)
class ExamSummary:
    """What the worklist shows of an exam, without its image records (load those with
    :meth:`Archive.exam` when the exam opens)."""

    exam_key: str
    patient_id: str
    patient_name: str
    study_date: _dt.date | None
    accessions: tuple[str, ...]
    study_uids: tuple[str, ...]
    views: tuple[str, ...]
    patient_id_issuer: str = ""
    images: tuple = ()  # never loaded here


@dataclass(frozen=True)
class WorklistQuery:
    """What the reader asked the worklist for."""

    model_version: str | None
    points: OperatingPoints | None
    weights_sha256: str | None = None  # results of these weights count as current whatever their version name
    sort: str = "triage"
    descending: bool = False
    filter: str = "all"
    search: str = ""
    blind_reader: str | None = None  # "AI after my read": AI hidden except on exams this reader assessed
    triage_order: bool = True  # false: newest first while AI is hidden (the order gives nothing away)
    site_reads: bool = False  # site mode: read states from the copy of the site's chain (site_events)
    #: double reading on: "unread" is the exams that still want a read by this reader (no
    #: standing arbitration, no standing signature of theirs, fewer than two standing
    #: signatures; a signature or arbitration stands until an amendment after it)
    double_reader: str | None = None

    def __post_init__(self) -> None:
        if self.sort not in SORTS or self.filter not in FILTERS:
            raise ValueError(f"unknown worklist sort {self.sort!r} or filter {self.filter!r}")


@dataclass(frozen=True)
class WorklistRow:
    entry: WorklistEntry
    blind: bool
    read: ReadState = field(default=UNREAD)
    priors: int = 0


def _issuer(alias: str) -> str:
    """The exam's Issuer of Patient ID: its first study's (``exam_index.study_uids`` is in UID order)."""
    first = f"substr({alias}.study_uids, 1, instr({alias}.study_uids || ' ', ' ') - 1)"
    return f"(SELECT TRIM(s.patient_id_issuer) FROM studies s WHERE s.study_uid = {first})"


_PRIORS = f"""(SELECT COUNT(*) FROM exam_index p WHERE p.patient_id = e.patient_id AND e.patient_id != ''
               AND p.study_date < e.study_date AND {_issuer('p')} IS {_issuer('e')})"""
_READ = """COALESCE((SELECT CASE c.action WHEN 'amend' THEN 'reopened' ELSE 'signed' END FROM {events} c
                     WHERE c.exam_key = e.exam_key AND c.action IN ('sign', 'arbitrate', 'amend')
                     ORDER BY c.seq DESC LIMIT 1),
                    CASE WHEN EXISTS (SELECT 1 FROM {events} c WHERE c.exam_key = e.exam_key)
                         THEN 'started' ELSE 'unread' END)"""
#: a reader's signature that still stands (no amendment of theirs after it)
_STANDING = """NOT EXISTS (SELECT 1 FROM {events} a WHERE a.exam_key = c.exam_key AND a.action = 'amend'
                               AND a.seq > c.seq {same})"""
_NEEDS_READ = """(NOT EXISTS (SELECT 1 FROM {events} c WHERE c.exam_key = e.exam_key AND c.action = 'arbitrate'
                             AND {standing_any})
                 AND NOT EXISTS (SELECT 1 FROM {events} c WHERE c.exam_key = e.exam_key AND c.action = 'sign'
                                 AND c.reader = :dreader AND {standing_own})
                 AND (SELECT COUNT(DISTINCT c.reader) FROM {events} c WHERE c.exam_key = e.exam_key
                      AND c.action = 'sign' AND {standing_own}) < 2)"""
_VIEWS = """(SELECT COUNT(*) FROM studies s JOIN images i ON i.study_uid = s.study_uid
             WHERE s.exam_key = e.exam_key)"""
_COLUMN_KEYS = {"patient": "patient_id COLLATE NOCASE", "date": "study_date", "name": "patient_name COLLATE NOCASE",
                "accession": "accessions COLLATE NOCASE", "status": "ai_key", "score": "ai_key",
                "views": "n_views", "read": "read_state", "priors": "priors"}
_WHERE = {"all": "", "unread": "read_state != 'signed'", "suspicious": "NOT blind AND rank = 0",
          "likely normal": "NOT blind AND rank = 3", "AI pending": "status != 'done'", "has priors": "priors > 0"}


def _events(q: WorklistQuery) -> str:
    """Where the read states come from: the workstation's own log, or in site mode the
    copy of the site's chain (``store.pg.mirror``)."""
    return "site_events" if q.site_reads else "correction_events"


def _rows_sql(conn: sqlite3.Connection, q: WorklistQuery, what: str, tail: str = "") -> tuple[str, dict[str, Any]]:
    sus, norm = (q.points.suspicious, q.points.likely_normal) if q.points is not None else (2.0, -1.0)
    version, sha = q.model_version or "", q.weights_sha256 or ""
    params: dict[str, Any] = {"version": version, "sha": sha, "reader": q.blind_reader or "",
                              "sus": sus, "norm": norm, "dreader": q.double_reader or ""}
    needs = "1"
    if q.double_reader is not None:
        events = _events(q)
        needs = _NEEDS_READ.format(events=events,
                                   standing_any=_STANDING.format(events=events, same=""),
                                   standing_own=_STANDING.format(events=events, same="AND a.reader = c.reader"))
    where = "needs_read" if q.filter == "unread" and q.double_reader is not None else _WHERE[q.filter]
    blind = "0"
    if q.blind_reader is not None:
        blind = "NOT EXISTS (SELECT 1 FROM initial_reads ir WHERE ir.exam_key = e.exam_key AND ir.reader = :reader)"
    result = "ai_exam_results r ON r.exam_key = e.exam_key AND r.model_version = :version"
    score = "r.score"
    if sha:  # the version's own result, else one of the same weights under another name
        score = ("COALESCE(r.score, (SELECT x.score FROM ai_exam_results x WHERE x.exam_key = e.exam_key "
                 "AND x.weights_sha256 = :sha ORDER BY x.created_at DESC LIMIT 1))")
    match = ""
    if q.search.strip():
        match = "WHERE " + " OR ".join(f"{c} LIKE :like ESCAPE '\\'" for c in (
            "e.patient_id", "REPLACE(e.patient_name, '^', ' ')", "e.accessions"))
        params["like"] = "%" + q.search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    sql = f"""
        WITH scored AS (
            SELECT e.exam_key, e.patient_id, e.patient_name, e.study_date, e.accessions, {score} AS score,
                   j.status AS job, {blind} AS blind, {_READ.format(events=_events(q))} AS read_state, {needs} AS needs_read, {_PRIORS} AS priors,
                   {_VIEWS} AS n_views
            FROM exam_index e
            LEFT JOIN {result}
            LEFT JOIN triage_jobs j ON j.exam_key = e.exam_key AND j.model_version = :version
            {match}
        ), keyed AS (
            SELECT *, CASE WHEN score IS NOT NULL THEN 'done' WHEN job IS NULL THEN 'not queued'
                           WHEN job = 'done' THEN 'pending' ELSE job END AS status,
                   COALESCE(score, -1.0) AS score_key,
                   CASE WHEN score IS NULL THEN 1 WHEN score >= :sus THEN 0 WHEN score < :norm THEN 3 ELSE 2 END AS rank,
                   CASE WHEN blind THEN -1.0 ELSE COALESCE(score, -1.0) END AS ai_key
            FROM scored)
        SELECT {what} FROM keyed {'WHERE ' + where if where else ''} {tail}"""
    return sql, params


def _order(conn: sqlite3.Connection, q: WorklistQuery) -> str:
    if q.sort != "triage":
        way = "DESC" if q.descending else "ASC"
        return f"{_COLUMN_KEYS[q.sort]} {way}, exam_key {way}"
    if q.blind_reader is not None and not q.triage_order and conn.execute(
            "SELECT EXISTS (SELECT 1 FROM exam_index e WHERE NOT EXISTS (SELECT 1 FROM initial_reads ir "
            "WHERE ir.exam_key = e.exam_key AND ir.reader = ?))", (q.blind_reader,)).fetchone()[0]:
        return "study_date DESC, exam_key"
    return "rank, score_key DESC, study_date DESC, exam_key"


def count(conn: sqlite3.Connection, q: WorklistQuery) -> int:
    """Exams the query matches."""
    if q.filter == "all" and not q.search.strip():
        return int(conn.execute("SELECT COUNT(*) FROM exam_index").fetchone()[0])
    sql, params = _rows_sql(conn, q, "COUNT(*)")
    return int(conn.execute(sql, params).fetchone()[0])


def position_of(conn: sqlite3.Connection, q: WorklistQuery, exam_key: str) -> int | None:
    """The row ``exam_key`` has in the query's order (None when it does not match)."""
    sql, params = _rows_sql(conn, q, f"exam_key, ROW_NUMBER() OVER (ORDER BY {_order(conn, q)}) - 1 AS pos")
    row = conn.execute(f"SELECT pos FROM ({sql}) WHERE exam_key = :key", {**params, "key": exam_key}).fetchone()
    return None if row is None else int(row[0])


def worklist_rows(conn: sqlite3.Connection, q: WorklistQuery, offset: int = 0, limit: int = 200,
                  etas: dict[str, float] | None = None) -> tuple[int, list[WorklistRow]]:
    """``(matching exams, the rows offset .. offset + limit)``, in the query's order.
    ``etas``: expected seconds to the result of waiting exams (:meth:`TriageQueue.etas`)."""
    sql, params = _rows_sql(conn, q, "exam_key, score, status, rank, blind",
                            f"ORDER BY {_order(conn, q)} LIMIT :limit OFFSET :offset")
    page = conn.execute(sql, {**params, "limit": int(limit), "offset": int(offset)}).fetchall()
    total = count(conn, q) if page or offset else 0
    return total, _enrich(conn, q, page, [r[0] for r in page], etas or {})


def _iso_date(value: str | None) -> _dt.date | None:
    try:
        return _dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _in(conn: sqlite3.Connection, sql: str, keys: Sequence[str], *params: Any) -> list[Any]:
    """``sql`` (with ``{keys}`` where the ``IN`` list goes) over ``keys`` in chunks."""
    out: list[Any] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start:start + _CHUNK])
        out += conn.execute(sql.format(keys=",".join("?" * len(chunk))), (*params, *chunk)).fetchall()
    return out


def _enrich(conn: sqlite3.Connection, q: WorklistQuery, page: Sequence[Any], keys: list[str],
            etas: dict[str, float]) -> list[WorklistRow]:
    """The page's rows as worklist entries: names, views, the result shown, read state, priors."""
    index = {r[0]: r for r in _in(conn, "SELECT exam_key, patient_id, patient_name, study_date, accessions, "
                                        "study_uids FROM exam_index WHERE exam_key IN ({keys})", keys)}
    issuers: dict[str, str] = {}
    for k, issuer in _in(conn, "SELECT exam_key, patient_id_issuer FROM studies WHERE exam_key IN ({keys}) "
                               "ORDER BY study_uid", keys):
        issuers.setdefault(k, issuer)
    labels: dict[str, set[str]] = {}
    for k, lat, view in _in(conn, 'SELECT s.exam_key, i.laterality, i."view" FROM studies s JOIN images i '
                                  "ON i.study_uid = s.study_uid WHERE s.exam_key IN ({keys})", keys):
        labels.setdefault(k, set()).add(stored_label(lat, view))
    results: dict[str, list[Any]] = {}
    for r in _in(conn, "SELECT exam_key, model_version, weights_sha256, score, score_left, score_right "
                       "FROM ai_exam_results WHERE exam_key IN ({keys}) ORDER BY created_at DESC", keys):
        results.setdefault(r[0], []).append(r)
    reasons = dict(_in(conn, "SELECT exam_key, reason FROM triage_jobs WHERE model_version = ? "
                             "AND exam_key IN ({keys})", keys, q.model_version or ""))
    priors = dict(_in(conn, f"SELECT e.exam_key, {_PRIORS} FROM exam_index e WHERE e.exam_key IN ({{keys}})", keys))
    reads = read_states(conn, keys, table=_events(q))
    names = ("suspicious", "pending", "indeterminate", "likely normal")
    rows = []
    for key, score, status, rank, blind in page:
        _k, pid, name, date, accessions, uids = index[key]
        listed = results.get(key, [])
        if score is not None:
            shown = next((r for r in listed if r[1] == q.model_version), None) or next(
                (r for r in listed if q.weights_sha256 and r[2] == q.weights_sha256), None)
        else:
            shown = listed[0] if listed else None
        breasts = {}
        if shown is not None:
            breasts = {side: s for side, s in (("L", shown[4]), ("R", shown[5])) if s is not None}
        cat = status if score is None else names[rank] if q.points is not None else "indeterminate"
        exam = ExamSummary(
            exam_key=key, patient_id=split_view_patient_id(pid) or pid, patient_name=name,
            study_date=_iso_date(date),
            accessions=tuple(a for a in accessions.split() if a), study_uids=tuple(uids.split()),
            views=tuple(sorted(labels.get(key, ()), key=view_sort_key)), patient_id_issuer=issuers.get(key, ""))
        entry = WorklistEntry(
            exam=exam, status=status, category=cat, score=shown[3] if shown is not None else None,  # type: ignore[arg-type]
            breasts=breasts, model_version=shown[1] if shown is not None else None,
            stale=shown is not None and score is None, reason=reasons.get(key),
            eta_s=0.0 if status == "done" else etas.get(key))
        rows.append(WorklistRow(entry, bool(blind), reads.get(key, UNREAD), int(priors.get(key, 0))))
    return rows


def prior_study_uids(conn: sqlite3.Connection, exam_keys: Sequence[str]) -> dict[str, list[str]]:
    """``exam_key -> the first Study Instance UID of each prior``, most recent prior first
    (the prior rule of the worklist's prior count)."""
    out: dict[str, list[str]] = {}
    for key, uids in _in(conn, f"""
            SELECT e.exam_key, p.study_uids FROM exam_index e JOIN exam_index p
            ON p.patient_id = e.patient_id AND e.patient_id != '' AND p.study_date < e.study_date
               AND {_issuer('p')} IS {_issuer('e')}
            WHERE e.exam_key IN ({{keys}}) ORDER BY p.study_date DESC, p.exam_key DESC""", exam_keys):
        out.setdefault(key, []).append(uids.split()[0])
    return out
