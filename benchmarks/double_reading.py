"""Double reading at scale: what the window adds to a worklist refresh.

A real archive database with ``--exams`` double-read exams (two ``sign`` events each,
every tenth discordant, every twentieth of those arbitrated) and a soft lock on one exam in
ten, appended through the real correction log. Prints one figure per line:

  dr_exams / dr_events             what the log holds
  dr_append_ms_mean                one durable, chained append (the setup's own appends)
  dr_full_states_ms                every exam's state read from the log (``exam_statuses``;
                                   the window's ``StatusIndex`` does this once)
  dr_page_p95_ms                   what a worklist refresh adds for a page of 100 exams, as the
                                   window does it: ``StatusIndex.update`` (one new signature
                                   since the last refresh), the page's states and its locks
                                   (``ReadingLocks.holders``), p95
  dr_arbitration_list_p95_ms       the arbitration list from the index, p95
  dr_arbitration_cases             exams on it

With ``--store postgres`` the same run goes to the site's store (a fresh PostgreSQL
cluster in a temporary folder, ``store.pg.double_reading``: role-checked appends under the
exam's advisory lock, the locks in ``reading_locks``); the figures are named
``dr_site_...``.

Usage: python benchmarks/double_reading.py [--exams 2000] [--repeats 30] [--store sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _assessment(recall: bool) -> dict:
    birads = "4A" if recall else "1"
    return {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": birads, "density": "b"}},
            "recall": recall}


@contextmanager
def _store(kind: str, tmp: Path) -> Iterator[tuple[Any, Any, Any]]:
    """(log of a reader, locks of a workstation, the states' backend) on SQLite or a fresh PostgreSQL."""
    from mammotriage.store.double_reading import (
        DoubleReadingLog,
        DoubleReadingPolicy,
        ReadingLocks,
        SqliteBackend,
    )

    policy = DoubleReadingPolicy(enabled=True)
    if kind == "sqlite":
        archive_file = tmp / "archive.sqlite"
        first = DoubleReadingLog(archive_file, "ann", policy)
        yield (lambda name: first if name == "ann" else DoubleReadingLog(archive_file, name, policy),
               lambda ws: ReadingLocks(archive_file, ws), SqliteBackend(lambda: first.conn))
        return
    from mammotriage.store.pg.cluster import PgCluster
    from mammotriage.store.pg.double_reading import (
        SiteDoubleReading,
        SiteDoubleReadingLog,
        SiteReadingLocks,
    )

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    folder = Path(tempfile.mkdtemp(prefix="mt-dr-pg-bench-"))
    cluster = PgCluster(folder, port)
    try:
        cluster.init()
        cluster.start()
        dsn = cluster.dsn("mt_workstation")
        site = SiteDoubleReading(dsn, policy)
        yield (lambda name: SiteDoubleReadingLog(dsn, name, policy), lambda ws: SiteReadingLocks(dsn, ws),
               site.backend)
        site.close()
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mt-dr-bench-") as tmp:
        os.environ.setdefault("MAMMOTRIAGE_AUDIT_KEY", str(Path(tmp) / "audit.key"))
        with _store(args.store, Path(tmp)) as (make_log, make_locks, conn):
            figures = _run(args, make_log, make_locks, conn)
    name = "dr_" if args.store == "sqlite" else "dr_site_"
    for key, value in figures.items():
        print(f"{name}{key} {value}")


def _run(args: argparse.Namespace, make_log: Any, make_locks: Any, conn: Any) -> dict[str, str]:
    from mammotriage.store.double_reading import StatusIndex, arbitration_list, exam_statuses

    keys = [f"1.2.826.0.1.3680043.10.997.{n}" for n in range(args.exams)]
    logs = {name: make_log(name) for name in ("ann", "bob", "cat")}
    started = time.perf_counter()
    appends = 0
    for n, key in enumerate(keys):
        logs["ann"].append(reader="ann", exam_key=key, action="sign", payload=_assessment(True))
        logs["bob"].append(reader="bob", exam_key=key, action="sign", payload=_assessment(n % 10 != 0))
        appends += 2
        if n % 200 == 0:
            status = logs["cat"].status(key)
            payload = {**_assessment(True), "rule": "recall", "reasons": list(status.reasons),
                       "reads": [{"reader": r.reader, "seq": r.seq} for r in status.reads]}
            logs["cat"].append(reader="cat", exam_key=key, action="arbitrate", payload=payload)
            appends += 1
    append_ms = (time.perf_counter() - started) * 1000 / appends
    locks = make_locks("ws-bench")
    t = time.perf_counter()
    for key in keys[::10]:
        locks.take(key, "ann")
    take_ms = (time.perf_counter() - t) * 1000 / len(keys[::10])
    t = time.perf_counter()
    exam_statuses(conn, "recall")
    full_ms = (time.perf_counter() - t) * 1000
    index = StatusIndex("recall")
    index.update(conn)
    page_ms, list_ms = [], []
    cases = 0
    for r in range(args.repeats):
        extra = f"1.2.826.0.1.3680043.10.996.{r}"  # a reader signs between two refreshes
        logs["ann"].append(reader="ann", exam_key=extra, action="sign", payload=_assessment(False))
        start = (r * 100) % max(len(keys) - 100, 1)
        page = keys[start:start + 100]
        t = time.perf_counter()
        index.update(conn)
        index.get(page)
        locks.holders(keys=page)
        page_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        cases = len(arbitration_list(index.statuses.values(), "dan"))
        list_ms.append((time.perf_counter() - t) * 1000)
    events = int(conn.rows("SELECT COUNT(*) FROM correction_events")[0][0])
    locks.close()
    for log in logs.values():
        log.close()
    return {"exams": str(args.exams), "events": str(events), "append_ms_mean": f"{append_ms:.2f}",
            "lock_take_ms_mean": f"{take_ms:.2f}", "full_states_ms": f"{full_ms:.1f}",
            "page_p95_ms": f"{np.percentile(page_ms, 95):.1f}",
            "arbitration_list_p95_ms": f"{np.percentile(list_ms, 95):.1f}", "arbitration_cases": str(cases)}


if __name__ == "__main__":
    main()
