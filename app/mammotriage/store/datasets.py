"""Dataset snapshots: the current labels frozen into immutable, content-addressed manifests.

A snapshot is what training reads and what :mod:`mammotriage.export` exports. It is a
JSON manifest stored as ``<datasets dir>/<sha256>.json`` where the name is the sha256 of
the file's bytes (canonical JSON: sorted keys, no whitespace, UTF-8), plus one row in the
``dataset_snapshots`` table. The datasets folder is ``datasets/`` beside the archive
database, i.e. ``data_dir()/datasets`` for the default archive. The file is written
atomically and made read-only; the same labels with the same declared name, role and
rule give the same bytes, hence the same hash (snapshotting twice is a no-op).

What a manifest holds
---------------------
* ``images``: every image of the selected exams with its UIDs, exam key, source path,
  file sha256 (from the archive), pixel sha256 (from the correction events), size,
  laterality and view; ``original``: the AI marks each model version showed (the
  "original" labels); ``readers``: each reader's final labels (the fold of their events,
  :func:`mammotriage.store.labels.fold`), every status kept; ``consensus``: the final
  labels under the declared rule.
* ``exams``: per-reader and consensus BI-RADS / density, the readers, and the number
  and last hash of the exam's correction events (ties the snapshot to the audit chain).
* ``audit_head``: the correction-event chain's head when the snapshot was made (count,
  last seq, last hash and its keyed MAC, :mod:`mammotriage.store.audit`): the events
  the labels were folded from stay provable after the fact.
* ``agreement``: per reader pair, the per-lesion match rate (IoU >= :data:`MATCH_IOU`)
  and Cohen's kappa on BI-RADS and density, each with its *n*.

Coordinates are stored-image pixels, x = column, y = row; boxes are half-open
``[x0, y0, x1, y1]`` (as everywhere below the UI).

Selection: exams with at least one correction event; with ``include_unreviewed`` also
exams that only have AI results (their images carry the AI marks as ``original``, no
readers, ``reviewed: false`` and no consensus: unreviewed is *not* "normal").

The consensus rules and the reader agreement are computed by
:mod:`mammotriage.store.consensus` (pure functions).

This module reads the database and the files only; it never changes a label.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammotriage.clock import utc_now
from mammotriage.dicom.vocab import FINDING_KINDS as KINDS
from mammotriage.digest import sha256_file
from mammotriage.store import db
from mammotriage.store.archive import Archive, ExamRecord
from mammotriage.store.audit import head_record
from mammotriage.store.consensus import (
    BIRADS_ORDER,
    DENSITY_ORDER,
    MATCH_IOU,
    RULES,
    ConsensusRule,
    DatasetError,
    agreement,
    bbox,
    cohen_kappa,
    consensus_for_image,
    exam_consensus,
    iou,
    match_count,
)
from mammotriage.store.double_reading import DoubleReadingPolicy, exam_status, snapshot_readers
from mammotriage.store.events import CorrectionLog, Event
from mammotriage.store.labels import Label, ReaderLabels, fold

__all__ = [
    "FORMAT",
    "MATCH_IOU",
    "ROLES",
    "RULES",
    "ConsensusRule",
    "DatasetError",
    "SnapshotDiff",
    "SnapshotRecord",
    "SnapshotSource",
    "bbox",
    "build_manifest",
    "canonical_bytes",
    "cohen_kappa",
    "consensus_for_image",
    "create_snapshot",
    "datasets_dir",
    "diff_snapshots",
    "iou",
    "list_snapshots",
    "load_snapshot",
    "match_count",
    "resolve_snapshot",
]

#: Manifest format identifier (bump on an incompatible change).
FORMAT = "mammotriage.dataset/1"
#: How the rule ``arbitrated`` joins the labels it takes (see store.consensus).
_UNION = ConsensusRule("union")
#: Snapshot roles; validation snapshots are held out of training (and locked later).
ROLES = ("training", "validation")


# --------------------------------------------------------------------------- labels


def _label_json(label: Label) -> dict[str, Any]:
    return {
        "label_id": label.label_id,
        "source": label.source,
        "status": label.status,
        "positive": label.is_positive,
        "kind": label.kind,
        "geometry": label.geometry,
        "box": [round(v, 3) for v in bbox(label.geometry)],
        "score": label.score,
        "original_kind": label.original_kind,
        "original_geometry": label.original_geometry,
    }


# --------------------------------------------------------------------------- build


def datasets_dir(archive_file: str | Path | None = None) -> Path:
    """Folder of the snapshot manifests: ``datasets/`` beside the archive database."""
    if archive_file is None:
        from mammotriage.config import archive_path

        archive_file = archive_path()
    return Path(archive_file).expanduser().resolve().parent / "datasets"


def _ai_results(conn: sqlite3.Connection, sop_uid: str) -> dict[str, dict[str, Any]]:
    """model version -> {weights_sha256, score, findings, created_at} for one image."""
    rows = conn.execute(
        "SELECT model_version, weights_sha256, score, findings, created_at FROM ai_image_results "
        "WHERE sop_uid = ? ORDER BY created_at DESC, model_version", (sop_uid,)).fetchall()
    return {r["model_version"]: {"weights_sha256": r["weights_sha256"], "score": float(r["score"]),
                                 "findings": json.loads(r["findings"]), "created_at": r["created_at"]}
            for r in rows}


def _reader_versions(events: Sequence[Event]) -> dict[str, str]:
    """Reader -> the model version whose marks that reader last saw in this exam."""
    out: dict[str, str] = {}
    for e in events:
        out.setdefault(e.reader, "")
        if e.model_version:
            out[e.reader] = e.model_version
    return out


def _marks(results: Mapping[str, Mapping[str, dict[str, Any]]], version: str
           ) -> dict[str, list[dict[str, Any]]]:
    return {sop: list(per[version]["findings"]) for sop, per in results.items() if version in per}


def _exam_entry_and_images(exam: ExamRecord, events: list[Event], conn: sqlite3.Connection,
                           rule: ConsensusRule, discordance_rule: str = "recall"
                           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results = {img.sop_uid: _ai_results(conn, img.sop_uid) for img in exam.images}
    versions = _reader_versions(events)
    folded: dict[str, ReaderLabels] = {}
    for reader, version in sorted(versions.items()):
        own = [e for e in events if e.reader == reader]
        folded[reader] = fold(own, _marks(results, version), version).get(reader, ReaderLabels(reader))
    shown = sorted({v for v in versions.values() if v})
    if not events:  # unreviewed: the newest results are the original marks
        newest = {v for per in results.values() for v in list(per)[:1]}
        shown = sorted(newest)
    pixel_hashes: dict[str, set[str]] = {}
    for e in events:
        if e.sop_uid and e.pixel_sha256:
            pixel_hashes.setdefault(e.sop_uid, set()).add(e.pixel_sha256)

    status = exam_status(exam.exam_key, events, discordance_rule) if rule.name == "arbitrated" else None
    settled = snapshot_readers(status) if status is not None else None
    images = []
    for img in exam.images:
        per_reader = {reader: [_label_json(lab) for lab in sorted(rl.labels(img.sop_uid),
                                                                    key=lambda x: x.label_id)]
                      for reader, rl in sorted(folded.items())}
        original = []
        for version in shown:
            res = results[img.sop_uid].get(version)
            if res is None:
                continue
            original.append({
                "model_version": version, "weights_sha256": res["weights_sha256"], "score": res["score"],
                "marks": [{"label_id": f"ai:{version}:{img.sop_uid}:{i}", "kind": m["kind"],
                           "box": [float(v) for v in m["box"]], "score": float(m["score"])}
                          for i, m in enumerate(res["findings"])],
            })
        hashes = sorted(pixel_hashes.get(img.sop_uid, set()))
        entry: dict[str, Any] = {
            "sop_uid": img.sop_uid, "study_uid": img.study_uid, "series_uid": img.series_uid,
            "exam_key": exam.exam_key, "path": img.path, "sha256": img.sha256, "size": img.size,
            "pixel_sha256": hashes[0] if len(hashes) == 1 else "",
            "rows": img.rows, "columns": img.columns,
            "spacing_mm": [img.spacing.row_mm, img.spacing.col_mm] if img.spacing else None,
            "laterality": img.laterality.value, "view": img.view.value,
            "reviewed": bool(folded),
            "original": original,
            "readers": per_reader,
        }
        if len(hashes) > 1:
            entry["pixel_sha256_conflict"] = hashes
        if folded and settled is not None:
            chosen = settled[0] or list(per_reader)
            entry["consensus"], _ = consensus_for_image({r: per_reader.get(r, []) for r in chosen}, _UNION)
            entry["consensus_source"] = settled[1]
        elif folded:
            entry["consensus"], entry["consensus_source"] = consensus_for_image(per_reader, rule)
        else:
            entry["consensus"], entry["consensus_source"] = [], None
        images.append(entry)

    birads = {r: rl.birads for r, rl in sorted(folded.items())}
    density = {r: rl.density for r, rl in sorted(folded.items())}
    exam_entry = {
        "exam_key": exam.exam_key,
        "study_uids": list(exam.study_uids),
        "patient_key": hashlib.sha256(f"patient|{exam.patient_id}".encode()).hexdigest()[:16],
        "reviewed": bool(folded),
        "readers": {r: {"birads": birads[r], "density": density[r], "model_version": versions[r]}
                    for r in sorted(folded)},
        "consensus": {"birads": exam_consensus(birads, BIRADS_ORDER, rule),
                      "density": exam_consensus(density, DENSITY_ORDER, rule)},
        "events": {"count": len(events), "last_hash": events[-1].hash if events else None},
        "images": [img.sop_uid for img in exam.images],
    }
    if status is not None and settled is not None:
        chosen = settled[0] or sorted(folded)
        agreed = status.consensus()
        exam_entry["consensus"] = {
            "birads": exam_consensus({r: birads.get(r) for r in chosen}, BIRADS_ORDER, _UNION),
            "density": exam_consensus({r: density.get(r) for r in chosen}, DENSITY_ORDER, _UNION),
            "recall": agreed["recall"] if agreed else None, "assessment": agreed}
        exam_entry["double_reading"] = {"state": status.state, "readers": list(status.readers),
                                        "arbitrator": status.arbitrator or None, "reasons": list(status.reasons)}
    return exam_entry, images


@dataclass(frozen=True)
class SnapshotSource:
    """Corrections from elsewhere than the archive's own log: a site's chain, as read by
    the caller (``events`` up to ``audit_head``; ``store`` says where, into the manifest)."""

    events: Sequence[Event]
    audit_head: dict[str, Any]
    store: dict[str, Any]


def build_manifest(archive_file: str | Path | None = None, *, rule: str | ConsensusRule = "union",
                   role: str = "training", name: str = "", description: str = "",
                   include_unreviewed: bool = False, source: SnapshotSource | None = None) -> dict[str, Any]:
    """The manifest of the current labels (not stored; see :func:`create_snapshot`).

    Parameters
    ----------
    archive_file
        Archive database; the default archive when ``None``.
    rule
        Consensus rule, ``"union"``, ``"majority"``, ``"adjudicator:NAME"`` or ``"arbitrated"``
        (double reading: the arbitration, else the concordant reads; see store.consensus).
    role
        ``"training"`` or ``"validation"``.
    name, description
        Free text recorded in the manifest (part of its hash).
    include_unreviewed
        Also take exams without correction events that have AI results.
    source
        The corrections of a site's chain instead of the archive's own log (site mode:
        the workstation's log holds none); the exams and AI results still come from
        this archive, and the manifest names the source under ``store``.

    Raises
    ------
    DatasetError
        Unknown rule or role, an adjudicator who read none of the exams, or nothing
        to snapshot.
    """
    rule = ConsensusRule.parse(rule)
    if role not in ROLES:
        raise DatasetError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if archive_file is None:
        from mammotriage.config import archive_path

        archive_file = archive_path()
    archive_file = Path(archive_file)
    # the discordance rule of the site's double reading (data directory = the archive's folder)
    discordance_rule = DoubleReadingPolicy.load(archive_file.parent).discordance
    with Archive(archive_file) as archive, CorrectionLog(archive_file) as log:
        conn = log.conn
        events_by_exam: dict[str, list[Event]] = {}
        for e in (source.events if source is not None else log.events()):
            events_by_exam.setdefault(e.exam_key, []).append(e)
        keys = set(events_by_exam)
        if include_unreviewed:
            keys |= {r[0] for r in conn.execute("SELECT DISTINCT exam_key FROM ai_exam_results")}
        exams: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        missing = []
        for key in sorted(keys):
            exam = archive.exam(key)
            if exam is None or not exam.images:
                missing.append(key)
                continue
            entry, imgs = _exam_entry_and_images(exam, events_by_exam.get(key, []), conn, rule, discordance_rule)
            exams.append(entry)
            images.extend(imgs)
        audit_head = source.audit_head if source is not None else head_record(log.signed_head())
    if not exams and source is not None and not missing:
        raise DatasetError("nothing to snapshot: the site's chain holds no corrections yet")
    if not exams and source is not None and missing:
        raise DatasetError(f"nothing to snapshot: none of the {len(missing)} exams with corrections in the site's "
                           "chain is in this workstation's index (their images come with the site archive's feed)")
    if not exams:
        raise DatasetError("nothing to snapshot: no exam in the archive has correction events"
                           + ("" if include_unreviewed else
                              " (use --include-unreviewed to take AI-marked exams as unreviewed)"))
    if rule.adjudicator and not any(rule.adjudicator in e["readers"] for e in exams):
        raise DatasetError(f"adjudicator {rule.adjudicator!r} has read none of the exams")
    readers = sorted({r for e in exams for r in e["readers"]})
    counts = {
        "exams": len(exams),
        "exams_reviewed": sum(1 for e in exams if e["reviewed"]),
        "images": len(images),
        "readers": len(readers),
        "labels": sum(1 for img in images for labs in img["readers"].values() for lab in labs
                      if lab["positive"]),
        "consensus_labels": sum(len(img["consensus"]) for img in images),
        "ai_marks": sum(len(o["marks"]) for img in images for o in img["original"]),
        "exams_with_events_not_in_archive": len(missing),
    }
    consensus = rule.to_json()
    if rule.name == "arbitrated":
        consensus["discordance"] = discordance_rule
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "description": description,
        "role": role,
        "consensus": consensus,
        "selection": {"include_unreviewed": bool(include_unreviewed)},
        "kinds": list(KINDS),
        "coordinates": "stored-image pixels; x = column, y = row; boxes [x0, y0, x1, y1] half-open",
        "readers": readers,
        "counts": counts,
        "agreement": agreement(exams, images),
        "exams": exams,
        "images": images,
        "audit_head": audit_head,
    }
    if source is not None:  # only then: a standalone manifest (and its hash) is as before
        manifest["store"] = dict(source.store)
    return manifest


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a manifest is stored (and hashed) as: sorted keys, no whitespace, UTF-8."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class SnapshotRecord:
    """One row of ``dataset_snapshots``."""

    sha256: str
    created_at: str
    name: str
    description: str
    role: str
    consensus: str
    exams: int
    images: int
    readers: int
    labels: int
    consensus_labels: int
    path: Path
    created: bool = field(default=False, compare=False)  # True when this call wrote it

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "created_at": self.created_at, "name": self.name,
                "description": self.description, "role": self.role, "consensus": self.consensus,
                "exams": self.exams, "images": self.images, "readers": self.readers,
                "labels": self.labels, "consensus_labels": self.consensus_labels,
                "path": str(self.path)}


def _write_read_only(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename) and make it read-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _record(row: sqlite3.Row, folder: Path) -> SnapshotRecord:
    return SnapshotRecord(
        sha256=row["sha256"], created_at=row["created_at"], name=row["name"],
        description=row["description"], role=row["role"], consensus=row["consensus"],
        exams=int(row["exams"]), images=int(row["images"]), readers=int(row["readers"]),
        labels=int(row["labels"]), consensus_labels=int(row["consensus_labels"]),
        path=folder / f"{row['sha256']}.json")


def create_snapshot(archive_file: str | Path | None = None, *, rule: str | ConsensusRule = "union",
                    role: str = "training", name: str = "", description: str = "",
                    include_unreviewed: bool = False, source: SnapshotSource | None = None) -> SnapshotRecord:
    """Freeze the current labels: write the manifest and record it.

    Returns the record; ``created`` is False when an identical snapshot already existed
    (same labels, name, description, role and rule give the same hash).
    """
    if archive_file is None:
        from mammotriage.config import archive_path

        archive_file = archive_path()
    manifest = build_manifest(archive_file, rule=rule, role=role, name=name, description=description,
                              include_unreviewed=include_unreviewed, source=source)
    data = canonical_bytes(manifest)
    digest = hashlib.sha256(data).hexdigest()
    folder = datasets_dir(archive_file)
    path = folder / f"{digest}.json"
    if path.exists():
        if sha256_file(path) != digest:
            raise DatasetError(f"{path} exists but does not match its name (tampered?)")
    else:
        _write_read_only(path, data)
    counts = manifest["counts"]
    conn = db.connect(archive_file)
    try:
        with db.transaction(conn):
            cur = conn.execute(
                """INSERT OR IGNORE INTO dataset_snapshots (sha256, created_at, name, description, role,
                   consensus, exams, images, readers, labels, consensus_labels, manifest)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (digest, utc_now(), name, description,
                 role, str(ConsensusRule.parse(rule)), counts["exams"], counts["images"],
                 counts["readers"], counts["labels"], counts["consensus_labels"],
                 f"datasets/{digest}.json"))
            created = cur.rowcount == 1
            row = conn.execute("SELECT * FROM dataset_snapshots WHERE sha256 = ?", (digest,)).fetchone()
    finally:
        conn.close()
    rec = _record(row, folder)
    return SnapshotRecord(**{**rec.__dict__, "created": created})


