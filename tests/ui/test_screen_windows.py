"""The hanging spread over two portrait displays: real panes moved into real windows.

In-process tests give the screens to ``apply_screens`` (the offscreen platform of the
test session has one screen); one test starts a process whose offscreen platform
emulates a landscape worklist monitor and two 5 MP portrait displays, so that the
screens come from ``QGuiApplication.screens()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QPointF, QSettings

from mammotriage.viewer.screens import Screen

REPO = Path(__file__).resolve().parents[2]

# a worklist monitor holding the test window, and two portrait displays beside it
# (5 MP at half size: 1024x1280, the same shape, cheaper backing stores)
STATION = [Screen(-200, -200, 2000, 1600, "worklist", primary=True),
           Screen(1800, -200, 1024, 1280, "left 5MP"), Screen(2824, -200, 1024, 1280, "right 5MP")]


def _window_of(pane):
    return pane.window()


def test_span_puts_cc_and_mlo_pairs_on_the_two_displays_with_links(reading_room, qtbot) -> None:
    win, _ = reading_room
    win.hanging_layout = "span"
    placement = win.apply_screens(STATION)
    assert placement.layout == "span" and len(win.screen_layout.windows) == 2
    panes = win.hanging.panes
    cc_window, mlo_window = _window_of(panes["RCC"]), _window_of(panes["RMLO"])
    assert cc_window is _window_of(panes["LCC"]) and mlo_window is _window_of(panes["LMLO"])
    assert cc_window is not win and mlo_window is not win and cc_window is not mlo_window
    qtbot.waitUntil(lambda: cc_window.isVisible() and mlo_window.isVisible(), timeout=10_000)
    assert cc_window.geometry().x() == 1800 and cc_window.geometry().width() == 1024
    assert mlo_window.geometry().x() == 2824
    assert not win.hanging.isVisible()  # the main window keeps the worklist and status bar
    qtbot.waitUntil(lambda: panes["RCC"].width() > 400 and panes["RMLO"].width() > 400, timeout=10_000)
    win.hanging.refit_scale()

    # one mm scale for all four views, across both windows
    scales = {slot: pane.mm_per_px for slot, pane in panes.items()}
    assert None not in scales.values() and max(scales.values()) == min(scales.values()), scales
    for slot, pane in panes.items():
        breast = pane.breast_rect()
        # right breast left of the left breast, chest walls at the display's centre line
        if slot.startswith("R"):
            assert pane.x() < panes["L" + slot[1:]].x()
            assert abs(breast.right() - pane.width()) < 2, (slot, breast, pane.width())
        else:
            assert abs(breast.left()) < 2, (slot, breast)
        assert breast.height() <= pane.height() + 1 and breast.width() <= pane.width() + 1

    # window/level and zoom stay linked across the displays
    before = win.hanging.state.panes["LMLO"].window
    panes["RCC"].window_dragged.emit("RCC", 40.0, 80.0)
    assert win.hanging.state.panes["LMLO"].window != before
    assert win.hanging.state.panes["LMLO"].window == win.hanging.state.panes["RCC"].window
    panes["RCC"].zoom_at(QPointF(panes["RCC"].width() - 20, panes["RCC"].height() / 2), 2.0)
    assert win.hanging.state.panes["LMLO"].zoom == win.hanging.state.panes["RCC"].zoom > 1.5
    # the main window's shortcuts are on the display windows too
    assert set(win.menu_actions) <= set(cc_window.actions())

    # F enlarges a view on its own display; the other display keeps its pair
    win.hanging.state.toggle_fullscreen("RMLO")
    qtbot.waitUntil(lambda: not panes["LMLO"].isVisible() and panes["RMLO"].width() > 900, timeout=10_000)
    assert panes["RCC"].isVisible() and panes["LCC"].isVisible()
    for slot in ("RCC", "LCC"):  # at a scale of their own that still fits their breasts
        breast = panes[slot].breast_rect()
        assert breast.height() <= panes[slot].height() + 1 and breast.width() <= panes[slot].width() + 1
    assert panes["RMLO"].mm_per_px < panes["RCC"].mm_per_px  # the enlarged view is larger
    win.hanging.state.toggle_fullscreen("RMLO")

    # back into the main window
    win.toggle_screens()
    assert win.hanging_layout == "single" and win.screen_layout.windows == []
    assert all(_window_of(p) is win for p in win.hanging.all_panes())
    qtbot.waitUntil(lambda: win.hanging.isVisible(), timeout=10_000)
    assert not win.hanging.common_scale
    assert "in this window" in win.status_label.text()


def test_two_portrait_displays_without_a_worklist_monitor_share_the_main_window(reading_room, qtbot) -> None:
    win, _ = reading_room
    win.move(0, 0)
    station = [Screen(-100, -100, 1700, 2100, "left 5MP", primary=True), Screen(1600, -100, 1700, 2100, "right 5MP")]
    win.hanging_layout = "span"
    placement = win.apply_screens(station)
    assert placement.layout == "span" and len(win.screen_layout.windows) == 1
    panes = win.hanging.panes
    assert _window_of(panes["RCC"]) is win and _window_of(panes["LCC"]) is win  # below the worklist
    other = _window_of(panes["RMLO"])
    assert other is not win and other is _window_of(panes["LMLO"]) and other.geometry().x() == 1600
    qtbot.waitUntil(lambda: win.hanging.isVisible() and panes["RMLO"].width() > 400, timeout=10_000)
    win.hanging.refit_scale()
    assert panes["RCC"].mm_per_px == panes["LMLO"].mm_per_px is not None
    win.toggle_screens()
    assert win.screen_layout.windows == [] and all(_window_of(p) is win for p in win.hanging.all_panes())


def test_the_layout_choice_is_remembered_and_listed_in_the_f1_sheet(reading_room, qtbot) -> None:
    from mammotriage.ui.main_window import MainWindow

    win, _ = reading_room
    win.toggle_screens()  # one offscreen screen: span falls back, but the choice is kept
    assert win.hanging_layout == "span"
    assert "one screen" in win.status_label.text()
    win.settings.sync()
    home = Path(os.environ["MAMMOTRIAGE_HOME"])
    assert QSettings(str(home / "settings.ini"), QSettings.Format.IniFormat).value("view/layout") == "span"
    later = MainWindow(archive=win.archive, start_triage=False)
    qtbot.addWidget(later)
    assert later.hanging_layout == "span"
    later.close()
    groups = dict(win.shortcut_groups())
    assert any(keys == "Ctrl+Shift+S" and "screens" in text for keys, text in groups["Viewing: window, zoom, layout"])


def test_comparison_on_a_display_puts_the_prior_pair_above_the_current(prior_room, qtbot) -> None:
    win, exams = prior_room
    prior_exam = exams[-1]
    win.open_exam(next(e for e in win.archive.exams() if e.patient_id == prior_exam.patient_id
                       and e.study_uids[0] != prior_exam.study_uid))
    win.hanging_layout = "span"
    win.apply_screens(STATION)
    win.toggle_compare()
    assert win.hanging.state.compare
    prior, current = win.hanging.prior_panes["RCC"], win.hanging.panes["RCC"]
    assert _window_of(prior) is _window_of(current) is not win
    qtbot.waitUntil(lambda: prior.isVisible() and prior.height() > 200, timeout=10_000)
    assert prior.y() + prior.height() <= current.y() and abs(prior.x() - current.x()) < 2
    assert prior.height() > prior.width()  # portrait-shaped panes on a portrait display
    win.toggle_screens()  # single: the prior goes back to the left of the current views
    qtbot.waitUntil(lambda: _window_of(prior) is win and prior.isVisible(), timeout=10_000)
    assert prior.x() + prior.width() <= current.x()


def test_closing_the_app_while_spanning_keeps_the_panes(reading_room, qtbot) -> None:
    win, _ = reading_room
    win.hanging_layout = "span"
    win.apply_screens(STATION)
    windows = list(win.screen_layout.windows)
    win.close()  # the display windows go, their panes come home first
    qtbot.waitUntil(lambda: not any(w.isVisible() for w in windows), timeout=10_000)
    assert all(_window_of(p) is win for p in win.hanging.all_panes())
    assert all(p.slot for p in win.hanging.all_panes())  # still alive (a deleted pane raises here)


SCRIPT = r"""
import json, sys
from PySide6.QtWidgets import QApplication, QLabel
from mammotriage.ui.hanging_view import HangingView
from mammotriage.ui.screen_windows import ScreenLayout, qt_screens

