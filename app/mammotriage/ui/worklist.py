"""Worklist table model over the archive's exams."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt

from mammotriage.store.archive import ExamRecord

COLUMNS = ("Patient", "Name", "Accession", "Date", "Views", "AI status", "AI score")


class WorklistModel(QAbstractTableModel):
    """One row per exam; AI columns show "not analysed" until triage results exist."""

    def __init__(self, exams: list[ExamRecord] | None = None):
        super().__init__()
        self.exams: list[ExamRecord] = list(exams or [])

    def set_exams(self, exams: list[ExamRecord]) -> None:
        self.beginResetModel()
        self.exams = list(exams)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self.exams)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return None
        exam = self.exams[index.row()]
        col = index.column()
        if col == 0:
            return exam.patient_id
        if col == 1:
            return exam.patient_name.replace("^", " ")
        if col == 2:
            return ", ".join(a for a in exam.accessions if a) or "-"
        if col == 3:
            return exam.study_date.isoformat() if exam.study_date else "-"
        if col == 4:
            return " ".join(exam.views)
        if col == 5:
            return "not analysed"
        return ""
