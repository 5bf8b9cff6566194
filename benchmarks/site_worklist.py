"""Site worklist refresh: 5 workstation sessions on 10,000 double-read exams, one site store.

Each session is its own process, as a workstation is: it reads the worklist's page from
its archive index (``triage.pages.worklist_rows``, 100 rows, the window's page) and adds
the double-reading states and soft locks of the page's exams from the site's PostgreSQL
(``StatusIndex.update`` incremental, ``get``, ``SiteReadingLocks.holders``): what a
site window's refresh reads (the window reads the site part on the thread of its
``viewer.double_feed.DoubleReadingFeed``; the UI thread waits for the local page only). Between two refreshes every session signs an
exam of its own and takes a lock now and then, so the refreshes run against concurrent
appends through the real chain. The first refresh of each session (the full state
read the window does once at start) is not timed.

The archive index has ``--exams`` tiny 4-view exams (``archive_scale.write_tiny_exams``,
imported with ``Archive.import_paths``, most with a stored result); every exam is
signed by two readers on the site (every tenth discordant). The sessions share one
index file (read only) and this machine's cores with each other and with the server, so
on a 2-core machine the 5-session figure is an upper bound of one workstation's.

Prints one figure per line:
  site_worklist_exams / site_worklist_events     what the index and the site store hold
  site_worklist_refresh_p95_ms_1_session         one session alone (the baseline, same run)
  site_worklist_refresh_p95_ms_5_sessions        five at once (goal <= 100 ms)
  site_worklist_refresh_max_ms_5_sessions
  site_worklist_local_page_p95_ms_5_sessions     the archive index's part
  site_worklist_site_part_p95_ms_5_sessions      the site store's part (states and locks)
  site_worklist_ratio_5_to_1                     p95 with 5 sessions / p95 with 1

Usage: python benchmarks/site_worklist.py [--exams 10000] [--sessions 5] [--refreshes 60] [--keep DIR]
(``--keep DIR`` keeps the imported index there; a later run with it skips the import.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VERSION, SHA = "scale-1", "ab" * 32
BASE = "1.2.826.0.1.3680043.10.999."  # archive_scale's Study Instance UIDs


def _assessment(recall: bool) -> dict[str, Any]:
    birads = "4A" if recall else "1"
    return {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": birads, "density": "b"}},
            "recall": recall}


def _index(folder: Path, exams: int) -> Path:
    """The archive index of ``exams`` tiny exams (imported once; kept in ``folder``)."""
    from archive_scale import triage_most, write_tiny_exams

    from mammotriage.store import Archive

    archive_file = folder / "home" / "archive.sqlite"
    if archive_file.exists():
        return archive_file
    t0 = time.perf_counter()
    write_tiny_exams(folder / "in", exams)
    with Archive(archive_file) as archive:
        report = archive.import_paths([folder / "in"])
        assert not report.rejected, report.rejected[:3]
    triage_most(archive_file, VERSION, SHA)
    shutil.rmtree(folder / "in", ignore_errors=True)
    print(f"site_worklist_import_s {time.perf_counter() - t0:.1f}", flush=True)
    return archive_file


def _fill(dsn: str, exams: int) -> int:
    """Two signatures an exam (ann agrees, bob disagrees on every tenth); returns events."""
    from mammotriage.store.double_reading import DoubleReadingPolicy
    from mammotriage.store.pg.double_reading import SiteDoubleReadingLog

    policy = DoubleReadingPolicy(enabled=True)
    t0 = time.perf_counter()
    with SiteDoubleReadingLog(dsn, "ann", policy) as ann, SiteDoubleReadingLog(dsn, "bob", policy) as bob:
        for n in range(exams):
            ann.append(reader="ann", exam_key=f"{BASE}{n}", action="sign", payload=_assessment(True))
            bob.append(reader="bob", exam_key=f"{BASE}{n}", action="sign", payload=_assessment(n % 10 != 0))
    print(f"site_worklist_fill_s {time.perf_counter() - t0:.1f}", flush=True)
    return 2 * exams


def _session(number: int, dsn: str, archive_file: str, exams: int, refreshes: int, start: Any, out: Any) -> None:
    """One workstation: refresh, sign, refresh ...; puts (local ms, site ms) per refresh on ``out``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mammotriage.store.double_reading import DoubleReadingPolicy, StatusIndex
    from mammotriage.store.pg.double_reading import (
        SiteDoubleReading,
        SiteDoubleReadingLog,
        SiteReadingLocks,
    )
    from mammotriage.triage import OperatingPoints, TriageQueue
    from mammotriage.triage.pages import WorklistQuery, worklist_rows

    policy = DoubleReadingPolicy(enabled=True)
    reader = f"reader{number}"
    rng = random.Random(number)
    points = OperatingPoints(0.5, 0.1)
    timed: list[tuple[float, float]] = []
    with TriageQueue(Path(archive_file)) as queue, SiteDoubleReadingLog(dsn, reader, policy) as log, \
            SiteReadingLocks(dsn, f"ws-{number}") as locks, SiteDoubleReading(dsn, policy) as site:
        index = StatusIndex("recall")

        def refresh(offset: int, query: WorklistQuery) -> tuple[float, float]:
            t0 = time.perf_counter()
            _total, rows = worklist_rows(queue.conn, query, offset, 100, {})
            keys = [row.entry.exam.exam_key for row in rows]
            t1 = time.perf_counter()
            index.update(site.backend)
            index.get(keys)
            locks.holders(keys=keys)
            t2 = time.perf_counter()
            assert len(keys) == 100, len(keys)
            return (t1 - t0) * 1000, (t2 - t1) * 1000

        refresh(0, WorklistQuery(VERSION, points, SHA))  # the window's first: every state read once
        start.wait()
        for r in range(refreshes):
            # between two refreshes this reader signs an exam of its own (a third reading of
            # exams nobody else signs in this run) and opens one now and then
            key = f"{BASE}{9_000_000 + number * 100_000 + r}"
            log.append(reader=reader, exam_key=key, action="sign", payload=_assessment(r % 7 == 0))
            if r % 5 == 0:
                locks.take(f"{BASE}{rng.randrange(exams)}", reader)
            query = WorklistQuery(VERSION, points, SHA, sort=rng.choice(("triage", "date", "patient", "score")),
                                  descending=rng.random() < 0.5)
            timed.append(refresh(rng.randrange(0, max(1, exams // 100 - 1)) * 100, query))
            time.sleep(rng.uniform(0.02, 0.1))  # a reader's pace, desynchronised
    out.put(timed)


def _run_sessions(n: int, dsn: str, archive_file: Path, exams: int, refreshes: int) -> list[tuple[float, float]]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_session, args=(i + n * 10, dsn, str(archive_file), exams, refreshes, start, out))
             for i in range(n)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every session has done its untimed first refresh before the start
    start.set()
    results: list[tuple[float, float]] = []
    for _ in procs:
        results += out.get(timeout=1800)
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise SystemExit(f"a session failed (exit {p.exitcode})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--refreshes", type=int, default=60, help="timed refreshes per session")
    parser.add_argument("--keep", type=Path, help="keep the imported archive index here (reused when present)")
    args = parser.parse_args()
    from mammotriage.store.pg.cluster import PgCluster

    with tempfile.TemporaryDirectory(prefix="mt-site-wl-") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["MAMMOTRIAGE_HOME"] = str(tmp / "home")
        archive_file = _index(tmp, args.exams)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        folder = Path(tempfile.mkdtemp(prefix="mt-site-wl-pg-"))
        folder.chmod(0o755)  # run as root, the cluster is handed to the postgres account
        cluster = PgCluster(folder / "pg", port)
        try:
            cluster.init()
            cluster.start()
            dsn = cluster.dsn("mt_workstation")
            events = _fill(dsn, args.exams)
            print(f"site_worklist_exams {args.exams}")
            print(f"site_worklist_events {events}", flush=True)
            one = _run_sessions(1, dsn, archive_file, args.exams, args.refreshes)
            many = _run_sessions(args.sessions, dsn, archive_file, args.exams, args.refreshes)
        finally:
            cluster.stop()
            shutil.rmtree(folder, ignore_errors=True)
    total1 = np.array([a + b for a, b in one])
    total = np.array([a + b for a, b in many])
    n = args.sessions
    p95_1, p95 = float(np.percentile(total1, 95)), float(np.percentile(total, 95))
    print(f"site_worklist_refresh_p95_ms_1_session {p95_1:.1f}")
    print(f"site_worklist_refresh_p95_ms_{n}_sessions {p95:.1f}")
    print(f"site_worklist_refresh_max_ms_{n}_sessions {total.max():.1f}")
    print(f"site_worklist_local_page_p95_ms_{n}_sessions {np.percentile([a for a, _ in many], 95):.1f}")
    print(f"site_worklist_site_part_p95_ms_{n}_sessions {np.percentile([b for _, b in many], 95):.1f}")
    print(f"site_worklist_ratio_{n}_to_1 {p95 / p95_1:.2f}")


if __name__ == "__main__":
    main()
