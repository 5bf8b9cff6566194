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


# ---------------------------------------------------------------------- federation section


def _entry(round, *, job="job-7", sent=True, reason="", **kw):
    base = {"time": f"2025-03-04T10:0{round if isinstance(round, int) else 9}:00Z", "job": job, "round": round,
            "site": "site-a", "sent": sent, "reason": reason}
    if round != "final":
        base["params"] = {"rounds": 3, "local_iterations": 60, "lr": 0.005, "fedprox_mu": 0.0, "dp_clip": 0.5,
                          "dp_noise": 1.1}
    return {**base, **kw}


SENT_0 = _entry(0, sha256="a1b2c3d4e5f6" + "0" * 52, norm=0.01234567, tensors=12, values=3456, n_images=8,
                dp={"epsilon": 4.257, "delta": 1e-5, "releases": 1, "clip": 0.5, "noise_multiplier": 1.1},
                train_s=12.34)
OPTED_1 = _entry(1, sent=False, reason="opted out of this round")
REFUSED_2 = _entry(2, sent=False, reason="refused by the site: norm 3.2 above the site's bound 1.0",
                   sha256="ffee" * 16, norm=3.2, train_s=9.0, ignored_params=["script"])
FINAL = _entry("final", sent=False, reason="global model registered as a candidate", candidate="0.2.0-fed.1234abcd",
               gate_passed=False, gate_reasons=["validation: froc_mean fell by 0.05"], sha256="9f" * 32)


def _write_log(path, entries, tail=""):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries) + tail, encoding="utf-8")


@pytest.fixture
def fed_site(tmp_path):
    """A real archive with a registry (a parent, active, and a federated candidate of it)
    and the site's round log path beside it (not written yet)."""
    import json

    from mammotriage.learning.fl_config import round_log_path
    from mammotriage.learning.registry import ModelRegistry
    from mtsupport import minimal_package

    archive = tmp_path / "home" / "archive.sqlite"
    parent = minimal_package(tmp_path / "install", "0.2.0", b"parent-weights")
    fed = minimal_package(tmp_path / "candidates", "0.2.0-fed.1234abcd", b"federated-weights", parent="0.2.0")
    meta_path = fed / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["federation"] = {"federation": "job-7", "job": "job-7", "rounds": 3, "completed_rounds": 2,
                          "method": "fedavg", "server_lr": 1.0, "participants": ["site-a", "site-b"],
                          "parent": {"version": "0.2.0", "weights_sha256": "ab" * 32},
                          "state_sha256": "9f" * 32}
    meta_path.write_text(json.dumps(meta))
    with ModelRegistry(archive) as reg:
        reg.ensure_shipped(parent)
        reg.register(fed, origin="federation", who="federation")
    return archive, round_log_path(archive)


def _fed_panel(qtbot, archive, **kw):
    from mammotriage.ui.model_panel import ModelPanel

    w = ModelPanel(archive, **kw)
    qtbot.addWidget(w)
    return w


def _rounds_column(panel, name):
    from mammotriage.ui.model_panel import ROUND_COLUMNS

    j = ROUND_COLUMNS.index(name)
    return [panel.rounds.item(i, j).text() for i in range(panel.rounds.rowCount())]


def test_federation_section_shows_the_rounds_newest_first(fed_site, qtbot):
    from mammotriage.ui.model_panel import _FAIL, _PASS, ROUND_COLUMNS

    archive, log = fed_site
    _write_log(log, [SENT_0, OPTED_1, REFUSED_2, FINAL])
    panel = _fed_panel(qtbot, archive)
    assert panel.rounds.rowCount() == 4
    assert _rounds_column(panel, "round") == ["final", "3 of 3", "2 of 3", "1 of 3"]
    assert _rounds_column(panel, "what happened") == [
        "global model registered as a candidate",
        "not sent: refused by the site: norm 3.2 above the site's bound 1.0",
        "not sent: opted out of this round", "sent"]
    assert _rounds_column(panel, "job") == ["job-7"] * 4
    assert _rounds_column(panel, "sha256") == ["9f" * 6, "ffee" * 3, "", "a1b2c3d4e5f6"]
    assert _rounds_column(panel, "update norm") == ["", "3.2", "", "0.01235"]
    assert _rounds_column(panel, "DP ε") == ["", "", "", "4.26"]
    assert _rounds_column(panel, "train s") == ["", "9.0", "", "12.3"]
    assert _rounds_column(panel, "candidate") == ["0.2.0-fed.1234abcd", "", "", ""]
    assert _rounds_column(panel, "gate") == ["refused", "", "", ""]
    what, gate = ROUND_COLUMNS.index("what happened"), ROUND_COLUMNS.index("gate")
    assert panel.rounds.item(1, what).foreground().color() == _FAIL  # the site's refusal
    assert panel.rounds.item(3, what).foreground().color() == _PASS
    assert panel.rounds.item(0, gate).toolTip() == "validation: froc_mean fell by 0.05"
    assert "ignored" in panel.rounds.item(1, what).toolTip() and "script" in panel.rounds.item(1, what).toolTip()
    assert panel.rounds.item(3, ROUND_COLUMNS.index("sha256")).toolTip().startswith("a1b2c3d4e5f6" + "0" * 52)
    summary = panel.rounds_summary.text()
    assert summary.startswith("job job-7: finished · 1 of 3 rounds sent · candidate 0.2.0-fed.1234abcd: "
                              "this site's gate refused · last update ")
    assert not panel.rounds_problem.isVisibleTo(panel) and panel.rounds_bad_lines == 0


