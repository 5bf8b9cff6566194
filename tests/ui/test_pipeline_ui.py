"""The automatic pipeline from the reading window: due after N new corrections, run as a
Model panel job in the background, its outcome shown there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mtsupport import EventLoopGaps

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_the_window_starts_the_pipeline_when_due(qtbot, tmp_path):
    from retrain_sim import build_tiny_site

    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    site = build_tiny_site(tmp_path, n_validation=1, n_training=2)
    win = MainWindow(archive=Archive(site.archive), start_triage=False)
    qtbot.addWidget(win)
    assert win.check_pipeline() is False  # the setting is off
    (site.archive.parent / "models.json").write_text(json.dumps({"propose_after_corrections": 3}))
    panel = win._ensure_model_panel()
    panel.job_args["pipeline"] = ["--threads", "1", "--max-iterations", "2", "--bootstrap", "10", "--nice", "5"]
    with EventLoopGaps() as gaps, qtbot.waitSignal(panel.job_finished, timeout=300000) as sig:
        assert win.check_pipeline() is True
        assert win.check_pipeline() is False  # one run at a time
        assert not panel.pipeline_button.isEnabled()
    assert sig.args[0] == "pipeline" and sig.args[1] in (0, 1), panel.status.text()
    assert "pipeline: candidate 0.0.1-site." in panel.status.text()
    assert panel.selected_version() == panel.job_result["candidate"]
    assert "last run" in panel.pipeline_label.text() and "0/3 new corrections" in panel.pipeline_label.text()
    assert "pipeline: " in win.log.toPlainText()
    assert win.check_pipeline() is False  # the counter restarted
    print(f"\nwindow event-loop longest gap during the pipeline job: {gaps.max_ms:.1f} ms")
    win.close()
