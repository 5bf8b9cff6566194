"""Sub-commands ``retrain``, ``validate``, ``pipeline`` and ``federate`` (the learning loop) for the ``mammotriage`` CLI.

``add_learning_commands(subparsers)`` registers them; torch is imported only when a
command runs. Each parser sets ``func`` to a callable taking the parsed namespace and
returning the exit status. ``python -m mammotriage.learning.commands ...`` runs
them without the main CLI (the Model panel starts its background jobs that way).

With ``--progress-json`` the commands print one JSON object per line on stdout:
``{"event": "progress", "stage", "done", "total", "note"}`` while working and
``{"event": "result", ...}`` (or ``{"event": "error", "message"}``) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_dataset_check_command", "add_learning_commands", "main"]


def add_dataset_check_command(dataset: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dataset check`` among the ``dataset`` sub-commands."""
    p = dataset.add_parser(
        "check", help="data tests of a snapshot: boxes, kinds, validation overlap, pixels, counts, agreement",
        description="The validation report of a snapshot (retrain refuses a snapshot that fails it): label "
        "boxes inside their images, known kinds, no image or patient to train on in a validation "
        "snapshot, pixels unchanged since they were labelled; per-scanner and per-kind counts and the "
        "readers' agreement. Exit status 0 passed, 1 failed, 2 error.")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot hash, unique prefix, name or manifest path")
    p.add_argument("--no-pixels", action="store_true", help="do not decode the images to check their pixels")
    p.add_argument("--archive", type=Path, metavar="FILE", help="archive database (default: the configured one)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_dataset_check)


def cmd_dataset_check(args: argparse.Namespace) -> int:
    from mammotriage.learning.dataset_check import check_snapshot, report_text
    from mammotriage.store.datasets import DatasetError

    try:
        report = check_snapshot(args.snapshot, args.archive, pixels=not args.no_pixels)
    except DatasetError as exc:
        print(f"dataset check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else report_text(report))
    return 0 if report["passed"] else 1


def add_learning_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``retrain``, ``validate``, ``pipeline`` and ``federate``."""
    from mammotriage.learning.retrain import RetrainParams

    d = RetrainParams()
    p = subparsers.add_parser(
        "retrain", help="fine-tune the current model on a dataset snapshot -> candidate model",
        description="Fine-tune the active model (or --parent) on a training snapshot of the site's "
        "corrections, replaying a seeded sample of its original training data, and write and register "
        "a candidate model package (never made active: validate it, then `models promote`). "
        "Images of the site's validation snapshots are never trained on. Reproducible: the same "
        "parent, snapshot and parameters give the same weights (sha256) and version.")
    p.add_argument("--snapshot", required=True, metavar="S",
                   help="training snapshot: hash, unique prefix, name or manifest path")
    p.add_argument("--parent", metavar="MODEL", help="version or package folder (default: the active model)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="candidate package folder (default: models/<version> beside the archive)")
    p.add_argument("--epochs", type=float, default=d.epochs, help=f"passes over the data (default {d.epochs})")
    p.add_argument("--replay-fraction", type=float, default=d.replay_fraction,
                   help=f"replay images per snapshot image (default {d.replay_fraction})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads,
                   help=f"torch CPU threads (default {d.threads}; part of the reproducibility contract)")
    p.add_argument("--max-iterations", type=int, default=d.max_iterations,
                   help=f"iteration budget (default {d.max_iterations}; 0: none, train the full epochs)")
    p.add_argument("--max-minutes", type=float, help="wall-time cap (the result is then NOT reproducible)")
    p.add_argument("--no-register", action="store_true", help="do not register the candidate")
    p.add_argument("--archive", type=Path, metavar="FILE", help="archive database (default: the configured one)")
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N")
    p.add_argument("--progress-json", action="store_true", help="JSON progress lines on stdout (for the app)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_retrain)

    p = subparsers.add_parser(
        "validate", help="validation gate: a candidate model against the current one",
        description="Evaluate a candidate and the active model (or --parent) on the site's locked "
        "validation snapshot (FROC sensitivities, image AUC, bootstrap 95 % intervals) and on the "
        "candidate's new corrections; pass when no figure is worse beyond its tolerance. Writes a "
        "JSON report (for `models promote --report`) and side-by-side plots. Exit status 0 passed, "
        "1 refused, 2 error.")
    p.add_argument("candidate", nargs="?", metavar="CANDIDATE", help="candidate version or package folder")
    p.add_argument("--parent", metavar="MODEL", help="model to compare with (default: the active model)")
    p.add_argument("--validation", metavar="S", help="validation snapshot (default: the site's locked one)")
    p.add_argument("--corrections", metavar="S",
                   help="training snapshot of the new corrections (default: the candidate's own)")
    p.add_argument("--no-corrections", action="store_true", help="gate on the validation set only")
    p.add_argument("--report", type=Path, metavar="OUT.json", help="also write the report here")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report + plots folder (default: validation/<version> beside the archive)")
    p.add_argument("--tolerance", type=float, default=0.05, help="FROC mean tolerance (default 0.05)")
    p.add_argument("--tolerance-auc", type=float, default=0.05, help="image AUC tolerance (default 0.05)")
    p.add_argument("--tolerance-kind", type=float, default=0.10, help="per-kind FROC tolerance (default 0.10)")
    p.add_argument("--tolerance-corrections", type=float, default=0.05,
                   help="FROC tolerance on the corrections (default 0.05)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap resamples (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--archive", type=Path, metavar="FILE", help="archive database (default: the configured one)")
    p.add_argument("--lock-validation", metavar="S",
                   help="make snapshot S the site's locked validation set (then validate CANDIDATE, if given)")
    p.add_argument("--replace-lock", metavar="REASON", default="",
                   help="with --lock-validation: replace an existing lock, recording why")
    p.add_argument("--progress-json", action="store_true", help="JSON progress lines on stdout (for the app)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser(
        "pipeline", help="automatic snapshot -> data tests -> retrain -> validate (site setting)",
        description="The ML pipeline with no person but the sign-off: after `propose_after_corrections` "
        "new image corrections (models.json in the data directory), a training snapshot, its data "
        "tests, a retrain and the validation gate, at low CPU priority. Promotion stays manual.")
    pipe = p.add_subparsers(dest="pipeline_command", required=True)
    q = pipe.add_parser("status", help="new corrections since the last run, whether one is due, the last run")
    q.add_argument("--archive", type=Path, metavar="FILE", help="archive database (default: the configured one)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_pipeline)
    q = pipe.add_parser("run", help="run it now (with --if-due: only when the setting says so)")
    q.add_argument("--if-due", action="store_true", help="do nothing unless enough new corrections came in")
    q.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    q.add_argument("--max-iterations", type=int, default=d.max_iterations,
                   help=f"retrain iteration budget (default {d.max_iterations}; 0: the full epochs)")
    q.add_argument("--bootstrap", type=int, default=200, metavar="N", help="gate bootstrap resamples")
    q.add_argument("--nice", type=int, default=10, help="lower this process's CPU priority by N (default 10)")
    q.add_argument("--archive", type=Path, metavar="FILE", help="archive database (default: the configured one)")
    q.add_argument("--progress-json", action="store_true", help="JSON progress lines on stdout (for the app)")
    q.add_argument("--json", action="store_true", help="print the run record as JSON")
    q.set_defaults(func=cmd_pipeline)

    add_federate_command(subparsers)


def add_federate_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``federate``."""
    from mammotriage.learning.fl_config import FAULTS, SimConfig

    c = SimConfig()
    p = subparsers.add_parser(
        "federate", help="federated learning on NVIDIA FLARE (--kit DIR: run this site; --simulate, --poc)",
        description="Federated fine-tuning across hospitals on NVIDIA FLARE: each site trains on its own "
        "images and sends weight differences only; the server aggregates them (FedAvg weighted by "
        "corrected images, or median / trimmed mean), rejecting NaN, mis-shaped and outlying updates "
        "per site and round. --simulate N runs FLARE's simulator with N simulated sites (phantom "
        "exams: calcification clusters / masses only / a new scanner) and reports per-kind "
        "sensitivity at 1 false positive per image on the union of the sites' locked validation "
        "sets, for each site's local-only model, the federated model and the pooled one. "
        "--kit DIR runs this workstation as a site (or a server) of a real federation from the FLARE "
        "startup kit the coordinator provisioned (mutual TLS); a site trains on its newest training "
        "snapshot from the active model, logs every round beside its archive, and registers the "
        "final global model as a candidate that its own gate must pass. --poc N provisions a "
        "server and N sites with mTLS kits and runs them as separate processes on 127.0.0.1.")
    p.add_argument("--kit", type=Path, metavar="DIR",
                   help="run this site or server from its FLARE startup kit until the federation stops it")
    p.add_argument("--site-config", type=Path, metavar="FILE",
                   help="with --kit: the site's configuration ({site: {...}}) instead of the one made from "
                   "the archive")
    p.add_argument("--archive", type=Path, metavar="FILE",
                   help="with --kit: this site's archive (default: the configured one)")
    p.add_argument("--poc", type=int, metavar="N",
                   help="proof-of-concept: provision a server and N sites (mTLS) and run them as separate "
                   "processes on 127.0.0.1")
    p.add_argument("--simulate", type=int, metavar="N", help="simulate N sites on this machine")
    p.add_argument("--seeds", default=",".join(str(x) for x in c.seeds), metavar="S,S,...",
                   help=f"seeds, one whole run each (default {','.join(str(x) for x in c.seeds)})")
    p.add_argument("--rounds", type=int, help=f"rounds (default {c.rounds}; --quick: 2)")
    p.add_argument("--local-iterations", type=int,
                   help=f"training iterations per site and round (default {c.local_iterations}; --quick: 3)")
    p.add_argument("--lr", type=float, default=c.lr, help=f"learning rate (default {c.lr})")
    p.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx proximal weight mu (default 0: off)")
    p.add_argument("--dp-clip", type=float, default=0.0,
                   help="differential privacy: L2 bound of a site's update (default 0: off)")
    p.add_argument("--dp-noise", type=float, default=0.0,
                   help="differential privacy: Gaussian noise multiplier (sigma = noise x clip)")
    p.add_argument("--aggregation", choices=("fedavg", "median", "trimmed-mean"), default="fedavg")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=c.optimizer,
                   help=f"each site's local optimiser, baselines alike (default {c.optimizer})")
    p.add_argument("--server-lr", type=float, default=c.server_lr,
                   help="server learning rate on the aggregated update (FedOpt; default 1: plain FedAvg)")
    p.add_argument("--malicious", choices=FAULTS,
                   help="add a site that sends NaN updates or its update scaled 100x (it must be rejected)")
    p.add_argument("--quick", action="store_true",
                   help="a small run (128-row canvas, a few exams and iterations): checks the plumbing, "
                   "its figures mean nothing")
    p.add_argument("--no-baselines", action="store_true", help="skip the local-only and pooled models")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per site (default 1)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="work folder (the parent model, FLARE's workspace, the sites' logs; "
                   "default: a new temporary folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_federate)


def cmd_federate(args: argparse.Namespace) -> int:
    _quiet_threads()
    import tempfile

    from mammotriage.learning.federation import FederationError
    from mammotriage.learning.fl_config import SimConfig
    from mammotriage.learning.fl_sim import report_text, simulate

    modes = [m for m in ("kit", "poc", "simulate") if getattr(args, m) is not None]
    if len(modes) != 1:
        return _fail(args, "federate", "say what to run: --kit DIR (this site or server in a real federation), "
                     "--poc N (a proof-of-concept on this machine) or --simulate N (FLARE's simulator)"
                     if not modes else f"--{' and --'.join(modes)}: one at a time")
    if args.kit is not None:
        from mammotriage.learning.fl_deploy import run_kit

        try:
            return run_kit(args.kit, site_config_file=args.site_config, archive_file=args.archive,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
        except (FederationError, OSError, ValueError) as exc:
            return _fail(args, "federate", str(exc))
    n_sites = args.poc if args.poc is not None else args.simulate
    if not (2 if args.poc is not None else 1) <= n_sites <= 12:
        return _fail(args, "federate", f"--{modes[0]} {n_sites}: between {2 if args.poc is not None else 1} "
                     "and 12 sites")
    try:
        seeds = tuple(int(x) for x in str(args.seeds).split(",") if x.strip())
    except ValueError:
        return _fail(args, "federate", f"--seeds {args.seeds!r}: comma-separated whole numbers")
    quick = {"rows": 128, "columns": 104, "train_lesion_exams": 2, "train_normal_exams": 1,
             "val_lesion_exams": 2, "val_normal_exams": 1, "parent_exams": 4, "parent_epochs": 0.5} \
        if args.quick else {}
    d = SimConfig()
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else d.rounds)
    local = args.local_iterations if args.local_iterations is not None else (3 if args.quick else d.local_iterations)
    cfg = SimConfig(sites=n_sites, seeds=seeds or (0,), rounds=rounds,
                    local_iterations=local, lr=args.lr, fedprox_mu=args.fedprox_mu,
                    dp_clip=args.dp_clip, dp_noise=args.dp_noise, method=args.aggregation, server_lr=args.server_lr,
                    optimizer=args.optimizer,
                    threads=args.threads, malicious=args.malicious, **quick)  # type: ignore[arg-type]
    out = args.out or Path(tempfile.mkdtemp(prefix="mammotriage-federate-"))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # FLARE's server and site processes log to file descriptor 1: stdout is kept for the
    # report alone (the log goes to stderr and to FLARE's workspace under --out)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        if args.poc is not None:
            from mammotriage.learning.fl_deploy import poc

            report = poc(Path(out), cfg, seed=cfg.seeds[0], log=log)
        else:
            report = simulate(Path(out), cfg, log=log, baselines=not args.no_baselines)
    except (FederationError, OSError) as exc:
        return _fail(args, "federate", str(exc))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    report["out"] = str(out)
    (Path(out) / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    elif args.poc is not None:
        from mammotriage.learning.fl_deploy import poc_text

        print(poc_text(report))
    else:
        print(report_text(report))
    if not args.json:
        print(f"report: {Path(out) / 'report.json'}")
    return 0


# --------------------------------------------------------------------------- helpers


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _progress(args: argparse.Namespace) -> Callable[[str, int, int, str], None]:
    if args.progress_json:
        last: dict[str, int] = {}

        def progress(stage: str, done: int, total: int, note: str = "") -> None:
            # at most ~200 lines per stage
            step = max(1, total // 200)
            if done in (0, total) or done - last.get(stage, -step) >= step:
                last[stage] = done
                _emit({"event": "progress", "stage": stage, "done": done, "total": total, "note": note})
        return progress
    from mammotriage.progress import CliProgress

    bars: dict[str, CliProgress] = {}

    def show(stage: str, done: int, total: int, note: str = "") -> None:
        if stage not in ("prepare", "train", "second_look", "predict"):
            return
        bar = bars.get(stage)
        if bar is None:
            for other in list(bars.values()):
                other.close()
            bars.clear()
            bar = bars[stage] = CliProgress(total, stage)
        bar.update(done, note)
        if done >= total:
            bar.close()
            bars.pop(stage, None)
    return show


def _fail(args: argparse.Namespace, command: str, message: str, status: int = 2) -> int:
    if getattr(args, "progress_json", False):
        _emit({"event": "error", "message": message})
    print(f"{command}: {message}", file=sys.stderr)
    return status


def _quiet_threads() -> None:
    # Idle OpenMP threads sleep instead of spinning: on a small shared CPU spinning threads
    # slow everything (the app's event loop included) many times over. Must be set
    # before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# --------------------------------------------------------------------------- retrain


def cmd_retrain(args: argparse.Namespace) -> int:
    _quiet_threads()
    if args.nice:
        with contextlib.suppress(OSError):
            os.nice(int(args.nice))
    from mammotriage.learning.retrain import RetrainError, RetrainParams, retrain
    from mammotriage.learning.snapshot_data import ModelNotFound, SnapshotDataError
    from mammotriage.model.package import ModelPackageError
    from mammotriage.model.registry import RegistryError
    from mammotriage.store.datasets import DatasetError
    from mammotriage.store.reading import current_reader

    params = RetrainParams(epochs=args.epochs, replay_fraction=args.replay_fraction, lr=args.lr,
                           batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                           max_iterations=args.max_iterations or None, max_minutes=args.max_minutes)
    try:
        result = retrain(args.snapshot, archive_file=args.archive, parent=args.parent, out_dir=args.out, params=params,
                         register=not args.no_register, who=current_reader(), progress=_progress(args))
    except (SnapshotDataError, DatasetError, ModelNotFound, RetrainError, ModelPackageError,
            RegistryError) as exc:
        return _fail(args, "retrain", str(exc))
    ft = result.metadata["fine_tuning"]
    out = {"version": result.version, "path": str(result.path), "weights_sha256": result.weights_sha256,
           "parent": ft["parent"]["version"], "snapshot": ft["snapshot"]["sha256"],
           "images": ft["snapshot"]["images"], "excluded": ft["snapshot"]["excluded"],
           "replay_images": ft["replay"]["n_images"], "replay_available": ft["replay"]["available"],
           "iterations": ft["iterations"], "finished": result.finished,
           "seconds": round(result.seconds, 1), "registered": result.registered}
    if args.progress_json:
        _emit({"event": "result", **out})
    elif args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"candidate {out['version']} written to {out['path']}")
        print(f"  weights sha256 {out['weights_sha256']}")
        print(f"  fine-tuned from {out['parent']} on snapshot {out['snapshot'][:12]} ({out['images']} images; "
              f"excluded {out['excluded'] or 'none'}) + {out['replay_images']} replay images"
              + ("" if out["replay_available"] else " (original training data unavailable)"))
        print(f"  {out['iterations']} iterations in {out['seconds']:.0f} s"
              + ("" if out["finished"] else " - STOPPED EARLY (--max-minutes): not reproducible"))
        print(f"next: mammotriage validate {out['version']}")
    return 0


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace) -> int:
    _quiet_threads()
    from mammotriage.learning.gate import GateError, GateParams, report_text, validate
    from mammotriage.learning.snapshot_data import ModelNotFound, SnapshotDataError, lock_validation
    from mammotriage.model.package import ModelPackageError
    from mammotriage.store.datasets import DatasetError
    from mammotriage.store.reading import current_reader

    try:
        if args.lock_validation:
            rec = lock_validation(args.archive, args.lock_validation, who=current_reader(), replace=args.replace_lock)
            print(f"locked validation set: snapshot {rec['sha256']}", file=sys.stderr)
        if not args.candidate:
            return 0 if args.lock_validation else _fail(args, "validate", "give a CANDIDATE model")
        params = GateParams(tolerance_froc=args.tolerance, tolerance_auc=args.tolerance_auc,
                            tolerance_kind=args.tolerance_kind, tolerance_corrections=args.tolerance_corrections,
                            n_boot=args.bootstrap, seed=args.seed, threads=args.threads, device=args.device)
        corrections: Any = False if args.no_corrections else args.corrections
        report = validate(args.candidate, archive_file=args.archive, parent=args.parent, validation=args.validation,
                          corrections=corrections, out_dir=args.out, params=params, progress=_progress(args))
    except (GateError, SnapshotDataError, DatasetError, ModelNotFound, ModelPackageError) as exc:
        return _fail(args, "validate", str(exc))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report["report_path"], args.report)
    if args.progress_json:
        _emit({"event": "result", "passed": report["passed"], "reasons": report["reasons"],
               "report_path": report["report_path"], "candidate": report["candidate"]["version"],
               "parent": report["parent"]["version"]})
    elif args.json:
        print(json.dumps(report, indent=1))
    else:
        print(report_text(report))
        print(f"report: {args.report or report['report_path']}")
        for p in report.get("plots", []):
            print(f"plot: {p}")
        if report["passed"]:
            print(f"next: mammotriage models promote {report['candidate']['version']} "
                  f"--report {args.report or report['report_path']}")
    return 0 if report["passed"] else 1


