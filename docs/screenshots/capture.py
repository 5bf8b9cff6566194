"""Screenshots of the reading workstation with AI results (run under Xvfb or offscreen).

Imports the built-in demo exams and, when present, the CBIS-DDSM DICOM files into a
fresh archive, lets the background triage analyse every exam, then saves:

  worklist.png        the worklist sorted by suspicion, the most suspicious exam open
  cbis_overlays.png   the CBIS-DDSM exam with a malignant mass, AI marks and map shown
  phantom_overlays.png  a demo exam with a malignant lesion, marks and map shown

Usage: xvfb-run -a python docs/screenshots/capture.py --out DIR [--cbis DIR] [--model M]
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


def _wait(app, predicate, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _show(app, window, row: int, path: Path) -> None:
    window.table.selectRow(row)
    window.open_row(row)
    _wait(app, lambda: all(p.view is not None or p.is_error for p in window.hanging.panes.values()), 120)
    if not window.hanging.state.ai_visible:
        window.toggle_ai()
    window.hanging.state.set_map_opacity(0.45)
    _wait(app, lambda: False, 1.0)  # let the overlays paint
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = window.grab().save(str(path))
    print(f"{'saved' if ok else 'FAILED'} {path}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cbis", type=Path, default=REPO.parent / "shared" / "data" / "dicom" / "cbis-ddsm")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--exams", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mt-shots-"))
    os.environ["MAMMOTRIAGE_HOME"] = str(tmp / "home")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    from mammotriage.phantom import write_demo_set
    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    truth = json.loads(Path(write_demo_set(tmp / "demo", n_exams=args.exams, seed=2026, rows=1024,
                                           columns=832)).read_text())
    archive = Archive(tmp / "home" / "archive.sqlite")
    sources = sorted(p for p in (tmp / "demo").iterdir() if p.is_dir())
    if args.cbis.is_dir():
        sources.append(args.cbis)
    report = archive.import_paths(sources)
    print(f"imported {len(report.imported)} images; skipped {len(report.rejected)}", flush=True)
    window = MainWindow(archive=archive, model_dir=args.model)
    window.settings.setValue("ai/reading_mode", "on demand")
    window.resize(1700, 1000)
    window.show()
    n = len(archive.exams())
    done = _wait(app, lambda: (lambda c: c["done"] + c["failed"] >= n)(window.queue.counts(window.model_version)),
                 args.timeout)
    print(f"triage {'finished' if done else 'TIMED OUT'}: {window.queue.counts(window.model_version)}", flush=True)
    window.refresh_worklist()
    entries = window.worklist.entries
    for e in entries:
        print(f"  {e.score_100!s:>4} {e.category:14} {e.exam.patient_id}", flush=True)
    _show(app, window, 0, args.out / "worklist.png")
    cbis = [i for i, e in enumerate(entries) if "00820" in e.exam.patient_id]
    if cbis:
        _show(app, window, cbis[0], args.out / "cbis_overlays.png")
    malignant = {e["study_uid"] for e in truth["exams"] if any(les["malignant"] for les in e["lesions"])}
    rows = [i for i, e in enumerate(entries) if set(e.exam.study_uids) & malignant]
    if rows:
        _show(app, window, rows[0], args.out / "phantom_overlays.png")
    window.close()
    sys.stdout.flush()
    os._exit(0)  # see benchmarks/triage_ui.py: PySide6 can abort in teardown GC


if __name__ == "__main__":
    raise SystemExit(main())
