"""Reading room v2 on a real window: marks that can be read and edited, blind mode,
finishing a read (sign and next), fit to breast."""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtWidgets import QInputDialog

from mammotriage.store.events import CorrectionLog
from mammotriage.store.labels import Label
from mammotriage.ui.image_pane import _label_style, caption_box
from mtsupport import mouse_drag


def _lesion_pane(win, exam):
    lesion = next(les for les in exam.lesions
                  if les.sop_uid in {i.sop_uid for i in win.current.images})
    image = next(i for i in exam.images if i.dataset.SOPInstanceUID == lesion.sop_uid)
    return win.hanging.panes[image.label], lesion


def _current_exam(win, exams):
    study = win.current.study_uids[0]
    return next(e for e in exams if e.images[0].dataset.StudyInstanceUID == study)


# ----------------------------------------------------------------------------- marks


def test_k_opens_the_kind_dialog_and_changes_the_kind(reading_room, qtbot, monkeypatch) -> None:
    win, exams = reading_room
    asked = []

    def answer(*args, **kwargs):
        asked.append(args[2] if len(args) > 2 else "")
        return "asymmetry", True

    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(answer))
    qtbot.keyClick(win, Qt.Key.Key_A)
    pane, lesion = _lesion_pane(win, _current_exam(win, exams))
    pane.setFocus()
    qtbot.keyClick(win, Qt.Key.Key_Tab)
    assert win.hanging.state.selected is not None
    qtbot.keyClick(win, Qt.Key.Key_K)
    assert asked, "K did not open the kind dialog"
    assert "not recorded" not in win.status_label.text()
    with CorrectionLog(win.archive.path) as log:
        (event,) = [e for e in log.events(exam_key=win.current.exam_key) if e.action == "change_kind"]
    assert event.kind == "asymmetry"
    slot, label_id = win.hanging.state.selected
    label = next(lab for _r, lab in win.hanging.panes[slot].label_items() if lab.label_id == label_id)
    assert label.kind == "asymmetry"


def test_dragging_an_unselected_mark_moves_it_and_does_not_pan(reading_room, qtbot) -> None:
    win, exams = reading_room
    qtbot.keyClick(win, Qt.Key.Key_A)
    pane, lesion = _lesion_pane(win, _current_exam(win, exams))
    assert win.hanging.state.selected is None
    x0, y0, x1, y1 = lesion.box
    pane.zoom_at(pane.stored_to_widget((x0 + x1) / 2, (y0 + y1) / 2), 4.0)  # corners well apart
    pans = {slot: st.pan for slot, st in win.hanging.state.panes.items()}
    start = pane.stored_to_widget((x0 + x1) / 2, (y0 + y1) / 2)
    mouse_drag(pane, start, start + QPointF(25, 18))
    assert {slot: st.pan for slot, st in win.hanging.state.panes.items()} == pans
    with CorrectionLog(win.archive.path) as log:
        (adjust,) = [e for e in log.events(exam_key=win.current.exam_key) if e.action == "adjust"]
    moved = adjust.geometry["box"]
    assert abs((moved[0] - x0) - (moved[2] - x1)) < 0.5  # moved, not resized
    assert abs(moved[0] - x0) + abs(moved[1] - y0) > 5
    assert win.hanging.state.selected[0] == pane.slot


def test_shift_a_shows_at_most_ten_candidates_above_the_lower_point(reading_room, qtbot) -> None:
    win, exams = reading_room
    qtbot.keyClick(win, Qt.Key.Key_A)
    pane, _ = _lesion_pane(win, _current_exam(win, exams))
    above = [lab for _r, lab in pane.label_items()]
    assert all((lab.score or 0) >= 0.5 for lab in above)
    qtbot.keyClick(win, Qt.Key.Key_A, Qt.KeyboardModifier.ShiftModifier)
    assert "candidates" in win.status_label.text()
    candidates = [lab for _r, lab in pane.label_items()]
    assert len(pane.overlay.findings) > 40
    assert len(above) < len(candidates) <= 10
    assert all((lab.score or 0) >= 0.2 for lab in candidates)
    # every view keeps the cap
    assert all(len(p.label_items()) <= 10 for p in win.hanging.panes.values())
    qtbot.keyClick(win, Qt.Key.Key_A, Qt.KeyboardModifier.ShiftModifier)
    assert len(pane.label_items()) == len(above)


def test_captions_stay_inside_the_pane() -> None:
    pane = QRectF(0, 0, 400, 300)
    text = QRectF(0, 0, 120, 16)
    for mark in (QRectF(-10, -10, 30, 30), QRectF(390, 2, 30, 30), QRectF(380, 290, 40, 40),
                 QRectF(0, 150, 10, 10), QRectF(200, 150, 20, 20)):
        box = caption_box(text, mark, pane)
        assert pane.contains(box), (mark, box)


def test_review_states_have_distinct_styles() -> None:
    geometry = {"type": "box", "box": [1.0, 1.0, 9.0, 9.0]}
    moved = {"type": "box", "box": [3.0, 3.0, 11.0, 11.0]}

    def ai(status, geom=geometry):
        return Label("ai:v:s:0", "s", "ai", status, "mass", geom, 0.8, "mass", geometry)

    styles = [_label_style(lab, False) for lab in (
        ai("unreviewed"), ai("accepted"), ai("rejected"), ai("accepted", moved),
        Label("reader:1", "s", "reader", "added", "mass", geometry, 0.5))]
    looks = {(s.colour.name(), s.line, s.width) for s in styles}
    assert len(looks) == 5
    assert len({s.colour.name() for s in styles}) == 5


def test_toggles_report_in_the_status_bar(reading_room, qtbot) -> None:
    win, _ = reading_room
    for key, text in ((Qt.Key.Key_S, "suspicion map off"), (Qt.Key.Key_S, "suspicion map on"),
                      (Qt.Key.Key_T, "corner text off"), (Qt.Key.Key_I, "invert on"),
                      (Qt.Key.Key_L, "link"), (Qt.Key.Key_M, "magnifier on")):
        qtbot.keyClick(win, key)
        assert text in win.status_label.text(), (key, win.status_label.text())
