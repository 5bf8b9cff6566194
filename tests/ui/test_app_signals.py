"""SIGTERM quits the real app whenever it arrives: while the window is being built, after
it is built but before the event loop runs, and while the loop runs.

Each case runs the app's ``main`` as its own program (offscreen Qt, an empty data folder)
with the signal sent to itself at one point of the start-up; ``main`` must return 0, with
the window closed (its workers stopped), well before ``--quit-after``'s 60 s.  A signal
that arrived after the window existed but before the event loop ran used to close the
window, ask a loop that was not running to quit (Qt ignores that), and then show the
window again: the app ran on until ``--quit-after``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    import mammotriage.ui.app as appmod
    from mammotriage.ui.main_window import MainWindow

    WHEN = sys.argv[1]
    closed = []

    def term():
        os.kill(os.getpid(), signal.SIGTERM)

    init, show, close_event = MainWindow.__init__, MainWindow.show_for_reading, MainWindow.closeEvent

    def patched_init(self, *a, **k):
        init(self, *a, **k)
        if WHEN == "constructor":  # inside a Qt callback, before the window is returned
            QTimer.singleShot(0, term)
            QApplication.processEvents()

    def patched_show(self):
        if WHEN == "before-show":
            term()
        show(self)
        if WHEN == "shown-events":  # the quit runs in an event round before the loop
            term()
            QApplication.processEvents()
        if WHEN == "in-loop":
            QTimer.singleShot(500, term)

    def patched_close(self, event):
        closed.append(True)
        close_event(self, event)

    MainWindow.__init__, MainWindow.show_for_reading = patched_init, patched_show
    MainWindow.closeEvent = patched_close

    if __name__ == "__main__":
        t = time.monotonic()
        rc = appmod.main(demo=False, quit_after=60)
        print(f"main returned {rc} after {time.monotonic() - t:.1f} s, closed {len(closed)}", flush=True)
""")


@pytest.mark.parametrize("when", ["constructor", "before-show", "shown-events", "in-loop"])
def test_sigterm_quits_whenever_it_arrives(tmp_path: Path, when: str) -> None:
    script = tmp_path / "run_app.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MAMMOTRIAGE_HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script), when], env=env, capture_output=True, text=True,
                          timeout=120)
    took = time.monotonic() - start
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "SIGTERM: quitting" in out, out
    assert "main returned 0" in out and "closed 1" in out, out
    assert took < 45, (took, out)  # not --quit-after's 60 s
