"""Sub-commands ``train`` and ``evaluate`` for the ``mammotriage`` CLI (``triage`` is
:mod:`mammotriage.triage.commands`).

``add_model_commands(subparsers)`` registers them; torch is imported only when a command
runs, so ``mammotriage --help`` stays light.  Each parser sets ``func`` to a callable
taking the parsed ``argparse.Namespace`` and returning the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mammotriage.model.data import Sample


def add_model_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``train`` and ``evaluate`` on an argparse sub-parser set."""
    p = subparsers.add_parser("train", help="train a detector and write a model package",
                              description="Train the lesion detector from a dataset manifest (or a "
                              "mini-MIAS folder and phantoms), optionally with patient-level k-fold "
                              "cross-validation, and write a model package.")
    src = p.add_argument_group("data")
    src.add_argument("--manifest", type=Path, help="dataset manifest (JSON, see mammotriage.model.data)")
    src.add_argument("--mias", type=Path, help="mini-MIAS format folder (PNG + labels.csv)")
    src.add_argument("--phantoms", type=int, default=0, help="phantom exams added to training (default 0)")
    src.add_argument("--phantom-seed", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True, help="model package directory to write")
    p.add_argument("--work", type=Path,
                   help="checkpoints / CV folder (default: the user cache folder, train/NAME)")
    p.add_argument("--epochs", type=float, default=8.0)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=20260101)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available; same recipe)")
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes (checkpointed)")
    p.add_argument("--scratch", action="store_true", help="no ImageNet backbone (from scratch)")
    p.add_argument("--kfold", type=int, default=0, help="patient-level k-fold CV on the mini-MIAS images first")
    p.add_argument("--cv-epochs", type=float, help="epochs per CV fold (default: --epochs)")
    p.add_argument("--cv-max-minutes", type=float, help="wall-time cap per CV fold (default: --max-minutes)")
    p.add_argument("--cv-only", action="store_true", help="run the cross-validation only")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--second-look", action="store_true",
                   help="after the --kfold CV, cross-validate and fit the second look (stage two, "
                        "calcification clusters) on the same folds")
    p.add_argument("--stage-one", type=Path,
                   help="with --second-look: take the stage-one network from this package instead of training it")
    p.add_argument("--intensity", choices=["display", "breast_percentiles"], default="display",
                   help="input normalisation: the display image as its VOI made it (default, the "
                        "recipe up to v0.3.0), or the breast's 2nd/98th percentiles at fixed levels")
    p.add_argument("--aug-looks", type=float, default=0.0,
                   help="share of training patches given another acquisition's look first "
                        "(film curve, contrast/gamma, peripheral equalisation; default 0)")
    p.add_argument("--no-stage-two", action="store_true",
                   help="with --second-look: keep the RetinaNet scores (no stage-two rescoring); the "
                        "calcification path and the containment-aware suppression still apply")
    p.add_argument("--calibrate-stage-one", action="store_true",
                   help="with --second-look --no-stage-two: map RetinaNet scores to the probability that a "
                        "candidate is a lesion (Platt scaling on out-of-fold candidates), so they rank "
                        "with the calcification clusters' probabilities")
    p.add_argument("--calc-phantoms", type=int, default=24,
                   help="phantom exams whose calcification clusters train the cluster classifier (default 24)")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--parent", default=None, help="parent model version")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="evaluate a model on a mini-MIAS format folder",
                              description="Image-level ROC AUC and lesion-level FROC of a model on a "
                              "folder in the mini-MIAS format; writes FROC/ROC plots.")
    p.add_argument("--mias", type=Path, required=True, help="folder with PNGs and labels.csv")
    p.add_argument("--model", type=Path, help="model package (default: the shipped one)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plots", type=Path,
                   help="folder for froc.png/roc.png (default: evaluation/<model version> in the data folder)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------------ train

def _gather_samples(args: argparse.Namespace) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    from mammotriage.model.data import samples_from_spec

    if args.manifest:
        spec = json.loads(Path(args.manifest).read_text())
        base = Path(args.manifest).parent
    else:
        spec = {"sources": []}
        base = None
        if args.mias:
            # relative to the working folder: the package then names no machine's paths
            spec["sources"].append({"type": "mias", "path": os.path.relpath(Path(args.mias).resolve())})
        if args.phantoms:
            spec["sources"].append({"type": "phantom", "n_exams": args.phantoms, "seed": args.phantom_seed,
                                    "rows": 1024, "columns": 832})
    if not spec["sources"]:
        raise SystemExit("train: give --manifest, or --mias and/or --phantoms")
    samples, described = samples_from_spec(spec, base=base)
    real = [s for s in samples if s.source == "mias"]
    extra = [s for s in samples if s.source != "mias"]
    return real, extra, described


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mammotriage.model.card import write_trained_package
    from mammotriage.model.train import TrainParams, train

    if args.calibrate_stage_one and not (args.second_look and args.no_stage_two):
        raise SystemExit("train: --calibrate-stage-one is for a second look without stage two "
                         "(--second-look --no-stage-two)")
    real, extra, described = _gather_samples(args)
    hp = TrainParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     threads=args.threads, max_minutes=args.max_minutes, pretrained=not args.scratch,
                     device=args.device, aug_looks=args.aug_looks)
    from mammotriage.model.preprocess import PreprocessParams

    pp = PreprocessParams(intensity=args.intensity)
    if args.work:
        work = args.work
    else:
        from platformdirs import user_cache_dir

        work = Path(user_cache_dir("mammotriage")) / "train" / args.out.name
    cv = None
    if args.kfold:
        from mammotriage.model.crossval import cross_validate

        if not real:
            raise SystemExit("train: --kfold needs real (mini-MIAS) images")
        cv_hp = replace(hp, epochs=args.cv_epochs or args.epochs,
                        max_minutes=args.cv_max_minutes or args.max_minutes)
        cv = cross_validate(real, args.kfold, work / "cv", cv_hp, extra_train=extra, pp=pp)
        print(json.dumps(cv["summary"]["pooled"]), file=sys.stderr)
        if args.second_look:
            return _train_second_look(args, real, extra, described, work)
        if args.cv_only:
            print(json.dumps(cv["summary"], indent=1))
            return 0
    result = train(real + extra, work / "final", hp, pp=pp, resume=not args.no_resume)
    if not result.finished:
        print(f"train: stopped at iteration {result.iterations}/{result.total_iterations} "
              "(--max-minutes); run again to resume", file=sys.stderr)
    from mammotriage.model.data import input_reference, training_scanners

    samples = real + extra
    monitoring = {"input_reference": input_reference(samples), "training_scanners": training_scanners(samples)}
    out = write_trained_package(args.out, result, described, cv=cv, version=args.version,
                                parent_version=args.parent, extra=monitoring)
    print(f"wrote {out}")
    return 0


