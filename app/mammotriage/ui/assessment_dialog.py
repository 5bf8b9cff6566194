"""The sign-off dialog: per-breast BI-RADS (with names) and density, and the recall decision."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from mammotriage.store.assessment import BIRADS, BREASTS, DENSITY, birads_text, default_recall

SIDE_NAMES = {"R": "Right breast", "L": "Left breast"}


class AssessmentDialog(QDialog):
    """Asks for the assessment a reader signs; :meth:`assessment` is the event payload.

    The recall box follows the BI-RADS choices (recall for 0, 4A-4C and 5) until the
    reader sets it by hand.
    """

    def __init__(self, parent: QWidget | None = None, exam_text: str = "",
                 initial: dict[str, Any] | None = None, sides: tuple[str, ...] = BREASTS):
        super().__init__(parent)
        self.setWindowTitle("Sign assessment")
        layout = QVBoxLayout(self)
        if exam_text:
            layout.addWidget(QLabel(exam_text))
        form = QFormLayout()
        layout.addLayout(form)
        self.birads: dict[str, QComboBox] = {}
        self.density: dict[str, QComboBox] = {}
        initial = initial or {}
        breasts = initial.get("breasts", {})
        for side in sides:
            combo = QComboBox()
            for code in BIRADS:
                combo.addItem(birads_text(code), code)
            combo.setCurrentIndex(combo.findData(breasts.get(side, {}).get("birads", "1")))
            combo.setAccessibleName(f"BI-RADS {side}")
            density = QComboBox()
            for code, name in DENSITY.items():
                density.addItem(f"{code} - {name}", code)
            density.setCurrentIndex(max(density.findData(breasts.get(side, {}).get("density", "b")), 0))
            density.setAccessibleName(f"density {side}")
            form.addRow(f"{SIDE_NAMES[side]}: BI-RADS", combo)
            form.addRow(f"{SIDE_NAMES[side]}: density", density)
            self.birads[side] = combo
            self.density[side] = density
            combo.currentIndexChanged.connect(self._follow_birads)
        self.recall = QCheckBox("Recall for assessment")
        self.recall.setChecked(bool(initial.get("recall", False)))
        self._recall_by_hand = "recall" in initial
        self.recall.clicked.connect(self._recall_clicked)
        layout.addWidget(self.recall)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Sign")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        if not self._recall_by_hand:
            self._follow_birads()

    def _recall_clicked(self) -> None:
        self._recall_by_hand = True

    def _follow_birads(self) -> None:
        if not self._recall_by_hand:
            self.recall.setChecked(default_recall(self.assessment()["breasts"]))

    def set_birads(self, side: str, code: str) -> None:
        self.birads[side].setCurrentIndex(self.birads[side].findData(code))

    def set_density(self, side: str, code: str) -> None:
        self.density[side].setCurrentIndex(self.density[side].findData(code))

    def assessment(self) -> dict[str, Any]:
        return {"breasts": {side: {"birads": self.birads[side].currentData(),
                                   "density": self.density[side].currentData()} for side in self.birads},
                "recall": self.recall.isChecked()}
