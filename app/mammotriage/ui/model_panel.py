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

The "Federation" section shows this site's round log (``federation/rounds.jsonl`` beside
the archive, written by the federation's site process): a :class:`~PySide6.QtCore.QTimer`
looks at the file's size and modification time while the panel is shown and re-reads it
only when they change, so a federation running in another process is followed live. A
version of origin ``federation`` shows its provenance (job, rounds, method, sites,
parent) from its package's metadata under the versions table.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QProcess, QProcessEnvironment, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QHideEvent, QPixmap, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
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

from mammotriage.learning.fl_config import read_round_log, round_log_path
from mammotriage.learning.gate import latest_report
from mammotriage.learning.registry import ModelRegistry, ModelVersion, RegistryError
from mammotriage.learning.snapshot_data import archive_or_default
from mammotriage.lifetime import ENV_PARENT_PID
from mammotriage.model.package import ModelPackageError, read_metadata
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


# ---------------------------------------------------------------------- the round log

#: Columns of the rounds table.
ROUND_COLUMNS = ("time", "job", "round", "what happened", "update norm", "sha256", "DP ε", "train s",
                 "candidate", "gate")
#: The newest entries the panel shows (a job has at most 200 rounds).
ROUND_LOG_LIMIT = 1000
#: How often the panel looks at the round log while it is shown (ms).
ROUND_POLL_MS = 2000


def _local_time(stamp: Any, today: dt.date | None = None) -> str:
    """A log's UTC time as local time (the date left out when it is today); the text as
    it is when it is not a time."""
    try:
        t = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return str(stamp or "")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    t = t.astimezone()
    if t.date() == (today or dt.datetime.now().astimezone().date()):
        return t.strftime("%H:%M:%S")
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _round_number(entry: dict[str, Any]) -> int | None:
    r = entry.get("round")
    return r if isinstance(r, int) and not isinstance(r, bool) else None


