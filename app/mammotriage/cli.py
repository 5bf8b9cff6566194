"""Command line: every headless job of Mammo Triage, plus the app launcher.

``mammotriage`` with no sub-command launches the reading workstation on the archive
(creating the built-in demo exams on first run).

This module is the composition root: the one place that wires the packages together
(``serve``'s triage side with the outbox as the worker's result sink, the UI launcher).
It may import any package, so the import contracts in pyproject.toml leave it out,
explicitly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammotriage import __version__
from mammotriage.jsonio import print_json

# --------------------------------------------------------------------------- info

def _preset_json(preset: Any) -> dict[str, Any]:
    if preset.is_lut:
        return {"explanation": preset.explanation, "type": "VOI LUT", "entries": int(len(preset.lut)),
                "first_mapped": preset.first_mapped, "bits": preset.lut_bits}
    return {"explanation": preset.explanation, "type": "WINDOW", "center": preset.center,
            "width": preset.width, "function": preset.function}


def describe_file(path: Path, decode: bool = True) -> dict[str, Any]:
    """What the reader understood about one file, as a JSON-ready dict (or an error)."""
    from mammotriage.dicom import MammoReadError, read_image, read_metadata

    try:
        if decode:
            image = read_image(path)
            meta = image.meta
        else:
            meta = read_metadata(path)
    except MammoReadError as exc:
        return {"path": str(path), "error": exc.reason, "code": exc.code}
    except Exception as exc:  # noqa: BLE001 - never crash on bad input
        return {"path": str(path), "error": f"{type(exc).__name__}: {exc}", "code": "internal-error"}
    spacing = None
    if meta.spacing is not None:
        spacing = {"row_mm": meta.spacing.row_mm, "col_mm": meta.spacing.col_mm,
                   "source": meta.spacing.source.value}
    return {
        "path": str(path),
        "laterality": meta.laterality.value,
        "laterality_source": meta.laterality_source,
        "view": meta.view.value,
        "view_source": meta.view_source,
        "view_modifiers": list(meta.view_modifiers),
        "intent": meta.presentation_intent.value,
        "photometric": meta.photometric,
        "presentation_lut_shape": meta.presentation_lut_shape,
        "presets": [_preset_json(p) for p in meta.presets],
        "spacing": spacing,
        "patient_orientation": list(meta.patient_orientation) if meta.patient_orientation else None,
        "rows": meta.rows,
        "columns": meta.columns,
        "bits_stored": meta.bits_stored,
        "transfer_syntax": meta.transfer_syntax_name,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "decoder": meta.decoder,
        "decoded": decode,
        "modality": meta.modality,
        "manufacturer": meta.manufacturer,
        "model": meta.manufacturer_model,
        "study_uid": meta.study_instance_uid,
        "series_uid": meta.series_instance_uid,
        "sop_uid": meta.sop_instance_uid,
        "accession": meta.accession_number,
        "study_date": meta.study_date.isoformat() if meta.study_date else None,
        "warnings": list(meta.warnings),
    }


def _info_text(d: dict[str, Any]) -> str:
    if "error" in d:
        return f"{d['path']}: ERROR ({d['code']}): {d['error']}"
    lines = [d["path"]]
    lines.append(f"  view        {d['laterality']}{d['view']}  (laterality from {d['laterality_source']}, "
                 f"view from {d['view_source']})" + (f"  modifiers: {', '.join(d['view_modifiers'])}"
                                                      if d["view_modifiers"] else ""))
    lines.append(f"  intent      {d['intent']}   photometric {d['photometric']}"
                 + (f"   presentation LUT {d['presentation_lut_shape']}" if d["presentation_lut_shape"] else ""))
    if d["presets"]:
        for i, p in enumerate(d["presets"], 1):
            if p["type"] == "WINDOW":
                lines.append(f"  preset {i}    {p['explanation']}: C {p['center']:g} / W {p['width']:g} {p['function']}")
            else:
                lines.append(f"  preset {i}    {p['explanation']}: table of {p['entries']} from {p['first_mapped']}, {p['bits']} bit")
    else:
        lines.append("  presets     none in the file (automatic window)")
    sp = d["spacing"]
    lines.append(f"  spacing     {sp['row_mm']:.4f} x {sp['col_mm']:.4f} mm ({sp['source']})" if sp
                 else "  spacing     unknown")
    lines.append(f"  size        {d['rows']} x {d['columns']}, {d['bits_stored']} bit")
    lines.append(f"  encoding    {d['transfer_syntax']}, decoder {d['decoder']}")
    lines.append(f"  equipment   {d['manufacturer'] or '?'} {d['model'] or ''}".rstrip())
    lines.append(f"  study       {d['study_uid']}  accession {d['accession'] or '-'}  date {d['study_date'] or '-'}")
    lines.extend(f"  warning     {w}" for w in d.get("warnings", []))
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    results = [describe_file(Path(p), decode=not args.no_decode) for p in args.files]
    if args.json:
        print_json(results, indent=2)
    else:
        print("\n".join(_info_text(r) for r in results))
    return 1 if any("error" in r for r in results) else 0


# --------------------------------------------------------------------------- import

def cmd_import(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path
    from mammotriage.progress import CliProgress
    from mammotriage.store import Archive

    archive = Archive(archive_path())
    bar: CliProgress | None = None

    def progress(done: int, total: int, path: Path | str) -> None:
        nonlocal bar
        if bar is None:
            bar = CliProgress(total, "import")
        bar.update(done, str(path))

    report = archive.import_paths([Path(p) for p in args.paths], progress=progress)
    if bar is not None:
        bar.close()
    for path, reason, _code in report.rejected:
        print(f"REJECTED {path}: {reason}")
    print(report.summary())
    return 1 if report.rejected else 0


# --------------------------------------------------------------------------- demo

def cmd_demo(args: argparse.Namespace) -> int:
    from mammotriage.phantom import write_demo_set

    out = Path(args.out)
    gt_path = write_demo_set(out, n_exams=args.exams, seed=args.seed, priors=args.priors, rows=args.rows,
                             columns=args.columns)
    gt = json.loads(Path(gt_path).read_text(encoding="utf-8"))
    n_images = sum(len(e["images"]) for e in gt["exams"])
    n_lesions = sum(len(e["lesions"]) for e in gt["exams"])
    n_priors = sum(1 for e in gt["exams"] if "prior_of" in e)
    print(f"wrote {len(gt['exams'])} exams ({n_priors} of them priors of another; {n_images} images, "
          f"{n_lesions} lesion marks) to {out}")
    print(f"ground truth: {gt_path}")
    return 0


# --------------------------------------------------------------------------- audit

def cmd_audit_verify(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path
    from mammotriage.store.audit import AuditKeyError
    from mammotriage.store.events import CorrectionLog

    macs_checked = True
    where = str(archive_path())
    report: Any
    if args.site or args.site_folder:
        # the site store (PostgreSQL): its server extends the chain and holds the key
        from mammotriage.store.pg.events import SERVER_AWAY, SiteCorrectionLog

        started = False
        try:
            if args.site_folder:  # on the site server: the owner role, which reads the key
                from mammotriage.net.site import load_site

                cluster, _, _ = load_site(args.site_folder)
                started = not cluster.status().running  # a stopped server is started and stopped again
                cluster.start()
                dsn, where = cluster.dsn("mt_admin"), f"site server {args.site_folder}"
            else:
                from mammotriage.net.site_profile import load_profile

                dsn, where = load_profile(args.site).dsn(), f"site store of {args.site}"
        except Exception as exc:  # noqa: BLE001 - a bad profile or site folder: say which and why
            print(f"audit verify: {exc}", file=sys.stderr)
            return 2
        try:
            with SiteCorrectionLog(dsn) as site_log:
                report = site_log.verify()
        except SERVER_AWAY as exc:
            print(f"audit verify: the {where} cannot be reached: {exc}", file=sys.stderr)
            return 2
        finally:
            if started:
                cluster.stop()
        macs_checked = report.macs_checked
        if args.site_folder and not macs_checked:
            print(f"audit verify: the {where}'s key could not be read by its owner role: the MACs were not "
                  "checked", file=sys.stderr)
            return 2
    else:
        try:
            with CorrectionLog(archive_path()) as log:
                report = log.verify()
        except AuditKeyError as exc:
            print(f"cannot verify: {exc}", file=sys.stderr)
            return 2
    if args.json:
        out = {"ok": report.ok, "events": report.events, "problems": report.problems,
               "head": report.head, "unkeyed": report.unkeyed, "store": where, "macs_checked": macs_checked}
        if hasattr(report, "accounts_unsealed"):  # the site store: events stored before accounts were sealed
            out["accounts_unsealed"] = report.accounts_unsealed
        print(json.dumps(out, indent=2))
    else:
        for problem in report.problems:
            print(f"TAMPERED: {problem}")
        print(f"{report.events} correction events: " + ("chain verified" if report.ok else
                                                        f"{len(report.problems)} problem(s)")
              + (f" (head: {report.head['count']} events, keyed)" if report.head else ""))
        if getattr(report, "accounts_unsealed", 0):
            print(f"{report.accounts_unsealed} event(s) stored before the site sealed accounts: their "
                  "account is not covered by a MAC")
        if not macs_checked:
            print("hashes and links checked; the keyed MACs need the site's key: run "
                  "'mammotriage audit verify --site-folder DIR' on the site server for the full check")
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- models

def cmd_models(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path
    from mammotriage.learning.registry import ModelRegistry, RegistryError
    from mammotriage.model.package import ModelPackageError
    from mammotriage.store.reading import current_reader

    with ModelRegistry(archive_path()) as registry:
        try:
            notice = registry.check_shipped().message
        except RegistryError as exc:
            notice = str(exc)
        if notice:
            print(notice, file=sys.stderr)
        active = registry.active()
        try:
            if args.models_command == "list":
                rows: list[dict[str, Any]]
                rows = [{"version": v.version, "active": bool(active and v.version == active.version),
                         "origin": v.origin, "parent": v.parent, "weights_sha256": v.weights_sha256,
                         "path": v.path, "registered_at": v.registered_at} for v in registry.versions()]
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
                    for r in rows:
                        print(f"{'*' if r['active'] else ' '} {r['version']:<24} {r['origin']:<8} "
                              f"parent {r['parent'] or '-':<20} sha256 {r['weights_sha256'][:12]}  {r['path']}")
                    if not rows:
                        print("no model registered (ship one in models/ or register a package)")
            elif args.models_command == "show":
                from mammotriage.model.package import read_metadata

                version = registry.get(args.version)
                if version is None:
                    print(f"unknown model version {args.version}", file=sys.stderr)
                    return 1
                meta = read_metadata(version.path)
                history = [h for h in registry.history() if h["version"] == args.version]
                print(json.dumps({"version": version.version, "active": bool(active and active.version == version.version),
                                  "metadata": meta, "history": history}, indent=2, default=str))
            elif args.models_command == "register":
                v = registry.register(args.path, origin="site", who=current_reader())
                print(f"registered {v.version} ({v.weights_sha256[:12]}...)")
            elif args.models_command == "promote":
                try:
                    report = json.loads(Path(args.report).read_text()) if args.report else None
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise RegistryError(f"{args.report}: not a readable gate report ({exc})") from exc
                if report is not None and not isinstance(report, dict):
                    raise RegistryError(f"{args.report}: not a gate report (a JSON object expected)")
                registry.promote(args.version, report, who=current_reader(), force_reason=args.force or "")
                print(f"{args.version} is now the active model; exams are re-triaged with it in the background")
            elif args.models_command == "rollback":
                v = registry.rollback(who=current_reader(), reason=args.reason or "")
                print(f"rolled back: {v.version} is the active model again")
            elif args.models_command == "prune":
                pruned = registry.prune(dry_run=args.dry_run)
                verb = "would prune" if args.dry_run else "pruned"
                print(f"{verb} the package copies of: {', '.join(pruned)}" if pruned else
                      "nothing to prune: every package copy is active or referred to by results or events")
        except (RegistryError, ModelPackageError) as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
    return 0


class ServeTriageWiring:
    """``serve``'s triage side (:class:`mammotriage.net.commands.ServeTriage`), wired here,
    in the composition root: the registry's active model, the triage worker, and the
    outbox as the worker's result sink."""

    def start(self, run_worker: bool) -> tuple[Any, str | None]:
        from mammotriage.config import archive_path, data_dir
        from mammotriage.model.registry import active_package

        found = active_package(archive_path())
        if found.notice:
            print(found.notice, flush=True)
        if found.error:
            print(f"triage off: {found.error}", flush=True)
            return None, None
        if found.version is None:
            print("no active model: received studies are stored, triage waits for a model", flush=True)
            return None, None
        if not run_worker:
            return None, found.version.version
        from mammotriage.net.outbox import OutboxSink
        from mammotriage.triage.worker import TriageService

        sink = OutboxSink.from_settings()
        if sink.problem:
            print(sink.problem, flush=True)
        service = TriageService(archive_path(), data_dir(), found.folder,
                                expected_sha256=found.version.weights_sha256, sink=sink)
        service.start()
        print(f"background triage with model {found.version.version}", flush=True)
        return service, found.version.version

    def requeue(self, archive_file: Path, exam_key: str, version: str) -> None:
        from mammotriage.triage.queue import TriageQueue

        with TriageQueue(archive_file) as queue:
            queue.requeue(exam_key, version)