app = QApplication([])
main = QLabel("worklist")
worklist_screen = next(s for s in app.screens() if s.name() == "worklist")
main.setGeometry(worklist_screen.availableGeometry().adjusted(10, 10, -10, -10))
main.show()
hanging = HangingView()
layout = ScreenLayout(hanging, [])
placement = layout.apply("span", main)
app.processEvents()
out = {"reason": placement.reason, "screens": [s.name for s in qt_screens()],
       "main": main.screen().name(),
       "panes": {slot: {"screen": pane.window().screen().name(), "x": pane.mapToGlobal(pane.rect().topLeft()).x(),
                        "width": pane.width(), "height": pane.height()} for slot, pane in hanging.panes.items()}}
print(json.dumps(out))
layout.close()
"""


def test_real_offscreen_screens_a_worklist_monitor_and_two_5mp_displays(tmp_path) -> None:
    config = {"screens": [
        {"name": "worklist", "x": 0, "y": 0, "width": 1920, "height": 1080, "logicalDpi": 96, "dpr": 1},
        {"name": "left5mp", "x": 1920, "y": 0, "width": 2048, "height": 2560, "logicalDpi": 96, "dpr": 1},
        {"name": "right5mp", "x": 3968, "y": 0, "width": 2048, "height": 2560, "logicalDpi": 96, "dpr": 1}]}
    (tmp_path / "screens.json").write_text(json.dumps(config))
    env = dict(os.environ, QT_QPA_PLATFORM=f"offscreen:configfile={tmp_path / 'screens.json'}",
               PYTHONPATH=str(REPO / "app"), MAMMOTRIAGE_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(out["screens"]) == ["left5mp", "right5mp", "worklist"]
    assert out["main"] == "worklist"
    panes = out["panes"]
    assert panes["RCC"]["screen"] == panes["LCC"]["screen"] == "left5mp", out
    assert panes["RMLO"]["screen"] == panes["LMLO"]["screen"] == "right5mp", out
    assert panes["RCC"]["x"] < panes["LCC"]["x"] and panes["RMLO"]["x"] < panes["LMLO"]["x"]
    for pane in panes.values():  # about half a display each, portrait-shaped
        assert 900 <= pane["width"] <= 1024 and pane["height"] > 2 * pane["width"], out


def test_a_screen_removed_redoes_the_placement(reading_room, qtbot) -> None:
    from PySide6.QtWidgets import QApplication

    win, _ = reading_room
    win.hanging_layout = "span"
    win.show_for_reading()  # follows the screens from now on
    app = QApplication.instance()
    win.apply_screens(STATION)
    assert len(win.screen_layout.windows) == 2
    app.screenRemoved.emit(app.primaryScreen())  # as when a display is unplugged: Qt's one screen is left
    qtbot.waitUntil(lambda: win.screen_layout.windows == [], timeout=10_000)
    assert win.screen_layout.placement.layout == "single" and win.hanging_layout == "span"
    assert "one screen" in win.log.toPlainText().splitlines()[-1]
