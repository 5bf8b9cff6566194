"""ImagePane and HangingView: state <-> widget round trips, hanging from rendered pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QImage, QMouseEvent
from PySide6.QtWidgets import QApplication

from mammotriage.dicom.hanging import chest_wall_from_pixels
from mammotriage.ui.hanging_view import HangingView
from mammotriage.viewer.loader import LoadedView, load_view
from mammotriage.viewer.state import WindowSetting
from mtsupport import require_shared, write_mg


def qimage_to_array(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_Grayscale8)
    w, h, bpl = image.width(), image.height(), image.bytesPerLine()
    return np.frombuffer(bytes(image.constBits()), dtype=np.uint8).reshape(h, bpl)[:, :w].copy()


def _breast_pixels(rows: int, cols: int, chest: str) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    x0 = cols - 1 if chest == "right" else 0
    inside = ((xx - x0) / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 <= 1
    return np.where(inside, 3000, 100).astype(np.uint16)


def _exam(tmp_path: Path, mirrored: bool = False, orientation: bool = True) -> dict[str, LoadedView]:
    views = {}
    for lat in "RL":
        for view in ("CC", "MLO"):
            std_chest = "right" if lat == "R" else "left"
            chest = {"right": "left", "left": "right"}[std_chest] if mirrored else std_chest
            row = "P" if chest == "right" else "A"
            col = "F" if view == "MLO" else ("L" if lat == "R" else "R")
            path = write_mg(tmp_path / f"{lat}{view}.dcm", rows=200, columns=160, laterality=lat, view=view,
                            orientation=(row, col) if orientation else None,
                            pixels=_breast_pixels(200, 160, chest))
            loaded = load_view(str(path))
            assert isinstance(loaded, LoadedView)
            views[f"{lat}{view}"] = loaded
    return views


@pytest.fixture
def hanging(qtbot) -> HangingView:
    widget = HangingView()
    qtbot.addWidget(widget)
    widget.resize(800, 700)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def _pane_pixels(hanging: HangingView, slot: str) -> np.ndarray:
    pane = hanging.panes[slot]
    pane.show_text = False
    return qimage_to_array(pane.grab().toImage())


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize("orientation", [True, False])
def test_breasts_face_each_other_in_rendered_pixels(hanging, tmp_path, mirrored, orientation) -> None:
    for slot, view in _exam(tmp_path, mirrored, orientation).items():
        hanging.set_view(slot, view)
    for slot in ("RCC", "RMLO", "LCC", "LMLO"):
        rendered = _pane_pixels(hanging, slot)
        expected = "right" if slot.startswith("R") else "left"
        assert chest_wall_from_pixels(rendered) == expected, slot
        # chest wall touches the centre line: the inner edge column has tissue
        inner = rendered[:, -2] if expected == "right" else rendered[:, 1]
        assert (inner > 128).mean() > 0.3, slot


def test_window_state_updates_pane(hanging, tmp_path) -> None:
    views = _exam(tmp_path)
    hanging.set_view("RCC", views["RCC"])
    pane = hanging.panes["RCC"]
    before = _pane_pixels(hanging, "RCC")
    hanging.state.panes["RCC"].set_window(WindowSetting(center=3000, width=10))
    after = _pane_pixels(hanging, "RCC")
    assert not np.array_equal(before, after)
    assert "C 3000 W 10" in pane.corner_lines()["bottom"][0]
    hanging.state.panes["RCC"].set_invert(True)
    inverted = _pane_pixels(hanging, "RCC")
    assert inverted.mean() != after.mean()


def test_a_window_drag_frame_is_looked_up_into_the_same_image(hanging, tmp_path) -> None:
    views = _exam(tmp_path)
    for slot, view in views.items():
        hanging.set_view(slot, view)
    hanging.state.link_mode = "all"
    shown = {slot: pane.display_image() for slot, pane in hanging.panes.items()}
    keys = {slot: s[0].cacheKey() for slot, s in shown.items() if s is not None}
    paints = {slot: pane.paints for slot, pane in hanging.panes.items()}
    hanging._on_window_drag("RCC", 40.0, -25.0)  # every linked pane gets the new window
    QApplication.sendPostedEvents(None, QEvent.Type.UpdateRequest)
    for slot, pane in hanging.panes.items():
        before, after = shown[slot], pane.display_image()
        assert before is not None and after is not None
        assert after[0] is before[0], slot  # no new QImage (nor copy) per frame ...
        assert after[0].cacheKey() != keys[slot], slot  # ... its pixels rewritten, so no cached copy is stale
        assert pane.paints == paints[slot] + 1, slot  # one coalesced repaint per pane
    assert _pane_pixels(hanging, "RCC").mean() != 0


def _send(widget, kind, pos, button, buttons) -> None:
    event = QMouseEvent(kind, QPointF(pos), widget.mapToGlobal(QPointF(pos)), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def test_right_drag_changes_window_in_state(hanging, tmp_path) -> None:
    for slot, view in _exam(tmp_path).items():
        hanging.set_view(slot, view)
    pane = hanging.panes["LCC"]
    state = hanging.state.panes["LCC"]
    start = state.window
    _send(pane, QEvent.Type.MouseButtonPress, QPoint(100, 100), Qt.MouseButton.RightButton, Qt.MouseButton.RightButton)
    _send(pane, QEvent.Type.MouseMove, QPoint(160, 70), Qt.MouseButton.NoButton, Qt.MouseButton.RightButton)
    _send(pane, QEvent.Type.MouseButtonRelease, QPoint(160, 70), Qt.MouseButton.RightButton, Qt.MouseButton.NoButton)
    assert state.window.width > start.width  # drag right = wider
    assert state.window.center < start.center  # drag up = lower centre
    assert state.window.explanation == "CUSTOM"
    # linked ("all"): the other panes followed by the same amount
    other = hanging.state.panes["RMLO"].window
    assert other.explanation == "CUSTOM"


def test_wheel_zoom_keeps_point_under_cursor_and_links(hanging, tmp_path) -> None:
    for slot, view in _exam(tmp_path).items():
        hanging.set_view(slot, view)
    pane = hanging.panes["RCC"]
    cursor = QPointF(pane.width() * 0.7, pane.height() * 0.4)
    before = pane.widget_to_stored(cursor)
    pane.zoom_at(cursor, 2.0)
    after = pane.widget_to_stored(cursor)
    assert hanging.state.panes["RCC"].zoom == pytest.approx(2.0)
    assert after == pytest.approx(before, abs=1e-6)
    assert hanging.state.panes["LMLO"].zoom == pytest.approx(2.0)  # linked across all four
    hanging.state.cycle_link()  # -> pair
    pane.zoom_at(cursor, 1.5)
    assert hanging.state.panes["LCC"].zoom == pytest.approx(3.0)  # the mirror-image pair follows
    assert hanging.state.panes["RMLO"].zoom == pytest.approx(2.0)


def test_stored_widget_coordinates_round_trip(hanging, tmp_path) -> None:
    views = _exam(tmp_path, mirrored=True)
    hanging.set_view("LMLO", views["LMLO"])
    pane = hanging.panes["LMLO"]
    pane.zoom_at(QPointF(50, 60), 1.7)
    for x, y in [(10.5, 20.5), (150.0, 190.0), (80.0, 100.0)]:
        p = pane.stored_to_widget(x, y)
        assert pane.widget_to_stored(p) == pytest.approx((x, y))


def test_error_and_missing_panes_show_messages(hanging) -> None:
    hanging.set_error("LCC", "cannot decode: transfer syntax JPEG Extended")
    hanging.set_missing("RMLO")
    assert hanging.panes["LCC"].is_error and "cannot decode" in hanging.panes["LCC"].message
    assert "not in this exam" in hanging.panes["RMLO"].message
    assert hanging.panes["LCC"].grab().toImage().width() > 0  # paints without a view


def test_fullscreen_toggle_hides_other_panes(hanging, qtbot) -> None:
    hanging.state.toggle_fullscreen("LMLO")
    assert not hanging.panes["RCC"].isVisible() and hanging.panes["LMLO"].isVisible()
    hanging.state.toggle_fullscreen("LMLO")
    assert all(p.isVisible() for p in hanging.panes.values())


@pytest.mark.realdata
def test_cbis_exam_hangs_back_to_back(hanging) -> None:
    root = require_shared("dicom", "cbis-ddsm", "malignant-left-P_00820")
    from mammotriage.dicom import read_metadata

    for path in sorted(root.glob("*.dcm")):
        meta = read_metadata(path)
        view = load_view(str(path))
        hanging.set_view(meta.label, view)
    for slot in ("RCC", "LCC", "RMLO", "LMLO"):
        rendered = _pane_pixels(hanging, slot)
        assert chest_wall_from_pixels(rendered) == ("right" if slot[0] == "R" else "left"), slot
    # the same physical scale for both breasts of a view: mm per screen pixel is shared
    # (each view pair is fitted to its larger breast)
    for view in ("CC", "MLO"):
        assert hanging.panes["R" + view].mm_per_px == hanging.panes["L" + view].mm_per_px


def test_ruler_measures_in_stored_mm_and_labels_source(hanging, tmp_path) -> None:
    views = _exam(tmp_path, mirrored=True)
    hanging.set_view("RCC", views["RCC"])
    pane = hanging.panes["RCC"]
    hanging.state.set_tool("ruler")
    a = pane.stored_to_widget(20.0, 30.0)
    b = pane.stored_to_widget(80.0, 110.0)
    _send(pane, QEvent.Type.MouseButtonPress, a.toPoint(), Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton)
    _send(pane, QEvent.Type.MouseMove, b.toPoint(), Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton)
    _send(pane, QEvent.Type.MouseButtonRelease, b.toPoint(), Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton)
    (line,) = hanging.state.panes["RCC"].rulers
    # widget positions are whole pixels: allow a screen pixel of slack in stored units
    slack = 2.0 / pane.base_scale()
    assert line[0] == pytest.approx(20, abs=slack) and line[3] == pytest.approx(110, abs=slack)
    from mammotriage.ui.image_pane import ruler_label, ruler_length_mm

    assert ruler_length_mm(views["RCC"], (20, 30, 80, 110)) == pytest.approx(10.0)  # 0.1 mm pixels
    assert ruler_label(views["RCC"], (20, 30, 80, 110)) == "10.0 mm at detector"
    assert pane.state.zoom == 1.0  # the ruler did not pan


def test_magnifier_uses_pane_orientation_and_window(hanging, tmp_path) -> None:
    views = _exam(tmp_path, mirrored=True)  # stored chest wall opposite to the display
    hanging.set_view("LCC", views["LCC"])
    pane = hanging.panes["LCC"]
    hanging.state.toggle_magnifier()
    pane.grab()  # render once so the pane's LUT exists
    # a point at the chest wall (display left edge): the lens must show tissue there
    rect = pane.image_rect()
    center = QPointF(rect.x() + 3, rect.center().y())
    image, target = pane.lens_image(center, radius=40)
    lens = qimage_to_array(image)
    assert lens[:, : lens.shape[1] // 2].mean() > 128  # tissue, as in the pane at that spot
    assert target.width() > image.width()  # magnified
    # same window: changing the pane's window changes the lens
    hanging.state.panes["LCC"].set_window(WindowSetting(center=3100, width=10))
    pane.grab()
    dark = qimage_to_array(pane.lens_image(center, radius=40)[0])
    assert dark.mean() < lens.mean()
    # same inversion
    hanging.state.panes["LCC"].set_invert(True)
    pane.grab()
    assert qimage_to_array(pane.lens_image(center, radius=40)[0]).mean() > dark.mean()


@pytest.mark.parametrize("layout", ["standard", "mirrored"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_phantom_exam_hangs_back_to_back(hanging, tmp_path, layout, photometric) -> None:
    from mammotriage.phantom import generate_exam

    exam = generate_exam(3, rows=256, columns=208, stored_layout=layout, photometric=photometric)
    paths = exam.save(tmp_path)
    for slot, path in paths.items():
        hanging.set_view(slot, load_view(str(path)))
    for slot in ("RCC", "LCC", "RMLO", "LMLO"):
        rendered = _pane_pixels(hanging, slot)
        assert chest_wall_from_pixels(rendered) == ("right" if slot[0] == "R" else "left"), slot


def test_view_cache_is_bounded_and_pins_what_is_on_screen() -> None:
    from mammotriage.dicom.hanging import DisplayOrientation
    from mammotriage.dicom.voi import Window
    from mammotriage.viewer.loader import ViewCache

    def fake(name: str) -> LoadedView:
        from mammotriage.dicom.read import parse_metadata
        from mtsupport import make_mg_dataset

        meta = parse_metadata(make_mg_dataset())
        return LoadedView(path=name, meta=meta, orientation=DisplayOrientation(False, False),
                          levels=[np.zeros((100, 100), np.uint16)], auto=Window(1, 2))

    cache = ViewCache(max_bytes=3 * 20_000)
    cache.pinned = {"a"}
    for name in "abcde":
        cache.put(fake(name))
    assert cache.nbytes <= 3 * 20_000
    assert cache.get("a") is not None  # pinned: on screen, never evicted
    assert cache.get("b") is None and cache.get("e") is not None  # least recently used went first