def cmd_monitor(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path
    from mammotriage.learning.monitor import monitor_report, report_text, write_plots
    from mammotriage.model.registry import active_package

    meta = active_package(archive_path(), verified=False).meta or {}
    points = (meta.get("operating_points") or {}).get("suspicious") or {}
    threshold = points.get("threshold") if isinstance(points, dict) else points
    report = monitor_report(archive_path(), meta, threshold)
    if args.plots:
        report["plots"] = [str(p) for p in write_plots(report, Path(args.plots))]
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    return 0


# --------------------------------------------------------------------------- worklist

def cmd_worklist(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path, data_dir
    from mammotriage.triage.worklist import listing_text, worklist_listing

    listing = worklist_listing(archive_path(), data_dir(), reader=args.reader)
    print(json.dumps(listing, indent=2) if args.json else listing_text(listing))
    return 0


# --------------------------------------------------------------------------- app

def cmd_app(args: argparse.Namespace) -> int:
    # cli is the composition root: it alone may import the UI (see pyproject's contracts)
    from mammotriage.ui import app as ui

    site = None
    if args.site:
        from mammotriage.config import data_dir
        from mammotriage.net.site_profile import SiteProfileError, load_profile
        from mammotriage.viewer.site_log import site_mode_problem

        try:
            site = load_profile(args.site)
        except SiteProfileError as exc:
            print(f"app --site: {exc}", file=sys.stderr)
            return 2
        if warning := site.warning():
            print(f"app --site: warning: {warning}", file=sys.stderr)
        if problem := site_mode_problem(data_dir()):
            print(f"app --site: {problem}", file=sys.stderr)
            return 2
    return int(ui.main(demo=not args.no_demo, screenshot=args.screenshot, quit_after=args.quit_after,
                       site=site) or 0)


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammotriage", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mammotriage {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("app", help="launch the reading workstation (default)")
    p.add_argument("--no-demo", action="store_true", help="do not create the demo exams on first run")
    p.add_argument("--screenshot", metavar="PNG", help="save a screenshot once the first exam is shown")
    p.add_argument("--quit-after", type=float, metavar="S", help="quit after S seconds (for scripts)")
    p.add_argument("--site", metavar="PROFILE", help="join a site: reader corrections go to its store "
                   "(a profile from 'mammotriage site profile', mode 0600)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("info", help="print what the reader understood about DICOM files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--no-decode", action="store_true", help="read headers only, do not decode pixels")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("import", help="import DICOM files or folder trees into the archive")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("audit", help="audit trail of reader corrections")
    audit = p.add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="check that no correction event was edited or deleted")
    p.add_argument("--json", action="store_true")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--site", metavar="PROFILE",
                       help="the site store of a site profile (hashes and links; the MACs need the site's key)")
    where.add_argument("--site-folder", metavar="DIR",
                       help="on the site server: its store, with the site's key (the full check)")
    p.set_defaults(func=cmd_audit_verify)

    from mammotriage.model.commands import add_model_commands

    add_model_commands(sub)

    from mammotriage.triage.commands import add_triage_command

    add_triage_command(sub)

    from mammotriage.learning.commands import add_learning_commands

    add_learning_commands(sub)

    from mammotriage.export.commands import add_dataset_commands
    from mammotriage.learning.commands import add_dataset_check_command

    dataset = add_dataset_commands(sub)
    dataset.choices["snapshot"].set_defaults(site_source=site_snapshot_source)  # --site PROFILE
    add_dataset_check_command(dataset)

    from mammotriage.net.commands import add_net_commands

    add_net_commands(sub, triage=ServeTriageWiring())

    p = sub.add_parser("models", help="model registry: list, show, register, promote, rollback, prune")
    models = p.add_subparsers(dest="models_command", required=True)
    q = models.add_parser("list", help="registered versions; * marks the active one")
    q.add_argument("--json", action="store_true")
    q = models.add_parser("show", help="metadata and history of one version")
    q.add_argument("version")
    q = models.add_parser("register", help="register a verified model package folder")
    q.add_argument("path")
    q = models.add_parser("promote", help="make a version active (needs a passed validation report)")
    q.add_argument("version")
    q.add_argument("--report", metavar="JSON", help="validation gate report of this candidate")
    q.add_argument("--force", metavar="REASON", help="override a failed or missing report, recording why")
    q = models.add_parser("rollback", help="return to the model active before the last promotion")
    q.add_argument("--reason", default="")
    q = models.add_parser("prune", help="delete package copies no result or event refers to (rows stay)")
    q.add_argument("--dry-run", action="store_true", help="only say which")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("monitor", help="scores, reader feedback and input drift per model and scanner")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots here")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("worklist", help="the worklist as the app orders it (AI left out in blind mode)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reader", metavar="NAME", help="whose initial assessments unblind AI (default: the "
                   "app's signed-in reader)")
    p.set_defaults(func=cmd_worklist)

    from mammotriage.net.site import add_site_commands

    add_site_commands(sub)

    from mammotriage.viewer.site_worker_command import add_site_worker_command

    add_site_worker_command(sub)

    from mammotriage.viewer.double_reading import add_double_reading_command

    add_double_reading_command(sub)

    from mammotriage.triage.backfill import add_backfill_command

    add_backfill_command(sub)

    p = sub.add_parser("demo", help="write synthetic 4-view screening exams with ground truth")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--exams", type=int, default=6, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--rows", type=int, default=1024, help="image rows (up to 4096)")
    p.add_argument("--columns", type=int, default=832, help="image columns (up to 3328)")
    p.add_argument("--priors", type=int, default=2, metavar="N",
                   help="patients that also get an exam 1-2 years earlier (default 2; 0 for none)")
    p.set_defaults(func=cmd_demo)
    return parser


