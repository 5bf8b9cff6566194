"""MainWindow with a real archive file: worklist, keyboard shortcuts, error panes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from mammotriage.store import Archive
from mammotriage.ui.main_window import MainWindow
from mtsupport import require_shared, write_mg


def _write_exam(folder: Path, patient: str, study_uid: str) -> None:
    rng = np.random.default_rng(abs(hash(patient)) % 2**32)
    for lat in "RL":
        for view in ("CC", "MLO"):
            pixels = rng.integers(500, 3500, size=(96, 80)).astype(np.uint16)
            row = "P" if lat == "R" else "A"
            col = "F" if view == "MLO" else ("L" if lat == "R" else "R")
            write_mg(folder / f"{patient}_{lat}{view}.dcm", rows=96, columns=80, laterality=lat, view=view,
                     orientation=(row, col), pixels=pixels, study_uid=study_uid, patient_id=patient,
                     windows=[(2000, 3000, "NORMAL"), (1500, 800, "DENSE")])


@pytest.fixture
def window(qtbot, tmp_path):
    data = tmp_path / "data"
    _write_exam(data, "PAT1", "1.2.826.0.1.3680043.8.498.1")
    _write_exam(data, "PAT2", "1.2.826.0.1.3680043.8.498.2")
    archive = Archive(tmp_path / "archive.sqlite")
    report = archive.import_paths([data])
    assert len(report.imported) == 8
    win = MainWindow(archive=archive)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()


def test_worklist_and_first_exam_shown(window, qtbot) -> None:
    assert window.worklist.rowCount() == 2
    with qtbot.waitSignal(window.exam_shown, timeout=60_000, raising=False):
        pass
    qtbot.waitUntil(lambda: all(p.view is not None for p in window.hanging.panes.values()), timeout=60_000)
    assert window.worklist.data(window.worklist.index(0, 4)) == "RCC LCC RMLO LMLO"
    assert window.worklist.data(window.worklist.index(0, 2)) == "not analysed"


def test_keyboard_shortcuts(window, qtbot) -> None:
    qtbot.waitUntil(lambda: all(p.view is not None for p in window.hanging.panes.values()), timeout=60_000)
    first = window.current.exam_key
    qtbot.keyClick(window, Qt.Key.Key_I)
    assert all(s.invert for s in window.hanging.state.panes.values())
    qtbot.keyClick(window, Qt.Key.Key_2)
    assert window.hanging.state.panes["RCC"].window.explanation == "DENSE"
    assert window.hanging.state.panes["LMLO"].window.width == 800
    assert window.status_label.text() == "preset 2: DENSE"
    qtbot.keyClick(window, Qt.Key.Key_T)
    assert not window.hanging.state.show_text
    qtbot.keyClick(window, Qt.Key.Key_L)
    assert window.hanging.state.link_mode == "pair"
    qtbot.keyClick(window, Qt.Key.Key_R)
    assert not any(s.invert for s in window.hanging.state.panes.values())
    qtbot.keyClick(window, Qt.Key.Key_N)
    assert window.current.exam_key != first
    qtbot.keyClick(window, Qt.Key.Key_P)
    assert window.current.exam_key == first
    sheet = dict((text, keys) for keys, text in window.shortcut_sheet())
    assert sheet["Invert"] == "I" and "N" in sheet["Next exam"]


@pytest.mark.realdata
def test_undecodable_view_shows_inline_error(qtbot, tmp_path) -> None:
    src = require_shared("dicom", "wg04", "MG1_JPLY.dcm")
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(src, data / "MG1_JPLY.dcm")
    archive = Archive(tmp_path / "a.sqlite")
    assert len(archive.import_paths([data]).imported) == 1  # the header is a fine breast image
    win = MainWindow(archive=archive)
    qtbot.addWidget(win)
    win.show()
    pane = win.hanging.panes["LMLO"]
    qtbot.waitUntil(lambda: pane.is_error, timeout=60_000)
    assert "cannot decode: transfer syntax JPEG Extended" in pane.message
    assert "not in this exam" in win.hanging.panes["RCC"].message
    assert "cannot display" in win.log.toPlainText()
    win.close()


def test_a_view_whose_window_was_set_aside_says_so(qtbot, tmp_path) -> None:
    """A broken optional presentation attribute falls back with a warning the reader sees."""
    data = tmp_path / "data"
    rng = np.random.default_rng(3)
    for lat in "RL":
        for view in ("CC", "MLO"):
            pixels = rng.integers(500, 3500, size=(96, 80)).astype(np.uint16)
            row = "P" if lat == "R" else "A"
            col = "F" if view == "MLO" else ("L" if lat == "R" else "R")
            windows = [(float("nan"), 3000, "BROKEN"), (1500, 800, "DENSE")] if (lat, view) == ("L", "CC") \
                else [(2000, 3000, "NORMAL")]
            write_mg(data / f"W_{lat}{view}.dcm", rows=96, columns=80, laterality=lat, view=view,
                     orientation=(row, col), pixels=pixels, study_uid="1.2.826.0.1.3680043.8.498.9",
                     patient_id="WARN", windows=windows)
    archive = Archive(tmp_path / "archive.sqlite")
    assert len(archive.import_paths([data]).imported) == 4
    win = MainWindow(archive=archive)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: all(p.view is not None for p in win.hanging.panes.values()), timeout=60_000)
    qtbot.waitUntil(lambda: "W_LCC.dcm" in win.log.toPlainText(), timeout=10_000)
    log = win.log.toPlainText()
    assert "BROKEN" in log and "not a finite number" in log
    assert "W_LCC.dcm" in win.status_label.text() or "W_LCC.dcm" in log
    # the pane shows the next preset, not a black image
    assert win.hanging.state.panes["LCC"].window.width == 800
    win.close()


def test_extra_cc_family_views_open_in_the_cc_pane(qtbot, tmp_path) -> None:
    # XCC (exaggerated CC) and CV (cleavage) are cranio-caudal views: the extra-view
    # cycle shows them in the CC pane of their breast, ML in the MLO pane
    data = tmp_path / "data"
    study = "1.2.826.0.1.3680043.8.498.7"
    _write_exam(data, "PAT7", study)
    for lat, view in (("R", "XCC"), ("L", "CV"), ("L", "ML")):
        write_mg(data / f"PAT7_{lat}{view}.dcm", rows=96, columns=80, laterality=lat, view=view,
                 orientation=("P" if lat == "R" else "A", "F" if view == "ML" else ("L" if lat == "R" else "R")),
                 study_uid=study, patient_id="PAT7")
    archive = Archive(tmp_path / "archive.sqlite")
    assert len(archive.import_paths([data]).imported) == 7
    win = MainWindow(archive=archive)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitUntil(lambda: all(p.view is not None for p in win.hanging.panes.values()), timeout=60_000)
    shown = {}
    for _ in win.extras:
        win.show_next_extra()
        image = win.extras[win._extra_index]
        shown[image.laterality.value + image.view.value] = win.hanging.state.fullscreen
    assert shown == {"RXCC": "RCC", "LCV": "LCC", "LML": "LMLO"}
    win.close()
    archive.close()
