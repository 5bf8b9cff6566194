"""Sub-commands ``dataset snapshot|list|diff`` and ``export`` for the ``mammotriage`` CLI.

``add_dataset_commands(subparsers)`` registers them; heavy modules are imported only
when a command runs. Each parser sets ``func`` to a callable taking the parsed
``argparse.Namespace`` and returning the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_dataset_commands"]


def add_dataset_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``dataset`` (``snapshot``, ``list``, ``diff``) and ``export``; returns the
    ``dataset`` sub-commands (the model package adds ``dataset check`` there)."""
    p = subparsers.add_parser("dataset", help="freeze, list and compare labelled dataset snapshots",
                              description="Dataset snapshots: immutable manifests of the readers' "
                              "current labels (and the original AI marks), named by their sha256.")
    dataset = p.add_subparsers(dest="dataset_command", required=True)

    p = dataset.add_parser("snapshot", help="freeze the current labels into an immutable manifest",
                           description="Freeze every reader's current labels of the exams with "
                           "corrections (plus the original AI marks) and the consensus under a declared "
                           "rule into a manifest named by its sha256.")
    p.add_argument("--rule", default="union", metavar="RULE",
                   help="consensus rule: union (default), majority, adjudicator:READER, or arbitrated "
                        "(double reading: the arbitration, else the concordant reads)")
    p.add_argument("--role", choices=("training", "validation"), default="training",
                   help="what the snapshot is for (default: training)")
    p.add_argument("--name", default="", help="short name (part of the manifest)")
    p.add_argument("--description", default="", help="free text (part of the manifest)")
    p.add_argument("--include-unreviewed", action="store_true",
                   help="also take triaged exams without corrections (AI marks, unreviewed)")
    p.add_argument("--site", metavar="PROFILE",
                   help="site mode: the corrections of the site's chain (every workstation's), read with "
                        "this site profile, on the exams this workstation's index holds")
    p.add_argument("--json", action="store_true", help="print the snapshot record as JSON")
    # site_source: the composition root's reader of a site's chain (export does not import net)
    p.set_defaults(func=cmd_dataset_snapshot, site_source=None)

    p = dataset.add_parser("list", help="list the recorded snapshots")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_list)

    p = dataset.add_parser("diff", help="labels added, removed and changed from snapshot A to B",
                           description="Compare two snapshots label by label (image + label id); "
                           "A and B are hashes, unique hash prefixes, names or manifest paths.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dataset_diff)

    p = subparsers.add_parser("export", help="export a snapshot as a de-identified, self-describing folder",
                              description="Write de-identified DICOM images (PS3.15 Basic Profile), one "
                              "TID 1500 SR per image with the final findings, MONAI datalist and COCO "
                              "labels, a README and a manifest with the sha256 of every file.")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot hash, unique prefix, name or manifest path")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to create (must not exist)")
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help="secret that fixes the pseudonyms, for exports that must link up "
                        "(default: random, not kept)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)
    return dataset


def _archive() -> Path:
    from mammotriage.config import archive_path

    return archive_path()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_dataset_snapshot(args: argparse.Namespace) -> int:
    from mammotriage.store.datasets import DatasetError, create_snapshot, load_snapshot

    source = None
    if getattr(args, "site", None):
        if args.site_source is None:
            return _fail("--site: this installation cannot read a site's chain")
        try:
            source = args.site_source(args.site)
        except Exception as exc:  # noqa: BLE001 - a bad profile, a server away: say which and why
            return _fail(f"--site {args.site}: {type(exc).__name__}: {exc}")
    try:
        rec = create_snapshot(_archive(), rule=args.rule, role=args.role, name=args.name,
                              description=args.description, include_unreviewed=args.include_unreviewed,
                              source=source)
    except DatasetError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({**rec.to_json(), "created": rec.created}, indent=2))
        return 0
    print(("snapshot " if rec.created else "unchanged: snapshot ") + rec.sha256
          + ("" if rec.created else " already exists"))
    print(f"  {rec.role}, consensus {rec.consensus}: {rec.exams} exams, {rec.images} images, "
          f"{rec.readers} readers, {rec.labels} reader labels, {rec.consensus_labels} consensus labels")
    agreement = load_snapshot(rec.path)["agreement"]
    for pair in agreement["pairs"]:
        a, b = pair["readers"]
        rate = "n/a" if pair["match_rate"] is None else f"{pair['match_rate']:.2f}"
        kappa = pair["birads_kappa"]
        k = "n/a" if kappa["kappa"] is None else f"{kappa['kappa']:.2f}"
        print(f"  {a} vs {b}: lesion match rate {rate} ({pair['images']} images), "
              f"BI-RADS kappa {k} (n={kappa['n']})")
    missing = load_snapshot(rec.path)["counts"].get("exams_with_events_not_in_archive", 0)
    if missing and source is not None:
        print(f"  {missing} exam(s) with corrections in the site's chain are not in this workstation's index "
              "(not in the snapshot; their images come with the site archive's feed)")
    print(f"  manifest: {rec.path}")
    return 0


