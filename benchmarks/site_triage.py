"""Site triage throughput: exams per minute with 1 and 2 AI workers, and the WADO share of a job.

Prints one figure per line. A site server folder (``site init``: PostgreSQL + Orthanc on
free loopback ports, stable age 2 s) is made in a temporary folder; N demo exams (4 views
each, ``--rows`` x ``--columns``) are stored into Orthanc with STOW-RS. Then, in the
same run:
  1 worker : ``mammotriage site-worker DIR --once`` with a tiny model package (model A);
             its watcher enqueues every stable study, it triages them all and exits
  2 workers: two ``site-worker --once`` processes with another tiny package (model B,
             other weights: jobs of its own) started together
Exams per minute = N / (last job finished - first job claimed), from the queue's server
timestamps (process start and model loading left out). Each worker's WADO-RS cache
starts empty, so ``fetch`` (QIDO-RS + WADO-RS into the cache) is a cold fetch. The
shares are of the mean job time of the 1-worker run (the sum of its parts): fetch,
decode, model, results (SR/SEG written and STOW-RSed). The untrained tiny network keeps
every candidate it proposes (``--candidates``, default 2 a view); the SR's cost grows
with its findings (about 35 ms a finding to build). One torch thread per worker.

Usage: python benchmarks/site_triage.py [--exams N] [--rows R] [--columns C]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

import pydicom

HERE = Path(__file__).resolve().parent
APP = HERE.parent / "app"
sys.path.insert(0, str(APP))
sys.path.insert(0, str(HERE))

from retrain_sim import tiny_parent  # noqa: E402

from mammotriage.model.network import NetworkConfig  # noqa: E402
from mammotriage.net import site  # noqa: E402
from mammotriage.net.dicomweb import DicomWebArchive  # noqa: E402
from mammotriage.net.orthanc import OrthancServer  # noqa: E402
from mammotriage.phantom import write_demo_set  # noqa: E402
from mammotriage.store.pg.events import connect  # noqa: E402


def _ports(n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in out:
            out.append(port)
    return out


def _run_workers(folder: Path, model: Path, ids: list[str], home: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(APP), OMP_NUM_THREADS="1")
    procs = []
    for worker in ids:
        (home / worker).mkdir(parents=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mammotriage", "site-worker", str(folder), "--model", str(model), "--once",
             "--worker-id", worker, "--json"], env={**env, "MAMMOTRIAGE_HOME": str(home / worker)},
            stdout=subprocess.DEVNULL, stderr=(home / worker / "stderr.txt").open("w")))
    for proc, worker in zip(procs, ids, strict=True):
        if proc.wait(timeout=3600) != 0:
            raise SystemExit(f"worker {worker} exited {proc.returncode}: "
                             + (home / worker / "stderr.txt").read_text()[-2000:])


def _figures(dsn: str, sha: str) -> tuple[int, float, list[dict[str, float]]]:
    with connect(dsn) as conn:
        span = conn.execute(
            "SELECT count(*) AS n, EXTRACT(EPOCH FROM max(finished_at) - min(claimed_at)) AS s "
            "FROM triage_jobs WHERE model_sha256 = %s AND status = 'done'", (sha,)).fetchone()
        timings = [r["result"]["timing"] for r in conn.execute(
            "SELECT result FROM triage_results WHERE model_sha256 = %s", (sha,)).fetchall()]
    return int(span["n"]), float(span["s"]), timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=25)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--columns", type=int, default=96)
    parser.add_argument("--candidates", type=int, default=2,
                        help="the tiny network's candidates a view (an untrained one keeps them all)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mt-site-triage-"))
    root.chmod(0o755)  # run as root, PostgreSQL runs as the postgres account
    folder = root / "server"
    try:
        pg_port, http_port, dicom_port = _ports(3)
        site.init_site(folder, pg_port=pg_port, http_port=http_port, dicom_port=dicom_port)
        made = OrthancServer.load(folder / "orthanc")
        OrthancServer(made.folder, made.http_port, made.dicom_port, made.aet, stable_age_s=2).write_config()
        site.start_site(folder)
        cluster, orthanc, _ = site.load_site(folder)
        write_demo_set(root / "demo", args.exams, seed=1941, rows=args.rows, columns=args.columns)
        with DicomWebArchive.for_server(orthanc, root / "stow-cache", 64 * 1024 * 1024) as archive:
            files = sorted((root / "demo").rglob("*.dcm"))
            failed = archive.store([pydicom.dcmread(f) for f in files]).failed
            if failed:
                raise SystemExit(f"STOW-RS refused {failed[:3]}")
        print(f"site_exams {args.exams}")
        print(f"site_view {args.rows}x{args.columns}")
        dsn = cluster.dsn("mt_admin")
        for n_workers, seed in ((1, 2), (2, 3)):
            model = tiny_parent(root / f"model-{n_workers}", config=NetworkConfig(
                base_anchor_sizes=(8, 16), detections_per_img=args.candidates), seed=seed, version=f"0.0.{seed}")
            sha = json.loads((model / "configs" / "metadata.json").read_text())["weights_sha256"]
            _run_workers(folder, model, [f"bench{n_workers}-{i}" for i in range(n_workers)], root / f"home-{n_workers}")
            done, seconds, timings = _figures(dsn, sha)
            if done != args.exams:
                raise SystemExit(f"{n_workers} worker(s) triaged {done} of {args.exams} exams")
            print(f"site_exams_per_min_{n_workers}_worker{'s' if n_workers > 1 else ''} {60 * done / seconds:.1f}")
            if n_workers == 1:
                total = mean(sum(t.values()) for t in timings)  # a job's parts (no "total" stored yet)
                print(f"site_job_s_mean {total:.3f}")
                for part in ("fetch", "decode", "model", "results"):
                    print(f"site_{part}_share_pct {100 * mean(t.get(part, 0.0) for t in timings) / total:.1f}")
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
