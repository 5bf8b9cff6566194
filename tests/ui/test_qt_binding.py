"""The Qt binding itself: PySide6-Essentials 6.12.0 under Python 3.11 dropped one
reference to ``None`` on every call of a void method (``QLabel.setText``,
``QWidget.setVisible`` ...). None starts with a few thousand references, so the reading
window, which calls such methods every few milliseconds, died with "Fatal Python error:
none_dealloc" after about twenty seconds of background triage. constraints.txt pins a
binding without the bug; this test fails on one that has it."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QLabel, QProgressBar


def test_void_calls_keep_none_alive(qtbot) -> None:
    """Three batches of void calls, garbage collected before each: the faulty binding loses
    about 6000 references in every batch; other objects freed mid-batch move the count in
    one batch at most (see the next test)."""
    import gc

    label, bar = QLabel(), QProgressBar()
    qtbot.addWidget(label)
    qtbot.addWidget(bar)
    drift = []
    for _batch in range(3):
        gc.collect()
        before = sys.getrefcount(None)
        for i in range(2000):
            label.setText(str(i))
            bar.setVisible(i % 2 == 0)
            bar.setValue(i % 100)
        drift.append(sys.getrefcount(None) - before)
    assert max(drift) > -50, f"the Qt binding leaks references to None: {drift}"


def test_reading_window_polling_keeps_none_alive(qtbot, tmp_path) -> None:
    """The window's 30 ms poll, a worklist refresh and a repaint, many times.

    None's count also moves when anything else in the process frees or makes objects
    holding None (garbage from earlier tests collected mid-loop, caches filling): in a
    full run it once fell by 481 over one batch on a good binding. The leak loses
    references on every call, so it shows in every batch; noise does not. So: collect
    garbage before each batch, warm the window's caches first, and ask that some batch
    of three keeps None's count (the faulty binding loses thousands per batch)."""
    import gc

    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    win = MainWindow(archive=Archive(tmp_path / "a.sqlite"), start_triage=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    for _ in range(50):
        win._poll()
        win.refresh_worklist()
    drift = []
    for _batch in range(3):
        gc.collect()
        before = sys.getrefcount(None)
        for _ in range(300):
            win._poll()
            win.refresh_worklist()
        win.grab()
        drift.append(sys.getrefcount(None) - before)
    assert max(drift) > -50, f"None lost references in every batch: {drift}"
    win.close()
