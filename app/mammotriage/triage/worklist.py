"""Worklist ordering by suspicion, with site-configurable operating points.

Categories
----------
``suspicious``     exam score >= the threshold chosen for a target sensitivity
``indeterminate``  between the two thresholds
``likely normal``  exam score < the rule-out threshold
``pending``        not analysed yet by the current model (also running / failed):
                   shown as such, never as normal

Order: suspicious, then everything without a current result (a reader must not
assume those are normal), then indeterminate, then likely normal; by score within a
category, then newest study first.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammotriage.dicom.hanging import split_view_patient_id
from mammotriage.model.scoring import category
from mammotriage.store.archive import ExamRecord
from mammotriage.triage.queue import ExamResult, Job

_log = logging.getLogger(__name__)

CATEGORY_RANK = {"suspicious": 0, "pending": 1, "running": 1, "failed": 1, "not queued": 1,
                 "indeterminate": 2, "likely normal": 3}


@dataclass(frozen=True)
class OperatingPoints:
    """Exam-score thresholds. ``suspicious`` >= ``likely_normal``."""

    suspicious: float
    likely_normal: float
    source: str = "model metadata"
    reason: str | None = None  # why a site moved the model's thresholds (triage.json)

    def __post_init__(self) -> None:
        if not 0.0 <= self.likely_normal <= self.suspicious <= 1.0:
            raise ValueError(f"need 0 <= likely_normal ({self.likely_normal}) <= suspicious "
                             f"({self.suspicious}) <= 1")

    def describe(self) -> str:
        text = f"worklist thresholds: suspicious >= {self.suspicious:.4g}, likely normal < {self.likely_normal:.4g}"
        if self.reason is not None:
            text += f" — moved from the model's by the site ({self.source}): {self.reason}"
        return text

    def category(self, score: float) -> str:
        return category(score, self.suspicious, self.likely_normal)

    @classmethod
    def resolve(cls, model_metadata: dict[str, Any] | None, site_file: Path | None = None) -> OperatingPoints:
        """Site settings (``triage.json``: ``{"suspicious": t, "likely_normal": t, "reason":
        "..."}``) win over the thresholds stored in the model's metadata; a site may move
        them only with a reason, which is logged and shown with the worklist."""
        if site_file is not None and site_file.exists():
            try:
                data = json.loads(site_file.read_text(encoding="utf-8"))
                reason = data.get("reason")
                if not isinstance(reason, str) or not reason.strip():
                    raise ValueError('a site may move the model\'s thresholds only with a "reason"')
                points = cls(float(data["suspicious"]), float(data["likely_normal"]), source=str(site_file),
                             reason=reason.strip())
            except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{site_file}: invalid operating points: {exc}") from exc
            _log.warning("%s", points.describe())
            return points
        stored = (model_metadata or {}).get("operating_points") or {}
        sus = stored.get("suspicious", {})
        norm = stored.get("likely_normal", {})
        sus_t = sus.get("threshold") if isinstance(sus, dict) else sus
        norm_t = norm.get("threshold") if isinstance(norm, dict) else norm
        if sus_t is None or norm_t is None:
            raise ValueError("the model metadata has no operating points (operating_points.suspicious / "
                             "likely_normal); set them in triage.json")
        return cls(float(sus_t), float(min(norm_t, sus_t)))


@dataclass(frozen=True)
class WorklistEntry:
    exam: ExamRecord
    status: str  # done / pending / running / failed / not queued
    category: str
    score: float | None
    breasts: dict[str, float]
    model_version: str | None  # version of the result shown
    stale: bool  # the result shown comes from an older model than the current one
    reason: str | None = None
    eta_s: float | None = None  # expected seconds to the current model's result (0 when done)

    @property
    def score_100(self) -> int | None:
        return None if self.score is None else int(round(self.score * 100))


def build_worklist(exams: Sequence[ExamRecord], jobs: Sequence[Job], results: dict[str, list[ExamResult]],
                   current_version: str | None, points: OperatingPoints | None,
                   current_sha256: str | None = None, etas: dict[str, float] | None = None
                   ) -> list[WorklistEntry]:
    """Entries ordered most suspicious first (see the module docstring). A result made by
    the current weights (``current_sha256``) is current whatever version name it carries.
    ``etas``: expected seconds to the result of waiting exams (:meth:`TriageQueue.etas`)."""
    etas = etas or {}
    job_by_exam = {j.exam_key: j for j in jobs if j.model_version == current_version}
    entries = []
    for exam in exams:
        res_list = results.get(exam.exam_key, [])
        current = next((r for r in res_list if r.model_version == current_version), None) or next(
            (r for r in res_list if current_sha256 and r.weights_sha256 == current_sha256), None)
        shown = current or (res_list[0] if res_list else None)
        job = job_by_exam.get(exam.exam_key)
        if current is not None:
            status = "done"
        else:
            status = job.status if job is not None else "not queued"
            if status == "done":  # job done but results missing: treat as not analysed
                status = "pending"
        if current is not None and points is not None:
            category = points.category(current.score)
        elif current is not None:
            category = "indeterminate"
        else:
            category = status
        breasts = {}
        if shown is not None:
            if shown.score_left is not None:
                breasts["L"] = shown.score_left
            if shown.score_right is not None:
                breasts["R"] = shown.score_right
        entries.append(WorklistEntry(
            exam=exam, status=status, category=category, score=shown.score if shown else None,
            breasts=breasts, model_version=shown.model_version if shown else None,
            stale=shown is not None and current is None, reason=job.reason if job else None,
            eta_s=0.0 if status == "done" else etas.get(exam.exam_key)))

    def key(e: WorklistEntry) -> tuple:
        date = e.exam.study_date.toordinal() if e.exam.study_date else 0
        score = e.score if (e.score is not None and not e.stale) else -1.0
        return (CATEGORY_RANK.get(e.category, 1), -score, -date, e.exam.exam_key)

    return sorted(entries, key=key)


#: Orders and filters :func:`worklist_page` does in SQL.
PAGE_SORTS = ("triage", "date", "patient")
PAGE_FILTERS = ("all", "suspicious", "likely normal", "AI pending")
_PAGE_ORDER = {"triage": "rank, score_key DESC, study_date DESC, exam_key",
               "date": "study_date DESC, exam_key", "patient": "patient_id, study_date DESC, exam_key"}
_PAGE_WHERE = {"all": "", "suspicious": "WHERE rank = 0", "likely normal": "WHERE rank = 3",
               "AI pending": "WHERE status != 'done'"}


def worklist_page(conn: sqlite3.Connection, model_version: str | None, points: OperatingPoints | None, *,
                  sort: str = "triage", filter: str = "all", search: str = "", offset: int = 0,
                  limit: int = 200) -> tuple[int, list[dict[str, Any]]]:
    """One page of the worklist, ordered and filtered by SQLite (indexes, no image rows):
    ``(matching exams, rows)``. The triage order is :func:`build_worklist`'s (category,
    then score, then newest); ``search`` matches patient ID, name or accession.

    For archives of tens of thousands of exams, where building every :class:`ExamRecord`
    (:meth:`Archive.exams`) takes longer than a reader should wait. Unlike
    :func:`build_worklist` it counts only results stored under ``model_version`` as
    current (not those of the same weights under another version name), and it shows no
    older model's score."""
    if sort not in _PAGE_ORDER or filter not in _PAGE_WHERE:
        raise ValueError(f"unknown worklist sort {sort!r} or filter {filter!r}")
    sus, norm = (points.suspicious, points.likely_normal) if points is not None else (2.0, -1.0)
    params: list[Any] = [sus, norm, model_version or "", model_version or ""]
    match = ""
    if search.strip():
        match = "WHERE " + " OR ".join(f"e.{c} LIKE ? ESCAPE '\\'" for c in ("patient_id", "patient_name",
                                                                              "accessions"))
        like = "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        params += [like] * 3
    sql = f"""
        WITH rows AS (
            SELECT e.*, r.score AS score,
                   CASE WHEN r.score IS NOT NULL THEN 'done' WHEN j.status IS NULL THEN 'not queued'
                        WHEN j.status = 'done' THEN 'pending' ELSE j.status END AS status,
                   COALESCE(r.score, -1.0) AS score_key,
                   CASE WHEN r.score IS NULL THEN 1 WHEN r.score >= ? THEN 0 WHEN r.score < ? THEN 3 ELSE 2 END
                       AS rank
            FROM exam_index e
            LEFT JOIN ai_exam_results r ON r.exam_key = e.exam_key AND r.model_version = ?
            LEFT JOIN triage_jobs j ON j.exam_key = e.exam_key AND j.model_version = ?
            {match}
        )
        SELECT {{what}} FROM rows {_PAGE_WHERE[filter]}
        """
    rows = conn.execute(sql.format(what="*") + f" ORDER BY {_PAGE_ORDER[sort]} LIMIT ? OFFSET ?",
                        (*params, int(limit), int(offset))).fetchall()
    if filter == "all" and not match:
        total = int(conn.execute("SELECT COUNT(*) FROM exam_index").fetchone()[0])
    else:
        total = int(conn.execute(sql.format(what="COUNT(*)"), params).fetchone()[0])
    names = ("suspicious", "pending", "indeterminate", "likely normal")
    out = [{"exam_key": r["exam_key"], "patient_id": split_view_patient_id(r["patient_id"]) or r["patient_id"],
            "patient_name": r["patient_name"], "date": r["study_date"], "study_uids": r["study_uids"].split(),
            "accessions": r["accessions"].split(), "ai_status": r["status"], "ai_score": r["score"],
            "ai_category": (names[r["rank"]] if r["score"] is not None and points is not None else
                            "indeterminate" if r["score"] is not None else r["status"])} for r in rows]
    return total, out


