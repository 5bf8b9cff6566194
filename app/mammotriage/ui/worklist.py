"""Worklist table model: exams ordered by AI suspicion, with status, scores, read state
and priors; a filter proxy for search, filters and sortable columns."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QColor

from mammotriage.store.assessment import UNREAD, ReadState, assessment_text
from mammotriage.triage.worklist import WorklistEntry, eta_text

COLUMNS = ("Patient", "Date", "AI status", "AI score", "Views", "Accession", "Name", "Read", "Priors")
COL_PATIENT, COL_DATE, COL_STATUS, COL_SCORE, COL_VIEWS, COL_ACCESSION, COL_NAME, COL_READ, COL_PRIORS = range(9)
#: the order columns are shown in (logical indices; the model keeps its own order)
WORKLIST_ORDER = (COL_PATIENT, COL_READ, COL_STATUS, COL_SCORE, COL_DATE, COL_PRIORS, COL_NAME, COL_ACCESSION, COL_VIEWS)
CATEGORY_COLOURS = {"suspicious": QColor(200, 40, 40), "likely normal": QColor(40, 120, 60),
                    "failed": QColor(150, 90, 0)}
READ_COLOURS = {"signed": QColor(40, 120, 60), "reopened": QColor(170, 110, 0), "started": QColor(60, 110, 180)}
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
HIDDEN = "analysed - AI hidden until your read"
FILTERS = ("all", "unread", "suspicious", "likely normal", "AI pending", "has priors")


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
    """One row per exam, in worklist order.

    ``blind`` holds the exam keys whose AI category and score must not be shown (AI
    after the reader's initial assessment): their rows say only whether AI is done.
    """

    def __init__(self, entries: list[WorklistEntry] | None = None):
        super().__init__()
        self.entries: list[WorklistEntry] = list(entries or [])
        self.blind: set[str] = set()
        self.reads: dict[str, ReadState] = {}
        self.priors: dict[str, int] = {}

    @property
    def exams(self) -> list:
        return [e.exam for e in self.entries]

    def set_entries(self, entries: list[WorklistEntry], *, blind: set[str] | None = None,
                    reads: dict[str, ReadState] | None = None, priors: dict[str, int] | None = None) -> None:
        self.beginResetModel()
        self.entries = list(entries)
        self.blind = set(blind or ())
        self.reads = dict(reads or {})
        self.priors = dict(priors or {})
        self.endResetModel()

    def is_blind(self, entry: WorklistEntry) -> bool:
        return entry.exam.exam_key in self.blind

    def read_state(self, entry: WorklistEntry) -> ReadState:
        return self.reads.get(entry.exam.exam_key, UNREAD)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        exam = entry.exam
        col = index.column()
        blind = self.is_blind(entry)
        if role == SORT_ROLE:
            return self._sort_key(index, entry, blind)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col in (COL_STATUS, COL_SCORE) and not blind:
                return CATEGORY_COLOURS.get(entry.category if entry.status == "done" else entry.status)
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

    def _sort_key(self, index: QModelIndex | QPersistentModelIndex, entry: WorklistEntry, blind: bool) -> Any:
        exam = entry.exam
        col = index.column()
        if col == COL_DATE:
            return exam.study_date.toordinal() if exam.study_date else 0
        if col in (COL_STATUS, COL_SCORE):
            # a blind exam sorts as if it had no result, so sorting gives nothing away
            return -1.0 if (blind or entry.score is None) else float(entry.score)
        if col == COL_PRIORS:
            return self.priors.get(exam.exam_key, 0)
        if col == COL_READ:
            return self.read_state(entry).state
        return str(self.data(index) or "").lower()


class WorklistFilter(QSortFilterProxyModel):
    """Search (patient ID, name or accession) and one filter of :data:`FILTERS`; sorting
    by any column header. Row order is the model's (the triage order) until a header
    is clicked."""

    def __init__(self, source: WorklistModel):
        super().__init__()
        self.setSourceModel(source)
        self.setSortRole(SORT_ROLE)
        self.search = ""
        self.filter = "all"

    @property
    def worklist(self) -> WorklistModel:
        return self.sourceModel()  # type: ignore[return-value]

    def set_search(self, text: str) -> None:
        self.beginFilterChange()
        self.search = text.strip().lower()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_filter(self, name: str) -> None:
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}")
        self.beginFilterChange()
        self.filter = name
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def entry(self, row: int) -> WorklistEntry | None:
        if not 0 <= row < self.rowCount():
            return None
        return self.worklist.entries[self.mapToSource(self.index(row, 0)).row()]

    def row_of(self, exam_key: str) -> int | None:
        for r, entry in enumerate(self.worklist.entries):
            if entry.exam.exam_key == exam_key:
                proxy = self.mapFromSource(self.worklist.index(r, 0))
                return proxy.row() if proxy.isValid() else None
        return None

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        model = self.worklist
        entry = model.entries[source_row]
        exam = entry.exam
        if self.search:
            haystack = " ".join([exam.patient_id, exam.patient_name.replace("^", " "), *exam.accessions]).lower()
            if self.search not in haystack:
                return False
        blind = model.is_blind(entry)
        if self.filter == "unread":
            return not model.read_state(entry).is_read
        if self.filter in ("suspicious", "likely normal"):
            return not blind and entry.status == "done" and entry.category == self.filter
        if self.filter == "AI pending":
            return entry.status != "done"
        if self.filter == "has priors":
            return model.priors.get(exam.exam_key, 0) > 0
        return True
