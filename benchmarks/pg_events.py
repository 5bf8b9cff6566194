"""Correction-event append throughput on the site's PostgreSQL: 5 concurrent writers vs 1.

Starts a fresh cluster (``store.pg.cluster.PgCluster``) in a temporary folder on a free
loopback port, then appends events from one writer process, then from 5 at once, three
ways, and verifies the chain:

* ``one_tx_per_event`` (the figures without a suffix, as before): ``SiteCorrectionLog.append``,
  one transaction (one durable commit) per event;
* ``site_one_tx_per_event``: the workstation's own path (below) with batches of one
  event, which is how it sent before batching;
* ``batched``: the workstation's own path, ``viewer.site_log.SiteLog.append`` (a durable
  write to the local buffer file) with its sender thread sending what the buffer holds
  in batches, one transaction per batch; the clock stops when the server has them all;
* ``drain``: a buffer already holding every event (made while the server was away) sent
  by ``BufferedLog.flush`` in batches (the server's side alone).

Prints one figure per line; the ratios are measured in the same run, so they compare
like with like.

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

MODES = ("one_tx_per_event", "site_one_tx_per_event", "batched", "drain")


def _event(name: str, i: int) -> dict:
    return {"reader": f"dr_{name}", "exam_key": f"E{i % 50}", "action": "birads", "payload": {"birads": i % 7}}


def _writer(dsn: str, mode: str, name: str, n: int, folder: str, barrier: Barrier) -> None:
    from mammotriage.store.pg.buffer import BufferedLog
    from mammotriage.store.pg.events import SiteCorrectionLog
    from mammotriage.viewer.site_log import SiteLog

    buffer = Path(folder) / f"{name}.sqlite3"
    if mode == "one_tx_per_event":
        with SiteCorrectionLog(dsn, name) as log:
            log.head()  # connected before the clock starts
            barrier.wait()
            for i in range(n):
                log.append(**_event(name, i))
    elif mode in ("batched", "site_one_tx_per_event"):
        with SiteLog(dsn, buffer, name, retry_s=0.05, probe_s=0.05) as site:
            if mode == "site_one_tx_per_event":
                site.buffered.batch_size = 1
            site.buffered.log.head()
            barrier.wait()
            for i in range(n):
                site.append(**_event(name, i))
            deadline = time.monotonic() + 600
            while site.status().waiting and time.monotonic() < deadline:
                time.sleep(0.005)
            if site.status().waiting:
                raise SystemExit(f"{name}: {site.status().waiting} events never sent")
    else:
        with BufferedLog(dsn, buffer, name) as log:
            for i in range(n):
                log.keep(**_event(name, i))
            log.log.head()
            barrier.wait()
            if not log.drain(timeout_s=600, interval_s=0.05):
                raise SystemExit(f"{name}: {log.pending()} events never sent")


def _run(dsn: str, mode: str, writers: int, per_writer: int, folder: Path) -> float:
    """Events per second with ``writers`` processes appending ``per_writer`` events each."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(writers + 1)
    procs = [ctx.Process(target=_writer, args=(dsn, mode, f"{mode}{writers}-{i}", per_writer, str(folder), barrier))
             for i in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a writer failed ({mode}): exit codes {[p.exitcode for p in procs]}")
    return writers * per_writer / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400, help="events per writer")
    parser.add_argument("--writers", type=int, default=5)
    args = parser.parse_args()
    from mammotriage.store.pg.cluster import PgCluster
    from mammotriage.store.pg.events import SiteCorrectionLog

    folder = Path(tempfile.mkdtemp(prefix="mt-pg-bench-"))
    folder.chmod(0o755)  # run as root, the cluster is handed to the postgres account
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cluster = PgCluster(folder / "pg", port)
    rates: dict[tuple[str, int], float] = {}
    try:
        cluster.init()
        cluster.start()
        dsn = cluster.dsn("mt_workstation")
        buffers = folder / "buffers"
        buffers.mkdir()
        for mode in MODES:
            for writers in (1, args.writers):
                rates[mode, writers] = _run(dsn, mode, writers, args.events, buffers)
        with SiteCorrectionLog(cluster.dsn("mt_admin")) as admin:
            t0 = time.perf_counter()
            report = admin.verify()
            verify_s = time.perf_counter() - t0
        if not report.ok or report.events != len(MODES) * (1 + args.writers) * args.events:
            raise SystemExit(f"chain did not verify ({report.events} events): {report.problems[:3]}")
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    w = args.writers
    for mode in MODES:
        suffix = "" if mode == "one_tx_per_event" else f"_{mode}"
        print(f"events_per_s_1_writer{suffix} {rates[mode, 1]:.0f}")
        print(f"events_per_s_{w}_writers{suffix} {rates[mode, w]:.0f}")
        print(f"ratio_{w}_writers_to_1{suffix} {rates[mode, w] / rates[mode, 1]:.2f}")
    print(f"ratio_{w}_writers_batched_to_site_one_tx_per_event "
          f"{rates['batched', w] / rates['site_one_tx_per_event', w]:.2f}")
    print(f"ratio_{w}_writers_drain_to_one_tx_per_event {rates['drain', w] / rates['one_tx_per_event', w]:.2f}")
    print(f"verify_s_{report.events}_events {verify_s:.2f}")


if __name__ == "__main__":
    main()