def site_snapshot_source(profile_path: str) -> Any:
    """``dataset snapshot --site PROFILE``: the site's chain as a snapshot source (the head
    read first, then the events up to it: one consistent cut of a chain others extend)."""
    from mammotriage.net.site_profile import load_profile
    from mammotriage.store.audit import head_record
    from mammotriage.store.datasets import SnapshotSource
    from mammotriage.store.pg.events import SiteCorrectionLog

    profile = load_profile(profile_path)
    with SiteCorrectionLog(profile.dsn()) as log:
        head = log.head()
        events = [e for e in log.events() if e.seq <= head.last_seq]
        site = log.archive_id()
    return SnapshotSource(events, head_record(head), {"kind": "site", "site": site, "events": len(events)})


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads that spin make torch ~15x slower on a busy 2-core machine;
    # set before torch is imported (worker processes inherit it).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # File names that are not UTF-8 must never crash a message about them.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    # Started by the app as a separate program (a retrain job): end with the app.
    from mammotriage.lifetime import die_with_parent_from_env

    die_with_parent_from_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["app", *(argv or [])])
    from mammotriage.store.audit import AuditKeyError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`... --json | head`): end quietly, as Unix
        # tools do; point stdout at devnull so the interpreter's final flush cannot fail too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except AuditKeyError as exc:  # any command that records or reads reader corrections
        print(f"audit key: {exc}", file=sys.stderr)
        return 2
