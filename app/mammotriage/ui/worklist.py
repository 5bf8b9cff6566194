"""Worklist table model: exams ordered by AI suspicion, with status and scores."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt
from PySide6.QtGui import QColor

from mammotriage.triage.worklist import WorklistEntry

COLUMNS = ("Patient", "Date", "AI status", "AI score", "Views", "Accession", "Name")
COL_STATUS, COL_SCORE = 2, 3
CATEGORY_COLOURS = {"suspicious": QColor(200, 40, 40), "likely normal": QColor(40, 120, 60),
                    "failed": QColor(150, 90, 0)}


def status_text(entry: WorklistEntry) -> str:
    if entry.status == "done":
        return entry.category
    if entry.status == "running":
        text = "analysing"
    elif entry.status == "failed":
        text = f"failed: {entry.reason or 'unknown reason'}"
    elif entry.status == "not queued":
        text = "not analysed"
    else:
        text = "pending"
    if entry.stale:
        text += f" (older model {entry.model_version})"
    return text


class WorklistModel(QAbstractTableModel):
    """One row per exam, in worklist order."""

    def __init__(self, entries: list[WorklistEntry] | None = None):
        super().__init__()
        self.entries: list[WorklistEntry] = list(entries or [])

    @property
    def exams(self) -> list:
        return [e.exam for e in self.entries]

    def set_entries(self, entries: list[WorklistEntry]) -> None:
        self.beginResetModel()
        self.entries = list(entries)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        exam = entry.exam
        col = index.column()
        if role == Qt.ItemDataRole.ForegroundRole and col in (COL_STATUS, COL_SCORE):
            return CATEGORY_COLOURS.get(entry.category if entry.status == "done" else entry.status)
        if role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        if col == 0:
            return exam.patient_id
        if col == 6:
            return exam.patient_name.replace("^", " ")
        if col == 5:
            return ", ".join(a for a in exam.accessions if a) or "-"
        if col == 1:
            return exam.study_date.isoformat() if exam.study_date else "-"
        if col == 4:
            return " ".join(exam.views)
        if col == COL_STATUS:
            return status_text(entry)
        if entry.score is None:
            return ""
        breasts = " ".join(f"{lat} {int(round(s * 100))}" for lat, s in sorted(entry.breasts.items()))
        return f"{entry.score_100}" + (f"  ({breasts})" if breasts and role == Qt.ItemDataRole.ToolTipRole else "")
