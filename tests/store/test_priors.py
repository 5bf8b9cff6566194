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


def _issue(folder, issuer: str) -> None:
    import pydicom

    for f in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.IssuerOfPatientID = issuer
        ds.save_as(f)


def _linked(tmp_path, name: str):
    with Archive(tmp_path / name) as archive:
        archive.import_paths([tmp_path])
        exams = archive.exams()
    return exams, link_priors(exams)


def test_same_patient_id_from_another_issuer_is_another_patient(tmp_path) -> None:
    for years in (0, 1):
        exam = generate_exam(5, exam_number=1, normal=True, years_before=years, rows=128, columns=104)
        exam.save(tmp_path / f"e-{years}")
    _issue(tmp_path / "e-1", "OTHER HOSPITAL")  # the earlier exam: another hospital, same number
    exams, priors = _linked(tmp_path, "archive.sqlite")
    assert len(exams) == 2 and {e.patient_id for e in exams} == {"PHANTOM-5-001"}
    assert {e.patient_id_issuer for e in exams} == {"", "OTHER HOSPITAL"}
    assert priors == {}
    _issue(tmp_path / "e-0", "OTHER HOSPITAL")  # the same issuer on both links them again
    _, priors = _linked(tmp_path, "again.sqlite")
    assert len(priors) == 1
