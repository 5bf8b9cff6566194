"""Archive scale: import and index 10,000 small synthetic exams, then time the worklist.

Prints one figure per line:
  archive_exams / archive_instances   what was imported (4 views an exam)
  generate_s                          writing the tiny DICOM files (8 x 8 pixels)
  import_s / import_files_per_s       ``Archive.import_paths`` over all of them
  worklist_full_build_s               today's full rebuild (every exam and image record)
  worklist_page_p95_ms                p95 of the paged worklist query (open, sorts, filters, search;
                                      goal <= 100 ms at 10,000 exams)
  worklist_page_max_ms
  app_worklist_open_p95_ms            the app's Qt worklist model (ui/worklist.py): a refresh from the
                                      top (with the queue's ETAs, as the window does), until its first
                                      page is in
  app_worklist_sort_p95_ms            a header sort (every column, both ways), first page in
  app_worklist_filter_p95_ms          every filter, and a search, first page in (goal <= 100 ms each)

The files are written to a temporary folder and deleted afterwards, unless ``--keep DIR``
names a folder to keep them in (a later run with the same ``--keep`` reuses its archive
and times the worklist only).

Usage: python benchmarks/archive_scale.py [--exams 10000] [--repeats 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image - For Presentation


def write_tiny_exams(folder: Path, n_exams: int, seed: int = 0) -> int:
    """``n_exams`` 4-view exams of 8 x 8 pixels (one folder per 100 exams); returns files written."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    rng = random.Random(seed)
    base = "1.2.826.0.1.3680043.10.999."
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASS
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASS
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 50).tobytes()
    written = 0
    day0 = _dt.date(2016, 1, 1)
    for n in range(n_exams):
        patient = n if rng.random() > 0.2 else rng.randrange(max(1, n))  # a fifth are a patient's later exam
        ds.PatientID = f"P{patient:06d}"
        ds.PatientName = f"SCALE^{patient:06d}"
        ds.AccessionNumber = f"A{n:07d}"
        ds.StudyInstanceUID = f"{base}{n}"
        ds.StudyDate = (day0 + _dt.timedelta(days=rng.randrange(3650))).strftime("%Y%m%d")
        sub = folder / f"{n // 100:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for v, (lat, view) in enumerate((("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))):
            ds.SeriesInstanceUID = f"{base}{n}.{v + 1}"
            ds.SOPInstanceUID = f"{base}{n}.{v + 1}.1"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.ImageLaterality, ds.ViewPosition = lat, view
            ds.PatientOrientation = ["A", "R"] if lat == "L" else ["P", "L"]
            ds.save_as(sub / f"{n:06d}-{lat}{view}.dcm", enforce_file_format=True)
            written += 1
    return written


