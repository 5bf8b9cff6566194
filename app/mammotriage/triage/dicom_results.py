"""Write a triaged exam's AI results as DICOM: a TID 1500 SR per study, a SEG per view.

Files go to ``<data dir>/results/<model version>/<exam>/``; they are what the DICOM
node sends back to PACS (when configured) and what a reviewer can open elsewhere.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from mammotriage.dicom.seg import write_suspicion_seg
from mammotriage.dicom.sr import AlgorithmInfo, FindingRecord, save_dataset, write_findings_sr
from mammotriage.store import Archive

RLE_LOSSLESS = RLELossless


def _folder_name(exam_key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in exam_key)[:60]
    return f"{safe}-{hashlib.sha256(exam_key.encode()).hexdigest()[:8]}"


def write_exam_results(archive: Archive, exam_key: str, images: list[dict[str, Any]], algorithm: AlgorithmInfo,
                       out_root: Path, breast_scores: dict[str, float] | None = None,
                       exam_score: float | None = None) -> list[Path]:
    """Write the SR(s) and SEGs of one exam; returns the written paths.

    ``images`` are the per-image result dicts of :meth:`TriageQueue.complete`. Boxes are
    clipped to the image (a detector may reach a fraction of a pixel past the edge).
    """
    exam = archive.exam(exam_key)
    if exam is None:
        raise LookupError(f"exam {exam_key} is not in the archive")
    records = {r.sop_uid: r for r in exam.images}
    sources = {sop: r.path for sop, r in records.items()}
    return write_result_files(exam_key, images, sources, algorithm, out_root,
                              breast_scores=breast_scores, exam_score=exam_score)


def result_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (a name-based UUID under ``2.25``, ISO/IEC 9834-8):
    the same exam, model and source give the same SR/SEG UIDs, so an archive that keeps
    the first copy of an instance holds a result once, however often it is sent."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID, "mammotriage-result|" + "|".join(parts)).int)


def write_result_files(exam_key: str, images: list[dict[str, Any]], sources: Mapping[str, str | Path],
                       algorithm: AlgorithmInfo, out_root: Path, *, breast_scores: dict[str, float] | None = None,
                       exam_score: float | None = None, stable_uids: bool = False,
                       revision: int = 0) -> list[Path]:
    """Write the SR(s) and SEGs of one exam from its source files (SOP Instance UID ->
    path); returns the written paths. With ``stable_uids`` the SOP and Series Instance
    UIDs are derived from the exam, the model's weights and the source
    (:func:`result_uid`) instead of new ones, and from ``revision`` when it is not 0 (the
    result of a study triaged again after new images is a new instance, not one an
    archive that keeps the first copy would drop)."""
    folder = out_root / _folder_name(exam_key)
    folder.mkdir(parents=True, exist_ok=True)
    by_study: dict[str, list[tuple[pydicom.Dataset, dict[str, Any]]]] = defaultdict(list)
    for item in images:
        path = sources.get(item["sop_uid"])
        if path is None:
            continue
        header: Dataset = pydicom.dcmread(path, stop_before_pixels=True)
        by_study[str(header.StudyInstanceUID)].append((header, item))
    seed: tuple[str, ...] = (exam_key, algorithm.weights_sha256.lower())
    if revision:
        seed += (f"revision-{int(revision)}",)

    def uids(ds: Dataset, *what: str) -> Dataset:
        if stable_uids:
            ds.SOPInstanceUID = result_uid(*seed, *what)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    written: list[Path] = []
    for n, (study_uid, members) in enumerate(sorted(by_study.items()), start=1):
        findings = []
        for header, item in members:
            rows, cols = int(header.Rows), int(header.Columns)
            for f in item["findings"]:
                x0, y0, x1, y1 = (float(v) for v in f["box"])
                box = (min(max(x0, 0.0), cols), min(max(y0, 0.0), rows), min(max(x1, 0.0), cols),
                       min(max(y1, 0.0), rows))
                if box[2] - box[0] < 0.5 or box[3] - box[1] < 0.5:
                    continue
                findings.append(FindingRecord(item["sop_uid"], box, f["kind"], min(max(float(f["score"]), 0.0), 1.0)))
        sr = write_findings_sr([h for h, _ in members], findings, algorithm, breast_scores=breast_scores,
                               exam_score=exam_score, instance_number=n,
                               series_instance_uid=result_uid(*seed, study_uid, "sr-series") if stable_uids else None)
        written.append(save_dataset(uids(sr, study_uid, "sr"), folder / f"sr-{study_uid}.dcm"))
        for header, item in members:
            if item.get("suspicion") is None:
                continue
            seg = write_suspicion_seg(header, item["suspicion"], algorithm, map_factor=float(item.get("map_factor", 1.0)),
                                      transfer_syntax_uid=RLE_LOSSLESS,
                                      series_instance_uid=(result_uid(*seed, study_uid, "seg-series")
                                                           if stable_uids else None))
            written.append(save_dataset(uids(seg, item["sop_uid"], "seg"), folder / f"seg-{item['sop_uid']}.dcm"))
    return written
