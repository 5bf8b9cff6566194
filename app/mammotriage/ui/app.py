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
    started: dict[str, MainWindow] = {}
    _quit_on_signals(started)  # before any worker is spawned
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Mammo Triage")
    window = started["window"] = MainWindow(site=site)
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
            window.close()
        QTimer.singleShot(int(quit_after * 1000), timeout)
    if demo:
        window.ensure_demo()
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


def _quit_on_signals(started: dict[str, MainWindow]) -> None:
    """SIGTERM (logout, a session manager, ``kill``) and SIGINT (Ctrl-C) quit like the
    window's close button: settings saved, workers and the DICOM node stopped.

    Python runs signal handlers between bytecodes; the window's poll timer (30 ms)
    keeps Python code running while Qt waits for events, so the handler runs promptly.
    Before the window exists there is nothing to save: the process just exits.
    """
    def handler(signum: int, _frame: object) -> None:
        print(f"{signal.Signals(signum).name}: quitting", file=sys.stderr, flush=True)
        window = started.get("window")
        if window is None:
            raise SystemExit(0)
        QTimer.singleShot(0, lambda: _quit(window))

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