def test_federation_section_without_a_log(fed_site, qtbot):
    archive, log = fed_site
    panel = _fed_panel(qtbot, archive)
    assert not log.exists()
    assert panel.rounds.rowCount() == 0 and panel.rounds_reads == 0
    assert panel.rounds_summary.text() == "no federation rounds at this site yet"


def test_a_cut_or_forged_line_is_counted_and_shown_not_fatal(fed_site, qtbot):
    from mammotriage.ui.model_panel import _FAIL

    archive, log = fed_site
    _write_log(log, [SENT_0], tail='[1, 2]\n{"round": 1, "se')  # a forged line, then one cut by a crash
    panel = _fed_panel(qtbot, archive)
    assert panel.rounds.rowCount() == 1 and _rounds_column(panel, "what happened") == ["sent"]
    assert panel.rounds_bad_lines == 2
    assert panel.rounds_problem.isVisibleTo(panel)
    assert panel.rounds_problem.text().startswith("2 unreadable lines in the log")
    assert _FAIL.name() in panel.rounds_problem.styleSheet()
    assert panel.rounds_summary.text().startswith("job job-7: round 1 of 3 sent · last update ")


def test_entries_of_the_wrong_shape_are_shown_as_they_are(fed_site, qtbot):
    """Valid JSON objects with odd fields (a hand-edited or forged log) do not break the panel."""
    archive, log = fed_site
    odd = {"time": 5, "job": ["x"], "round": 1.5, "sent": "yes", "params": [], "dp": "none", "norm": True,
           "ignored_params": 7, "gate_reasons": 3, "sha256": 12}
    _write_log(log, [SENT_0, odd])
    panel = _fed_panel(qtbot, archive)
    assert panel.rounds.rowCount() == 2 and panel.rounds_bad_lines == 0
    assert _rounds_column(panel, "round") == ["1.5", "1 of 3"]
    assert _rounds_column(panel, "what happened") == ["not sent", "sent"]  # only True is "sent"
    assert _rounds_column(panel, "update norm")[0] == "" and _rounds_column(panel, "sha256")[0] == "12"
    assert panel.rounds_summary.text().startswith("job ['x']: round 1.5 not sent · last update 5")


def test_the_poll_follows_a_growing_log_and_leaves_an_unchanged_one_alone(fed_site, qtbot):
    import json

    archive, log = fed_site
    _write_log(log, [SENT_0])
    panel = _fed_panel(qtbot, archive, rounds_poll_ms=50)
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.rounds_timer.isActive()
    assert panel.rounds.rowCount() == 1 and panel.rounds_reads == 1
    qtbot.wait(300)  # several ticks: the file did not change, it is not read again
    assert panel.rounds_reads == 1
    assert panel.poll_rounds() is False and panel.rounds_reads == 1
    with open(log, "a", encoding="utf-8") as f:  # the federation's site process appends a round
        f.write(json.dumps(OPTED_1) + "\n")
    qtbot.waitUntil(lambda: panel.rounds.rowCount() == 2, timeout=5000)
    assert panel.rounds_reads == 2
    assert _rounds_column(panel, "round") == ["2 of 3", "1 of 3"]
    assert panel.rounds_summary.text().startswith("job job-7: round 2 of 3 not sent (opted out of this round)")
    panel.hide()
    assert not panel.rounds_timer.isActive()  # no polling while the panel is not shown


def test_a_federated_version_shows_its_provenance(fed_site, qtbot):
    archive, _ = fed_site
    panel = _fed_panel(qtbot, archive)
    panel.versions.selectRow(_row_of(panel, "0.2.0-fed.1234abcd"))
    assert panel.provenance_label.isVisibleTo(panel)
    assert panel.provenance_label.text() == (
        "federated: job job-7 · 2 of 3 rounds completed · fedavg · 2 sites: site-a, site-b · parent v0.2.0 · "
        "weights sha256 " + "9f" * 6)
    panel.versions.selectRow(_row_of(panel, "0.2.0"))  # the shipped parent: nothing to tell
    assert not panel.provenance_label.isVisibleTo(panel) and panel.provenance_label.text() == ""


def test_the_model_panel_imports_neither_torch_nor_nvflare():
    import subprocess
    from pathlib import Path

    app = Path(__file__).resolve().parents[2] / "app"
    code = ("import sys; import mammotriage.ui.model_panel; "
            "print([m for m in ('torch', 'nvflare') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(app), "QT_QPA_PLATFORM": "offscreen"})
    assert out.stdout.strip() == "[]", out.stderr


def test_alt_f_moves_the_focus_to_the_rounds(fed_site, qtbot):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    archive, log = fed_site
    _write_log(log, [SENT_0, OPTED_1])
    panel = _fed_panel(qtbot, archive)
    panel.show()
    qtbot.waitExposed(panel)
    with qtbot.waitActive(panel):
        panel.activateWindow()
    panel.versions.setFocus()
    qtbot.keyClick(panel, Qt.Key.Key_F, Qt.KeyboardModifier.AltModifier)
    assert QApplication.focusWidget() is panel.rounds