# --------------------------------------------------------------------------- pipeline


def cmd_pipeline(args: argparse.Namespace) -> int:
    _quiet_threads()
    from mammotriage.learning.pipeline import PipelineError, run_pipeline, status, status_text

    try:
        st = status(args.archive)
    except PipelineError as exc:
        return _fail(args, "pipeline", str(exc))
    if args.pipeline_command == "status":
        print(json.dumps(st, indent=1) if args.json else status_text(st))
        return 0
    if args.if_due and not st["due"]:
        msg = {"event": "result", "ran": False, "status": st, "message": status_text(st)}
        if args.progress_json:
            _emit(msg)
        else:
            print(json.dumps(msg, indent=1) if args.json else status_text(st))
        return 0
    if args.nice:
        with contextlib.suppress(OSError):
            os.nice(int(args.nice))
    from mammotriage.learning.gate import GateParams
    from mammotriage.learning.retrain import RetrainParams
    from mammotriage.store.reading import current_reader

    try:
        record = run_pipeline(args.archive, retrain_params=RetrainParams(
            threads=args.threads, max_iterations=args.max_iterations or None),
            gate_params=GateParams(threads=args.threads, n_boot=args.bootstrap),
            progress=_progress(args), who=f"pipeline ({current_reader()})")
    except Exception as exc:  # noqa: BLE001 - recorded in the pipeline state; reported here
        return _fail(args, "pipeline", f"{type(exc).__name__}: {exc}")
    if args.progress_json:
        _emit({"event": "result", "ran": True, **record})
    elif args.json:
        print(json.dumps(record, indent=1))
    else:
        print(f"candidate {record['candidate']} on snapshot {record['snapshot'][:12]}: gate "
              + ("PASSED" if record["passed"] else "refused: " + "; ".join(record["reasons"])))
        print(f"  {record['seconds']:.0f} s; report {record['report_path']}")
        if record["passed"]:
            print(f"next: mammotriage models promote {record['candidate']} --report {record['report_path']}")
    return 0 if record["passed"] else 1


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mammotriage", description="learning-loop commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_learning_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
