"""Exam assembly and screening-hanging orientation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mammotriage.dicom import Laterality, View, read_image
from mammotriage.dicom.hanging import (
    DisplayOrientation,
    assemble_exams,
    chest_wall_from_pixels,
    display_orientation,
    exam_key,
)
from mammotriage.dicom.image import PresentationIntent
from mammotriage.dicom.read import parse_metadata
from mammotriage.dicom.voi import render_8bit
from mtsupport import make_mg_dataset, require_shared


def _breast(rows: int = 120, cols: int = 90, chest: str = "right") -> np.ndarray:
    """A half-disc of bright 'tissue' attached to one vertical edge."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    x0 = cols - 1 if chest == "right" else 0
    inside = ((xx - x0) / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 <= 1
    img = np.where(inside, 2500, 50).astype(np.uint16)
    img[5:12, 70 if chest == "left" else 5: 85 if chest == "left" else 20] = 4000  # burned-in label
    return img


def _meta(lat: str, view: str, orientation, **kw):
    return parse_metadata(make_mg_dataset(laterality=lat, view=view, orientation=orientation, **kw))


def _displayed_chest_side(image: np.ndarray, orient: DisplayOrientation) -> str:
    return chest_wall_from_pixels(orient.apply(image))


@pytest.mark.parametrize(("lat", "view", "orientation", "stored_chest"), [
    ("R", "CC", ("P", "L"), "right"),
    ("L", "CC", ("A", "R"), "left"),
    ("R", "MLO", ("P", "F"), "right"),
    ("L", "MLO", ("A", "F"), "left"),
    # mirrored stored layouts
    ("R", "CC", ("A", "L"), "left"),
    ("L", "CC", ("P", "R"), "right"),
    ("R", "MLO", ("A", "F"), "left"),
    ("L", "MLO", ("P", "F"), "right"),
])
def test_orientation_puts_chest_wall_at_centre_line(lat, view, orientation, stored_chest) -> None:
    meta = _meta(lat, view, orientation)
    orient = display_orientation(meta)
    assert orient.source == "PatientOrientation" and orient.chest_wall == stored_chest
    shown = _displayed_chest_side(_breast(chest=stored_chest), orient)
    # right breast: chest wall on the pane's right edge (centre line); left breast: left edge
    assert shown == ("right" if lat == "R" else "left")


@pytest.mark.parametrize(("lat", "view", "orientation", "flip_v"), [
    ("R", "CC", ("P", "L"), False), ("R", "CC", ("P", "R"), True),
    ("L", "CC", ("A", "R"), False), ("L", "CC", ("A", "L"), True),
    ("L", "MLO", ("A", "F"), False), ("L", "MLO", ("A", "H"), True),
])
def test_vertical_flip_lateral_or_head_up(lat, view, orientation, flip_v) -> None:
    assert display_orientation(_meta(lat, view, orientation)).flip_v is flip_v


def test_transposed_orientation_is_rotated() -> None:
    # row direction along the patient's right, columns posterior: a 90-degree rotation
    meta = _meta("L", "CC", ("R", "P"))
    orient = display_orientation(meta)
    assert orient.transpose
    stored = _breast(chest="right").T  # chest wall at the bottom of the stored image
    assert _displayed_chest_side(stored, orient) == "left"


@pytest.mark.parametrize("lat", ["L", "R"])
@pytest.mark.parametrize("stored_chest", ["left", "right"])
def test_pixels_decide_when_orientation_missing(lat: str, stored_chest: str) -> None:
    meta = _meta(lat, "CC", None)
    image = _breast(chest=stored_chest)
    orient = display_orientation(meta, image)
    assert orient.source == "pixels" and orient.chest_wall == stored_chest
    assert _displayed_chest_side(image, orient) == ("right" if lat == "R" else "left")


def test_coordinate_round_trip() -> None:
    rng = np.random.default_rng(3)
    shape = (40, 30)
    for transpose in (False, True):
        for fh in (False, True):
            for fv in (False, True):
                o = DisplayOrientation(flip_h=fh, flip_v=fv, transpose=transpose)
                img = rng.integers(0, 1000, size=shape)
                shown = o.apply(img)
                for _ in range(20):
                    r, c = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
                    dx, dy = o.stored_to_display(c + 0.5, r + 0.5, shape)
                    assert shown[int(dy), int(dx)] == img[r, c]
                    sx, sy = o.display_to_stored(dx, dy, shape)
                    assert (sx, sy) == pytest.approx((c + 0.5, r + 0.5))


@pytest.mark.realdata
@pytest.mark.parametrize("flip", [False, True])
def test_cbis_chest_wall_inferred_from_pixels(flip: bool) -> None:
    """CBIS-DDSM has no Patient Orientation: pixels decide, also for mirrored copies."""
    root = require_shared("dicom", "cbis-ddsm")
    for path in sorted(root.glob("*/*.dcm")):
        image = read_image(path)
        pixels = image.pixels[:, ::-1] if flip else image.pixels
        display = render_8bit(image.meta, pixels)
        orient = display_orientation(image.meta, display)
        assert orient.source == "pixels"
        shown = chest_wall_from_pixels(orient.apply(display))
        assert shown == ("right" if image.meta.laterality is Laterality.RIGHT else "left"), path.name


@pytest.mark.realdata
def test_cbis_exams_assemble_from_single_image_studies() -> None:
    from mammotriage.dicom import read_metadata

    metas = [read_metadata(p) for p in sorted(require_shared("dicom", "cbis-ddsm").glob("*/*.dcm"))]
    assert len({m.study_instance_uid for m in metas}) == 8
    exams = assemble_exams(metas)
    assert len(exams) == 2
    for exam in exams:
        assert sorted(exam.slots) == ["LCC", "LMLO", "RCC", "RMLO"] and not exam.extras


def test_assembly_prefers_presentation_and_keeps_extras() -> None:
    study = "1.2.3.4"
    base = [_meta(lat, view, None, study_uid=study) for lat in "LR" for view in ("CC", "MLO")]
    processing = dataclasses.replace(base[0], sop_instance_uid="9.9",
                                     presentation_intent=PresentationIntent.PROCESSING)
    spot = dataclasses.replace(base[1], sop_instance_uid="9.8", view_modifiers=("SPOT",))
    ml = dataclasses.replace(base[2], sop_instance_uid="9.7", view=View.ML)
    exams = assemble_exams([processing, *base, spot, ml])
    assert len(exams) == 1
    exam = exams[0]
    assert exam.slots["LCC"] is base[0]
    assert {m.sop_instance_uid for m in exam.extras} == {"9.9", "9.8", "9.7"}
    assert exam.missing == []
    assert exam_key(base[0]) == study
