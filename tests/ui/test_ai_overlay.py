"""AI overlays in the viewer: reading modes, marks and map follow flips, zoom and the lens."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt

from mammotriage.phantom import generate_exam
from mammotriage.store import Archive
from mammotriage.triage import TriageQueue
from mtsupport import reading_window


def _rgb(widget) -> np.ndarray:
    from PySide6.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = image.width(), image.height(), image.bytesPerLine()
    return np.frombuffer(bytes(image.constBits()), np.uint8).reshape(h, bpl)[:, : w * 3].reshape(h, w, 3).copy()


def _red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)


@pytest.fixture
def window(qtbot, tmp_path):
    exam = generate_exam(4, rows=512, columns=416, stored_layout="mirrored", normal=False)
    exam.save(tmp_path / "exam")
    archive = Archive(tmp_path / "archive.sqlite")
    archive.import_paths([tmp_path / "exam"])
    queue = TriageQueue(archive.path)
    queue.sync("v-test")
    job = queue.claim_next("v-test")
    images = []
    for image in exam.images:
        lesions = [les for les in exam.lesions if les.sop_uid == image.dataset.SOPInstanceUID]
        suspicion = np.zeros((image.pixels.shape[0] // 4, image.pixels.shape[1] // 4), np.float32)
        for les in lesions:
            x0, y0, x1, y1 = (int(v) // 4 for v in les.box)
            suspicion[y0:y1 + 1, x0:x1 + 1] = 0.9
        images.append({"sop_uid": image.dataset.SOPInstanceUID, "laterality": image.label[0],
                       "score": 0.9 if lesions else 0.05, "suspicion": suspicion, "map_factor": 4.0,
                       "findings": [{"box": list(les.box), "kind": les.kind, "score": 0.9} for les in lesions]
                       + [{"box": [10, 10, 30, 30], "kind": "mass", "score": 0.1}]})
    queue.complete(job, "cd" * 32, images, maps_dir=tmp_path / "home-maps" / "ai_maps")
    win = reading_window(qtbot, archive)
    # maps were written outside the data dir in this fixture: point the session there
    win.session.home = tmp_path / "home-maps"
    win.load_overlays()
    yield win, exam
    win.close()


def _lesion_pane(win, exam):
    lesion = exam.lesions[0]
    image = next(i for i in exam.images if i.dataset.SOPInstanceUID == lesion.sop_uid)
    return win.hanging.panes[image.label], lesion


def test_on_demand_mode_hides_until_asked(window, qtbot) -> None:
    win, exam = window
    pane, _lesion = _lesion_pane(win, exam)
    assert not win.hanging.state.ai_visible
    assert not _red(_rgb(pane)).any()
    assert any("hidden" in line for line in pane.corner_lines()["top"])
    qtbot.keyClick(win, Qt.Key.Key_A)
    assert win.hanging.state.ai_visible
    assert _red(_rgb(pane)).any()


def test_marks_land_on_the_lesion_through_flips_and_zoom(window, qtbot) -> None:
    win, exam = window
    pane, lesion = _lesion_pane(win, exam)
    win.hanging.state.show_map = False
    qtbot.keyClick(win, Qt.Key.Key_A)
    for zoom in (None, 2.5):
        if zoom:
            centre = pane.stored_to_widget((lesion.box[0] + lesion.box[2]) / 2, (lesion.box[1] + lesion.box[3]) / 2)
            pane.zoom_at(centre, zoom)
        rects = pane.mark_rects()
        assert len(rects) == 1  # the 0.1-score mark is below the operating point
        rect, _finding = rects[0]
        x0, y0, x1, y1 = lesion.box
        a, b = pane.stored_to_widget(x0, y0), pane.stored_to_widget(x1, y1)
        expected = (min(a.x(), b.x()), min(a.y(), b.y()), max(a.x(), b.x()), max(a.y(), b.y()))
        assert (rect.left(), rect.top(), rect.right(), rect.bottom()) == pytest.approx(expected, abs=1e-6)
        red = _red(_rgb(pane))
        # the outline is drawn 3 px outside the box on every side: red on all four edges
        left, top, right, bottom = (int(round(v)) for v in expected)
        mid_y, mid_x = (top + bottom) // 2, (left + right) // 2
        assert red[mid_y, left - 5:left].any() and red[mid_y, right:right + 5].any()
        assert red[top - 5:top, mid_x].any() and red[bottom:bottom + 5, mid_x].any()
        # the mirrored stored layout: the display shows the lesion on the other side of the
        # stored column index
        assert pane.view.orientation.flip_h
    win.hanging.state.toggle_all_marks()  # Shift+A: candidates down to the lower operating point
    assert len(pane.mark_rects()) == 1  # 0.1 is below the default candidate point (half of 0.5)
    win.hanging.state.candidate_point = 0.05
    assert len(pane.mark_rects()) == 2


def test_map_overlay_hot_spot_at_lesion(window, qtbot) -> None:
    win, exam = window
    pane, lesion = _lesion_pane(win, exam)
    qtbot.keyClick(win, Qt.Key.Key_A)
    win.hanging.state.set_map_opacity(1.0)
    win.hanging.state.show_all_marks = False
    win.hanging.state.mark_threshold = 2.0  # hide marks: look at the map alone
    rgb = _rgb(pane)
    centre = pane.stored_to_widget((lesion.box[0] + lesion.box[2]) / 2, (lesion.box[1] + lesion.box[3]) / 2)
    r, _g, b = rgb[int(centre.y()), int(centre.x())]
    assert r > 180 and b < 80  # tinted by the colour map
    far = pane.stored_to_widget(5, 5)
    assert not _red(rgb)[int(far.y()), int(far.x())]


def test_lens_shows_the_overlay_magnified(window, qtbot) -> None:
    win, exam = window
    pane, lesion = _lesion_pane(win, exam)
    win.hanging.state.show_map = False
    qtbot.keyClick(win, Qt.Key.Key_A)
    centre = pane.stored_to_widget((lesion.box[0] + lesion.box[2]) / 2, (lesion.box[1] + lesion.box[3]) / 2)
    plain = _red(_rgb(pane)).sum()
    win.hanging.state.toggle_magnifier()
    pane.pointer = centre
    with_lens = _red(_rgb(pane)).sum()
    assert with_lens > plain * 2  # the mark is drawn again, 3x larger, inside the lens


def test_after_read_mode_locks_until_initial_assessment(window, qtbot) -> None:
    win, _exam = window
    win.hanging.state.set_reading_mode("after read")
    win.open_exam(win.current)
    qtbot.keyClick(win, Qt.Key.Key_A)
    assert not win.hanging.state.ai_visible
    assert "locked" in win.status_label.text()
    win.record_initial_birads(4)
    assert win.hanging.state.ai_visible
    assert win.initial_reads.latest(win.current.exam_key, win.reader) == 4
    # reopening the same exam: the initial read is on record, AI stays unlockable
    win.open_exam(win.current)
    assert win.hanging.state.initial_read_done


def test_older_model_results_are_flagged(window, qtbot) -> None:
    win, exam = window
    win.pin_model("v-newer")
    win.load_overlays()
    pane, _ = _lesion_pane(win, exam)
    qtbot.keyClick(win, Qt.Key.Key_A)
    assert pane.overlay.stale
    assert any("OLDER MODEL" in line for line in pane.corner_lines()["top"])


def test_worklist_shows_scores_and_status(window) -> None:
    win, _exam = window
    entry = win.worklist.entries[0]
    assert entry.status == "done" and entry.score_100 == 90
    assert win.worklist.data(win.worklist.index(0, 3)) == "90"


def test_worklist_and_status_bar_show_the_queue_eta(window) -> None:
    win, _exam = window
    win.pin_model("v-newer", meta={"weights_sha256": "ef" * 32})
    win.queue.sync("v-newer")  # a new model: the exam waits for its analysis
    win.queue.record_time("ef" * 32, "v-newer", 4, 20.0)  # 5 s a view measured on this machine
    win.refresh_worklist()
    entry = win.worklist.entries[0]
    assert entry.status == "pending" and entry.eta_s == 20.0
    assert win.worklist.data(win.worklist.index(0, 2)).startswith("pending · result in ~20 s")
    assert "1 exam(s) waiting (all done in ~20 s)" in win.model_label.text()