def worklist_listing(archive_file: Path, home: Path, reader: str | None = None) -> dict[str, Any]:
    """The worklist as the app orders it, for ``mammotriage worklist``.

    The model is the registry's active version (its operating points, or the site's
    ``triage.json``). In "AI after my read" mode (the site's ``reading_policy.json``,
    else the reader's last choice) AI category and score are left out, except for
    exams ``reader`` has recorded an initial assessment for.
    """
    import configparser
    import contextlib

    from mammotriage.model.registry import active_package
    from mammotriage.store.assessment import ReadingPolicy
    from mammotriage.store.reading import current_reader
    from mammotriage.triage.queue import TriageQueue

    ini = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(configparser.Error, UnicodeDecodeError):
        ini.read(home / "settings.ini", encoding="utf-8")
    reader = reader or ini.get("reader", "name", fallback="") or current_reader()
    policy = ReadingPolicy.load(home)
    mode = policy.mode_for(ini.get("ai", "reading_mode", fallback=None))
    found = active_package(archive_file, verified=False)
    version = found.version.version if found.version else None
    sha = found.version.weights_sha256 if found.version else None
    points = None
    if found.meta is not None:
        try:
            points = OperatingPoints.resolve(found.meta, home / "triage.json")
        except ValueError:
            points = None
    from mammotriage.triage.pages import WorklistQuery, prior_study_uids, worklist_rows

    query = WorklistQuery(version, points, blind_reader=reader if mode == "after read" else None,
                          triage_order=policy.triage_order)
    rows = []
    blind = False
    with TriageQueue(archive_file) as queue:
        etas = queue.etas(version, queue.per_view_p95(sha)) if version and sha else {}
        offset, total = 0, 1
        while offset < total:  # the app's paged query, a page at a time
            total, page = worklist_rows(queue.conn, query, offset, 500, etas)
            if not page:
                break
            offset += len(page)
            priors = prior_study_uids(queue.conn, [r.entry.exam.exam_key for r in page])
            for item in page:
                entry, exam, state = item.entry, item.entry.exam, item.read
                blind = blind or item.blind
                row: dict[str, Any] = {
                    "study_uid": exam.study_uids[0] if exam.study_uids else "",
                    "study_uids": list(exam.study_uids),
                    "exam_key": exam.exam_key,
                    "patient_id": exam.patient_id,
                    "date": exam.study_date.isoformat() if exam.study_date else None,
                    "accessions": [a for a in exam.accessions if a],
                    "views": list(exam.views),
                    "ai_status": entry.status,
                    "eta_s": None if entry.eta_s is None else round(entry.eta_s, 1),
                }
                if not item.blind:
                    row["ai_category"] = entry.category
                    row["ai_score"] = None if entry.score is None else round(entry.score, 4)
                    row["ai_model_version"] = entry.model_version
                earlier = priors.get(exam.exam_key, [])
                row.update({"read_state": state.state, "reader": state.reader or None,
                            "priors": len(earlier), "prior_study_uids": earlier})
                rows.append(row)
    return {"model_version": version, "reading_mode": mode, "blind": bool(blind),
            "policy": policy.source or None, "reader": reader, "exams": rows}


