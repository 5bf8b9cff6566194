"""Correction-event append throughput on the site's PostgreSQL: 5 concurrent writers vs 1.

Starts a fresh cluster (``store.pg.cluster.PgCluster``) in a temporary folder on a free
loopback port, then appends events through ``SiteCorrectionLog`` (the server extends
the chain: one serialised step per event, each committed durably) from one writer
process, then from 5 at once, and verifies the chain. Prints one figure per line;
the ratio is measured in the same run, so it compares like with like.

Usage: python benchmarks/pg_events.py [--events N] [--writers W]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import socket
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path


def _writer(dsn: str, name: str, n: int, barrier: Barrier) -> None:
    from mammotriage.store.pg.events import SiteCorrectionLog

    with SiteCorrectionLog(dsn, name) as log:
        log.head()  # connected before the clock starts
        barrier.wait()
        for i in range(n):
            log.append(reader=f"dr_{name}", exam_key=f"E{i % 50}", action="birads", payload={"birads": i % 7})


def _run(dsn: str, writers: int, per_writer: int) -> float:
    """Events per second with ``writers`` processes appending ``per_writer`` events each."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=_writer, args=(dsn, f"bench{writers}-{i}", per_writer, barrier))
             for i in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a writer failed: exit codes {[p.exitcode for p in procs]}")
    return writers * per_writer / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400, help="events per writer")
    parser.add_argument("--writers", type=int, default=5)
    args = parser.parse_args()
    from mammotriage.store.pg.cluster import PgCluster
    from mammotriage.store.pg.events import SiteCorrectionLog

    folder = Path(tempfile.mkdtemp(prefix="mt-pg-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cluster = PgCluster(folder, port)
    try:
        cluster.init()
        cluster.start()
        dsn = cluster.dsn("mt_workstation")
        single = _run(dsn, 1, args.events)
        many = _run(dsn, args.writers, args.events)
        with SiteCorrectionLog(cluster.dsn("mt_admin")) as admin:
            t0 = time.perf_counter()
            report = admin.verify()
            verify_s = time.perf_counter() - t0
        if not report.ok or report.events != (1 + args.writers) * args.events:
            raise SystemExit(f"chain did not verify ({report.events} events): {report.problems[:3]}")
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"events_per_s_1_writer {single:.0f}")
    print(f"events_per_s_{args.writers}_writers {many:.0f}")
    print(f"ratio_{args.writers}_writers_to_1 {many / single:.2f}")
    print(f"verify_s_{report.events}_events {verify_s:.2f}")


if __name__ == "__main__":
    main()