def list_snapshots(archive_file: str | Path | None = None) -> list[SnapshotRecord]:
    """All recorded snapshots, oldest first."""
    if archive_file is None:
        from mammotriage.config import archive_path

        archive_file = archive_path()
    folder = datasets_dir(archive_file)
    conn = db.connect(archive_file)
    try:
        rows = conn.execute("SELECT * FROM dataset_snapshots ORDER BY created_at, sha256").fetchall()
    finally:
        conn.close()
    return [_record(r, folder) for r in rows]


def resolve_snapshot(ref: str | Path, archive_file: str | Path | None = None) -> Path:
    """Path of a snapshot manifest from a full hash, a unique hash prefix (>= 6 hex
    digits), a snapshot name, or a path to a manifest file."""
    text = str(ref).strip()
    candidate = Path(text).expanduser()
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    folder = datasets_dir(archive_file)
    if len(text) == 64 and (folder / f"{text}.json").is_file():
        return folder / f"{text}.json"
    hexdigits = set("0123456789abcdef")
    matches: list[Path] = []
    if len(text) >= 6 and set(text.lower()) <= hexdigits:
        matches = sorted(folder.glob(f"{text.lower()}*.json"))
    if not matches:
        named = [r for r in list_snapshots(archive_file) if r.name and r.name == text]
        matches = sorted({r.path for r in named})
    if not matches:
        raise DatasetError(f"no snapshot {text!r} (see `mammotriage dataset list`)")
    if len(matches) > 1:
        raise DatasetError(f"{text!r} is ambiguous: " + ", ".join(p.stem[:12] for p in matches))
    return matches[0]


