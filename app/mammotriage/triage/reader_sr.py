"""The reader-findings SR of a signed exam, queued for the PACS like the AI results.

When a reader signs an exam (a ``sign`` correction event), their final labels (accepted
AI marks, adjusted and re-kinded marks, findings they drew) and the signed per-breast
assessment are written as one Comprehensive SR per study
(:func:`~mammotriage.dicom.sr.write_reader_findings_sr`) to
``<data dir>/results/reader/<exam>/`` and handed to the outbox (a no-op unless the
site sends results).

Coding of the assessment (TID 1501 qualitative evaluations, one group per breast):

* (111005, DCM, "Assessment Category"): BI-RADS 0, 1, 2, 3 and 5 as the SNOMED CT
  mammography assessment findings (397138000 ... 397145000); 4A, 4B, 4C and 6, which
  have no code in that list, as local codes of the ``99MMTRIAGE`` scheme.
* (111006, DCM, "Breast composition"): density a-d as SNOMED CT 129716005,
  129717001, 129718006, 129719003.
* Exam group: (RECALL, 99MMTRIAGE, "Recall decision") = (111591, DCM, "Recall for
  imaging findings") or (NORECALL, 99MMTRIAGE, "Return to routine screening").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.sr.coding import Code

from mammotriage.dicom.sr import ReaderFindingRecord, save_dataset, write_reader_findings_sr
from mammotriage.store import Archive
from mammotriage.store.assessment import BIRADS, DENSITY
from mammotriage.store.events import CorrectionLog, Event
from mammotriage.store.labels import fold
from mammotriage.triage.dicom_results import _folder_name
from mammotriage.triage.queue import TriageQueue
from mammotriage.triage.sink import ResultSink

LOCAL = "99MMTRIAGE"
ASSESSMENT_CATEGORY = Code("111005", "DCM", "Assessment Category")
BREAST_COMPOSITION = Code("111006", "DCM", "Breast composition")
RECALL_DECISION = Code("RECALL", LOCAL, "Recall decision")
RECALL = Code("111591", "DCM", "Recall for imaging findings")
NO_RECALL = Code("NORECALL", LOCAL, "Return to routine screening")
_SCT_BIRADS = {"0": "397138000", "1": "397140005", "2": "397141009", "3": "397143007", "5": "397145000"}
_SCT_DENSITY = {"a": "129716005", "b": "129717001", "c": "129718006", "d": "129719003"}


def birads_code(category: str) -> Code:
    meaning = f"BI-RADS {category} - {BIRADS[category]}"
    if category in _SCT_BIRADS:
        return Code(_SCT_BIRADS[category], "SCT", meaning)
    return Code(f"BIRADS{category}", LOCAL, meaning)


def density_code(density: str) -> Code:
    return Code(_SCT_DENSITY[density], "SCT", f"density {density} - {DENSITY[density]}")


def assessment_evaluations(assessment: dict) -> dict[str, list[tuple[Code, Code]]]:
    """The signed assessment as qualitative evaluations per breast (and "B" for recall)."""
    out: dict[str, list[tuple[Code, Code]]] = {}
    for side, b in assessment.get("breasts", {}).items():
        out[side] = [(ASSESSMENT_CATEGORY, birads_code(b["birads"])), (BREAST_COMPOSITION, density_code(b["density"]))]
    out["B"] = [(RECALL_DECISION, RECALL if assessment.get("recall") else NO_RECALL)]
    return out


def write_signed_sr(archive_file: Path, exam_key: str, reader: str, home: Path,
                    sink: ResultSink | None = None, *, events: Sequence[Event] | None = None) -> str:
    """Write the reader-findings SR(s) of ``reader``'s signed read of an exam and hand
    them to ``sink`` (the outbox, when the caller gives one).

    ``events`` are the exam's correction events when they are not in the archive's own
    log (site mode: the site's chain, as the workstation has them; a signature still
    waiting to be sent has no ``seq`` yet, and its file is named by its event id).

    Returns a line for the log. Raises LookupError when the exam or its signature is
    missing.
    """
    with Archive(archive_file) as archive, CorrectionLog(archive_file) as log, TriageQueue(archive_file) as queue:
        exam = archive.exam(exam_key)
        if exam is None:
            raise LookupError(f"exam {exam_key} is not in the archive")
        events = list(events) if events is not None else log.events(exam_key=exam_key)
        sign = next((e for e in reversed(events) if e.action == "sign" and e.reader == reader), None)
        if sign is None:
            raise LookupError(f"{reader} has not signed exam {exam_key}")
        version = sign.model_version
        marks = {}
        for image in exam.images:
            record = next((r for r in queue.image_results(image.sop_uid) if r.model_version == version), None)
            if record is not None:
                marks[image.sop_uid] = record.findings
        labels = fold(events, marks, version, readers=[reader])[reader]
        by_study: dict[str, list] = {}
        for image in exam.images:
            by_study.setdefault(image.study_uid, []).append(image)
        folder = home / "results" / "reader" / _folder_name(exam_key)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for n, (study_uid, images) in enumerate(sorted(by_study.items()), start=1):
            headers = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in images]
            sops = {i.sop_uid for i in images}
            findings = [ReaderFindingRecord(lab.sop_uid, lab.kind, lab.geometry, lab.label_id[:64])
                        for lab in labels.labels() if lab.is_positive and lab.sop_uid in sops]
            sides = {str(h.get("ImageLaterality", "") or h.get("Laterality", "")).upper() for h in headers}
            evaluations = {k: v for k, v in assessment_evaluations(labels.assessment or sign.payload).items()
                           if k == "B" or k in sides}
            sr = write_reader_findings_sr(headers, findings, observer_name=f"Mammo Triage reader {reader}"[:64],
                                          series_description="Reader findings - research, not for clinical use",
                                          instance_number=n, evaluations=evaluations)
            written.append(save_dataset(sr, folder / f"reader-sr-{study_uid}-{sign.seq or sign.event_id[:12]}.dcm"))
    queued = sum(1 for path in written if sink is not None and sink.queue(path, "reader-findings"))
    sent = f"{queued} queued for the PACS" if queued else "not queued (the site does not send results)"
    return f"reader findings SR: {len(written)} file(s) in {folder}; {sent}"
