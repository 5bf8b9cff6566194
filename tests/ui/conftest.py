"""Qt tests run offscreen."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import pytest


@pytest.fixture
def reading_room(qtbot, tmp_path, monkeypatch):
    """A window on a real archive of three phantom exams with AI results, for reading:
    returns (window, [PhantomExam, ...]); the data directory is ``tmp_path / "home"``."""
    yield from _reading_room(qtbot, tmp_path, monkeypatch, with_prior=False)


@pytest.fixture
def prior_room(qtbot, tmp_path, monkeypatch):
    """Like ``reading_room``, and the first exam's patient has a prior a year earlier
    (the last of the returned exams)."""
    yield from _reading_room(qtbot, tmp_path, monkeypatch, with_prior=True)


def _reading_room(qtbot, tmp_path, monkeypatch, with_prior: bool):
    from mammotriage.phantom import generate_exam
    from mammotriage.store import Archive
    from mammotriage.triage import TriageQueue
    from mtsupport import reading_window

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    exams = []
    archive = Archive(tmp_path / "archive.sqlite")
    specs = [(20 + n, n + 1, 0) for n in range(3)] + ([(20, 1, 1)] if with_prior else [])
    for n, (seed, number, years) in enumerate(specs):
        exam = generate_exam(seed, exam_number=number, rows=512, columns=416, stored_layout="mirrored",
                             normal=False, years_before=years)
        exam.save(tmp_path / f"exam{n}")
        archive.import_paths([tmp_path / f"exam{n}"])
        exams.append(exam)
    queue = TriageQueue(archive.path)
    queue.sync("v-test")
    by_key = {record.exam_key: record.study_uids[0] for record in archive.exams()}
    for _ in exams:
        job = queue.claim_next("v-test")
        study = by_key[job.exam_key]
        exam = next(e for e in exams if e.images[0].dataset.StudyInstanceUID == study)
        _complete(queue, job, exam, candidates=50)
    win = reading_window(qtbot, archive, reader="dr_test", candidate_point=0.2)
    win.load_overlays()
    yield win, exams
    win.close()
    archive.close()


def _complete(queue, job, exam, candidates: int) -> None:
    images = []
    for image in exam.images:
        sop = image.dataset.SOPInstanceUID
        lesions = [les for les in exam.lesions if les.sop_uid == sop]
        findings = [{"box": list(les.box), "kind": les.kind, "score": 0.9} for les in lesions]
        for i in range(candidates):
            x, y = 40 + (i % 8) * 30, 60 + (i // 8) * 30
            findings.append({"box": [x, y, x + 20, y + 20], "kind": "mass",
                             "score": round(0.02 + 0.43 * i / max(candidates - 1, 1), 3)})
        images.append({"sop_uid": sop, "laterality": image.label[0], "score": 0.9 if lesions else 0.05,
                       "findings": findings})
    queue.complete(job, "ab" * 32, images)
