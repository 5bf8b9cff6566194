"""Prior exams linked by Patient ID in a real archive."""

from __future__ import annotations

from mammotriage.phantom import generate_exam
from mammotriage.store import Archive
from mammotriage.store.priors import link_priors, prior_of


def test_priors_link_a_patients_earlier_exams(tmp_path) -> None:
    for n, years in ((1, 0), (1, 1), (1, 2), (2, 0)):
        exam = generate_exam(4, exam_number=n, normal=True, years_before=years, rows=128, columns=104)
        exam.save(tmp_path / f"e{n}-{years}")
    with Archive(tmp_path / "archive.sqlite") as archive:
        archive.import_paths([tmp_path])
        exams = archive.exams()
    assert len(exams) == 4
    priors = link_priors(exams)
    by_patient = {}
    for e in exams:
        by_patient.setdefault(e.patient_id, []).append(e)
    three = sorted(by_patient["PHANTOM-4-001"], key=lambda e: e.study_date)
    assert [p.exam_key for p in priors[three[2].exam_key]] == [three[1].exam_key, three[0].exam_key]
    assert prior_of(three[1], priors).exam_key == three[0].exam_key
    assert prior_of(three[0], priors) is None
    (alone,) = by_patient["PHANTOM-4-002"]
    assert prior_of(alone, priors) is None