def triage_most(archive_file: Path, version: str, sha: str, done_fraction: float = 0.8, seed: int = 0) -> None:
    """Queue every exam for ``version`` and give most of them a stored result (scores at random)."""
    from mammotriage.store import db
    from mammotriage.triage.queue import TriageQueue

    rng = random.Random(seed)
    with TriageQueue(archive_file) as queue:
        queue.sync(version)
        keys = [r[0] for r in queue.conn.execute("SELECT exam_key FROM triage_jobs WHERE model_version = ?",
                                                 (version,))]
        done = [k for k in keys if rng.random() < done_fraction]
        now = _dt.datetime.now(_dt.UTC).isoformat()
        with db.transaction(queue.conn):
            queue.conn.executemany(
                "INSERT INTO ai_exam_results (exam_key, model_version, weights_sha256, score, score_left, "
                "score_right, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, version, sha, s, s, rng.random() * s, now) for k in done for s in [rng.random() ** 3]])
            queue.conn.executemany("UPDATE triage_jobs SET status = 'done' WHERE exam_key = ? AND model_version = ?",
                                   [(k, version) for k in done])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20, help="runs of each worklist query")
    parser.add_argument("--keep", type=Path, help="keep the files and archive here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        os.environ["MAMMOTRIAGE_HOME"] = str(Path(tmp) / "home")
        from mammotriage.store import Archive
        from mammotriage.triage import OperatingPoints, TriageQueue, build_worklist
        from mammotriage.triage.worklist import PAGE_FILTERS, PAGE_SORTS, worklist_page

        archive_file = Path(tmp) / "home" / "archive.sqlite"
        version, sha = "scale-1", "ab" * 32
        if not archive_file.exists():
            t0 = time.perf_counter()
            files = write_tiny_exams(Path(tmp) / "in", args.exams)
            print(f"generate_s {time.perf_counter() - t0:.1f}", flush=True)
            t0 = time.perf_counter()
            with Archive(archive_file) as archive:
                report = archive.import_paths([Path(tmp) / "in"])
                import_s = time.perf_counter() - t0
                assert not report.rejected, report.rejected[:3]
            print(f"import_s {import_s:.1f}")
            print(f"import_files_per_s {files / import_s:.0f}", flush=True)
            triage_most(archive_file, version, sha)
        with Archive(archive_file) as archive:
            print(f"archive_exams {archive.conn.execute('SELECT COUNT(DISTINCT exam_key) FROM studies').fetchone()[0]}")
            print(f"archive_instances {archive.count()}", flush=True)
        points = OperatingPoints(0.5, 0.1)
        with Archive(archive_file) as archive, TriageQueue(archive_file) as queue:
            t0 = time.perf_counter()
            build_worklist(archive.exams(), queue.jobs(version), queue.exam_results(), version, points)
            print(f"worklist_full_build_s {time.perf_counter() - t0:.2f}")
            times = []
            for _ in range(args.repeats):
                for sort in PAGE_SORTS:
                    for name in PAGE_FILTERS:
                        t0 = time.perf_counter()
                        _total, rows = worklist_page(queue.conn, version, points, sort=sort, filter=name)
                        times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _total, rows = worklist_page(queue.conn, version, points, search="00042", offset=0)
                times.append(time.perf_counter() - t0)
                assert rows and all("00042" in r["patient_id"] + r["patient_name"] + " ".join(r["accessions"])
                                    for r in rows)
        ms = np.array(times) * 1000
        print(f"worklist_page_queries {len(ms)}")
        print(f"worklist_page_p95_ms {np.percentile(ms, 95):.1f}")
        print(f"worklist_page_max_ms {ms.max():.1f}", flush=True)
        app_worklist(archive_file, version, sha, points, max(1, args.repeats // 4))


def app_worklist(archive_file: Path, version: str, sha: str, points, repeats: int) -> None:
    """The Qt worklist model on the archive: open (refresh from the top), header sorts, filters."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    from mammotriage.triage import TriageQueue
    from mammotriage.triage.pages import FILTERS, WorklistQuery, position_of, worklist_rows
    from mammotriage.ui.worklist import COLUMNS, WorklistFilter, WorklistModel

    _app = QApplication.instance() or QApplication([])
    with TriageQueue(archive_file) as queue:
        etas: dict[str, float] = {}
        model = WorklistModel(lambda q, o, n: worklist_rows(queue.conn, q, o, n, etas),
                              lambda q, key: position_of(queue.conn, q, key))
        view = WorklistFilter(model)
        query = WorklistQuery(version, points, sha, blind_reader=None)
        times: dict[str, list[float]] = {"open": [], "sort": [], "filter": []}
        for _ in range(repeats):
            t0 = time.perf_counter()  # what a refresh of the window does: the queue's ETAs, then the query
            etas = queue.etas(version, 1.0)
            model.set_query(query)
            times["open"].append(time.perf_counter() - t0)
            assert model.rowCount() == model.page_rows
            for column in range(len(COLUMNS)):
                for order in (Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder):
                    t0 = time.perf_counter()
                    view.sort(column, order)
                    times["sort"].append(time.perf_counter() - t0)
            view.sort(-1)
            for name in (*FILTERS, "all"):
                t0 = time.perf_counter()
                view.set_filter(name)
                times["filter"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            view.set_search("00042")
            times["filter"].append(time.perf_counter() - t0)
            view.set_search("")
    for what, values in times.items():
        print(f"app_worklist_{what}_p95_ms {np.percentile(np.array(values) * 1000, 95):.1f}")


if __name__ == "__main__":
    main()
