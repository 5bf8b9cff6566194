"""Data tests before training: a validation report per dataset snapshot.

The data is the code: :func:`check_snapshot` tests a snapshot before anything trains on
it, and :func:`~mammotriage.learning.retrain.retrain` refuses a snapshot whose report
fails, with its reasons. ``mammotriage dataset check SNAPSHOT [--json]`` prints it.

Checks (a failing check is a reason; the report passes when none fails):

* ``boxes_inside``: every label box (consensus and each reader's) lies inside its
  image (``0 <= x0 < x1 <= columns``, ``0 <= y0 < y1 <= rows``, finite numbers);
* ``known_kinds``: every label kind is one of :data:`mammotriage.store.events.KINDS`;
* ``no_validation_overlap`` (training snapshots): after the validation guard's
  exclusions no image (SOP UID, file hash or pixel hash) and no patient of what would be
  trained on is in any of the site's validation snapshots (the excluded ones are counted);
* ``pixels_unchanged``: each labelled image's file is still there and its decoded pixels
  still have the sha256 the reader's events recorded (``pixels=False`` skips decoding);
  an image labelled on two different pixel hashes fails too.

Reported, not gated: image / exam / patient counts, per-scanner (manufacturer and model
from the archive) and per-kind counts, and the readers' agreement (per-lesion match rate
and BI-RADS kappa per reader pair, from the manifest), with a warning when the readers
agree on fewer than half of the lesions.

The report is written to ``<datasets dir>/checks/<snapshot sha256>.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPORT_FORMAT = "mammotriage.dataset-check/1"
#: How many offending items a check lists (the count is always complete).
MAX_LISTED = 20
#: Below this overall lesion match rate (with at least MIN_AGREEMENT_LESIONS lesions) a warning.
LOW_AGREEMENT = 0.5
MIN_AGREEMENT_LESIONS = 5


def _labels(img: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(who, label) for the consensus and every reader's positive labels of an image."""
    out = [("consensus", lab) for lab in img.get("consensus") or []]
    for reader, labs in sorted((img.get("readers") or {}).items()):
        out.extend((reader, lab) for lab in labs if lab.get("positive", True))
    return out


def _box_problem(box: Any, rows: int, columns: int) -> str | None:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return f"not a box: {box!r}"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return f"not finite: {[x0, y0, x1, y1]}"
    if not (x1 > x0 and y1 > y0):
        return f"empty box {[x0, y0, x1, y1]}"
    if x0 < 0 or y0 < 0 or x1 > columns or y1 > rows:
        return f"box {[round(v, 1) for v in (x0, y0, x1, y1)]} outside the {columns}x{rows} image"
    return None