def load_snapshot(ref: str | Path, archive_file: str | Path | None = None) -> dict[str, Any]:
    """Read and verify a snapshot manifest (its sha256 must equal its file name).

    The returned dict has an extra key ``"sha256"`` (not part of the hashed content).
    """
    path = resolve_snapshot(ref, archive_file)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.stem != digest:
        raise DatasetError(f"snapshot {path} does not match its name: content sha256 is {digest}")
    manifest: dict[str, Any] = json.loads(data)
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    manifest["sha256"] = digest
    return manifest


# --------------------------------------------------------------------------- diff


@dataclass
class SnapshotDiff:
    """Labels added, removed and changed from snapshot ``a`` to snapshot ``b``.

    Each entry: ``{"sop_uid", "owner", "label_id", ...}`` where ``owner`` is a reader
    name, ``"consensus"`` or ``"original:<model version>"``; changed entries carry
    ``"before"``/``"after"`` (only the fields that differ).
    """

    a: str
    b: str
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    images_added: list[str] = field(default_factory=list)
    images_removed: list[str] = field(default_factory=list)
    exams_changed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.images_added
                    or self.images_removed or self.exams_changed)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "added": self.added, "removed": self.removed,
                "changed": self.changed, "images_added": self.images_added,
                "images_removed": self.images_removed, "exams_changed": self.exams_changed}


