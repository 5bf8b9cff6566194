"""The Model panel on the simulated-reader archive: versions, the gate side by side,
promote/rollback, background jobs (a scripted fake and the real retrain command), and
the main window opening it and following its promotions."""

from __future__ import annotations

import sys

import pytest

from mtsupport import EventLoopGaps

pytestmark = pytest.mark.slow


@pytest.fixture
def loop(learning_loop):
    return learning_loop

@pytest.fixture
def panel(loop, qtbot):
    from mammotriage.ui.model_panel import ModelPanel

    w = ModelPanel(loop.archive)
    qtbot.addWidget(w)
    return w


def _row_of(panel, version: str) -> int:
    return next(i for i in range(panel.versions.rowCount()) if panel.versions.item(i, 1).text() == version)


def test_panel_shows_versions_and_the_gate_side_by_side(panel, loop):
    active_row = _row_of(panel, "0.9.0")
    assert panel.versions.item(active_row, 0).text() == "★"
    panel.versions.selectRow(_row_of(panel, loop.shuffled.version))
    assert panel.report is not None and panel.report["passed"] is False
    assert "REFUSED" in panel.decision.text()
    assert panel.report["reasons"][0].split(":")[0] in panel.decision.text()
    names = [panel.figures.item(i, 0).text() for i in range(panel.figures.rowCount())]
    assert "validation: froc_mean" in names and "new corrections: froc_mean" in names
    assert len(panel.plot_labels) == 3
    # Promote is refused with the gate's reasons; the active model stays
    assert panel.promote() is False
    assert "refused" in panel.status.text() and panel.active_version() == "0.9.0"
    panel.versions.selectRow(_row_of(panel, loop.candidate.version))
    assert "PASSED" in panel.decision.text()
    changed = []
    panel.active_changed.connect(changed.append)
    assert panel.promote() is True and panel.active_version() == loop.candidate.version
    # a report made against another model than the active one does not count
    assert panel.promote(loop.shuffled.version) is False and "validate again" in panel.status.text()
    assert panel.rollback() is True and panel.active_version() == "0.9.0"
    assert changed == [loop.candidate.version, "0.9.0"]


FAKE_JOB = """
import json, sys, time
for i in range(1, 21):
    time.sleep(0.03)
    print(json.dumps({"event": "progress", "stage": "train", "done": i, "total": 20, "note": "loss 0.1"}), flush=True)
print(json.dumps({"event": "result", "version": "x", "iterations": 20, "seconds": 0.6}), flush=True)
"""


def test_panel_runs_jobs_in_the_background(loop, qtbot, tmp_path):
    from mammotriage.ui.model_panel import ModelPanel

    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    w = ModelPanel(loop.archive, command_override=[sys.executable, str(script)])
    qtbot.addWidget(w)
    values = []
    w.progress.valueChanged.connect(values.append)
    with EventLoopGaps() as gaps, qtbot.waitSignal(w.job_finished, timeout=30000) as sig:
        assert w.start_retrain()
        assert not w.retrain_button.isEnabled() and w.cancel_button.isEnabled()
    assert sig.args == ["retrain", 0]
    assert values and max(values) >= 90 and values == sorted(values)
    assert "candidate x written" in w.status.text()
    assert gaps.max_ms < 250, f"event loop blocked for {gaps.max_ms:.0f} ms"
    print(f"\npanel event-loop longest gap during a background job: {gaps.max_ms:.1f} ms")


def test_panel_retrain_for_real(loop, qtbot):
    """The real command through the panel: a few iterations, a registered candidate."""
    from mammotriage.ui.model_panel import ModelPanel

    w = ModelPanel(loop.archive, job_args={"retrain": ["--threads", "1", "--max-iterations", "2", "--seed", "99",
                                                       "--nice", "5"]})
    qtbot.addWidget(w)
    assert w.snapshots.currentData() == loop.training
    before = w.versions.rowCount()
    with qtbot.waitSignal(w.job_finished, timeout=240000) as sig:
        w.start_retrain()
    assert sig.args == ["retrain", 0], w.status.text()
    assert w.versions.rowCount() == before + 1
    assert w.selected_version() == w.job_result["version"]
    assert w.job_result["iterations"] == 2 and w.job_result["registered"] is True


def test_main_window_opens_the_panel_and_follows_its_promotions(loop, qtbot):
    from PySide6.QtCore import Qt

    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    win = MainWindow(archive=Archive(loop.archive), start_triage=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitActive(win):
        win.activateWindow()
    assert win.model_version == "0.9.0"
    qtbot.keyClick(win, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    panel = win.model_panel
    assert panel.isVisible() and panel.active_version() == "0.9.0"
    panel.versions.selectRow(_row_of(panel, loop.candidate.version))
    assert panel.promote() is True
    assert win.model_version == loop.candidate.version  # the window switched at once
    assert f"active model is now {loop.candidate.version}" in win.log.toPlainText()
    assert panel.rollback() is True and win.model_version == "0.9.0"
    assert win.show_model_panel() is panel  # one panel, shown again
    win.close()