def _check(name: str, problems: list[str], passed_note: str, *, what: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "passed": not problems, "count": len(problems),
            "problems": problems[:MAX_LISTED],
            "message": passed_note if not problems else f"{name}: {len(problems)} {what}".rstrip()
            + (": " + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")),
            **extra}


def _scanners(archive_file: Path, sop_uids: set[str]) -> dict[str, str]:
    from mammotriage.store import db

    conn = db.connect(archive_file)
    try:
        out = {}
        for r in conn.execute("SELECT i.sop_uid, s.manufacturer, s.model FROM images AS i "
                              "JOIN series AS s ON s.series_uid = i.series_uid"):
            if r[0] in sop_uids:
                out[r[0]] = " ".join(x for x in (r[1] or "", r[2] or "") if x).strip() or "unknown"
        return out
    finally:
        conn.close()


def _pixel_problems(images: list[Mapping[str, Any]]) -> list[str]:
    from mammotriage.dicom import MammoReadError, read_image
    from mammotriage.dicom.image import pixel_sha256

    problems = []
    for img in images:
        sop = str(img["sop_uid"])
        if img.get("pixel_sha256_conflict"):
            problems.append(f"{sop}: labelled on {len(img['pixel_sha256_conflict'])} different pixel hashes")
            continue
        expected = img.get("pixel_sha256")
        if not expected:
            continue
        path = Path(str(img.get("path", "")))
        try:
            actual = pixel_sha256(read_image(path).pixels)
        except MammoReadError as exc:
            problems.append(f"{path}: cannot be read any more ({exc.reason})")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot be read any more ({exc.strerror or exc})")
            continue
        if actual != expected:
            problems.append(f"{path}: pixels changed since they were labelled "
                            f"(sha256 {expected[:12]}... then, {actual[:12]}... now)")
    return problems


def _overlap_check(manifest: Mapping[str, Any], archive_file: Path) -> dict[str, Any]:
    """What retrain would train on (:func:`~mammotriage.learning.snapshot_data.training_set`)
    against every validation snapshot's images and patients."""
    from mammotriage.learning.snapshot_data import SnapshotDataError, training_set, validation_guard

    guard = validation_guard(archive_file)
    by_sop = {str(img["sop_uid"]): img for img in manifest.get("images", [])}
    try:
        ts = training_set(manifest, archive_file, guard=guard)
    except SnapshotDataError as exc:
        return _check("no_validation_overlap", [str(exc)], "", what="problem")
    problems = []
    for sample in ts.samples:
        img = by_sop.get(sample.key.split(":", 1)[1], {})
        patient = sample.group.split(":", 1)[1]
        shared = [what for what, hit in (
            ("SOP instance", img.get("sop_uid") in guard.sop_uids),
            ("file", bool(img.get("sha256")) and img.get("sha256") in guard.file_sha256),
            ("pixels", bool(img.get("pixel_sha256")) and img.get("pixel_sha256") in guard.pixel_sha256),
            ("patient", patient in guard.patients)) if hit]
        if shared:
            problems.append(f"{sample.key}: same {', '.join(shared)} as a validation image")
    excluded = dict(sorted(ts.excluded.items()))
    return _check("no_validation_overlap", problems,
                  f"no image or patient trained on is in a validation snapshot ({len(ts.samples)} images to "
                  f"train on" + (f"; excluded {excluded}" if excluded else "") + ")",
                  what="image(s) to train on shared with a validation snapshot",
                  excluded=excluded, validation_snapshots=list(guard.snapshots), trainable=len(ts.samples))


def check_snapshot(ref: str | Path | Mapping[str, Any], archive_file: str | Path | None = None, *,
                   pixels: bool = True, write: bool = True) -> dict[str, Any]:
    """The validation report of a snapshot (see the module docstring)."""
    from mammotriage.learning.snapshot_data import archive_or_default
    from mammotriage.store.datasets import datasets_dir, load_snapshot
    from mammotriage.store.events import KINDS

    archive_file = archive_or_default(archive_file)
    manifest = dict(ref) if isinstance(ref, Mapping) else load_snapshot(ref, archive_file)
    sha = str(manifest.get("sha256", ""))
    images = list(manifest.get("images", []))
    exams = list(manifest.get("exams", []))
    labelled = [img for img in images if img.get("reviewed")]

    outside, unknown = [], []
    kinds: Counter[str] = Counter()
    for img in labelled:
        rows, cols = int(img.get("rows") or 0), int(img.get("columns") or 0)
        for who, lab in _labels(img):
            problem = _box_problem(lab.get("box"), rows, cols)
            if problem:
                outside.append(f"{img['sop_uid']} ({who}): {problem}")
            kind = lab.get("kind")
            if kind not in KINDS:
                unknown.append(f"{img['sop_uid']} ({who}): kind {kind!r}")
        for lab in img.get("consensus") or []:
            kinds[str(lab.get("kind"))] += 1
    checks = [
        _check("boxes_inside", outside, "every label box lies inside its image", what="label box(es) off the image"),
        _check("known_kinds", unknown, f"every label kind is known ({', '.join(KINDS)})",
               what="label(s) of an unknown kind"),
    ]
    warnings: list[str] = []

    if manifest.get("role") == "training":
        checks.append(_overlap_check(manifest, archive_file))
    if pixels:
        checks.append(_check("pixels_unchanged", _pixel_problems(labelled),
                             "every labelled image still has the pixels it was labelled on",
                             what="image(s) whose pixels are not those labelled"))
    else:
        warnings.append("pixels not checked (pixels=False)")

    scanners = _scanners(archive_file, {str(i["sop_uid"]) for i in images})
    per_scanner: dict[str, dict[str, int]] = {}
    for img in labelled:
        s = per_scanner.setdefault(scanners.get(str(img["sop_uid"]), "unknown"), {"images": 0, "labels": 0})
        s["images"] += 1
        s["labels"] += len(img.get("consensus") or [])
    agreement = manifest.get("agreement") or {}
    pooled = agreement.get("overall_match_rate")
    lesions = sum(sum(p.get("lesions", {}).values()) for p in agreement.get("pairs", []))
    if pooled is not None and lesions >= MIN_AGREEMENT_LESIONS and pooled < LOW_AGREEMENT:
        warnings.append(f"readers agree on only {pooled:.0%} of {lesions} lesions (match rate < {LOW_AGREEMENT:.0%})")
    if not labelled:
        checks.append(_check("reviewed_images", ["no image of the snapshot was reviewed by a reader"],
                             "", what="problem"))
    reasons = [c["message"] for c in checks if not c["passed"]]
    report = {
        "format": REPORT_FORMAT,
        "snapshot": sha,
        "name": manifest.get("name", ""),
        "role": manifest.get("role"),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "passed": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "checks": checks,
        "counts": {"images": len(images), "reviewed_images": len(labelled), "exams": len(exams),
                   "patients": len({e.get("patient_key") for e in exams}),
                   "per_kind": dict(sorted(kinds.items())), "per_scanner": dict(sorted(per_scanner.items()))},
        "agreement": {"overall_match_rate": pooled, "lesions": lesions,
                      "pairs": [{"readers": p["readers"], "match_rate": p.get("match_rate"),
                                 "birads_kappa": (p.get("birads_kappa") or {}).get("kappa"),
                                 "exams": p.get("exams")} for p in agreement.get("pairs", [])]},
    }
    if write and sha:
        folder = datasets_dir(archive_file) / "checks"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{sha}.json").write_text(json.dumps(report, indent=1) + "\n")
        report["report_path"] = str(folder / f"{sha}.json")
    return report


def report_text(report: Mapping[str, Any]) -> str:
    """Plain-text form of :func:`check_snapshot`'s report."""
    c = report["counts"]
    lines = [f"snapshot {report['snapshot'][:12]} ({report.get('name') or 'unnamed'}, {report.get('role')}): "
             f"{c['reviewed_images']}/{c['images']} images reviewed, {c['exams']} exams, {c['patients']} patients",
             f"labels per kind: {json.dumps(c['per_kind'])}",
             "per scanner: " + "; ".join(f"{k}: {v['images']} images, {v['labels']} labels"
                                         for k, v in c["per_scanner"].items())]
    a = report["agreement"]
    if a["pairs"]:
        lines.append(f"reader agreement: lesion match rate {a['overall_match_rate']} over {a['lesions']} lesions; "
                     + "; ".join(f"{'/'.join(p['readers'])}: {p['match_rate']} (BI-RADS kappa {p['birads_kappa']})"
                                 for p in a["pairs"]))
    else:
        lines.append("reader agreement: one reader per image (not measurable)")
    for ch in report["checks"]:
        lines.append(f"  {'ok  ' if ch['passed'] else 'FAIL'} {ch['message']}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    lines += [f"  warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)
