"""Prior exams: a patient's earlier exams in the archive, linked by Patient ID.

Exams belong to one patient when their Patient ID and Issuer of Patient ID match (two
hospitals may hand out the same number; files without an issuer match each other).
The comparison exam of a current one is its most recent earlier exam.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date

from mammotriage.store.archive import Archive, ExamRecord


def patient_key(exam: ExamRecord) -> tuple[str, str]:
    """(Issuer of Patient ID, Patient ID)."""
    return (exam.patient_id_issuer.strip(), exam.patient_id)


def link_priors(exams: Sequence[ExamRecord]) -> dict[str, list[ExamRecord]]:
    """``exam_key -> earlier exams of the same patient``, most recent first.

    Exams without a study date have no priors and are nobody's prior (their order in
    time is unknown); an empty Patient ID links nothing.
    """
    by_patient: dict[tuple[str, str], list[ExamRecord]] = defaultdict(list)
    for exam in exams:
        if exam.patient_id and exam.study_date is not None:
            by_patient[patient_key(exam)].append(exam)
    out: dict[str, list[ExamRecord]] = {}
    for group in by_patient.values():
        group.sort(key=lambda e: (e.study_date or date.min, e.exam_key), reverse=True)
        for i, exam in enumerate(group):
            earlier = [e for e in group[i + 1:] if (e.study_date or date.min) < (exam.study_date or date.min)]
            if earlier:
                out[exam.exam_key] = earlier
    return out


def prior_of(exam: ExamRecord, priors: dict[str, list[ExamRecord]]) -> ExamRecord | None:
    """The most recent prior of ``exam``, or None."""
    found = priors.get(exam.exam_key)
    return found[0] if found else None


def priors_in_archive(archive: Archive, exams: Sequence[ExamRecord]) -> dict[str, list[ExamRecord]]:
    """:func:`link_priors` of ``exams``, reading only the exams of their patients from the
    archive (by the stored Patient ID, through its per-exam index) rather than every exam."""
    keys = [e.exam_key for e in exams]
    if not keys:
        return {}
    found = archive.same_patient_exam_keys(keys)
    others = [x for x in (archive.exam(k) for k in found) if x is not None]
    linked = link_priors([*exams, *others])
    return {k: v for k, v in linked.items() if k in set(keys)}
