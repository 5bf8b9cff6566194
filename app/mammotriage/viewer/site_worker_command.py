"""``mammotriage site-worker DIR``: an AI worker of a screening site.

The wiring of :class:`mammotriage.triage.site_worker.SiteWorker` (triage) with the site
archive's DICOMweb side (:mod:`mammotriage.net.site_io`, net) lives here, above both
(``net`` and ``triage`` do not import each other):

* the site server folder ``DIR`` (``mammotriage site init``: ``site.json``) gives the
  site store's worker role (``PgCluster.dsn("mt_worker")``) and the Orthanc archive;
* ``--profile PROFILE`` instead of ``DIR``: a worker on another machine, with the site
  profile ``mammotriage site profile DIR --role worker`` wrote (PostgreSQL and DICOMweb
  over the site network, verified with the site CA when the site runs TLS);
* the model: the site registry's active model (``mammotriage site models promote``),
  fetched from the site store and followed: a promotion reaches the worker between two
  jobs (:class:`~mammotriage.net.site_models.ModelFollower`); while the site has not
  promoted one, this machine's registry's active package, until it does. ``--model PKG``
  pins one package (it does not follow the site); the worker claims only its model's
  jobs and says which pending jobs need another one;
* unless ``--no-watch``, a thread follows the archive's stable-study signal
  (:class:`~mammotriage.net.dicomweb.StableStudyWatcher`, its position kept in the
  worker's folder) and enqueues each stable study for the worker's model
  (:func:`~mammotriage.triage.site_worker.enqueue_stable`; idempotent, so several
  watching workers queue a study once);
* ``--once`` takes what is stable now, works until no job of its model is left and
  exits (1 if a job failed); without it the worker runs until SIGTERM or Ctrl-C (the
  job it holds is finished first).

One line per job on stdout (``--json``: the :class:`~mammotriage.triage.site_worker.JobOutcome`
object); the worker's folder is ``<data dir>/site-worker/<worker id>/`` (the WADO-RS
cache, ``--cache-mb`` bytes at most, and the watcher's position).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["add_site_worker_command", "cmd_site_worker"]


def add_site_worker_command(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "site-worker", help="an AI worker of a site: jobs from the site queue, images over DICOMweb",
        description="Triage a screening site's exams: claim jobs from the site's PostgreSQL queue (leases), "
                    "fetch the images from its Orthanc archive (QIDO-RS/WADO-RS), run the model, store one "
                    "result per exam and model, and STOW-RS the SR and SEGs back. Also enqueues each study "
                    "the archive declares stable (unless --no-watch).")
    p.add_argument("site", type=Path, metavar="DIR", nargs="?",
                   help="the site server folder (mammotriage site init), for a worker on the server")
    p.add_argument("--profile", type=Path, metavar="PROFILE",
                   help="instead of DIR: the site profile of a worker on another machine "
                        "(mammotriage site profile DIR --role worker)")
    p.add_argument("--model", type=Path, metavar="PKG",
                   help="pin this model package (default: the site's active model, followed across promotions)")
    p.add_argument("--once", action="store_true",
                   help="enqueue what is stable now, work until no job of this model is left, then exit")
    p.add_argument("--worker-id", metavar="ID", help="the name in the queue (default: host-pid)")
    p.add_argument("--lease", type=float, default=60.0, metavar="S",
                   help="seconds a claim holds without a heartbeat (default 60)")
    p.add_argument("--no-watch", action="store_true", help="do not enqueue stable studies (work only)")
    p.add_argument("--cache-mb", type=int, default=2048, help="WADO-RS cache size in MiB (default 2048)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", help="torch device (default: CUDA when available, else the CPU)")
    p.add_argument("--json", action="store_true", help="one JSON object a job")
    p.set_defaults(func=cmd_site_worker)


def _load(args: argparse.Namespace, folder: Path, expected: str | None = None,
          operating_points: dict[str, Any] | None = None) -> Any:
    from mammotriage.triage.worker import load_model

    model = load_model(folder, device=args.device, threads=args.threads, expected_sha256=expected)
    if operating_points:  # recalibrated by the gate report that promoted it
        model.metadata = {**model.metadata, "operating_points": operating_points}
    return model


def _model(args: argparse.Namespace, dsn: str, folder: Path, say: Any) -> tuple[Any, Any]:
    """(the model to start with, the site follower or None when ``--model`` pins one)."""
    if args.model is not None:
        return _load(args, args.model), None
    from mammotriage.net.site_models import ModelFollower
    from mammotriage.store.pg.models import SiteModelError

    follower = ModelFollower(dsn, folder / "models",
                             lambda path, version, points: _load(args, path, version.weights_sha256, points), say=say)
    try:
        return follower.first(), follower
    except SiteModelError as exc:
        if "no active model" not in str(exc):
            raise
    from mammotriage.config import archive_path
    from mammotriage.model.registry import active_package

    found = active_package(archive_path())
    if found.error or found.version is None or found.folder is None:
        raise RuntimeError("the site has no active model (promote one on the site server: `mammotriage site models "
                           "promote DIR PACKAGE ...`) and neither has this machine's registry"
                           + (f" ({found.error})" if found.error else "") + "; or give --model PKG")
    say(f"site-worker: the site has no active model yet: running this machine's v{found.version.version} "
        "until the site promotes one")
    return _load(args, found.folder, found.version.weights_sha256), follower


def cmd_site_worker(args: argparse.Namespace) -> int:
    from mammotriage.config import data_dir
    from mammotriage.net.dicomweb import DicomWebArchive, DicomWebError, StableStudyWatcher
    from mammotriage.net.orthanc import OrthancError
    from mammotriage.net.site import SiteError, load_site
    from mammotriage.net.site_io import DicomWebExamSource, StowSink
    from mammotriage.net.site_profile import SiteProfileError, load_profile
    from mammotriage.store.pg.cluster import PgError
    from mammotriage.triage.site_queue import SiteQueue
    from mammotriage.triage.site_worker import JobOutcome, SiteWorker, enqueue_stable

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    if not args.lease > 0 or args.cache_mb <= 0:
        say("site-worker: --lease and --cache-mb must be positive")
        return 2
    if (args.site is None) == (args.profile is None):
        say("site-worker: give the site server folder DIR or --profile PROFILE (one of them)")
        return 2
    folder = data_dir() / "site-worker" / "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id)
    cache_bytes = args.cache_mb * 1024 * 1024
    try:
        if args.profile is not None:
            profile = load_profile(args.profile)
            if profile.role != "worker":
                raise SiteProfileError(f"{profile.path}: a {profile.role} profile; an AI worker needs a worker "
                                       "profile (mammotriage site profile DIR --role worker)")
            dsn, where = profile.dsn(), profile.where()
            archive = profile.archive(folder / "cache", cache_bytes)
        else:
            cluster, orthanc, _ = load_site(args.site)
            dsn = cluster.dsn("mt_worker")
            orthanc.credentials()
            where = f"archive {orthanc.url}, store port {cluster.port}"
            archive = DicomWebArchive.for_server(orthanc, folder / "cache", cache_bytes)
    except (SiteError, SiteProfileError, PgError, OrthancError, OSError) as exc:
        say(f"site-worker: {exc}")
        return 2
    from mammotriage.triage.worker import _limit_memory

    _limit_memory(args.device)  # bounded like the standalone triage worker (on the CPU)
    try:
        model, follower = _model(args, dsn, folder, say)
    except Exception as exc:  # noqa: BLE001 - a missing or refused package, the store away: said, exit 2
        archive.close()
        say(f"site-worker: cannot load the model: {type(exc).__name__}: {exc}")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    failed = 0

    def report(outcome: JobOutcome) -> None:
        nonlocal failed
        failed += outcome.status == "failed"
        if args.json:
            print(json.dumps(outcome.to_json()), flush=True)
        else:
            print(f"{outcome.status} {outcome.exam_key}"
                  + (f" {outcome.score:.3f}" if outcome.score is not None else "")
                  + (f": {outcome.reason}" if outcome.reason else ""), flush=True)

    def current() -> str:
        """The model new studies are queued for: the site's active one once the worker runs it."""
        if follower is not None and follower.active_sha256:
            return str(follower.active_sha256)  # also while this worker could not take it (its jobs wait, said)
        return str(model.weights_sha256)

    def watch(watcher: StableStudyWatcher) -> None:
        own = None
        try:
            own = archive.twin()  # this thread's own client
            images = DicomWebExamSource(own)
            with SiteQueue(dsn) as queue:
                while not stop.is_set():
                    studies = watcher.follow(stop, on_error=lambda e: say(f"watcher: {e}"))
                    try:
                        enqueue_stable(queue, studies, current(), on_new=lambda uid: say(f"queued {uid}"),
                                       images_of=images.image_set)
                    except Exception as exc:  # noqa: BLE001 - the store is away: the study not taken is offered again
                        say(f"watcher: cannot queue: {type(exc).__name__}: {exc}; retrying")
                        queue.close()
                        stop.wait(5.0)
        except Exception as exc:  # said, not a silent end of the thread
            say(f"watcher stopped: {type(exc).__name__}: {exc}")
            raise
        finally:
            if own is not None:
                own.close()

    say(f"site-worker {worker_id}: model {model.version} ({model.weights_sha256[:12]}...; "
        + ("pinned by --model" if follower is None else "following the site's active model") + f"), {where}")
    watcher_thread = None
    try:
        watcher = None if args.no_watch else StableStudyWatcher(archive, folder / "watcher.json", since=0)
        if watcher is not None and args.once:
            with SiteQueue(dsn) as queue:
                enqueue_stable(queue, watcher.changes(), current(), on_new=lambda uid: say(f"queued {uid}"),
                               images_of=DicomWebExamSource(archive).image_set)
        elif watcher is not None:
            watcher_thread = threading.Thread(target=watch, args=(watcher,), name="stable-studies", daemon=True)
            watcher_thread.start()
        with SiteWorker(dsn, {model.weights_sha256: model}, DicomWebExamSource(archive), StowSink(archive),
                        worker_id=worker_id, lease_s=args.lease, work_dir=folder / "results", say=say,
                        follow=None if follower is None else follower.poll) as worker:
            worker.run(stop, once=args.once, on_outcome=report)
    except DicomWebError as exc:
        say(f"site-worker: the archive: {exc}")
        return 2
    finally:
        stop.set()
        if watcher_thread is not None:
            watcher_thread.join(timeout=35)
        archive.close()
    return 1 if failed else 0
