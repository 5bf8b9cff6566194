"""A site-mode workstation: what a reader's correction costs the UI thread, and how fast the
buffer drains after the server comes back.

Starts a fresh cluster (``store.pg.cluster.PgCluster``) in a temporary folder on a free
loopback port. Measures ``SiteLog.append`` (the UI thread's part: check the event, keep it
durably in the local buffer file; sending is the background thread's) with the server up
and with it stopped, against the standalone ``CorrectionLog.append`` on SQLite; then the
seconds from the server's restart until every event made while it was away is stored
(the sender's retry interval included). Prints one figure per line.

Usage: python benchmarks/site_workstation.py [--events N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _append_ms(log: Any, n: int, exam: str) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        log.append(reader="dr_bench", exam_key=exam, action="birads", payload={"birads": i % 7})
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events per measurement")
    args = parser.parse_args()
    from mammotriage.store.events import CorrectionLog
    from mammotriage.store.pg.cluster import PgCluster
    from mammotriage.viewer.site_log import BUFFER_FILE, SiteLog

    folder = Path(tempfile.mkdtemp(prefix="mt-ws-bench-"))
    folder.chmod(0o755)  # run as root, the cluster is handed to the postgres account
    os.environ["MAMMOTRIAGE_HOME"] = str(folder / "home")  # the audit key and anchor of this run only
    os.environ.pop("MAMMOTRIAGE_AUDIT_KEY", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cluster = PgCluster(folder / "pg", port)
    try:
        cluster.init()
        cluster.start()
        with CorrectionLog(folder / "archive.sqlite") as local:
            standalone = _append_ms(local, args.events, "E-local")
        with SiteLog(cluster.dsn("mt_workstation"), folder / BUFFER_FILE, "bench", retry_s=0.5,
                     probe_s=0.5) as log:
            up = _append_ms(log, args.events, "E-up")
            deadline = time.monotonic() + 120
            while log.status().waiting and time.monotonic() < deadline:
                time.sleep(0.05)
            cluster.stop()
            while log.status().reachable and time.monotonic() < deadline + 60:
                time.sleep(0.05)
            away = _append_ms(log, args.events, "E-away")
            t0 = time.perf_counter()
            cluster.start()
            started_s = time.perf_counter() - t0
            while log.status().waiting and time.monotonic() < deadline + 180:
                time.sleep(0.02)
            drained_s = time.perf_counter() - t0
            if log.status().waiting:
                raise SystemExit(f"{log.status().waiting} events still waiting")
            stored = len(log.buffered.log.events(exam_key="E-away"))
            if stored != args.events:
                raise SystemExit(f"{stored} of {args.events} offline events stored")
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"standalone_append_ms_p95 {_p95(standalone):.2f}")
    print(f"site_append_ms_p95_server_up {_p95(up):.2f}")
    print(f"site_append_ms_p95_server_away {_p95(away):.2f}")
    print(f"site_server_start_s {started_s:.2f}")
    print(f"site_drain_s_{args.events}_events_after_restart {drained_s:.2f}")


if __name__ == "__main__":
    main()
