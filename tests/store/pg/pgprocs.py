"""Child processes of the site-store tests and benchmark: writers and triage workers.

``python pgprocs.py writer DSN BUFFER WORKSTATION N [PACE_S]``: append N events (PACE_S
apart) through the local buffer (riding out server restarts), drain it, print the uuids in the order made.

``python pgprocs.py worker DSN WORKER LEASE_S WORK_S [hang]``: claim jobs until none is
pending or running, "work" WORK_S seconds on each, complete it; print one line per claim
and per completion. With ``hang`` it stops after its first claim (to be killed).
"""

from __future__ import annotations

import json
import sys
import time


def writer(dsn: str, buffer: str, workstation: str, n: int, pace_s: float) -> None:
    from mammotriage.store.pg.buffer import BufferedLog

    made = []
    buffered = 0   # appends that could not be sent at once (the server was away)
    with BufferedLog(dsn, buffer, workstation) as log:
        for i in range(n):
            outcome = log.append(reader=f"dr_{workstation}", exam_key=f"E{i % 20}", action="note",
                                 payload={"text": f"{workstation} {i}"})
            made.append(outcome.event_id)
            buffered += outcome.event is None
            if outcome.event is None:
                time.sleep(0.2)   # the server is away: do not spin on reconnects
            time.sleep(pace_s)
        drained = log.drain(timeout_s=120)
        print(json.dumps({"made": made, "drained": drained, "pending": log.pending(), "buffered": buffered,
                          "refused": log.buffer.refused()}), flush=True)


def worker(dsn: str, worker_id: str, lease_s: float, work_s: float, hang: bool) -> None:
    from mammotriage.triage.site_queue import SiteQueue

    with SiteQueue(dsn) as queue:
        while True:
            job = queue.claim(worker_id, lease_s)
            if job is None:
                counts = queue.counts()
                if not counts.get("pending") and not counts.get("running"):
                    return
                time.sleep(0.1)
                continue
            print(json.dumps({"claimed": job.id, "exam": job.exam_key, "attempts": job.attempts}), flush=True)
            if hang:
                time.sleep(3600)
            time.sleep(work_s)
            done = queue.complete(job, {"exam": job.exam_key, "score": 0.5, "worker": worker_id})
            print(json.dumps({"completed": job.id, "stored": done.stored, "reason": done.reason}), flush=True)


if __name__ == "__main__":
    what, *rest = sys.argv[1:]
    if what == "writer":
        writer(rest[0], rest[1], rest[2], int(rest[3]), float(rest[4]) if len(rest) > 4 else 0.0)
    elif what == "worker":
        worker(rest[0], rest[1], float(rest[2]), float(rest[3]), len(rest) > 4 and rest[4] == "hang")
    else:
        raise SystemExit(f"unknown role {what!r}")
