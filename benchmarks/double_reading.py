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

Usage: python benchmarks/double_reading.py [--exams 2000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _assessment(recall: bool) -> dict:
    birads = "4A" if recall else "1"
    return {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": birads, "density": "b"}},
            "recall": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mt-dr-bench-") as tmp:
        os.environ.setdefault("MAMMOTRIAGE_AUDIT_KEY", str(Path(tmp) / "audit.key"))
        from mammotriage.store.double_reading import (
            DoubleReadingLog,
            DoubleReadingPolicy,
            ReadingLocks,
            StatusIndex,
            arbitration_list,
            exam_statuses,
        )

        archive_file = Path(tmp) / "archive.sqlite"
        policy = DoubleReadingPolicy(enabled=True)
        keys = [f"1.2.826.0.1.3680043.10.997.{n}" for n in range(args.exams)]
        logs = {name: DoubleReadingLog(archive_file, name, policy) for name in ("ann", "bob", "cat")}
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
        locks = ReadingLocks(archive_file, "ws-bench")
        for key in keys[::10]:
            locks.take(key, "ann")
        conn = logs["ann"].conn
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
        events = int(conn.execute("SELECT COUNT(*) FROM correction_events").fetchone()[0])
        locks.close()
        for log in logs.values():
            log.close()
    print(f"dr_exams {args.exams}")
    print(f"dr_events {events}")
    print(f"dr_append_ms_mean {append_ms:.2f}")
    print(f"dr_full_states_ms {full_ms:.1f}")
    print(f"dr_page_p95_ms {np.percentile(page_ms, 95):.1f}")
    print(f"dr_arbitration_list_p95_ms {np.percentile(list_ms, 95):.1f}")
    print(f"dr_arbitration_cases {cases}")


if __name__ == "__main__":
    main()
