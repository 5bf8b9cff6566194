"""The monitoring view: the monitor report of a real archive, its warnings and plots,
computed without blocking the event loop; opened from the main window."""

from __future__ import annotations

from PySide6.QtCore import Qt

from mammotriage.ui.monitor_view import MonitorView
from mtsupport import monitor_archive

META = {"version": "v1", "input_reference": {"mean": 118.0, "mean_sd": 15.0},
        "training_scanners": ["Mammo Triage phantom", "mini-MIAS (digitised film)"]}


def test_view_shows_scores_feedback_drift_and_warnings(qtbot, tmp_path) -> None:
    archive = monitor_archive(tmp_path)
    view = MonitorView(archive.path, META, suspicious_threshold=0.5)
    qtbot.addWidget(view)
    view.show()
    assert "computing" in view.text.toPlainText()  # the report is made in the background
    with qtbot.waitSignal(view.report_ready, timeout=60_000):
        pass
    text = view.text.toPlainText()
    assert "HOLOGIC, Inc. / Selenia Dimensions: 1 exams" in text
    assert "marks accepted 1, rejected 1, missed added 1 (accept rate 50%)" in text
    assert "drift SMD" in text and "WARNING" not in text
    warnings = view.warnings.text()
    assert "scanner not seen in training: HOLOGIC" in warnings and "input drift on HOLOGIC" in warnings
    assert len(view.plot_labels) == 2 and all(not lbl.pixmap().isNull() for lbl in view.plot_labels)
    assert view.plot_labels[0].pixmap().width() > 300
    view.refresh()  # again, same figures
    with qtbot.waitSignal(view.report_ready, timeout=60_000):
        pass
    assert view.text.toPlainText() == text


def test_broken_archive_is_a_message_not_a_crash(qtbot, tmp_path) -> None:
    bad = tmp_path / "not-an-archive.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    view = MonitorView(bad, META)
    qtbot.addWidget(view)
    qtbot.waitUntil(lambda: not view.busy() and "failed" in view.text.toPlainText(), timeout=30_000)
    assert str(view.text.toPlainText()).startswith("monitoring report failed:")


def test_main_window_opens_the_monitor(qtbot, tmp_path) -> None:
    from mammotriage.ui.main_window import MainWindow

    archive = monitor_archive(tmp_path)
    win = MainWindow(archive=archive, start_triage=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitActive(win):
        win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    view = win.monitor_view
    assert view.isVisible()
    with qtbot.waitSignal(view.report_ready, timeout=60_000):
        pass
    assert "model v1" in view.text.toPlainText()
    win.close()


def test_the_monitor_shows_no_ai_scores_in_blind_mode(qtbot, tmp_path) -> None:
    from mammotriage.ui.main_window import MainWindow

    archive = monitor_archive(tmp_path)
    win = MainWindow(archive=archive, start_triage=False)
    qtbot.addWidget(win)
    win.hanging.state.reading_mode = "after read"
    assert win.show_monitor() is None and win.monitor_view is None
    assert "after my read" in win.status_label.text()
    win.close()