def _total_rounds(entries: Sequence[dict[str, Any]]) -> int | None:
    """The job's number of rounds, from the newest entry that has its parameters."""
    for e in reversed(entries):
        n = (e.get("params") or {}).get("rounds") if isinstance(e.get("params"), dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def round_label(entry: dict[str, Any], total: int | None) -> str:
    """A round counted from 1 (the log counts from 0), with the job's total when known."""
    r = _round_number(entry)
    if r is None:
        return str(entry.get("round", "?"))
    return f"{r + 1} of {total}" if total else str(r + 1)


def round_happened(entry: dict[str, Any]) -> tuple[str, bool]:
    """What happened in a round, and whether it is a refusal (shown in the error colour)."""
    reason = str(entry.get("reason") or "")
    if entry.get("sent") is True:
        return "sent", False
    refused = "refused" in reason
    if entry.get("round") == "final":
        return reason or "global model received", refused
    return f"not sent: {reason}" if reason else "not sent", refused


def _epsilon(dp: Any) -> str:
    if not isinstance(dp, dict) or not isinstance(dp.get("epsilon"), int | float):
        return ""
    eps = float(dp["epsilon"])
    return "∞" if math.isinf(eps) else f"{eps:.2f}"


def _number(v: Any, spec: str) -> str:
    return format(float(v), spec) if isinstance(v, int | float) and not isinstance(v, bool) else ""


def rounds_summary(entries: Sequence[dict[str, Any]]) -> str:
    """One line on the newest job in the log: its progress, or how it ended."""
    if not entries:
        return "no federation rounds at this site yet"
    newest = entries[-1]
    job = newest.get("job")
    mine = [e for e in entries if e.get("job") == job]
    total = _total_rounds(mine)
    sent = {_round_number(e) for e in mine if e.get("sent") is True and _round_number(e) is not None}
    of = f" of {total}" if total else ""
    final = next((e for e in reversed(mine) if e.get("round") == "final"), None)
    if final is not None:
        text = f"job {job}: finished · {len(sent)}{of} rounds sent"
        if final.get("candidate"):
            verdict = "passed" if final.get("gate_passed") else "refused"
            text += f" · candidate {final['candidate']}: this site's gate {verdict}"
        else:
            text += f" · {round_happened(final)[0]}"
    else:
        numbered = [e for e in mine if _round_number(e) is not None]
        last = numbered[-1] if numbered else newest
        reason = str(last.get("reason") or "")
        state = "sent" if last.get("sent") is True else f"not sent ({reason})" if reason else "not sent"
        text = f"job {job}: round {round_label(last, None)}{of} {state}"
    return f"{text} · last update {_local_time(newest.get('time'))}"


def federation_provenance(meta: dict[str, Any], parent: str | None = None) -> str:
    """Where a federated candidate came from, from its package's ``federation`` metadata."""
    fed = meta.get("federation")
    if not isinstance(fed, dict):
        return ""
    parts = [f"job {fed.get('job') or fed.get('federation') or '?'}"]
    rounds, done = fed.get("rounds"), fed.get("completed_rounds")
    if rounds is not None:
        parts.append(f"{done} of {rounds} rounds completed" if done is not None else f"{rounds} rounds")
    if fed.get("method"):
        lr = fed.get("server_lr")
        parts.append(str(fed["method"]) + (f" (server lr {lr:g})" if isinstance(lr, int | float)
                                           and not isinstance(lr, bool) and lr != 1 else ""))
    sites = fed.get("participants")
    if isinstance(sites, list):
        parts.append(f"{len(sites)} site{'s' if len(sites) != 1 else ''}: {', '.join(map(str, sites))}"
                     if sites else "no site's update was accepted")
    p = fed.get("parent")
    pv = p.get("version") if isinstance(p, dict) else p
    parts.append(f"parent v{pv or meta.get('parent_version') or parent or '?'}")
    if fed.get("state_sha256"):
        parts.append(f"weights sha256 {str(fed['state_sha256'])[:12]}")
    return "federated: " + " · ".join(parts)


def _selectable_label(text: str = "") -> QLabel:
    """A wrapped label whose text can be selected and copied."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _row_table(table: QTableWidget, row_height: int) -> QTableWidget:
    """A read-only table of whole-row, single selections with compact rows."""
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setDefaultSectionSize(row_height)
    return table


class ModelPanel(QDialog):
    """Model versions, the validation gate, and the learning-loop actions."""

    active_changed = Signal(str)
    job_finished = Signal(str, int)  # job kind, exit code

    def __init__(self, archive_file: str | Path | None = None, parent: QWidget | None = None,
                 python: str | None = None, job_args: dict[str, list[str]] | None = None,
                 command_override: Sequence[str] | None = None, rounds_poll_ms: int = ROUND_POLL_MS):
        super().__init__(parent)
        self.setWindowTitle("Model")
        screen = (parent.screen() if parent is not None else None) or QApplication.primaryScreen()
        avail = screen.availableGeometry() if screen is not None else None
        # no taller than the screen less a title bar (a 1366x768 laptop)
        self.resize(min(1100, avail.width()) if avail else 1100, min(760, avail.height() - 40) if avail else 760)
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
        _row_table(self.versions, self.fontMetrics().height() + 8)
        self.versions.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.versions.itemSelectionChanged.connect(self._selection_changed)
        tl.addWidget(self.versions)
        self.provenance_label = _selectable_label()  # a federated version: where it came from
        self.provenance_label.setVisible(False)
        tl.addWidget(self.provenance_label)
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
        self.decision = _selectable_label("no gate report for this version yet: press Validate")
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
        scroll.setMinimumHeight(140)  # the plots are 230 px high; on a 768-line screen they scroll
        ml.addWidget(scroll, 1)
        self.plot_labels: list[QLabel] = []
        split.addWidget(mid)

        # Alt+F moves the focus into the section (its rounds table)
        fed = QGroupBox("&Federation (this site's rounds)")
        fl = QVBoxLayout(fed)
        self.rounds_summary = _selectable_label()
        fl.addWidget(self.rounds_summary)
        self.rounds_problem = QLabel("")  # unreadable lines, an unreadable file
        self.rounds_problem.setWordWrap(True)
        self.rounds_problem.setStyleSheet(f"color: {_FAIL.name()};")
        self.rounds_problem.setVisible(False)
        fl.addWidget(self.rounds_problem)
        self.rounds = QTableWidget(0, len(ROUND_COLUMNS))
        tips = {"round": "rounds counted from 1 (the log and the server count from 0)",
                "DP ε": "differential privacy: epsilon of this site's releases so far in the job (site-level)",
                "sha256": "sha256 of the update sent (of the global model for the final entry)"}
        for j, name in enumerate(ROUND_COLUMNS):
            head = QTableWidgetItem(name)
            head.setToolTip(tips.get(name, ""))
            self.rounds.setHorizontalHeaderItem(j, head)
        _row_table(self.rounds, self.fontMetrics().height() + 8)
        self.rounds.setAlternatingRowColors(True)
        self.rounds.setWordWrap(False)
        header = self.rounds.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(ROUND_COLUMNS.index("what happened"), QHeaderView.ResizeMode.Stretch)
        fl.addWidget(self.rounds, 1)
        split.addWidget(fed)
        for i, share in enumerate((26, 42, 32)):  # the splitter's share of each section (in %)
            split.setStretchFactor(i, share)
        split.setSizes([26_00, 42_00, 32_00])  # proportions: scaled to the splitter's height
        self.split = split
        self.rounds_path = round_log_path(self.archive_file)
        self.rounds_entries: list[dict[str, Any]] = []
        self.rounds_bad_lines = 0
        self.rounds_reads = 0  # how often the log was read (it is only when it changed)
        self._rounds_key: tuple[int, int] | None = None
        self._rounds_loaded = False
        self.rounds_timer = QTimer(self)
        self.rounds_timer.setInterval(max(50, int(rounds_poll_ms)))
        self.rounds_timer.timeout.connect(self.poll_rounds)
        self._provenance: dict[str, tuple[str, bool]] = {}  # version -> (text, is a problem)
        self._rows: dict[str, ModelVersion] = {}

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
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
        buttons.addWidget(self.progress, 1)  # the background job's progress, beside its buttons
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
        self._rows = {v.version: v for v in rows}
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
        self.poll_rounds()

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
        self.show_provenance(version)
        self._update_buttons()

    # ------------------------------------------------------------------ federation
    def show_provenance(self, version: str | None) -> None:
        """Under the versions table: where a version of origin ``federation`` came from."""
        row = self._rows.get(version or "")
        if row is None or row.origin != "federation":
            self.provenance_label.setText("")
            self.provenance_label.setVisible(False)
            return
        if row.version not in self._provenance:  # versions are immutable: read once
            try:
                meta = read_metadata(row.path)
            except (ModelPackageError, OSError) as exc:
                self._provenance[row.version] = (f"federated: its provenance cannot be read ({exc})", True)
            else:
                text = federation_provenance(meta, row.parent)
                self._provenance[row.version] = (
                    (text, False) if text else ("federated, but its package records no federation provenance", True))
        text, problem = self._provenance[row.version]
        self.provenance_label.setText(text)
        self.provenance_label.setToolTip(row.path)
        self.provenance_label.setStyleSheet(f"color: {_FAIL.name()};" if problem else "")
        self.provenance_label.setVisible(True)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.poll_rounds()
        self.rounds_timer.start()

    def hideEvent(self, event: QHideEvent) -> None:
        self.rounds_timer.stop()
        super().hideEvent(event)

    def poll_rounds(self) -> bool:
        """Re-read the round log if its size or modification time changed (a stat
        otherwise); True when it was read."""
        try:
            st = os.stat(self.rounds_path)
            key: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        except OSError as exc:
            self._rounds_loaded = False
            self._show_rounds_problem(f"the round log {self.rounds_path} cannot be read: {exc.strerror or exc}")
            return False
        if self._rounds_loaded and key == self._rounds_key:
            return False
        self._rounds_key, self._rounds_loaded = key, True
        problem = ""
        entries: list[dict[str, Any]] = []
        bad = 0
        if key is not None:  # no file: no rounds yet
            self.rounds_reads += 1
            try:
                entries, bad = read_round_log(self.rounds_path, limit=ROUND_LOG_LIMIT)
            except OSError as exc:
                entries, bad = [], 0
                self._rounds_loaded = False  # try again at the next tick
                problem = f"the round log {self.rounds_path} cannot be read: {exc.strerror or exc}"
        self.rounds_entries, self.rounds_bad_lines = entries, bad
        self._show_rounds()
        if bad:
            problem = (f"{bad} unreadable line{'s' if bad != 1 else ''} in the log (cut by a crash, or "
                       f"not a round entry): {self.rounds_path}")
        self._show_rounds_problem(problem)
        return True

    def _show_rounds_problem(self, text: str) -> None:
        self.rounds_problem.setText(text)
        self.rounds_problem.setVisible(bool(text))

    def _show_rounds(self) -> None:
        entries = self.rounds_entries
        self.rounds_summary.setText(rounds_summary(entries))
        self.rounds_summary.setToolTip(str(self.rounds_path))
        by_job: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            by_job.setdefault(str(e.get("job")), []).append(e)
        totals = {job: _total_rounds(mine) for job, mine in by_job.items()}  # job -> its number of rounds
        self.rounds.setVisible(bool(entries))  # no rounds: the summary line says so
        self.rounds.setRowCount(len(entries))
        for i, e in enumerate(reversed(entries)):
            what, refused = round_happened(e)
            dp = e.get("dp") if isinstance(e.get("dp"), dict) else {}
            final = e.get("round") == "final"
            gate = "" if not final or "gate_passed" not in e else "passed" if e.get("gate_passed") else "refused"
            cells = [_local_time(e.get("time")), str(e.get("job") or ""), round_label(e, totals.get(str(e.get("job")))),
                     what, _number(e.get("norm"), ".4g"), str(e.get("sha256") or "")[:12], _epsilon(dp),
                     _number(e.get("train_s"), ".1f"), str(e.get("candidate") or ""), gate]
            tips = {0: f"{e.get('time', '')} (UTC)", 3: what}
            if isinstance(e.get("ignored_params"), list) and e["ignored_params"]:
                tips[3] = f"{what}\njob parameters ignored (not on the allow-list): " + ", ".join(
                    map(str, e["ignored_params"]))
            if e.get("sha256"):
                tips[5] = f"{e['sha256']}\n" + ", ".join(
                    f"{e[k]} {k.replace('n_', '')}" for k in ("tensors", "values", "n_images") if k in e)
            if dp:
                tips[6] = ", ".join(f"{k} {v}" for k, v in sorted(dp.items()))
            if isinstance(e.get("gate_reasons"), list) and e["gate_reasons"]:
                tips[9] = "\n".join(map(str, e["gate_reasons"]))
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j in tips:
                    item.setToolTip(tips[j])
                if j in (4, 6, 7):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if (j == 3 and refused) or (j == 9 and gate == "refused"):
                    item.setForeground(_FAIL)
                elif (j == 3 and what == "sent") or (j == 9 and gate == "passed"):
                    item.setForeground(_PASS)
                self.rounds.setItem(i, j, item)

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
