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
    from mammotriage.triage import OperatingPoints, TriageQueue
    from mammotriage.ui.main_window import MainWindow

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
    win = MainWindow(archive=archive, start_triage=False)
    # the fixture's own model: its results have no package, its worklist thresholds are its
    # own (not the shipped model's), and the registry's active model never replaces it
    win.pin_model("v-test", points=OperatingPoints(0.5, 0.1, "test fixture"))
    win.hanging.state.mark_threshold = 0.5
    win.hanging.state.candidate_point = 0.2
    qtbot.addWidget(win)
    win.resize(1400, 1000)
    win.show()
    win.sign_in("dr_test")
    win.refresh_worklist()
    qtbot.waitUntil(lambda: all(p.view is not None for p in win.hanging.panes.values()), timeout=60_000)
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
