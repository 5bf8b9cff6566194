"""Screenshots of the reading workstation with AI results (run under Xvfb or offscreen).

Imports the built-in demo exams and, when present, the CBIS-DDSM DICOM files into a
fresh archive, lets the background triage analyse every exam, then saves:

  worklist.png        the worklist sorted by suspicion, the most suspicious exam open
  cbis_overlays.png   the CBIS-DDSM exam with a malignant mass, AI marks and map shown
  phantom_overlays.png  a demo exam with a malignant lesion, marks and map shown
  prior_comparison<tag>.png  a demo patient's exam beside its prior (C), linked, AI shown
  signed_worklist<tag>.png   the worklist after one exam was signed (Ctrl+Enter)
  cbis_fit<tag>.png          the CBIS-DDSM exam fitted to the breast, AI hidden

The window opens as at a first start (maximised on the screen), so the screen size of
the X server decides the layout; ``<tag>`` is that size (``_1920x1080``) unless
``--tag`` says otherwise, and the first three are written on screens 1920 px wide or
more only. ``--home`` keeps the data directory, so a second run at another screen size
reuses the finished triage.

Usage: xvfb-run -a -s "-screen 0 1920x1080x24" python docs/screenshots/capture.py --out DIR
       [--cbis DIR] [--model M] [--home DIR] [--tag SUFFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication

REPO = Path(__file__).resolve().parents[2]


def import_sources(archive, demo: Path, cbis: Path) -> None:
    """Import the demo exams in ``demo`` (and the CBIS-DDSM folder when present) into an
    empty ``archive``."""
    if archive.count():
        return
    sources = sorted(p for p in demo.iterdir() if p.is_dir())
    if cbis.is_dir():
        sources.append(cbis)
    report = archive.import_paths(sources)
    print(f"imported {len(report.imported)} images; skipped {len(report.rejected)}", flush=True)


def wait_until(app, predicate, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    return False


def views_shown(panes) -> bool:
    """Every pane shows its full view (not a preview still being replaced) or an error."""
    return all(p.is_error or (p.view is not None and not p.view.preview) for p in panes)


def _show(app, window, row: int, path: Path) -> None:
    window.table.selectRow(row)
    window.open_row(row)
    wait_until(app, lambda: views_shown(window.hanging.panes.values()), 120)
    if not window.hanging.state.ai_visible:
        window.toggle_ai()
    window.hanging.state.set_map_opacity(0.45)
    wait_until(app, lambda: False, 1.0)  # let the overlays paint
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(str(path))
    print(f"{'saved' if ok else 'FAILED'} {path}", flush=True)


def _grab(app, window, path: Path) -> None:
    wait_until(app, lambda: False, 1.0)  # let the last paint land
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(str(path))
    print(f"{'saved' if ok else 'FAILED'} {path}", flush=True)


def _open(app, window, exam) -> None:
    row = window.worklist_view.row_of(exam.exam_key)
    window.table.selectRow(row)
    if window.current is None or window.current.exam_key != exam.exam_key:
        window.open_exam(exam)
    wait_until(app, lambda: views_shown(window.hanging.panes.values()), 120)


def reading_room_shots(app, window, truth: dict, out: Path, tag: str) -> None:
    """The reading-room v2 screenshots: comparison with a prior, a signed exam, fit to breast."""
    from mammotriage.store.assessment import default_recall

    state = window.hanging.state
    with_prior = [e for e in truth["exams"] if e.get("prior_study_uids") and e["lesions"]]
    exams = {e.study_uids[0]: e for e in window.worklist.exams}
    if with_prior and with_prior[0]["study_uid"] in exams:
        _open(app, window, exams[with_prior[0]["study_uid"]])
        if not state.compare:
            window.toggle_compare()
        wait_until(app, lambda: views_shown(window.hanging.prior_panes.values()), 120)
        if not state.ai_visible:
            window.toggle_ai()
        _grab(app, window, out / f"prior_comparison{tag}.png")
        window.toggle_compare()
    # sign the top exam (as a reader would with Ctrl+Enter) and move on to the next unread one
    top = window.worklist_view.entry(0).exam
    _open(app, window, top)
    if not (window.corrections and window.corrections.signed):
        breasts = {"R": {"birads": "1", "density": "b"}, "L": {"birads": "4A", "density": "b"}}
        window.sign_exam({"breasts": breasts, "recall": default_recall(breasts)})
    window.open_next_unread()
    wait_until(app, lambda: window._job is None, 60)
    wait_until(app, lambda: views_shown(window.hanging.panes.values()), 120)
    _grab(app, window, out / f"signed_worklist{tag}.png")
    cbis = [e for e in window.worklist.exams if "00820" in e.patient_id]
    if cbis:
        _open(app, window, cbis[0])
        if state.ai_visible:
            window.toggle_ai()
        _grab(app, window, out / f"cbis_fit{tag}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cbis", type=Path, default=REPO.parent / "shared" / "data" / "dicom" / "cbis-ddsm")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--exams", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--home", type=Path, default=None, help="data directory to use (and keep)")
    parser.add_argument("--tag", default=None, help="suffix of the reading-room screenshots (default: _WxH)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mt-shots-"))
    home = args.home or tmp / "home"
    os.environ["MAMMOTRIAGE_HOME"] = str(home)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    from mammotriage.phantom import write_demo_set
    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    demo = home / "shots-demo"
    if not (demo / "ground_truth.json").exists():
        write_demo_set(demo, n_exams=args.exams, seed=2026, priors=2, rows=1024, columns=832)
    truth = json.loads((demo / "ground_truth.json").read_text())
    archive = Archive(home / "archive.sqlite")
    import_sources(archive, demo, args.cbis)
    (home / "settings.ini").unlink(missing_ok=True)  # a first start: maximised on the screen
    window = MainWindow(archive=archive, model_dir=args.model)
    window.settings.setValue("ai/reading_mode", "on demand")
    window.hanging.state.reading_mode = "on demand"
    window.sign_in("dr_demo")
    window.show_for_reading()
    n = len(archive.exams())
    done = wait_until(app, lambda: (lambda c: c["done"] + c["failed"] >= n)(window.queue.counts(window.model_version)),
                 args.timeout)
    print(f"triage {'finished' if done else 'TIMED OUT'}: {window.queue.counts(window.model_version)}", flush=True)
    window.current = None
    window.refresh_worklist()
    entries = window.worklist.entries
    for e in entries:
        print(f"  {e.score_100!s:>4} {e.category:14} {e.exam.patient_id}", flush=True)
    screen = app.primaryScreen().size()
    tag = args.tag if args.tag is not None else f"_{screen.width()}x{screen.height()}"
    if screen.width() >= 1920:
        _show(app, window, 0, args.out / "worklist.png")
        cbis = [i for i, e in enumerate(entries) if "00820" in e.exam.patient_id]
        if cbis:
            _show(app, window, cbis[0], args.out / "cbis_overlays.png")
        malignant = {e["study_uid"] for e in truth["exams"] if any(les["malignant"] for les in e["lesions"])}
        rows = [i for i, e in enumerate(entries) if set(e.exam.study_uids) & malignant]
        if rows:
            _show(app, window, rows[0], args.out / "phantom_overlays.png")
    reading_room_shots(app, window, truth, args.out, tag)
    window.close()
    sys.stdout.flush()
    os._exit(0)  # see benchmarks/triage_ui.py: PySide6 can abort in teardown GC


if __name__ == "__main__":
    raise SystemExit(main())