def _train_second_look(args: argparse.Namespace, real: list[Sample], extra: list[Sample],
                       described: dict[str, Any], work: Path) -> int:
    from mammotriage.model.card import write_second_look_package
    from mammotriage.model.crossval import paired_bootstrap, second_look_cv

    phantoms = [s for s in extra if s.source == "phantom"][: 4 * max(0, args.calc_phantoms)]
    slr = second_look_cv(real, work / "cv", args.kfold, phantoms=phantoms,
                         stage_two=not getattr(args, "no_stage_two", False),
                         calibrate_stage_one=bool(getattr(args, "calibrate_stage_one", False)))
    from mammotriage.model.crossval import _records_json

    (work / "second_look_records.json").write_text(json.dumps(
        {"stage_one": _records_json(slr["stage_one"]), "second_look": _records_json(slr["second_look"])}))
    groups = [s.group for s in real]
    boot = paired_bootstrap(slr["stage_one"], slr["second_look"], groups)
    summary = {"stage_one": slr["metrics"]["stage_one"], "second_look": slr["metrics"]["second_look"],
               "paired_bootstrap": boot}
    (work / "second_look.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if args.cv_only:
        return 0
    if not args.stage_one:
        raise SystemExit("train: --second-look writes a package only with --stage-one PACKAGE")
    out = write_second_look_package(args.out, args.stage_one, slr, boot, groups, args.version,
                                    args.parent, described)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------ evaluate

def cmd_evaluate(args: argparse.Namespace) -> int:
    from mammotriage.config import data_dir
    from mammotriage.model.data import read_mias
    from mammotriage.model.evaluate import evaluate_predictions, predict_samples, write_plots
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import ModelPackageError

    try:
        engine = Engine.from_package(args.model, device=args.device, threads=args.threads)
    except ModelPackageError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    samples = read_mias(args.mias)
    if not samples:
        print(f"evaluate: no labelled images in {args.mias}", file=sys.stderr)
        return 2
    records = predict_samples(engine, samples)
    result = evaluate_predictions(records)
    out = result.to_json()
    out["model_version"] = engine.version
    if not args.no_plots:
        plots = args.plots or data_dir() / "evaluation" / str(engine.version)
        paths = write_plots(result, plots, title=f"v{engine.version}")
        out["plots"] = [str(p) for p in paths]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"model {engine.version}: {result.n_images} images ({result.n_abnormal} abnormal), "
              f"{result.n_lesions} located lesions")
        print(f"image ROC AUC {out['image_auc']}")
        for k, v in out["froc"].items():
            print(f"sensitivity at {k} FP/image: {v}")
        for kind, d in out["per_kind"].items():
            print(f"  {kind} ({d['n']}): sens@1 {d.get('sens@1')}")
        for p in out.get("plots", []):
            print(f"plot {p}")
    return 0