_COMPARED = ("status", "kind", "geometry", "score", "positive", "suspicion")


def _flat_labels(manifest: Mapping[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for img in manifest["images"]:
        sop = img["sop_uid"]
        for reader, labels in img["readers"].items():
            for lab in labels:
                out[(sop, reader, lab["label_id"])] = lab
        for lab in img["consensus"]:
            out[(sop, "consensus", lab["label_id"])] = lab
        for orig in img["original"]:
            for mark in orig["marks"]:
                out[(sop, f"original:{orig['model_version']}", mark["label_id"])] = mark
    return out


def diff_snapshots(a: Mapping[str, Any], b: Mapping[str, Any]) -> SnapshotDiff:
    """Compare two loaded manifests (see :func:`load_snapshot`), label by label."""
    la, lb = _flat_labels(a), _flat_labels(b)
    out = SnapshotDiff(str(a.get("sha256", "")), str(b.get("sha256", "")))

    def brief(key: tuple[str, str, str], lab: Mapping[str, Any]) -> dict[str, Any]:
        return {"sop_uid": key[0], "owner": key[1], "label_id": key[2], "kind": lab.get("kind"),
                "status": lab.get("status"), "box": lab.get("box")}

    for key in sorted(lb.keys() - la.keys()):
        out.added.append(brief(key, lb[key]))
    for key in sorted(la.keys() - lb.keys()):
        out.removed.append(brief(key, la[key]))
    for key in sorted(la.keys() & lb.keys()):
        before, after = la[key], lb[key]
        fields = [f for f in _COMPARED if before.get(f) != after.get(f)]
        if fields:
            out.changed.append({"sop_uid": key[0], "owner": key[1], "label_id": key[2],
                                "before": {f: before.get(f) for f in fields},
                                "after": {f: after.get(f) for f in fields}})
    sops_a = {img["sop_uid"] for img in a["images"]}
    sops_b = {img["sop_uid"] for img in b["images"]}
    out.images_added = sorted(sops_b - sops_a)
    out.images_removed = sorted(sops_a - sops_b)
    exams_a = {e["exam_key"]: e for e in a["exams"]}
    for e in b["exams"]:
        old = exams_a.get(e["exam_key"])
        if old is not None and (old["readers"] != e["readers"] or old["consensus"] != e["consensus"]):
            out.exams_changed.append({"exam_key": e["exam_key"],
                                      "before": {"readers": old["readers"], "consensus": old["consensus"]},
                                      "after": {"readers": e["readers"], "consensus": e["consensus"]}})
    return out
