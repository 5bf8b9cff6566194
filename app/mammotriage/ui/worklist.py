"""Worklist table model: exams ordered by AI suspicion, with status, scores, read state
and priors, fetched a page at a time from the archive (:mod:`mammotriage.triage.pages`):
order, sorts, filters and search run in SQL, and rows are fetched as the view scrolls
(``canFetchMore`` / ``fetchMore``), so that a 10,000-exam archive opens as fast as a
small one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QIdentityProxyModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QColor

from mammotriage.store.assessment import UNREAD, ReadState, assessment_text
from mammotriage.store.double_reading import ExamStatus, Lock
from mammotriage.triage.pages import FILTERS, WorklistQuery, WorklistRow
from mammotriage.triage.worklist import WorklistEntry, eta_text

COLUMNS = ("Patient", "Date", "AI status", "AI score", "Views", "Accession", "Name", "Read", "Priors")
COL_PATIENT, COL_DATE, COL_STATUS, COL_SCORE, COL_VIEWS, COL_ACCESSION, COL_NAME, COL_READ, COL_PRIORS = range(9)
#: the order columns are shown in (logical indices; the model keeps its own order)
WORKLIST_ORDER = (COL_PATIENT, COL_READ, COL_STATUS, COL_SCORE, COL_DATE, COL_PRIORS, COL_NAME, COL_ACCESSION, COL_VIEWS)
CATEGORY_COLOURS = {"suspicious": QColor(200, 40, 40), "likely normal": QColor(40, 120, 60),
                    "failed": QColor(150, 90, 0)}
READ_COLOURS = {"signed": QColor(40, 120, 60), "reopened": QColor(170, 110, 0), "started": QColor(60, 110, 180)}
HIDDEN = "analysed - AI hidden until your read"
#: the SQL sort of each column (:data:`mammotriage.triage.pages.SORTS`)
COLUMN_SORTS = ("patient", "date", "status", "score", "views", "accession", "name", "read", "priors")
PAGE_ROWS = 100  # rows fetched at a time (a tall table shows about 50)
__all__ = ["COLUMNS", "FILTERS", "WORKLIST_ORDER", "WorklistFilter", "WorklistModel", "status_text"]

#: fetches ``(matching exams, rows)`` of a query from ``offset``, at most ``limit`` rows
Fetch = Callable[[WorklistQuery, int, int], tuple[int, list[WorklistRow]]]
Locate = Callable[[WorklistQuery, str], "int | None"]
#: double reading: the exams of a page -> (their states, the soft locks held on them)
DoubleFetch = Callable[[list[str]], tuple[dict[str, ExamStatus], dict[str, Lock]]]
DOUBLE_COLOURS = {"held": QColor(60, 110, 180), "discordant": QColor(200, 110, 0),
                  "arbitrated": QColor(40, 120, 60), "concordant": QColor(40, 120, 60),
                  "first read": QColor(60, 110, 180)}


def double_text(status: ExamStatus | None, lock: Lock | None, reader: str) -> tuple[str, str]:
    """(cell, tooltip) of the Read column under double reading: "being read by NAME" while
    another reader holds the exam, else its double-reading state. The tooltip shows the
    reads only once both have signed (blinding)."""
    if lock is not None and lock.reader != reader:
        return lock.text, f"{lock.text} on {lock.workstation} (until {lock.expires_at[:19]} UTC)"
    if status is None or status.state == "unread":
        return "unread", "not read yet (double reading: two readers)"
    text = {"first read": f"first read · {status.readers[0] if status.readers else ''}",
            "concordant": "double read · concordant", "discordant": "discordant · arbitration",
            "arbitrated": f"arbitrated · {status.arbitrator}"}[status.state]
    tip = [text]
    if status.unblinded:
        tip += [f"{r.reader}: {assessment_text(r.assessment)}" for r in status.reads]
        tip += list(status.reasons)
    return text, "\n".join(tip)


def status_text(entry: WorklistEntry, blind: bool = False) -> str:
    if entry.status == "done":
        return HIDDEN if blind else entry.category
    if entry.status == "running":
        text = "analysing"
    elif entry.status == "failed":
        text = f"failed: {entry.reason or 'unknown reason'}"
    elif entry.status == "not queued":
        text = "not analysed"
    else:
        text = "pending"
    if entry.eta_s is not None:
        text += f" · {eta_text(entry.eta_s)}"
    if entry.stale and not blind:
        text += f" (older model {entry.model_version})"
    return text


class WorklistModel(QAbstractTableModel):
    """One row per exam, in the order of its :class:`WorklistQuery`, fetched in pages.

    ``fetch`` runs the query (:func:`mammotriage.triage.pages.worklist_rows` on the
    archive); ``locate`` finds an exam's row in the query's order
    (:func:`~mammotriage.triage.pages.position_of`). Rows whose AI is hidden (the
    reader's policy, until their initial assessment) say only whether AI is done.
    """

    def __init__(self, fetch: Fetch | None = None, locate: Locate | None = None, page_rows: int = PAGE_ROWS,
                 double: DoubleFetch | None = None, reader: str = ""):
        super().__init__()
        #: site mode: the read states with this workstation's events not sent yet on top
        self.local_reads: Callable[[Mapping[str, ReadState]], dict[str, ReadState]] | None = None
        #: double reading on: the page's states and locks (None: off, the read state as before)
        self.double = double
        self.reader = reader
        self.double_states: dict[str, ExamStatus] = {}
        self.holders: dict[str, Lock] = {}
        self._fetch: Fetch = fetch or (lambda _q, _o, _n: (0, []))
        self._locate: Locate = locate or (lambda _q, _k: None)
        self.page_rows = page_rows
        self.query: WorklistQuery | None = None
        self.entries: list[WorklistEntry] = []
        self.blind: set[str] = set()
        self.reads: dict[str, ReadState] = {}
        self.priors: dict[str, int] = {}
        self.total = 0  # exams the query matches
        self._fetched = 0  # rows of the query's order fetched so far
        self._pinned: str | None = None  # held at its row, out of the query's order

    @property
    def exams(self) -> list:
        return [e.exam for e in self.entries]

    def set_query(self, query: WorklistQuery, *, keep: tuple[str, int] | None = None, rows: int = 0) -> None:
        """Run ``query`` again from the top (at least ``rows`` rows, at least a page).
        ``keep``: (exam key, row) of the exam under the reader, which stays at that row
        even when new results move it in the order; the others move around it."""
        self.beginResetModel()
        self.query = query
        self.entries, self.blind, self.reads, self.priors = [], set(), {}, {}
        self.double_states, self.holders = {}, {}
        self._fetched, self._pinned = 0, None
        self.total, got = self._fetch(query, 0, max(rows, self.page_rows))
        self._append(got)
        if keep is not None:
            self._pin(*keep)
        self.endResetModel()

    def refresh_rows(self, last_visible: int, keep_row: int | None = None) -> int:
        """How many rows a refresh fetches: those down to the last one on screen
        (``last_visible``, -1 for none) and the reader's held row, plus one page, however
        far the reader had scrolled before (the rest come back with ``fetchMore``)."""
        needed = max(last_visible + 1, keep_row + 1 if keep_row is not None else 0, 0)
        return min(needed, len(self.entries)) + self.page_rows

    def _append(self, rows: list[WorklistRow]) -> int:
        self._fetched += len(rows)
        added = 0
        for row in rows:
            key = row.entry.exam.exam_key
            if key == self._pinned:
                continue  # shown already, at the reader's row
            self.entries.append(row.entry)
            self._note(row)
            added += 1
        self._note_double([row.entry.exam.exam_key for row in rows])
        self._note_local([row.entry.exam.exam_key for row in rows])
        return added

    def _note_local(self, keys: list[str]) -> None:
        if self.local_reads is not None and keys:
            self.reads.update(self.local_reads({k: self.reads.get(k, UNREAD) for k in keys}))

    def refresh_double(self) -> None:
        """Read the fetched rows' double-reading states and locks again (other workstations
        sign and open exams too); only the Read column changes."""
        if self.double is None or not self.entries:
            return
        self._note_double([e.exam.exam_key for e in self.entries])
        self.dataChanged.emit(self.index(0, COL_READ), self.index(len(self.entries) - 1, COL_READ))

    def _note_double(self, keys: list[str]) -> None:
        if self.double is None or not keys:
            return
        states, locks = self.double(keys)
        self.double_states.update(states)
        for key in keys:
            self.holders.pop(key, None)
        self.holders.update(locks)

    def _note(self, row: WorklistRow) -> None:
        key = row.entry.exam.exam_key
        if row.blind:
            self.blind.add(key)
        self.reads[key] = row.read
        self.priors[key] = row.priors

    def _pin(self, key: str, at: int) -> None:
        here = self.row_of(key)
        if here is None:  # not fetched yet: fetch its row alone
            pos = self._locate(self.query, key) if self.query is not None else None
            if pos is None or self.query is None:
                return
            _total, got = self._fetch(self.query, pos, 1)
            if not got or got[0].entry.exam.exam_key != key:
                return
            entry = got[0].entry
            self._note(got[0])
            self._note_double([key])
            self._note_local([key])
        else:
            entry = self.entries.pop(here)
        self.entries.insert(min(at, len(self.entries)), entry)
        self._pinned = key

    def row_of(self, exam_key: str) -> int | None:
        """The row of a fetched exam (None when not fetched, or not matching)."""
        return next((r for r, e in enumerate(self.entries) if e.exam.exam_key == exam_key), None)

    def fetch_through(self, exam_key: str) -> int | None:
        """Fetch pages until ``exam_key``'s row is in; its row (None when it does not match)."""
        row = self.row_of(exam_key)
        if row is not None or self.query is None:
            return row
        pos = self._locate(self.query, exam_key)
        if pos is None:
            return None
        while self._fetched <= pos and self.canFetchMore():
            self.fetchMore()
        return self.row_of(exam_key)

    def canFetchMore(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self.query is not None and self._fetched < self.total

    def fetchMore(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> None:  # noqa: B008
        if not self.canFetchMore(parent) or self.query is None:
            return
        total, got = self._fetch(self.query, self._fetched, self.page_rows)
        if not got:  # the archive changed under us: the next refresh counts again
            self.total = self._fetched
            return
        first = len(self.entries)
        kept = sum(1 for r in got if r.entry.exam.exam_key != self._pinned)
        if kept:
            self.beginInsertRows(QModelIndex(), first, first + kept - 1)
        self._append(got)
        self.total = max(total, self._fetched)
        if kept:
            self.endInsertRows()

    def is_blind(self, entry: WorklistEntry) -> bool:
        return entry.exam.exam_key in self.blind

    def read_state(self, entry: WorklistEntry) -> ReadState:
        return self.reads.get(entry.exam.exam_key, UNREAD)

    def is_done(self, entry: WorklistEntry) -> bool:
        """Nothing left for this reader: signed; under double reading, read by this reader,
        or by two others and not waiting for an arbitration."""
        if self.double is None:
            return self.read_state(entry).is_read
        status = self.double_states.get(entry.exam.exam_key)
        if status is None:
            return False
        if self.reader in status.readers or status.arbitrator == self.reader:
            return True
        return len(status.readers) == 2 and status.state != "discordant"

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """By a column header, in SQL (column -1: the triage order)."""
        if self.query is None:
            return
        name = COLUMN_SORTS[column] if 0 <= column < len(COLUMN_SORTS) else "triage"
        descending = order == Qt.SortOrder.DescendingOrder
        if (name, descending) != (self.query.sort, self.query.descending):
            self.set_query(replace(self.query, sort=name, descending=descending))

    def sort_column(self) -> int:
        if self.query is None or self.query.sort == "triage":
            return -1
        return COLUMN_SORTS.index(self.query.sort)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.entries):
            return None
        entry = self.entries[index.row()]
        exam = entry.exam
        col = index.column()
        blind = self.is_blind(entry)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col in (COL_STATUS, COL_SCORE) and not blind:
                return CATEGORY_COLOURS.get(entry.category if entry.status == "done" else entry.status)
            if col == COL_READ and self.double is not None:
                key = exam.exam_key
                lock = self.holders.get(key)
                if lock is not None and lock.reader != self.reader:
                    return DOUBLE_COLOURS["held"]
                status = self.double_states.get(key)
                return DOUBLE_COLOURS.get(status.state) if status else None
            if col == COL_READ:
                return READ_COLOURS.get(self.read_state(entry).state)
            return None
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        if col == COL_PATIENT:
            return exam.patient_id
        if col == COL_NAME:
            return exam.patient_name.replace("^", " ")
        if col == COL_ACCESSION:
            return ", ".join(a for a in exam.accessions if a) or "-"
        if col == COL_DATE:
            return exam.study_date.isoformat() if exam.study_date else "-"
        if col == COL_VIEWS:
            return " ".join(exam.views)
        if col == COL_STATUS:
            return status_text(entry, blind)
        if col == COL_READ and self.double is not None:
            cell, tip = double_text(self.double_states.get(exam.exam_key), self.holders.get(exam.exam_key),
                                    self.reader)
            return tip if role == Qt.ItemDataRole.ToolTipRole else cell
        if col == COL_READ:
            state = self.read_state(entry)
            if role == Qt.ItemDataRole.ToolTipRole and state.at:
                signed = f"\n{assessment_text(state.assessment)}" if state.assessment else ""
                return f"{state.text} at {state.at}{signed}"
            return state.text
        if col == COL_PRIORS:
            n = self.priors.get(exam.exam_key, 0)
            return str(n) if n else ""
        if entry.score is None or blind:
            return ""
        breasts = " ".join(f"{lat} {int(round(s * 100))}" for lat, s in sorted(entry.breasts.items()))
        return f"{entry.score_100}" + (f"  ({breasts})" if breasts and role == Qt.ItemDataRole.ToolTipRole else "")


class WorklistFilter(QIdentityProxyModel):
    """The worklist as the table shows it: search (patient ID, name or accession), one
    filter of :data:`FILTERS` and the header sorts, all run by the model's query in SQL.
    Row order is the triage order until a header is clicked."""

    def __init__(self, source: WorklistModel):
        super().__init__()
        self.setSourceModel(source)

    @property
    def worklist(self) -> WorklistModel:
        return self.sourceModel()  # type: ignore[return-value]

    @property
    def search(self) -> str:
        query = self.worklist.query
        return query.search if query is not None else ""

    @property
    def filter(self) -> str:
        query = self.worklist.query
        return query.filter if query is not None else "all"

    def _requery(self, **changes: Any) -> None:
        query = self.worklist.query
        if query is not None:
            self.worklist.set_query(replace(query, **changes))

    def set_search(self, text: str) -> None:
        self._requery(search=text.strip())

    def set_filter(self, name: str) -> None:
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}")
        self._requery(filter=name)

    def sortColumn(self) -> int:
        return self.worklist.sort_column()

    def entry(self, row: int) -> WorklistEntry | None:
        entries = self.worklist.entries
        return entries[row] if 0 <= row < len(entries) else None

    def row_of(self, exam_key: str) -> int | None:
        return self.worklist.row_of(exam_key)
