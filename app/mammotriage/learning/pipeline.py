"""The ML pipeline with no person but the sign-off: snapshot -> data tests -> retrain -> validate.

Site setting ``propose_after_corrections`` in ``<data dir>/models.json`` (an integer N;
0 or absent: off): once the readers have made N new image corrections since the last
run (correction events on an image: add, accept, reject, adjust, change kind, delete),
the app starts :func:`run_pipeline` in the background at low CPU priority
(``mammotriage pipeline run --if-due``, a child process of the Model panel): a training
snapshot of the current labels, its data tests and a retrain (both in
:func:`~mammotriage.learning.retrain.retrain`), and the validation gate of the candidate
against the active model. The Model panel shows its progress and, after it, the
candidate, the gate's verdict, figures and plots. Promotion stays a human click (or
``mammotriage models promote``).

The state (last run, its outcome, the correction counter) is
``<data dir>/models/pipeline.json``; a run that fails (data tests, training) is recorded
with its reason and the counter restarts, so a broken snapshot is not retried on every
start.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammotriage.learning.snapshot_data import archive_or_default

if TYPE_CHECKING:
    from mammotriage.learning.gate import GateParams
    from mammotriage.learning.retrain import RetrainParams

SETTING = "propose_after_corrections"
STATE_NAME = "pipeline.json"
#: ``progress(stage, done, total, note)``: "snapshot", then retrain's and the gate's stages.
Progress = Callable[[str, int, int, str], None]


class PipelineError(RuntimeError):
    """The pipeline setting or state is unusable, with the reason."""


def _data_dir(archive_file: Path) -> Path:
    return archive_file.expanduser().resolve().parent


def setting(archive_file: str | Path | None = None) -> int:
    """N of ``propose_after_corrections`` (0: off); a bad value is an error naming the file."""
    path = _data_dir(archive_or_default(archive_file)) / "models.json"
    if not path.is_file():
        return 0
    try:
        value = json.loads(path.read_text()).get(SETTING, 0)
    except (json.JSONDecodeError, AttributeError, OSError) as exc:
        raise PipelineError(f"{path}: unreadable site settings ({exc})") from exc
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PipelineError(f"{path}: {SETTING} must be a whole number >= 0 (0: off), not {value!r}")
    return value


def _state_path(archive_file: Path) -> Path:
    return _data_dir(archive_file) / "models" / STATE_NAME


def _state(archive_file: Path) -> dict[str, Any]:
    path = _state_path(archive_file)
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, OSError, TypeError, ValueError):
        return {}  # a damaged state file only restarts the counter


def _write_state(archive_file: Path, state: dict[str, Any]) -> None:
    path = _state_path(archive_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)


def _correction_seq(archive_file: Path) -> tuple[int, int]:
    """(highest event sequence number, image corrections after the last run)."""
    from mammotriage.store import db
    from mammotriage.store.events import IMAGE_ACTIONS

    since = int(_state(archive_file).get("last_seq", 0))
    conn = db.connect(archive_file)
    try:
        top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM correction_events").fetchone()[0]
        marks = ",".join("?" * len(IMAGE_ACTIONS))
        n = conn.execute(f"SELECT COUNT(*) FROM correction_events WHERE seq > ? AND sop_uid != '' "
                         f"AND action IN ({marks})", (since, *sorted(IMAGE_ACTIONS))).fetchone()[0]
    finally:
        conn.close()
    return int(top), int(n)


def status(archive_file: str | Path | None = None) -> dict[str, Any]:
    """The setting, the new corrections since the last run, whether a run is due, the last run."""
    archive_file = archive_or_default(archive_file)
    n_setting = setting(archive_file)
    _top, new = _correction_seq(archive_file)
    state = _state(archive_file)
    return {"setting": n_setting, "new_corrections": new, "due": bool(n_setting and new >= n_setting),
            "running": state.get("running"), "last": state.get("last")}


def status_text(st: dict[str, Any]) -> str:
    """One line for the Model panel and the CLI."""
    if not st["setting"]:
        head = f"automatic pipeline off ({st['new_corrections']} new corrections; set {SETTING} in models.json)"
    else:
        head = (f"automatic pipeline: {st['new_corrections']}/{st['setting']} new corrections"
                + (" - due" if st["due"] else ""))
    last = st.get("last")
    if last:
        if last.get("error"):
            head += f"; last run {last.get('at')} failed: {last['error']}"
        else:
            head += (f"; last run {last.get('at')}: candidate {last.get('candidate')} "
                     + ("PASSED the gate - promote it in the Model panel" if last.get("passed")
                        else "refused by the gate"))
    return head


def run_pipeline(archive_file: str | Path | None = None, *, retrain_params: RetrainParams | None = None,
                 gate_params: GateParams | None = None,
                 progress: Progress | None = None, who: str = "pipeline") -> dict[str, Any]:
    """snapshot -> retrain (data tests first) -> validate; returns the run record (also the
    state's ``last``). Errors are recorded in the state and raised."""
    from mammotriage.learning.gate import GateParams, validate
    from mammotriage.learning.retrain import RetrainParams, retrain
    from mammotriage.store.datasets import create_snapshot

    archive_file = archive_or_default(archive_file)
    top, new = _correction_seq(archive_file)
    state = _state(archive_file)
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    _write_state(archive_file, {**state, "running": {"since": started, "corrections": new}})
    record: dict[str, Any] = {"at": started, "corrections": new, "up_to_seq": top}
    t0 = time.monotonic()
    try:
        if progress:
            progress("snapshot", 0, 1, "freezing the current labels")
        snap = create_snapshot(archive_file, role="training", name=f"pipeline-{top}",
                               description=f"automatic: {new} new corrections up to event {top}")
        record["snapshot"] = snap.sha256
        if progress:
            progress("snapshot", 1, 1, snap.sha256[:12])
        result = retrain(snap.sha256, archive_file=archive_file, params=retrain_params or RetrainParams(),
                         who=who, progress=progress)
        record.update(candidate=result.version, retrain_s=round(time.monotonic() - t0, 1))
        report = validate(result.version, archive_file=archive_file, params=gate_params or GateParams(),
                          progress=progress)
        record.update(passed=report["passed"], reasons=report["reasons"], report_path=report.get("report_path"),
                      seconds=round(time.monotonic() - t0, 1))
    except Exception as exc:
        record.update(error=f"{type(exc).__name__}: {exc}", seconds=round(time.monotonic() - t0, 1))
        _write_state(archive_file, {"last_seq": top, "last": record,
                                    "runs": [*state.get("runs", [])[-19:], record]})
        raise
    _write_state(archive_file, {"last_seq": top, "last": record, "runs": [*state.get("runs", [])[-19:], record]})
    return record