def eta_text(eta_s: float | None) -> str:
    """A waiting exam's expected time to its AI result, for people ('' when unknown)."""
    if eta_s is None:
        return ""
    if eta_s < 1.0:
        return "result due now"
    if eta_s < 90:
        return f"result in ~{eta_s:.0f} s"
    if eta_s < 5400:
        return f"result in ~{eta_s / 60:.0f} min"
    return f"result in ~{eta_s / 3600:.1f} h"


def listing_text(listing: dict[str, Any]) -> str:
    """The listing as a table (one exam a line)."""
    lines = [f"model {listing['model_version'] or 'none'} · AI {listing['reading_mode']}"
             + (" (AI hidden until your initial assessment)" if listing["blind"] else "")]
    lines.append(f"{'#':>3}  {'patient':<16} {'date':<10}  {'AI':<22} {'score':>5}  {'read':<22} priors  study")
    for n, row in enumerate(listing["exams"], 1):
        ai = row.get("ai_category", "hidden" if row["ai_status"] == "done" else row["ai_status"])
        if row["ai_status"] in ("pending", "running") and row.get("eta_s") is not None:
            ai = f"{ai} {eta_text(row['eta_s']).removeprefix('result ')}"
        score = row.get("ai_score")
        read = row["read_state"] + (f" ({row['reader']})" if row["reader"] else "")
        lines.append(f"{n:>3}  {row['patient_id'][:16]:<16} {row['date'] or '-':<10}  {ai[:22]:<22} "
                     f"{'' if score is None else int(round(score * 100)):>5}  {read[:22]:<22} {row['priors']:>6}  "
                     f"{row['study_uid']}")
    return "\n".join(lines)
