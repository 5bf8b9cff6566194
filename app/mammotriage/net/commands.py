"""Command-line sub-commands of the network side: ``serve``, ``outbox``, ``echo``, ``selfcheck``.

The composition root (:func:`mammotriage.cli.build_parser`) wires them, giving ``serve``
its triage side (:class:`ServeTriage`; this package imports no triage code)::

    from mammotriage.net.commands import add_net_commands
    add_net_commands(sub, triage=ServeTriageWiring())

Exit codes: 0 success, 1 the work failed (e.g. a failed self-check, an unreachable
peer), 2 bad settings or arguments (the message says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["ServeTriage", "add_net_commands", "cmd_echo", "cmd_outbox", "cmd_selfcheck", "cmd_serve"]


def _err(message: str) -> None:
    print(f"mammotriage: {message}", file=sys.stderr)


def add_net_commands(subparsers: argparse._SubParsersAction, triage: ServeTriage | None = None) -> None:
    """Register ``serve``, ``outbox``, ``echo`` and ``selfcheck`` on a sub-parser set;
    ``serve`` runs background triage through ``triage`` (wired by the composition root)."""
    p = subparsers.add_parser(
        "serve",
        help="run the DICOM node: receive mammograms (C-STORE), answer C-ECHO, send results",
        description=(
            "Run the DICOM node until interrupted. Settings come from network.json in the "
            "data directory; options override them. Listens on 127.0.0.1 unless --bind "
            "says otherwise, and any other address needs --allow-aet and --allow-host."
        ),
    )
    p.add_argument("--port", type=int, metavar="P", help="listening port (default 11112)")
    p.add_argument("--ae-title", metavar="AET", help="our AE title (default MAMMOTRIAGE)")
    p.add_argument("--bind", metavar="ADDR", help="listening IP address (default 127.0.0.1)")
    p.add_argument("--allow-aet", action="append", metavar="AET",
                   help="accept this calling AE title (repeatable; replaces the settings' list)")
    p.add_argument("--allow-host", action="append", metavar="ADDR",
                   help="accept this peer IP address or network, e.g. 10.1.0.0/24 (repeatable)")
    p.add_argument("--accept-any-called-aet", action="store_true",
                   help="accept associations addressed to any called AE title (default: only ours)")
    p.add_argument("--quiet-period", type=float, metavar="S",
                   help="a study is complete after S seconds without a new instance (default 30)")
    p.add_argument("--no-send", action="store_true", help="do not send the outbox to the PACS")
    p.add_argument("--no-triage", action="store_true",
                   help="do not run the background triage worker (received studies wait in the queue)")
    p.add_argument("--check", action="store_true",
                   help="validate the settings and print them, without listening")
    p.add_argument("--json", action="store_true", help="with --check: print the settings as JSON")
    p.set_defaults(func=cmd_serve, serve_triage=triage)

    p = subparsers.add_parser("outbox", help="show (and manage) the objects queued for the PACS")
    p.add_argument("--json", action="store_true", help="print entries and counts as JSON")
    p.add_argument("--add", nargs="+", metavar="FILE", help="queue DICOM files for the PACS")
    p.add_argument("--kind", default="other",
                   choices=("ai-sr", "ai-seg", "reader-findings", "other"),
                   help="what --add queues (default other)")
    p.add_argument("--retry-failed", action="store_true",
                   help="queue failed entries again (after fixing the PACS settings)")
    p.add_argument("--send", action="store_true",
                   help="send every pending entry now, skipping the back-off")
    p.add_argument("--status", choices=("pending", "sending", "sent", "failed"),
                   help="show only entries with this status")
    p.set_defaults(func=cmd_outbox)

    p = subparsers.add_parser("echo", help="C-ECHO a DICOM peer (default: the configured PACS)")
    p.add_argument("--host", metavar="ADDR", help="peer IP address")
    p.add_argument("--port", type=int, metavar="P", help="peer port")
    p.add_argument("--ae-title", metavar="AET", help="peer AE title")
    p.set_defaults(func=cmd_echo)

    p = subparsers.add_parser(
        "selfcheck",
        help="check this installation offline: decoding, archive, model (hash + one inference)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--model", metavar="DIR", help="model package to check")
    p.add_argument("--require-model", action="store_true",
                   help="fail (rather than skip) when no model package can be checked")
    p.add_argument("--no-model", action="store_true", help="skip the model check")
    p.set_defaults(func=cmd_selfcheck)


# --------------------------------------------------------------------------- serve


def _serve_settings(args: argparse.Namespace) -> Any:
    from mammotriage.net.settings import load_settings

    base = load_settings()
    return base.with_overrides(
        port=args.port,
        ae_title=args.ae_title,
        bind=args.bind,
        allowed_calling_ae_titles=tuple(args.allow_aet) if args.allow_aet else None,
        allowed_hosts=tuple(args.allow_host) if args.allow_host else None,
        quiet_period_s=args.quiet_period,
        require_called_ae_title=False if getattr(args, "accept_any_called_aet", False) else None,
    )


@runtime_checkable
class ServeTriage(Protocol):
    """What ``serve`` asks of the triage side. The composition root (:mod:`mammotriage.cli`)
    gives one to :func:`add_net_commands`; without it the node only receives and stores."""

    def start(self, run_worker: bool) -> tuple[Any, str | None]:
        """Start the background worker (when ``run_worker``) with the active model:
        (the running service with ``stop()``, or None; the active version, or None)."""
        ...

    def requeue(self, archive_file: Path, exam_key: str, version: str) -> None:
        """An exam with new images (re)joins the triage queue of ``version``."""
        ...


def _requeue_study(triage: ServeTriage, archive: Any, study_uid: str, version: str) -> None:
    """A completed study (re)joins the triage queue: new images mean a new analysis."""
    record = next((s for s in archive.studies() if s.study_uid == study_uid), None)
    if record is not None:
        triage.requeue(Path(archive.path), record.exam_key, version)


def cmd_serve(args: argparse.Namespace) -> int:
    """``mammotriage serve``: run the DICOM node until SIGINT/SIGTERM."""
    from mammotriage.net.node import NodeStartError
    from mammotriage.net.security import InsecureBindError, check_bind_policy
    from mammotriage.net.settings import NetworkConfigError, load_settings

    try:
        settings = _serve_settings(args)
        check_bind_policy(settings)
    except (NetworkConfigError, InsecureBindError) as exc:
        _err(str(exc))
        return 2
    if args.check:
        if args.json:
            print(json.dumps({**settings.to_json(), "source": settings.source}, indent=2))
        else:
            print(f"settings from {settings.source}: OK")
            for key, value in settings.to_json().items():
                print(f"  {key:26} {value}")
        return 0

    from mammotriage.net.service import NetworkService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    def reload() -> Any:
        return load_settings().with_overrides(ae_title=args.ae_title)

    service = NetworkService(settings, settings_loader=reload, send=not args.no_send)

    hooks: ServeTriage | None = getattr(args, "serve_triage", None)
    triage, version = hooks.start(not args.no_triage) if hooks is not None else (None, None)

    def complete(study_uid: str) -> None:
        images = service.archive.images_for_study(study_uid)
        print(f"study complete: {study_uid} ({len(images)} images)", flush=True)
        if hooks is not None and version is not None:
            _requeue_study(hooks, service.archive, study_uid, version)

    service.on_study_complete(complete)
    try:
        service.start()
    except (InsecureBindError, NodeStartError) as exc:
        service.stop()
        _err(str(exc))
        return 2
    host, port = service.address
    print(
        f"DICOM node {settings.ae_title} listening on {host}:{port}"
        f" (calling AE titles: {', '.join(settings.allowed_calling_ae_titles) or 'any'};"
        f" hosts: {', '.join(settings.allowed_hosts) or 'any'});"
        f" PACS: {settings.pacs or 'none'}. Ctrl-C stops.",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        status = service.status()
        service.stop()
        if triage is not None:
            triage.stop()
    print(
        f"stopped: {status['received']} received, {status['imported']} imported, "
        f"{status['duplicates']} duplicates, {status['rejected']} rejected",
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------- outbox


def _outbox_table(items: list[Any], counts: dict[str, int]) -> str:
    now = time.time()
    lines = [
        "outbox: " + ", ".join(f"{counts[s]} {s}" for s in ("pending", "sending", "sent", "failed"))
    ]
    for it in items:
        if it.status == "pending":
            wait = max(0.0, it.next_attempt_at - now)
            state = f"pending (attempt {it.attempts + 1} in {wait:.0f} s)"
        elif it.status == "sent":
            state = f"sent to {it.sent_to} at {it.sent_at}"
        else:
            state = it.status
        line = f"  #{it.id:<5} {it.kind:15} {it.sop_class_name[:40]:40} {it.sop_uid}  {state}"
        if it.last_error and it.status != "sent":
            line += f"\n         last error: {it.last_error}"
        lines.append(line)
    return "\n".join(lines)


def cmd_outbox(args: argparse.Namespace) -> int:
    """``mammotriage outbox``: list entries; optionally queue, retry or send now."""
    from mammotriage.net.outbox import Outbox, OutboxError, OutboxSender
    from mammotriage.net.settings import NetworkConfigError, load_settings

    rc = 0
    with Outbox() as outbox:
        for file in args.add or []:
            try:
                item = outbox.enqueue(Path(file), kind=args.kind)
                if not args.json:
                    print(f"queued #{item.id}: {file}")
            except OutboxError as exc:
                _err(str(exc))
                rc = 2
        if args.retry_failed:
            n = outbox.retry_failed()
            if not args.json:
                print(f"{n} failed entries queued again")
        if args.send:
            try:
                settings = load_settings()
            except NetworkConfigError as exc:
                _err(str(exc))
                return 2
            outbox.retry_now()
            report = OutboxSender(outbox, settings).send_due()
            if not args.json:
                print(f"sent {report.sent}, will retry {report.retried}, failed {report.failed}"
                      + (f": {report.error}" if report.error else ""))
            if report.retried or report.failed:
                rc = max(rc, 1)
        items = outbox.items(args.status)
        counts = outbox.counts()
    if args.json:
        print(json.dumps({"counts": counts, "items": [i.to_json() for i in items]}, indent=2))
    else:
        print(_outbox_table(items, counts))
    return rc


# --------------------------------------------------------------------------- echo


def cmd_echo(args: argparse.Namespace) -> int:
    """``mammotriage echo``: C-ECHO the PACS (or a given peer) with our AE title."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time

    from mammotriage.net.settings import NetworkConfigError, PeerSettings, load_settings

    try:
        settings = load_settings()
        peer = settings.pacs
        if args.host or args.port or args.ae_title:
            if peer is None and not (args.host and args.port):
                raise NetworkConfigError("no PACS configured: give --host and --port")
            peer = PeerSettings(
                ae_title=args.ae_title or (peer.ae_title if peer else "ANY-SCP"),
                host=args.host or (peer.host if peer else ""),
                port=args.port or (peer.port if peer else 0),
            )
        if peer is None:
            raise NetworkConfigError("no PACS configured in network.json (or give --host and --port)")
    except NetworkConfigError as exc:
        _err(str(exc))
        return 2
    ae = AE(ae_title=settings.ae_title)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = 15
    ae.add_requested_context(Verification)
    start = time.perf_counter()
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    try:
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "no connection"
            print(f"C-ECHO {settings.ae_title} -> {peer}: FAILED ({why})")
            return 1
        status = assoc.send_c_echo()
        ok = status is not None and int(getattr(status, "Status", -1)) == 0
        ms = (time.perf_counter() - start) * 1000
        print(f"C-ECHO {settings.ae_title} -> {peer}: {'OK' if ok else 'FAILED'} ({ms:.0f} ms)")
        return 0 if ok else 1
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


# --------------------------------------------------------------------------- selfcheck


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """``mammotriage selfcheck``: offline checks of this installation."""
    from mammotriage.net.selfcheck import run_selfcheck

    report = run_selfcheck(
        model_dir=args.model, require_model=args.require_model, include_model=not args.no_model
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1
