"""Acceptance scenario: a reader corrects the AI on a phantom exam; the store holds
exactly those events, with geometry in stored-image pixels (after flips and zoom)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtWidgets import QInputDialog

from mammotriage.phantom import generate_exam
from mammotriage.store import Archive
from mammotriage.store.events import CorrectionLog
from mammotriage.triage import TriageQueue
from mtsupport import mouse, mouse_drag, reading_window


def _drag(widget, a: QPointF, b: QPointF) -> None:
    mouse_drag(widget, a, b)


def _click(widget, p: QPointF) -> None:
    left = Qt.MouseButton.LeftButton
    mouse(widget, QEvent.Type.MouseButtonPress, p, left, left)
    mouse(widget, QEvent.Type.MouseButtonRelease, p, left, Qt.MouseButton.NoButton)


@pytest.fixture
def scenario(qtbot, tmp_path, monkeypatch):
    exam = generate_exam(8, rows=512, columns=416, stored_layout="mirrored", normal=False)
    exam.save(tmp_path / "exam")
    archive = Archive(tmp_path / "archive.sqlite")
    archive.import_paths([tmp_path / "exam"])
    lesion = exam.lesions[0]
    true_image = next(i for i in exam.images if i.dataset.SOPInstanceUID == lesion.sop_uid)
    twin = next(les for les in exam.lesions if les.lesion_id == lesion.lesion_id and les is not lesion)
    other = next(i for i in exam.images if i.label[0] != true_image.label[0] and i.label[1:] == "CC")
    offset = 15
    shifted = [lesion.box[0] + offset, lesion.box[1] + offset, lesion.box[2] + offset, lesion.box[3] + offset]
    queue = TriageQueue(archive.path)
    queue.sync("v-test")
    job = queue.claim_next("v-test")
    images = []
    for image in exam.images:
        sop = image.dataset.SOPInstanceUID
        findings = []
        if sop == lesion.sop_uid:
            findings.append({"box": shifted, "kind": lesion.kind, "score": 0.85})  # right lesion, box off
        if sop == other.dataset.SOPInstanceUID:
            findings.append({"box": [150, 200, 190, 240], "kind": "mass", "score": 0.8})  # false positive
        images.append({"sop_uid": sop, "laterality": image.label[0], "score": 0.85 if findings else 0.05,
                       "findings": findings})
    queue.complete(job, "ef" * 32, images)
    win = reading_window(qtbot, archive, reader="dr_test")
    win.load_overlays()
    answers = iter([("calcification" if twin.kind == "calcification" else "mass", True), ("4", True), ("C", True)])
    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(lambda *a, **k: next(answers)))
    monkeypatch.setattr(QInputDialog, "getInt", staticmethod(lambda *a, **k: (70, True)))
    yield win, exam, lesion, twin, true_image, other, shifted
    win.close()


def test_reader_corrections_are_stored_as_exact_events(scenario, qtbot) -> None:
    win, exam, lesion, twin, true_image, other, shifted = scenario
    qtbot.keyClick(win, Qt.Key.Key_A)  # show AI (on demand)
    fp_pane = win.hanging.panes[other.label]
    tp_pane = win.hanging.panes[true_image.label]
    twin_pane = win.hanging.panes[next(i.label for i in exam.images if i.dataset.SOPInstanceUID == twin.sop_uid)]

    # 1. reject the false mark: zoom in on it first, then click it and press Delete
    fp_centre = fp_pane.stored_to_widget(170, 220)
    fp_pane.zoom_at(fp_centre, 1.8)
    _click(fp_pane, fp_pane.stored_to_widget(170, 220))
    assert win.hanging.state.selected[0] == other.label
    qtbot.keyClick(win, Qt.Key.Key_Delete)

    # 2. move the shifted box onto the lesion (drag inside the selected box)
    centre = tp_pane.stored_to_widget((shifted[0] + shifted[2]) / 2, (shifted[1] + shifted[3]) / 2)
    _click(tp_pane, centre)
    target = tp_pane.stored_to_widget((lesion.box[0] + lesion.box[2]) / 2, (lesion.box[1] + lesion.box[3]) / 2)
    _drag(tp_pane, centre, target)

    # 3. draw the missed lesion on the other view of the same breast (draw tool, W)
    qtbot.keyClick(win, Qt.Key.Key_W)
    x0, y0, x1, y1 = twin.box
    _drag(twin_pane, twin_pane.stored_to_widget(x0, y0), twin_pane.stored_to_widget(x1, y1))

    # 4. BI-RADS and density
    qtbot.keyClick(win, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClick(win, Qt.Key.Key_D, Qt.KeyboardModifier.ShiftModifier)

    with CorrectionLog(win.archive.path) as log:
        events = log.events(exam_key=win.current.exam_key)
        assert log.verify().ok
    assert [e.action for e in events] == ["reject", "adjust", "add", "birads", "density"]
    reject, adjust, add, birads, density = events
    assert all(e.reader == "dr_test" for e in events)
    assert reject.sop_uid == other.dataset.SOPInstanceUID and reject.target.startswith("ai:v-test:")
    assert reject.model_version == "v-test" and len(reject.pixel_sha256) == 64
    # stored-image geometry: within one screen pixel of the ground truth, whatever the flips/zoom
    tol_tp = 1.5 / (tp_pane.base_scale() * tp_pane.state.zoom)
    assert adjust.sop_uid == lesion.sop_uid
    np.testing.assert_allclose(adjust.geometry["box"], lesion.box, atol=tol_tp + 0.01)
    tol_twin = 1.5 / (twin_pane.base_scale() * twin_pane.state.zoom)
    assert add.sop_uid == twin.sop_uid and add.kind == twin.kind
    np.testing.assert_allclose(add.geometry["box"], twin.box, atol=tol_twin + 0.01)
    assert add.payload == {"suspicion": 0.7}
    assert birads.payload == {"birads": 4} and density.payload == {"density": "C"}
    assert tp_pane.view.orientation.flip_h  # the mirrored layout was flipped for display

    # the labels shown are the fold of exactly those events
    labels = {lab.label_id: lab for lab in win.corrections.labels_for(lesion.sop_uid)}
    (moved,) = [lab for lab in labels.values() if lab.source == "ai"]
    assert moved.status == "accepted" and moved.original_geometry["box"] == [float(v) for v in shifted]

    # undo / redo of the last image event
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(win, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert win.corrections.mine().birads is None and win.corrections.mine().density is None
    qtbot.keyClick(win, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert win.corrections.mine().birads == 4
