"""``mammotriage triage PATHS``: headless triage of DICOM files, exams most suspicious first.

Files are streamed: a first pass reads headers only (no pixel decoding) to group the
files into exams with the app's own exam key (:func:`mammotriage.dicom.hanging.exam_key`);
then one exam at a time is decoded, run through the model and scored with the rule the
archive's queue uses (:func:`mammotriage.model.scoring.exam_scores`), and its pixels are
let go before the next. A large folder is never held in memory.

torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_triage_command", "cmd_triage", "dicom_files", "triage_paths"]


def add_triage_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("triage", help="run the model over DICOM files and order exams by suspicion",
                              description="Headless triage: reads DICOM files/folders, groups them into "
                              "exams, runs the detector and prints exams most suspicious first, with "
                              "findings in stored-image pixel coordinates.")
    p.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    p.add_argument("--model", type=Path, help="model package (default: this installation's active model; "
                   "another package is run with a warning)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="views per batch (default: 4 on CUDA, 1 on CPU)")
    p.add_argument("--min-score", type=float, default=0.05, help="list findings at or above this score")
    p.set_defaults(func=cmd_triage)


def dicom_files(paths: list[Path]) -> list[Path]:
    """The files named, and those under the folders named (recursively, hidden ones left out)."""
    files = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        else:
            files.append(p)
    return files


def _reason(exc: Exception) -> tuple[str, str]:
    return getattr(exc, "code", "internal-error"), getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"


def triage_paths(paths: list[Path], engine: Any, min_score: float = 0.05, err: TextIO | None = None,
                 skipped: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Exams (most suspicious first) with breast scores and findings in stored coordinates.

    One bad file never costs the batch: a file that cannot be read, or an exam the model
    fails on, is reported on ``err`` and appended to ``skipped`` (``path``, ``code``,
    ``reason``); every other exam is still scored. Only one exam's pixels are decoded at
    a time.
    """
    from mammotriage.dicom import read_image, read_metadata
    from mammotriage.dicom.hanging import exam_key
    from mammotriage.model.scoring import category_from, exam_scores

    err = err or sys.stderr
    skipped = skipped if skipped is not None else []

    def skip(path: Path | str, code: str, reason: str) -> None:
        skipped.append({"path": str(path), "code": code, "reason": reason})
        print(f"{path}: skipped: {reason}", file=err)

    exams: dict[str, list[Path]] = {}
    for f in dicom_files(paths):  # headers only: group the files into exams
        try:
            meta = read_metadata(f)
        except Exception as exc:  # noqa: BLE001 - skip unreadable files, say why
            skip(f, *_reason(exc))
            continue
        exams.setdefault(exam_key(meta), []).append(f)
    out = []
    for key, files in exams.items():  # one exam decoded at a time
        ims = []
        for f in files:
            try:
                image = read_image(f)
            except Exception as exc:  # noqa: BLE001 - a view that does not decode is skipped
                skip(f, *_reason(exc))
                continue
            for warning in image.meta.warnings:
                print(f"{f}: warning: {warning}", file=err)
            ims.append(image)
        if not ims:
            continue
        try:
            results = engine.predict_images(ims, max_map_side=64)
        except Exception as exc:  # noqa: BLE001 - this exam is skipped, the others go on
            for im in ims:
                skip(im.meta.path or key, "model-failed", f"the model failed on exam {key}: "
                     f"{type(exc).__name__}: {exc}")
            continue
        breasts, score = exam_scores((im.meta.laterality.value, im.meta.view.value, r.score)
                                     for im, r in zip(ims, results, strict=True))
        findings = [{"sop_uid": im.meta.sop_instance_uid, **f.to_json()}
                    for im, r in zip(ims, results, strict=True) for f in r.findings if f.score >= min_score]
        findings.sort(key=lambda d: -d["score"])
        out.append({"study_uid": ims[0].meta.study_instance_uid, "exam_key": key,
                    "patient_id": ims[0].meta.patient_id, "score": round(score, 6),
                    "breasts": {k: round(v, 6) for k, v in sorted(breasts.items())},
                    "n_images": len(ims), "findings": findings,
                    "category": category_from(score, engine.thresholds),
                    "model_version": engine.version,
                    "warnings": [f"{im.meta.path}: {w}" for im in ims for w in im.meta.warnings]})
        del ims, results  # this exam's pixels go before the next exam is decoded
    out.sort(key=lambda e: (-e["score"], e["study_uid"]))
    return out


def cmd_triage(args: argparse.Namespace) -> int:
    from mammotriage.config import archive_path
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import ModelPackageError, read_metadata
    from mammotriage.model.registry import ActivePackage, active_package

    found: ActivePackage | None
    if args.model is None:  # what the reading room runs: the registry's active version
        found = active_package(archive_path())
        if found.notice:
            print(found.notice, file=sys.stderr)
        if not found or found.meta is None:
            print(f"triage: {found.error or 'no active model'} (name a package with --model)", file=sys.stderr)
            return 2
        model_dir, active = found.folder, True
    else:
        model_dir = args.model
        current = active_package(archive_path(), verified=False)
        try:
            theirs = read_metadata(model_dir)
        except (ModelPackageError, OSError, ValueError) as exc:
            print(f"triage: {exc}", file=sys.stderr)
            return 2
        active = current.version is not None and theirs.get("weights_sha256") == current.version.weights_sha256
        found = active_package(archive_path()) if active else None  # verified, recalibrated points
        if not active:
            print(f"triage: warning: {model_dir} (version {theirs.get('version', '?')}) is not this installation's "
                  f"active model ({current.version.version if current.version else 'none'}): its results are for "
                  "evaluation, not what the reading room sees", file=sys.stderr)
    try:
        engine = Engine.from_package(model_dir, device=args.device, threads=args.threads, batch_size=args.batch_size)
    except ModelPackageError as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 2
    if found is not None and found.meta is not None:  # the operating points its promoting gate recalibrated
        engine.thresholds = found.meta.get("operating_points", {})
    skipped: list[dict[str, str]] = []
    exams = triage_paths(args.paths, engine, min_score=args.min_score, skipped=skipped)
    if args.json:
        from mammotriage.jsonio import print_json

        print_json({"exams": exams, "model_version": engine.version, "model_active": active, "skipped": skipped})
    else:
        for e in exams:
            b = "  ".join(f"{k} {v:.3f}" for k, v in e["breasts"].items())
            print(f"{e['score']:.3f}  {e['patient_id']}  {e['study_uid']}  ({e['n_images']} images)  {b}")
            for f in e["findings"][:5]:
                x0, y0, x1, y1 = f["box"]
                print(f"    {f['kind']:<13} {f['score']:.3f}  [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]  {f['sop_uid']}")
        if not exams:
            print("no readable images")
        if skipped:
            print(f"{len(skipped)} file(s) skipped (see above)")
    # non-zero when anything was skipped: a script must not take a partial run for a full one
    return 1 if skipped else 0
