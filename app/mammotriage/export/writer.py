"""Export a dataset snapshot as a self-describing, de-identified folder.

:func:`export_snapshot` writes everything into ``OUT.partial-<random>`` beside ``OUT``
and renames it to ``OUT`` only at the very end, after the PHI scan passed and
``manifest.json`` (sha256 and size of every other file) was written and everything was
flushed to disk. A crash or an error at any point before leaves only the
``.partial-*`` folder, which has no ``manifest.json``: nothing that looks complete.
An existing ``OUT`` is never overwritten. See ``README.md`` of an export (written by
:mod:`mammotriage.export.readme`) for the layout.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from mammotriage import __version__
from mammotriage.clock import utc_datetime
from mammotriage.dicom.image import pixel_sha256
from mammotriage.dicom.read import read_image
from mammotriage.dicom.sr import (
    READER_FINDINGS_DESCRIPTION,
    ReaderFindingRecord,
    write_reader_findings_sr,
)
from mammotriage.digest import sha256_file
from mammotriage.export.deid import Deidentifier, burned_in_annotation
from mammotriage.export.formats import ExportItem, clip_geometry, coco, monai_datalist
from mammotriage.export.phi import PhiNeedles, phi_needles, scan_folder
from mammotriage.export.profile import check_profile
from mammotriage.export.readme import render_readme
from mammotriage.store.consensus import bbox
from mammotriage.store.datasets import load_snapshot

__all__ = ["EXPORT_FORMAT", "ExportError", "ExportReport", "export_snapshot"]

EXPORT_FORMAT = "mammotriage.export/1"
LABELS_FORMAT = "mammotriage.export-labels/1"

#: ``progress(done, total, note)``, called after each image.
ProgressCallback = Callable[[int, int, str], None]


class ExportError(RuntimeError):
    """The export cannot be made (target exists, nothing exportable, PHI found ...)."""


@dataclass
class ExportReport:
    out: Path
    snapshot: str
    images: int
    reviewed_images: int
    srs: int
    final_labels: int
    excluded: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0

    def summary(self) -> str:
        lines = [f"exported snapshot {self.snapshot[:12]} to {self.out}: {self.images} images "
                 f"({self.reviewed_images} reviewed), {self.final_labels} final findings, "
                 f"{self.srs} SR reports, {self.files} files"]
        lines += [f"  excluded snapshot image #{e['snapshot_image']} ({e['laterality']}{e['view']}): "
                  f"{e['reason']}" for e in self.excluded]
        return "\n".join(lines)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False, allow_nan=False)
                    + "\n", encoding="utf-8")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (files first, deepest folders first)."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _fsync_dir(folder)
    _fsync_dir(root)


def _source_text(source: str | None, consensus: Mapping[str, Any]) -> str | None:
    """The image's consensus source with the adjudicator's pseudonym."""
    if source and source.startswith("adjudicator:"):
        return f"adjudicator:{consensus.get('adjudicator')}"
    return source


def _rewrite_id(label_id: str, sop_map: Mapping[str, str]) -> str:
    """AI mark ids embed the SOP Instance UID: use the pseudonymous one."""
    if label_id.startswith("ai:"):
        head, sop, index = label_id.rsplit(":", 2)
        return f"{head}:{sop_map.get(sop, 'unknown')}:{index}"
    return label_id


def _exclusion(index: int, img: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {"snapshot_image": index, "laterality": img["laterality"], "view": img["view"], "reason": reason}


def _drop_clinical_trial(sr: Dataset) -> None:
    """highdicom copies the Patient and Study IE modules of the evidence into an SR, the
    Clinical Trial Subject and Study modules included; a findings SR of a research export
    carries none of them (the images keep the profile's dummies)."""
    for element in list(sr):
        if element.keyword.startswith("ClinicalTrial"):
            del sr[element.tag]


def _check_source(img: Mapping[str, Any]) -> tuple[Dataset | None, str | None]:
    """(dataset, None) when the image may be exported, else (dataset or None, reason)."""
    src = Path(img["path"])
    if not src.is_file():
        return None, "source file missing"
    if sha256_file(src) != img["sha256"]:
        return None, "source file changed since the snapshot (sha256 differs)"
    ds = pydicom.dcmread(src)
    flag = burned_in_annotation(ds)
    if flag != "NO":
        return ds, (f"Burned In Annotation is {flag}" if flag else "Burned In Annotation is absent") + \
            " (pixels may show identifying text)"
    if img.get("pixel_sha256") and pixel_sha256(read_image(src).pixels) != img["pixel_sha256"]:
        return ds, "decoded pixels differ from those the readers labelled"
    return ds, None


def export_snapshot(snapshot: str | Path | Mapping[str, Any], out: str | Path, *,
                    archive_file: str | Path | None = None, seed: str | None = None,
                    progress: ProgressCallback | None = None) -> ExportReport:
    """Export a snapshot: de-identified images, SR per image, MONAI / COCO / full labels,
    README and a manifest with the sha256 of every file.

    Parameters
    ----------
    snapshot
        A snapshot reference (hash, unique prefix, name or manifest path) or a manifest
        already loaded with :func:`~mammotriage.store.datasets.load_snapshot`.
    out
        Export folder to create; must not exist.
    archive_file
        Archive whose ``datasets/`` folder holds the snapshot (default archive if None).
    seed
        Pseudonymisation secret (see :class:`~mammotriage.export.deid.Deidentifier`);
        ``None``: random and not kept.
    progress
        Called after each image with ``(done, total, view label)``.

    Raises
    ------
    ExportError
        ``out`` exists, no image could be exported, or the PHI scan found a source
        identifier in the staged files (the ``.partial-*`` folder is left for inspection).
    """
    manifest = dict(snapshot) if isinstance(snapshot, Mapping) else load_snapshot(snapshot, archive_file)
    out = Path(out).expanduser().absolute()
    if out.exists() or out.is_symlink():
        raise ExportError(f"{out} already exists; an export never overwrites (choose a new folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    created = utc_datetime().replace(microsecond=0)
    created_text = created.isoformat()

    deid = Deidentifier(seed)
    readers = list(manifest.get("readers", []))
    pseudo = {r: f"reader-{i}" for i, r in enumerate(readers, 1)}
    consensus = dict(manifest["consensus"])
    if consensus.get("adjudicator"):
        consensus["adjudicator"] = pseudo.get(consensus["adjudicator"], "reader-?")

    needles = PhiNeedles()
    images = manifest["images"]
    total = len(images)
    items: list[ExportItem] = []
    full: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    sop_map: dict[str, str] = {}
    study_numbers: dict[str, int] = {}
    study_counts: dict[str, int] = {}
    sr_series: dict[str, str] = {}
    srs = 0
    for index, img in enumerate(images):
        ds, reason = _check_source(img)
        if ds is not None:
            needles.update(phi_needles(ds))
        if reason is not None or ds is None:
            excluded.append(_exclusion(index, img, reason or "unreadable"))
            if progress is not None:
                progress(index + 1, total, f"{img['laterality']}{img['view']} excluded")
            continue
        deid(ds)
        problems = check_profile(pydicom.dcmread(img["path"], stop_before_pixels=True), ds)
        if problems:
            raise ExportError(f"de-identification of snapshot image #{index} broke PS3.15 Table E.1-1 "
                              f"(export left in {staging}, not published):\n  " + "\n  ".join(problems[:20]))
        study = str(ds.StudyInstanceUID)
        number = study_numbers.setdefault(study, len(study_numbers) + 1)
        study_counts[study] = study_counts.get(study, 0) + 1
        label = f"{img['laterality']}{img['view']}"
        stem = f"{number:04d}/{study_counts[study]:02d}_{label}"
        rel = f"images/{stem}.dcm"
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(staging / rel, enforce_file_format=True)
        sop_map[img["sop_uid"]] = str(ds.SOPInstanceUID)
        rows, columns = int(ds.Rows), int(ds.Columns)

        final = []
        for lab in img["consensus"]:
            geometry = clip_geometry(lab["geometry"], columns, rows)
            if geometry is None:
                continue
            final.append({"label_id": lab["label_id"], "kind": lab["kind"], "geometry": geometry,
                          "box": list(bbox(geometry))})
        ai = []
        for orig in img["original"]:
            for i, mark in enumerate(orig["marks"]):
                geometry = clip_geometry({"type": "box", "box": mark["box"]}, columns, rows)
                if geometry is not None:
                    ai.append({"label_id": f"ai:{orig['model_version']}:{ds.SOPInstanceUID}:{i}",
                               "kind": mark["kind"], "box": geometry["box"], "score": mark["score"],
                               "model_version": orig["model_version"]})
        sr_rel = None
        if img["reviewed"]:
            series_uid = sr_series.setdefault(study, pydicom.uid.generate_uid(prefix=None))
            sr = write_reader_findings_sr(
                [ds],
                [ReaderFindingRecord(str(ds.SOPInstanceUID), f["kind"], f["geometry"], f["label_id"])
                 for f in final],
                series_description=READER_FINDINGS_DESCRIPTION,
                series_instance_uid=series_uid, instance_number=study_counts[study])
            _drop_clinical_trial(sr)
            sr_rel = f"sr/{stem}.sr.dcm"
            (staging / sr_rel).parent.mkdir(parents=True, exist_ok=True)
            sr.save_as(staging / sr_rel, enforce_file_format=True)
            srs += 1
        patient = str(ds.get("PatientID", ""))
        items.append(ExportItem(image=rel, rows=rows, columns=columns, laterality=img["laterality"],
                                view=img["view"], patient=patient, study_uid=study,
                                sop_uid=str(ds.SOPInstanceUID), reviewed=bool(img["reviewed"]),
                                sr=sr_rel, final=final, ai=ai))
        full.append({
            "image": rel, "sr": sr_rel, "patient": patient, "study": study,
            "sop": str(ds.SOPInstanceUID), "laterality": img["laterality"], "view": img["view"],
            "rows": rows, "columns": columns, "reviewed": bool(img["reviewed"]),
            "consensus_source": _source_text(img.get("consensus_source"), consensus),
            "original": [{**{k: v for k, v in o.items() if k != "marks"},
                          "marks": [{**m, "label_id": _rewrite_id(m["label_id"], sop_map)}
                                    for m in o["marks"]]} for o in img["original"]],
            "readers": {pseudo.get(r, r): [{**lab, "label_id": _rewrite_id(lab["label_id"], sop_map)}
                                           for lab in labs] for r, labs in img["readers"].items()},
            "final": [{**lab, "label_id": lab["label_id"], "readers": [pseudo.get(r, r) for r in lab["readers"]],
                       "members": [{"reader": pseudo.get(m["reader"], m["reader"]),
                                    "label_id": _rewrite_id(m["label_id"], sop_map)} for m in lab["members"]]}
                      for lab in img["consensus"]],
        })
        if progress is not None:
            progress(index + 1, total, label)

    if not items:
        raise ExportError("no image of the snapshot could be exported: "
                          + "; ".join(sorted({e["reason"] for e in excluded})))

    exams = []
    for exam in manifest["exams"]:
        studies = sorted({sop_map[s] for s in exam["images"] if s in sop_map})
        if not studies:
            continue
        exams.append({
            "images": [sop_map[s] for s in exam["images"] if s in sop_map],
            "readers": {pseudo.get(r, r): v for r, v in exam["readers"].items()},
            "consensus": exam["consensus"],
        })
    agreement = json.loads(json.dumps(manifest["agreement"]))
    agreement["readers"] = [pseudo.get(r, r) for r in agreement["readers"]]
    for pair in agreement["pairs"]:
        pair["readers"] = [pseudo.get(r, r) for r in pair["readers"]]
        pair["lesions"] = {pseudo.get(r, r): n for r, n in pair["lesions"].items()}

    name = str(manifest.get("name", ""))
    description = str(manifest.get("description", ""))
    role = manifest.get("role", "training")
    key = "validation" if role == "validation" else "training"
    sha = str(manifest.get("sha256", ""))
    _write_json(staging / "datalist.json",
                monai_datalist(items, key=key, name=name, description=description, reference=sha))
    _write_json(staging / "coco.json",
                coco(items, name=name, description=description, reference=sha, created=created_text))
    _write_json(staging / "labels.json", {
        "format": LABELS_FORMAT, "snapshot": sha, "role": role, "consensus": consensus,
        "kinds": manifest["kinds"], "coordinates": manifest["coordinates"],
        "readers": [pseudo[r] for r in readers], "images": full, "exams": exams, "agreement": agreement,
    })

    n_final = sum(len(i.final) for i in items)
    info: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "created_at": created_text,
        "tool": f"mammotriage {__version__}",
        "snapshot": {"sha256": sha, "name": name, "description": description, "role": role,
                     "consensus": consensus},
        "deidentification": deid.describe(),
        # The correction-event chain the labels were folded from (count, last hash, MAC).
        "audit_head": manifest.get("audit_head"),
        "counts": {"images": len(items), "reviewed_images": sum(1 for i in items if i.reviewed),
                   "srs": srs, "final_labels": n_final, "excluded": len(excluded)},
        "excluded": excluded,
        "labels": {"monai_datalist": "datalist.json", "monai_key": key, "coco": "coco.json",
                   "full": "labels.json", "box_mode": "xyxy",
                   "coordinates": "stored pixels; x = column, y = row; continuous pixel-edge coordinates"},
    }
    (staging / "README.md").write_text(render_readme({**info, "key": key, "readers": [pseudo[r] for r in readers]}),
                                       encoding="utf-8")

    hits = scan_folder(staging, needles, ignore_dates={created.date(), _dt.date.today()})
    if hits:
        shown = "\n  ".join(str(h) for h in hits[:20])
        raise ExportError(f"identifying values of the source images found in the export (left in "
                          f"{staging}, not published):\n  {shown}")

    files = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        files.append({"path": path.relative_to(staging).as_posix(), "sha256": sha256_file(path),
                      "size": path.stat().st_size})
    _write_json(staging / "manifest.json", {**info, "files": files})
    _fsync_tree(staging)
    if out.exists():
        raise ExportError(f"{out} appeared while exporting; the export is left in {staging}")
    os.rename(staging, out)
    _fsync_dir(out.parent)
    return ExportReport(out=out, snapshot=sha, images=len(items),
                        reviewed_images=sum(1 for i in items if i.reviewed), srs=srs,
                        final_labels=n_final, excluded=excluded, files=len(files) + 1)