def cmd_dataset_list(args: argparse.Namespace) -> int:
    from mammotriage.store.datasets import list_snapshots

    records = list_snapshots(_archive())
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print("no snapshots (make one with `mammotriage dataset snapshot`)")
        return 0
    for r in records:
        print(f"{r.sha256[:12]}  {r.created_at}  {r.role:<10}  {r.consensus:<18}  {r.exams:>4} exams "
              f"{r.images:>5} images {r.consensus_labels:>5} labels  {r.name}")
    return 0


def _brief(entry: dict[str, Any]) -> str:
    box = entry.get("box")
    where = "" if box is None else " [" + ", ".join(f"{v:g}" for v in box) + "]"
    return f"{entry['sop_uid']}  {entry['owner']}  {entry['label_id']}  {entry.get('kind') or ''}" \
           f" {entry.get('status') or ''}{where}".rstrip()


def cmd_dataset_diff(args: argparse.Namespace) -> int:
    from mammotriage.store.datasets import DatasetError, diff_snapshots, load_snapshot

    try:
        a = load_snapshot(args.a, _archive())
        b = load_snapshot(args.b, _archive())
    except DatasetError as exc:
        return _fail(str(exc))
    diff = diff_snapshots(a, b)
    if args.json:
        print(json.dumps(diff.to_json(), indent=2))
        return 0
    print(f"{a['sha256'][:12]} -> {b['sha256'][:12]}: {len(diff.added)} added, {len(diff.removed)} removed, "
          f"{len(diff.changed)} changed labels; {len(diff.images_added)} images added, "
          f"{len(diff.images_removed)} removed; {len(diff.exams_changed)} exam assessments changed")
    for entry in diff.added:
        print("+ " + _brief(entry))
    for entry in diff.removed:
        print("- " + _brief(entry))
    for entry in diff.changed:
        fields = ", ".join(f"{k}: {entry['before'][k]!r} -> {entry['after'][k]!r}" for k in entry["before"])
        print(f"~ {entry['sop_uid']}  {entry['owner']}  {entry['label_id']}  {fields}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mammotriage.export.writer import ExportError, export_snapshot
    from mammotriage.progress import CliProgress
    from mammotriage.store.datasets import DatasetError

    seed = None
    if args.key_file is not None:
        try:
            seed = args.key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return _fail(f"cannot read {args.key_file}: {exc.strerror or exc}")
        if not seed:
            return _fail(f"{args.key_file} is empty")
    bar: CliProgress | None = None

    def progress(done: int, total: int, note: str) -> None:
        nonlocal bar
        if bar is None:
            bar = CliProgress(total, "export")
        bar.update(done, note)

    try:
        report = export_snapshot(args.snapshot, args.out, archive_file=_archive(), seed=seed,
                                 progress=progress)
    except (DatasetError, ExportError) as exc:
        if bar is not None:
            bar.close()
        return _fail(str(exc))
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps({"out": str(report.out), "snapshot": report.snapshot, "images": report.images,
                          "reviewed_images": report.reviewed_images, "srs": report.srs,
                          "final_labels": report.final_labels, "files": report.files,
                          "excluded": report.excluded}, indent=2))
    else:
        print(report.summary())
    return 0
