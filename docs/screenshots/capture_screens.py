"""Screenshots of the hanging on a reading station's screens (no triage needed).

Opens the CBIS-DDSM exam P_00820 beside the checkout (else a demo exam) with the
remembered layout set to ``--layout`` and saves the whole desktop: every visible
top-level window (the main window, the display windows of the spanning layout) drawn
at its place on the virtual desktop, scaled by ``--scale``.

The screens are the ones Qt reports: under Xvfb (``QT_QPA_PLATFORM=xcb``) one per X
server, so a portrait 5 MP display is ``-screen 0 2048x2560x24``; a station of several
screens is emulated with the offscreen platform's screen list (Xvfb's RandR offers no
way to split its one screen into monitors for Qt):

    xvfb-run -a -s "-screen 0 2048x2560x24" python docs/screenshots/capture_screens.py \\
        --layout single --out docs/screenshots/portrait_5mp.png
    QT_QPA_PLATFORM=offscreen:configfile=docs/screenshots/station.json \\
        python docs/screenshots/capture_screens.py --layout span --out docs/screenshots/two_5mp_span.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from capture import import_sources, views_shown, wait_until  # this folder's capture.py
from PySide6.QtCore import QPoint, QRect
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QApplication

REPO = Path(__file__).resolve().parents[2]


def desktop_image(app, scale: float) -> QImage:
    """The visible top-level windows drawn where they are, screens outlined, scaled."""
    screens = [s.geometry() for s in app.screens()]
    box = QRect(screens[0])
    for g in screens[1:]:
        box = box.united(g)
    image = QImage(int(box.width() * scale), int(box.height() * scale), QImage.Format.Format_RGB32)
    image.fill(QColor(60, 60, 60))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    painter.scale(scale, scale)
    painter.translate(-box.topLeft())
    for window in app.topLevelWidgets():
        if window.isVisible() and window.isWindow():
            painter.drawPixmap(window.mapToGlobal(QPoint(0, 0)), window.grab())
    pen = painter.pen()
    pen.setColor(QColor(255, 200, 0))
    pen.setWidthF(3 / scale)
    painter.setPen(pen)
    for g in screens:  # the bezels
        painter.drawRect(g.adjusted(0, 0, -1, -1))
    painter.end()
    return image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layout", choices=("single", "span"), default="span")
    parser.add_argument("--cbis", type=Path, default=REPO.parent / "shared" / "data" / "dicom" / "cbis-ddsm")
    parser.add_argument("--patient", default="00820", help="open the first exam whose patient ID has this")
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="mt-screens-"))
    os.environ["MAMMOTRIAGE_HOME"] = str(home)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    from mammotriage.phantom import write_demo_set
    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    archive = Archive(home / "archive.sqlite")
    if archive.count() == 0:
        demo = home / "demo"
        write_demo_set(demo, n_exams=2, seed=2026, priors=1, rows=1024, columns=832)
        import_sources(archive, demo, args.cbis)
    (home / "settings.ini").unlink(missing_ok=True)  # a first start: maximised on its screen
    window = MainWindow(archive=archive, start_triage=False)
    window.sign_in("dr_demo")
    window.settings.setValue("view/layout", args.layout)
    window.hanging_layout = args.layout
    window.show_for_reading()
    wait_until(app, lambda: window.isVisible(), 10)
    exams = window.worklist.exams
    exam = next((e for e in exams if args.patient in e.patient_id), exams[0])
    window.table.selectRow(window.worklist_view.row_of(exam.exam_key))
    if window.current is None or window.current.exam_key != exam.exam_key:
        window.open_exam(exam)
    wait_until(app, lambda: views_shown(window.hanging.panes.values()), 180)
    window.apply_screens()  # the window is maximised by now: place again from where it is
    wait_until(app, lambda: False, 1.5)  # let the last paint land
    placement = window.screen_layout.placement
    print(f"screens: {[(s.name(), s.geometry().getRect()) for s in app.screens()]}", flush=True)
    print(f"layout {placement.layout}: {placement.reason}", flush=True)
    for slot, pane in window.hanging.panes.items():
        print(f"  {slot}: {pane.window().windowTitle()[:24]!r} at {pane.mapToGlobal(QPoint(0, 0)).toTuple()} "
              f"{pane.width()}x{pane.height()}, {pane.mm_per_px or 0:.3f} mm/px "
              f"{'' if pane.view else pane.message}", flush=True)
    print(f"main window on {window.screen().name()} at {window.frameGeometry().getRect()}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = desktop_image(app, args.scale)
    ok = image.save(str(args.out))
    print(f"{'saved' if ok else 'FAILED'} {args.out} ({image.width()}x{image.height()})", flush=True)
    window.close()
    sys.stdout.flush()
    os._exit(0 if ok else 1)  # see benchmarks/triage_ui.py: PySide6 can abort in teardown GC


if __name__ == "__main__":
    raise SystemExit(main())
