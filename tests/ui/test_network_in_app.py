"""The DICOM node inside the app: started from the File menu, dcmtk's storescu pushes a
phantom exam, the study appears in the worklist; an insecure setting is a message."""

from __future__ import annotations

import json
import subprocess

import pytest
from PySide6.QtCore import Qt

from mammotriage.config import data_dir
from mammotriage.net.settings import NetworkSettings, save_settings
from mammotriage.store import Archive
from mammotriage.ui.main_window import MainWindow
from mtsupport import require_tool


def _window(qtbot, tmp_path):
    win = MainWindow(archive=Archive(tmp_path / "archive.sqlite"), start_triage=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitActive(win):
        win.activateWindow()
    return win


def test_node_in_the_app_receives_a_study_into_the_worklist(qtbot, tmp_path) -> None:
    from mammotriage.phantom import generate_exam

    storescu = require_tool("storescu")
    save_settings(NetworkSettings(port=0, quiet_period_s=0.3))
    exam = generate_exam(31, rows=256, columns=192)
    files = list(exam.save(tmp_path / "send").values())
    win = _window(qtbot, tmp_path)
    assert win.worklist.rowCount() == 0
    qtbot.keyClick(win, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert win.network is not None, win.log.toPlainText()
    host, port = win.network.address
    assert host == "127.0.0.1" and f"@ 127.0.0.1:{port}" in win.network_label.text()
    r = subprocess.run([storescu, "-aec", "MAMMOTRIAGE", host, str(port), *map(str, files)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    qtbot.waitUntil(lambda: win.worklist.rowCount() == 1, timeout=30_000)
    assert f"received study {exam.study_uid} (4 images)" in win.log.toPlainText()
    # the choice is remembered; stopping closes the port
    assert str(win.settings.value("network/run_in_app")) == "true"
    qtbot.keyClick(win, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert win.network is None and "DICOM node stopped: 4 received, 4 imported" in win.log.toPlainText()
    assert str(win.settings.value("network/run_in_app")) == "false"
    win.close()


@pytest.mark.parametrize("content", [
    {"port": 0, "bind": "0.0.0.0"},  # another interface without allow-lists: refused
    "{not json",
])
def test_bad_network_settings_are_a_message_not_a_crash(qtbot, tmp_path, content) -> None:
    path = data_dir() / "network.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    win = _window(qtbot, tmp_path)
    assert win.start_network() is False
    assert win.network is None
    assert "DICOM node not started:" in win.log.toPlainText()
    assert win.network_label.text() == "DICOM node: not running"
    win.close()
