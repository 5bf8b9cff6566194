"""Monitoring view: exam scores over time, reader feedback and input drift.

The same report as ``mammotriage monitor`` (:mod:`mammotriage.learning.monitor`), with its
plots and warnings. The report and plots are computed in a thread pool, never on the
UI thread; the dialog shows "computing…" meanwhile.
"""

from __future__ import annotations

import concurrent.futures as cf
import tempfile
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

#: One thread for every monitoring view: reports are short, and views come and go.
_POOL = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="monitor")


def _compute(archive_file: str, meta: dict[str, Any] | None, threshold: float | None,
             plot_dir: str) -> tuple[dict[str, Any], list[str]]:
    from mammotriage.learning.monitor import monitor_report, write_plots

    report = monitor_report(archive_file, meta, threshold)
    paths = write_plots(report, Path(plot_dir))
    return report, [str(p) for p in paths]


class MonitorView(QDialog):
    """Per model version and scanner: scores, accepted/rejected/added marks, drift."""

    report_ready = Signal(dict)

    def __init__(self, archive_file: str | Path, model_meta: dict[str, Any] | None,
                 suspicious_threshold: float | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Monitoring")
        self.resize(1000, 720)
        self.archive_file = str(archive_file)
        self.model_meta = model_meta
        self.threshold = suspicious_threshold
        self.report: dict[str, Any] | None = None
        self._future: cf.Future | None = None
        self._plot_dir = tempfile.TemporaryDirectory(prefix="mammotriage-monitor-")

        root = QVBoxLayout(self)
        self.warnings = QLabel("")
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #b00; font-weight: bold")
        self.warnings.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(self.warnings)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setMaximumHeight(200)
        root.addWidget(self.text)
        plots = QWidget()
        self.plot_row = QHBoxLayout(plots)
        scroll = QScrollArea()
        scroll.setWidget(plots)
        scroll.setWidgetResizable(True)
        root.addWidget(scroll, 1)
        self.plot_labels: list[QLabel] = []
        buttons = QHBoxLayout()
        self.refresh_button = QPushButton("Refresh")
        self.close_button = QPushButton("Close")
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        root.addLayout(buttons)
        self.refresh_button.clicked.connect(self.refresh)
        self.close_button.clicked.connect(self.close)
        self._poll = QTimer(self)
        self._poll.setInterval(50)
        self._poll.timeout.connect(self._check)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the report in the background."""
        if self._future is not None and not self._future.done():
            return
        self.text.setPlainText("computing the monitoring report…")
        self.refresh_button.setEnabled(False)
        self._future = _POOL.submit(_compute, self.archive_file, self.model_meta, self.threshold,
                                         self._plot_dir.name)
        self._poll.start()

    def busy(self) -> bool:
        return self._future is not None and not self._future.done()

    def _check(self) -> None:
        if self._future is None or not self._future.done():
            return
        self._poll.stop()
        self.refresh_button.setEnabled(True)
        future, self._future = self._future, None
        try:
            report, paths = future.result()
        except Exception as exc:  # noqa: BLE001 - a broken archive must not take the app down
            self.text.setPlainText(f"monitoring report failed: {exc}")
            return
        self.show_report(report, paths)

    def show_report(self, report: dict[str, Any], plot_paths: list[str]) -> None:
        from mammotriage.learning.monitor import report_text

        self.report = report
        body = [line for line in report_text(report).splitlines() if not line.startswith("WARNING:")]
        self.text.setPlainText("\n".join(body) or "no triage results yet")
        self.warnings.setText("\n".join(f"⚠ {w}" for w in report["warnings"]))
        self.warnings.setVisible(bool(report["warnings"]))
        for label in self.plot_labels:
            label.deleteLater()
        self.plot_labels = []
        for path in plot_paths:
            label = QLabel()
            label.setPixmap(QPixmap(path))
            label.setToolTip(Path(path).name)
            self.plot_row.addWidget(label)
            self.plot_labels.append(label)
        self.report_ready.emit(report)

    def closeEvent(self, event) -> None:  # Qt override
        self._poll.stop()
        super().closeEvent(event)
