"""Application entry point: ``mammotriage`` / ``mammotriage app``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from mammotriage.ui.main_window import MainWindow

if TYPE_CHECKING:
    from mammotriage.net.site_profile import SiteProfile


def main(demo: bool = True, screenshot: str | None = None, quit_after: float | None = None,
         site: SiteProfile | None = None) -> int:
    """Start the workstation.

    Parameters
    ----------
    demo
        On first run (empty archive) create and import the built-in demo exams.
    screenshot
        Save a PNG of the window once the first exam is on screen, then quit.
    quit_after
        Quit after this many seconds (scripts and smoke tests).
    site
        Join this site (``app --site PROFILE``): reader corrections go to the site store.
    """
    state = _QuitState()
    _quit_on_signals(state)  # before any worker is spawned
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Mammo Triage")
    window = state.window = MainWindow(site=site)
    window.show_for_reading()  # maximised at first start; a lost screen's geometry corrected
    rc = {"code": 0}
    if screenshot:
        def save(_key: str) -> None:
            # let the last paint land before grabbing
            def grab() -> None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                ok = window.grab().save(screenshot)
                print(f"screenshot {'saved to' if ok else 'FAILED for'} {screenshot}", flush=True)
                rc["code"] = 0 if ok else 1
                window.close()
            QTimer.singleShot(300, grab)

        window.exam_shown.connect(save)
    if quit_after:
        def timeout() -> None:
            if screenshot:
                print("timed out before the first exam was shown", file=sys.stderr, flush=True)
                rc["code"] = 2
            _quit(window)
        QTimer.singleShot(int(quit_after * 1000), timeout)
    if demo:
        window.ensure_demo()
    QTimer.singleShot(0, state.enter_loop)  # a signal that came before the loop runs quits now
    app.exec()
    # destroy the window while the QApplication still exists (no Qt object may outlive it)
    window.deleteLater()
    app.processEvents()
    return rc["code"]


def _quit(window: MainWindow) -> None:
    """Close the window (its closeEvent saves and stops everything), then end the event
    loop even if another top-level window (a display window, a floating dock, a dialog)
    is still open: a quit signal must quit."""
    window.close()
    app = QApplication.instance()
    if app is not None:
        app.quit()


class _QuitState:
    """What the signal handler needs: the window once it exists, whether the event loop
    runs, and whether a quit signal came before it did."""

    def __init__(self) -> None:
        self.window: MainWindow | None = None
        self.loop_running = False
        self.quit_requested = False

    def enter_loop(self) -> None:
        """The first thing the event loop runs."""
        self.loop_running = True
        if self.quit_requested and self.window is not None:
            _quit(self.window)


def _quit_on_signals(state: _QuitState) -> None:
    """SIGTERM (logout, a session manager, ``kill``) and SIGINT (Ctrl-C) quit like the
    window's close button: settings saved, workers and the DICOM node stopped.

    Python runs signal handlers between bytecodes; the window's poll timer (30 ms)
    keeps Python code running while Qt waits for events, so the handler runs promptly.
    The handler only quits through the running event loop. A signal that comes earlier
    (while the window is built, or in an event round before the loop starts) is
    remembered, and the loop's first task quits: Qt ignores a quit while no loop runs,
    and an exception raised into start-up code would leave spawned workers behind.
    """
    def handler(signum: int, _frame: object) -> None:
        print(f"{signal.Signals(signum).name}: quitting", file=sys.stderr, flush=True)
        state.quit_requested = True
        window = state.window
        if state.loop_running and window is not None:
            QTimer.singleShot(0, lambda: _quit(window))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
