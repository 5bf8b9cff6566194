"""A labelled archive of phantom exams, a snapshot of it and one export, built once per module.

Three phantom exams (two with lesions, one normal) are imported; a stand-in model's
marks (every true lesion plus one false positive per image) are stored as AI results
of version ``v1``; readers ``dr_a`` and ``dr_b`` read exams 1 and 2 (accept the true
marks, reject the false positive, one moves a box, one adds an ellipse), ``dr_c`` reads
exam 1 only and adds a polygon; exam 3 has no correction (unreviewed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mammotriage.dicom.image import pixel_sha256
from mammotriage.dicom.read import read_image
from mammotriage.phantom import write_demo_set
from mammotriage.store import Archive
from mammotriage.store.datasets import create_snapshot, load_snapshot
from mammotriage.store.events import CorrectionLog
from mammotriage.store.labels import ai_target
from mammotriage.triage import TriageQueue

FP_BOX = [5.0, 5.0, 25.0, 25.0]


@dataclass
class Labelled:
    home: Path  # the archive's folder (MAMMOTRIAGE_HOME for CLI tests)
    archive: Path
    sources: list[Path]  # every imported DICOM file
    snapshot: dict[str, Any]  # loaded manifest


def build_labelled_archive(root: Path, seed: int = 11,
                           prepare: Callable[[Path], None] | None = None) -> Labelled:
    """``prepare(path)``, when given, may rewrite each source file before it is imported."""
    truth = json.loads(write_demo_set(root / "src", 3, seed, rows=256, columns=208).read_text())
    if prepare is not None:
        for path in sorted((root / "src").rglob("*.dcm")):
            prepare(path)
    home = root / "home"
    archive_file = home / "archive.sqlite"
    with Archive(archive_file) as archive:
        report = archive.import_paths([root / "src"])
        assert len(report.imported) == 12, report.summary()
        exams = sorted(archive.exams(), key=lambda e: e.patient_id)
    lesions = {les["sop_uid"]: [] for e in truth["exams"] for les in e["lesions"]}
    for e in truth["exams"]:
        for les in e["lesions"]:
            lesions[les["sop_uid"]].append(les)

    with TriageQueue(archive_file) as queue:
        queue.sync("v1")
        while (job := queue.claim_next("v1")) is not None:
            exam = next(e for e in exams if e.exam_key == job.exam_key)
            queue.complete(job, "ab" * 32, [
                {"sop_uid": img.sop_uid, "laterality": img.laterality.value, "score": 0.8,
                 "findings": [{"box": les["box"], "kind": les["kind"], "score": 0.8}
                              for les in lesions.get(img.sop_uid, [])]
                 + [{"box": FP_BOX, "kind": "mass", "score": 0.2}]}
                for img in exam.images])

    with CorrectionLog(archive_file, workstation="ws-test") as log:
        for number, exam in enumerate(exams[:2]):
            readers = ("dr_a", "dr_b", "dr_c") if number == 0 else ("dr_a", "dr_b")
            for reader in readers:
                for img in exam.images:
                    ctx = dict(reader=reader, exam_key=exam.exam_key, study_uid=img.study_uid,
                               series_uid=img.series_uid, sop_uid=img.sop_uid, model_version="v1",
                               pixel_sha256=pixel_sha256(read_image(img.path).pixels))
                    n_true = len(lesions.get(img.sop_uid, []))
                    for i in range(n_true):
                        target = ai_target("v1", img.sop_uid, i)
                        if reader == "dr_b" and i == 0:
                            x0, y0, x1, y1 = lesions[img.sop_uid][0]["box"]
                            log.append(action="adjust", target=target, **ctx,
                                       geometry={"type": "box", "box": [x0 + 2, y0 + 1, x1 + 2, y1 + 1]})
                        elif reader != "dr_c":
                            log.append(action="accept", target=target, **ctx)
                    log.append(action="reject", target=ai_target("v1", img.sop_uid, n_true), **ctx)
                    if reader == "dr_a" and img.label == "LCC":
                        log.append(action="add", kind="calcification", payload={"suspicion": 0.6}, **ctx,
                                   geometry={"type": "ellipse", "box": [150, 180, 170, 196]})
                    if reader == "dr_c" and img.label == "RMLO":
                        log.append(action="add", kind="asymmetry", **ctx,
                                   geometry={"type": "polygon", "points": [[60, 40], [90, 45], [70, 80]]})
                log.append(reader=reader, exam_key=exam.exam_key, action="birads",
                           payload={"birads": {"dr_a": 4, "dr_b": 4, "dr_c": 3}[reader]})
                log.append(reader=reader, exam_key=exam.exam_key, action="density",
                           payload={"density": "B"})
    snap = create_snapshot(archive_file, rule="union", name="phantom-test",
                           description="exported by the test suite", include_unreviewed=True)
    sources = sorted((root / "src").rglob("*.dcm"))
    return Labelled(home=home, archive=archive_file, sources=sources,
                    snapshot=load_snapshot(snap.sha256, archive_file))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Labelled:
    return build_labelled_archive(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def exported(labelled: Labelled, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mammotriage.export import export_snapshot

    out = tmp_path_factory.mktemp("export") / "dataset-v1"
    calls: list[tuple[int, int]] = []
    export_snapshot(labelled.snapshot, out, archive_file=labelled.archive,
                    progress=lambda done, total, note: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == len(labelled.snapshot["images"])
    return out


@pytest.fixture(scope="session")
def build_labelled() -> Callable[..., Labelled]:
    """:func:`build_labelled_archive`, for modules that need an archive of their own."""
    return build_labelled_archive
