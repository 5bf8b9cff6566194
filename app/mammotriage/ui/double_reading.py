"""The arbitration list: discordant exams awaiting a third reader, both reads side by side
(double reading, :mod:`mammotriage.store.double_reading`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from mammotriage.store.assessment import assessment_text
from mammotriage.store.double_reading import ExamStatus

__all__ = ["ARBITRATION_COLUMNS", "ArbitrationList"]

ARBITRATION_COLUMNS = ("Exam", "First reader", "First read", "Second reader", "Second read", "Discordance")


def short_text(assessment: Mapping[str, Any]) -> str:
    """``R 1 · L 4A · RECALL``: a read in a table cell (the tooltip has it in full)."""
    parts = [f"{side} {b['birads']}" for side, b in sorted((assessment.get("breasts") or {}).items(), reverse=True)]
    return " · ".join([*parts, "RECALL" if assessment.get("recall") else "no recall"])


class ArbitrationList(QWidget):
    """A table of the exams to arbitrate; a double click (or Enter) asks to open one."""

    open_requested = Signal(str)  # exam key

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = QLabel()
        self.table = QTableWidget(0, len(ARBITRATION_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(ARBITRATION_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setWordWrap(True)
        self.table.cellDoubleClicked.connect(lambda row, _col: self._open(row))
        self.table.cellActivated.connect(lambda row, _col: self._open(row))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.table)
        self.keys: list[str] = []
        self._shown: list[tuple[str, tuple[int, ...], str | None]] = []
        self.set_cases([])

    def set_cases(self, cases: Sequence[ExamStatus], names: Mapping[str, str] | None = None) -> None:
        """Show ``cases`` (discordant exams); ``names``: exam key -> what the Exam column says."""
        names = names or {}
        shown = [(c.exam_key, tuple(r.seq for r in c.reads), names.get(c.exam_key)) for c in cases]
        if shown == self._shown and cases:
            return  # unchanged: the reader's selection stays
        self._shown = shown
        self.keys = [c.exam_key for c in cases]
        self.title.setText(f"Arbitration: {len(cases)} exam(s) with discordant reads"
                           + (" - open one, read it, and sign the consensus (Ctrl+Enter)" if cases else ""))
        self.table.setRowCount(len(cases))
        for row, case in enumerate(cases):
            reads = list(case.reads) + [None] * (2 - len(case.reads))
            cells = [names.get(case.exam_key, case.exam_key)]
            tips = list(cells)
            for read in reads[:2]:
                cells += [read.reader, short_text(read.assessment)] if read else ["", ""]
                tips += [read.reader, assessment_text(read.assessment)] if read else ["", ""]
            cells.append("; ".join(case.reasons))
            tips.append(cells[-1])
            for col, (text, tip) in enumerate(zip(cells, tips, strict=True)):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                item.setData(Qt.ItemDataRole.UserRole, case.exam_key)
                self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()

    def _open(self, row: int) -> None:
        if 0 <= row < len(self.keys):
            self.open_requested.emit(self.keys[row])
