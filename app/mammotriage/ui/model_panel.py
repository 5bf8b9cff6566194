"""The Model panel: registry versions, the validation gate side by side, retrain / validate /
promote / rollback.

Long jobs (``retrain``, ``validate``) run as a separate process
(``python -m mammotriage.learning.commands ... --progress-json``) started with a
:class:`~PySide6.QtCore.QProcess`: the event loop only reads the child's JSON progress
lines, so the app stays responsive. The child runs at a lower CPU priority with
sleeping (not spinning) OpenMP threads.

Promotion uses the selected version's latest gate report; the registry refuses a report
that did not pass and the panel shows the gate's reasons. ``active_changed`` is emitted
after a promotion or a rollback (the main window then restarts triage with the new
version).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QProcess, QProcessEnvironment, Qt, Signal
from PySide6.QtGui import QColor, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from mammotriage.learning.gate import latest_report
from mammotriage.learning.registry import ModelRegistry, RegistryError
from mammotriage.learning.snapshot_data import archive_or_default
from mammotriage.lifetime import ENV_PARENT_PID
from mammotriage.store.datasets import list_snapshots
from mammotriage.store.reading import current_reader

#: Share of the progress bar per stage of a job.
_STAGES = {"retrain": {"load": (0, 3), "prepare": (3, 20), "train": (20, 90), "second_look": (90, 97),
                       "write": (97, 100)},
           "validate": {"predict": (0, 90), "bootstrap": (90, 100)},
           "pipeline": {"snapshot": (0, 2), "load": (2, 4), "prepare": (4, 15), "train": (15, 74),
                        "second_look": (74, 80), "write": (80, 82), "predict": (82, 97), "bootstrap": (97, 100)}}
_PASS = QColor("#2e7d32")
_FAIL = QColor("#c62828")


def _fmt(d: dict[str, Any] | None, signed: bool = False) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    v = d["value"]
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    lo, hi = d.get("ci95") or (None, None)
    if lo is not None:
        text += f"  [{lo:+.2f}, {hi:+.2f}]" if signed else f"  [{lo:.2f}, {hi:.2f}]"
    return text


class ModelPanel(QDialog):
    """Model versions, the validation gate, and the learning-loop actions."""

    active_changed = Signal(str)
    job_finished = Signal(str, int)  # job kind, exit code

    def __init__(self, archive_file: str | Path | None = None, parent: QWidget | None = None,
                 python: str | None = None, job_args: dict[str, list[str]] | None = None,
                 command_override: Sequence[str] | None = None):
        super().__init__(parent)
        self.setWindowTitle("Model")
        self.resize(1100, 760)
        self.archive_file = archive_or_default(archive_file)
        self.python = python or sys.executable
        self.job_args = job_args or {"retrain": ["--threads", "1", "--nice", "10"], "validate": ["--threads", "1"],
                                     "pipeline": ["--threads", "1", "--nice", "10"]}
        self.command_override = list(command_override) if command_override else None
        self.process: QProcess | None = None
        self.job_kind = ""
        self.job_result: dict[str, Any] | None = None
        self.job_error = ""
        self._buffer = b""
        self.report: dict[str, Any] | None = None

        root = QVBoxLayout(self)
        split = QSplitter(Qt.Orientation.Vertical)
        root.addWidget(split, 1)

        top = QGroupBox("Registered versions (★ active)")
        tl = QVBoxLayout(top)
        self.versions = QTableWidget(0, 6)
        self.versions.setHorizontalHeaderLabels(["", "version", "origin", "parent", "weights sha256", "registered"])
        self.versions.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.versions.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.versions.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.versions.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.versions.verticalHeader().setVisible(False)
        self.versions.itemSelectionChanged.connect(self._selection_changed)
        tl.addWidget(self.versions)
        row = QHBoxLayout()
        row.addWidget(QLabel("training snapshot:"))
        self.snapshots = QComboBox()
        self.snapshots.setMinimumWidth(360)
        row.addWidget(self.snapshots, 1)
        self.validation_label = QLabel("")
        row.addWidget(self.validation_label)
        tl.addLayout(row)
        self.shipped_label = QLabel("")  # newly shipped versions proposed to the ML lead
        self.shipped_label.setWordWrap(True)
        tl.addWidget(self.shipped_label)
        self.pipeline_label = QLabel("")  # the automatic pipeline: counter, last run and its verdict
        self.pipeline_label.setWordWrap(True)
        tl.addWidget(self.pipeline_label)
        split.addWidget(top)

        mid = QGroupBox("Validation gate: current model vs candidate")
        ml = QVBoxLayout(mid)
        self.decision = QLabel("no gate report for this version yet: press Validate")
        self.decision.setWordWrap(True)
        self.decision.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        ml.addWidget(self.decision)
        self.figures = QTableWidget(0, 4)
        self.figures.setHorizontalHeaderLabels(["figure", "current", "candidate", "difference (95 % CI)"])
        self.figures.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.figures.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.figures.verticalHeader().setVisible(False)
        ml.addWidget(self.figures, 1)
        self.plot_row = QHBoxLayout()
        plots = QWidget()
        plots.setLayout(self.plot_row)
        scroll = QScrollArea()
        scroll.setWidget(plots)
        scroll.setWidgetResizable(True)
        scroll.setMinimumHeight(260)
        ml.addWidget(scroll, 1)
        self.plot_labels: list[QLabel] = []
        split.addWidget(mid)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.progress)
        root.addWidget(self.status)
        buttons = QHBoxLayout()
        self.pipeline_button = QPushButton("Run pipeline")
        self.pipeline_button.setToolTip("snapshot the current labels, test them, retrain and validate (background)")
        self.retrain_button = QPushButton("Retrain…")
        self.validate_button = QPushButton("Validate")
        self.promote_button = QPushButton("Promote")
        self.rollback_button = QPushButton("Rollback")
        self.cancel_button = QPushButton("Cancel job")
        self.close_button = QPushButton("Close")
        self.retrain_button.setToolTip("fine-tune the active model on the selected training snapshot (background)")
        self.validate_button.setToolTip("run the validation gate: selected version vs the active model")
        self.promote_button.setToolTip("make the selected version active (needs a passed gate report)")
        self.rollback_button.setToolTip("return to the version active before the last promotion")
        for b in (self.pipeline_button, self.retrain_button, self.validate_button, self.promote_button,
                  self.rollback_button, self.cancel_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        root.addLayout(buttons)
        self.pipeline_button.clicked.connect(lambda: self.start_pipeline())
        self.retrain_button.clicked.connect(self._retrain_clicked)
        self.validate_button.clicked.connect(lambda: self.start_validate())
        self.promote_button.clicked.connect(lambda: self.promote())
        self.rollback_button.clicked.connect(lambda: self.rollback())
        self.cancel_button.clicked.connect(self.cancel_job)
        self.close_button.clicked.connect(self.close)
        self.refresh()

    # ------------------------------------------------------------------ state
    def refresh(self) -> None:
        """Reload versions, snapshots and the selected version's report."""
        selected = self.selected_version()
        with ModelRegistry(self.archive_file) as reg:
            self._active = reg.active()
            rows = reg.versions()
            pending = reg.pending_shipped()
        self.shipped_label.setText(
            f"shipped with this install, waiting for you: {', '.join(pending)} (validate, then promote)"
            if pending else "")
        self.shipped_label.setVisible(bool(pending))
        self.versions.setRowCount(len(rows))
        for i, v in enumerate(reversed(rows)):
            active = self._active is not None and v.version == self._active.version
            cells = ["★" if active else "", v.version, v.origin, v.parent or "", v.weights_sha256[:16],
                     v.registered_at]
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if active:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.versions.setItem(i, j, item)
        target = selected or self._default_candidate([v.version for v in rows])
        for i in range(self.versions.rowCount()):
            cell = self.versions.item(i, 1)
            if cell is not None and cell.text() == target:
                self.versions.selectRow(i)
                break
        try:
            snaps = list_snapshots(self.archive_file)
        except Exception:  # noqa: BLE001 - a fresh archive: no snapshot table yet
            snaps = []
        current = self.snapshots.currentData()
        self.snapshots.clear()
        for s in reversed([s for s in snaps if s.role == "training"]):
            self.snapshots.addItem(f"{s.sha256[:12]}  {s.name or '(unnamed)'}  {s.images} images, "
                                   f"{s.consensus_labels} labels, {s.created_at}", s.sha256)
        if current:
            i = self.snapshots.findData(current)
            if i >= 0:
                self.snapshots.setCurrentIndex(i)
        vals = [s for s in snaps if s.role == "validation"]
        self.validation_label.setText(f"validation snapshots: {len(vals)}" if vals else
                                      "no validation snapshot: the gate cannot run")
        self.pipeline_label.setText(self.pipeline_status())
        self._selection_changed()
        self._update_buttons()

    def _default_candidate(self, versions: list[str]) -> str | None:
        others = [v for v in versions if self._active is None or v != self._active.version]
        return others[-1] if others else (versions[-1] if versions else None)

    def selected_version(self) -> str | None:
        rows = self.versions.selectionModel().selectedRows() if self.versions.selectionModel() else []
        if not rows:
            return None
        item = self.versions.item(rows[0].row(), 1)
        return item.text() if item else None

    def active_version(self) -> str | None:
        return self._active.version if self._active else None

    def _selection_changed(self) -> None:
        version = self.selected_version()
        report = latest_report(self.archive_file, version) if version else None
        self.show_report(report)
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.process is not None
        version = self.selected_version()
        is_active = version is not None and version == self.active_version()
        self.pipeline_button.setEnabled(not busy)
        self.retrain_button.setEnabled(not busy and self.snapshots.count() > 0)
        self.validate_button.setEnabled(not busy and version is not None and not is_active)
        self.promote_button.setEnabled(not busy and version is not None and not is_active)
        self.rollback_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    # ------------------------------------------------------------------ report
    def show_report(self, report: dict[str, Any] | None) -> None:
        """Both models' figures side by side, the decision with its reasons, the plots."""
        self.report = report
        self.figures.setRowCount(0)
        for lab in self.plot_labels:
            lab.deleteLater()
        self.plot_labels = []
        if not report:
            self.decision.setText("no gate report for this version yet: press Validate")
            self.decision.setStyleSheet("")
            return
        head = (f"candidate v{report['candidate']['version']} vs current v{report['parent']['version']} — "
                f"validation snapshot {report['validation']['snapshot'][:12]}")
        if report["passed"]:
            text = f"<b>PASSED</b> · {head}"
            colour = _PASS
        else:
            text = f"<b>REFUSED</b> · {head}<br>" + "<br>".join(f"• {r}" for r in report["reasons"])
            colour = _FAIL
        if report.get("warnings"):
            text += "<br><i>" + "<br>".join(report["warnings"]) + "</i>"
        self.decision.setText(text)
        self.decision.setStyleSheet(f"color: {colour.name()};")
        rows: list[tuple[str, dict, str]] = []
        v = report["validation"]["figures"]
        rows += [(f"validation: {k}", v, k) for k in v["parent"]]
        c = (report.get("corrections") or {}).get("figures")
        if c:
            rows += [(f"new corrections: {k}", c, k) for k in c["parent"]]
        self.figures.setRowCount(len(rows))
        failing = {(ch["set"], ch["metric"]) for ch in report.get("checks", []) if ch.get("passed") is False}
        for i, (name, figs, key) in enumerate(rows):
            cells = [name, _fmt(figs["parent"][key]), _fmt(figs["candidate"][key]),
                     _fmt(figs["difference"][key], signed=True)]
            where = "validation" if name.startswith("validation") else "corrections"
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if (where, key) in failing:
                    item.setForeground(_FAIL)
                self.figures.setItem(i, j, item)
        for p in report.get("plots", []):
            pix = QPixmap(p)
            if pix.isNull():
                continue
            lab = QLabel()
            lab.setPixmap(pix.scaledToHeight(230, Qt.TransformationMode.SmoothTransformation))
            lab.setToolTip(p)
            self.plot_row.addWidget(lab)
            self.plot_labels.append(lab)

    # ------------------------------------------------------------------ registry actions
    def promote(self, version: str | None = None) -> bool:
        """Promote the selected version with its latest gate report; False (and the reasons
        shown) when the registry refuses."""
        version = version or self.selected_version()
        if not version:
            return False
        report = latest_report(self.archive_file, version)
        try:
            with ModelRegistry(self.archive_file) as reg:
                reg.promote(version, report, who=current_reader())
        except RegistryError as exc:
            self.set_status(f"promotion of {version} refused: {exc}", error=True)
            return False
        self.set_status(f"{version} is now the active model; exams are re-triaged with it in the background")
        self.refresh()
        self.active_changed.emit(version)
        return True

    def rollback(self) -> bool:
        try:
            with ModelRegistry(self.archive_file) as reg:
                v = reg.rollback(who=current_reader(), reason="model panel")
        except RegistryError as exc:
            self.set_status(f"rollback refused: {exc}", error=True)
            return False
        self.set_status(f"rolled back: {v.version} is the active model again")
        self.refresh()
        self.active_changed.emit(v.version)
        return True

    def set_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {_FAIL.name()};" if error else "")

    # ------------------------------------------------------------------ background jobs
    def _retrain_clicked(self) -> None:
        snapshot = self.snapshots.currentData()
        if not snapshot:
            self.start_retrain()  # says what is missing
            return
        answer = QMessageBox.question(
            self, "Retrain",
            f"Fine-tune the active model v{self.active_version() or '?'} on training snapshot "
            f"{snapshot[:12]}?\n\nIt runs in the background (minutes); validation images are never "
            "trained on. The result is a candidate: validate it before promoting.")
        if answer == QMessageBox.StandardButton.Yes:
            self.start_retrain(snapshot)

    def start_retrain(self, snapshot: str | None = None, extra: Sequence[str] = ()) -> bool:
        snapshot = snapshot or self.snapshots.currentData()
        if not snapshot:
            self.set_status("no training snapshot: make one (`mammotriage dataset snapshot`) first", error=True)
            return False
        return self._start("retrain", ["retrain", "--snapshot", snapshot, *self.job_args.get("retrain", []),
                                       *extra])

    def pipeline_status(self) -> str:
        from mammotriage.learning.pipeline import PipelineError, status, status_text

        try:
            return status_text(status(self.archive_file))
        except PipelineError as exc:
            return f"automatic pipeline: {exc}"

    def pipeline_due(self) -> bool:
        from mammotriage.learning.pipeline import PipelineError, status

        try:
            return bool(status(self.archive_file)["due"])
        except PipelineError:
            return False

    def start_pipeline(self, if_due: bool = False, extra: Sequence[str] = ()) -> bool:
        """snapshot -> data tests -> retrain -> validate in the background; with ``if_due``
        only when the site setting's count of new corrections is reached."""
        if if_due and not self.pipeline_due():
            return False
        return self._start("pipeline", ["pipeline", "run", *self.job_args.get("pipeline", []), *extra])

    def start_validate(self, version: str | None = None, extra: Sequence[str] = ()) -> bool:
        version = version or self.selected_version()
        if not version:
            return False
        return self._start("validate", ["validate", version, *self.job_args.get("validate", []), *extra])

    def _start(self, kind: str, args: list[str]) -> bool:
        if self.process is not None:
            self.set_status("a job is already running", error=True)
            return False
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("OMP_WAIT_POLICY", "PASSIVE")
        env.insert(ENV_PARENT_PID, str(os.getpid()))  # the job ends if the app is killed
        app_dir = str(Path(__file__).resolve().parents[2])
        env.insert("PYTHONPATH", os.pathsep.join([app_dir, *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc.setProcessEnvironment(env)
        if self.command_override:
            program, arguments = self.command_override[0], [*self.command_override[1:], *args]
        else:
            program, arguments = self.python, ["-m", "mammotriage.learning.commands", *args,
                                               "--archive", str(self.archive_file), "--progress-json"]
        proc.readyReadStandardOutput.connect(self._read_output)
        proc.finished.connect(self._finished)
        self.process = proc
        self.job_kind = kind
        self.job_result = None
        self.job_error = ""
        self._buffer = b""
        self.progress.setValue(0)
        self.set_status(f"{kind} running in the background…")
        self._update_buttons()
        proc.start(program, arguments)
        return True

    def _read_output(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            try:
                msg = json.loads(raw.decode("utf-8", "replace"))
            except json.JSONDecodeError:
                continue
            self.handle_message(msg)

    def handle_message(self, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "progress":
            lo, hi = _STAGES.get(self.job_kind, {}).get(msg.get("stage", ""), (0, 100))
            total = max(1, int(msg.get("total") or 1))
            self.progress.setValue(int(lo + (hi - lo) * min(1.0, int(msg.get("done", 0)) / total)))
            self.status.setText(f"{self.job_kind}: {msg.get('stage')} {msg.get('done')}/{msg.get('total')} "
                                f"{msg.get('note', '')}")
        elif event == "result":
            self.job_result = msg
        elif event == "error":
            self.job_error = str(msg.get("message", "failed"))

    def _finished(self, code: int, _status=None) -> None:
        self._read_output()
        kind = self.job_kind
        err = ""
        if self.process is not None:
            err = bytes(self.process.readAllStandardError().data()).decode("utf-8", "replace").strip()
            self.process.deleteLater()
        self.process = None
        self.progress.setValue(100 if code in (0, 1) else self.progress.value())
        if kind == "retrain" and code == 0 and self.job_result:
            self.set_status(f"candidate {self.job_result.get('version')} written and registered "
                            f"({self.job_result.get('iterations')} iterations, "
                            f"{self.job_result.get('seconds')} s); validate it before promoting")
            self.refresh()
            self._select(self.job_result.get("version"))
        elif kind == "pipeline" and code in (0, 1) and self.job_result:
            self.refresh()
            self._select(self.job_result.get("candidate"))
            passed = self.job_result.get("passed")
            self.set_status(f"pipeline: candidate {self.job_result.get('candidate')} "
                            + ("passed the validation gate: promote it when you agree" if passed
                               else "was refused by the validation gate"), error=not passed)
        elif kind == "validate" and code in (0, 1) and self.job_result:
            self.refresh()
            self._select(self.job_result.get("candidate"))
            self.set_status("validation gate " + ("passed" if self.job_result.get("passed") else "refused the candidate"),
                            error=not self.job_result.get("passed"))
        else:
            tail = self.job_error or (err.splitlines()[-1] if err else f"exit status {code}")
            self.set_status(f"{kind} failed: {tail}", error=True)
        self._update_buttons()
        self.job_finished.emit(kind, int(code))

    def _select(self, version: str | None) -> None:
        for i in range(self.versions.rowCount()):
            cell = self.versions.item(i, 1)
            if cell is not None and cell.text() == version:
                self.versions.selectRow(i)
                return

    def cancel_job(self) -> None:
        if self.process is not None:
            self.process.kill()
