"""The reader's corrections of one exam: one undo/redo (store.labels.undo_history) for the
labels the store folds and the stacks the viewer offers."""

from __future__ import annotations

import pytest

from mammotriage.store.events import CorrectionError, CorrectionLog
from mammotriage.store.labels import effective_events, undo_history
from mammotriage.viewer.corrections import ExamCorrections, ImageInfo

BOX = {"type": "box", "box": [10.0, 10.0, 40.0, 40.0]}


@pytest.fixture
def exam(tmp_path):
    with CorrectionLog(tmp_path / "archive.sqlite") as log:
        c = ExamCorrections(log, "exam-1", "dr-a")
        c.set_image(ImageInfo("sop-1", "study-1", "series-1", "0" * 64))
        yield c


def test_undo_redo_and_the_folded_labels_agree(exam) -> None:
    first = exam.add("sop-1", "mass", BOX)
    second = exam.add("sop-1", "calcification", BOX)
    assert len(exam.labels_for("sop-1")) == 2
    assert exam.undo().target == second.event_id
    assert [lab.kind for lab in exam.labels_for("sop-1")] == ["mass"]
    assert exam.redo().target == second.event_id and len(exam.labels_for("sop-1")) == 2
    exam.undo()
    exam.undo()
    assert exam.labels_for("sop-1") == [] and exam.undo() is None
    history = undo_history(exam._events)
    assert history.undone == {first.event_id, second.event_id}
    assert history.redoable["dr-a"] == [second.event_id, first.event_id]
    assert [e.action for e in effective_events(exam._events)] == []
    exam.redo()
    assert [lab.kind for lab in exam.labels_for("sop-1")] == ["mass"]
    exam.add("sop-1", "mass", BOX)  # a new action ends the redo chain
    assert exam.redo() is None


def test_a_signature_closes_undo_and_each_reader_undoes_only_their_own(exam) -> None:
    exam.add("sop-1", "mass", BOX)
    other = ExamCorrections(exam.log, "exam-1", "dr-b")
    other.set_image(ImageInfo("sop-1", "study-1", "series-1", "0" * 64))
    theirs = other.add("sop-1", "calcification", BOX)
    exam.sign({"breasts": {"R": {"birads": "4A", "density": "b"}}, "recall": True})
    with pytest.raises(CorrectionError, match="signed"):
        exam.undo()
    exam.amend("second look")
    assert exam.undo() is None  # nothing before the signature can be undone
    assert [lab.kind for lab in exam.labels_for("sop-1")] == ["mass"]  # and it still counts
    assert other.undo().target == theirs.event_id
