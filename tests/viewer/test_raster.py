"""Screen-resolution rasters and shared display tables (window/level under one frame)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mammotriage.dicom import read_metadata
from mammotriage.dicom.image import ModalityLut
from mammotriage.dicom.voi import Window, build_display_lut
from mammotriage.phantom import generate_exam
from mammotriage.viewer.raster import resample, screen_raster, shared_lut


def _meta(tmp_path):
    paths = generate_exam(3, rows=128, columns=104).save(tmp_path)
    return read_metadata(paths["LCC"])


def test_resample_at_one_to_one_is_the_level_itself() -> None:
    level = np.arange(60 * 40, dtype=np.uint16).reshape(60, 40)
    for smooth in (False, True):
        out = resample(level, (0.0, 0.0, 40.0, 60.0), (0, 0, 40, 60), smooth)
        assert out.dtype == np.uint16 and np.array_equal(out, level)


def test_resample_halves_and_crops_where_the_pane_shows() -> None:
    level = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 3
    # the level drawn at half size from x = -8 (partly left of the pane), 20 x 16 pixels visible
    out = resample(level, (-8.0, 0.0, 32.0, 32.0), (0, 0, 20, 16), smooth=True)
    assert out.shape == (16, 20)
    # screen pixel (x=0, y=0) covers level columns 16-17, rows 0-1: their mean
    assert abs(int(out[0, 0]) - int(level[0:2, 16:18].mean())) <= 1
    nearest = resample(level, (-8.0, 0.0, 32.0, 32.0), (0, 0, 20, 16), smooth=False)
    assert nearest[5, 5] in level[10:12, 26:28]


def test_four_panes_with_one_window_share_one_table(tmp_path) -> None:
    meta = _meta(tmp_path)
    window = Window(2000.0, 1500.0)
    first, first32 = shared_lut(meta, window, False)
    again, _ = shared_lut(replace(meta, sop_instance_uid="another view"), Window(2000.0, 1500.0), False)
    assert again is first  # same pixel semantics and window: built once
    assert shared_lut(meta, Window(2001.0, 1500.0), False)[0] is not first
    assert shared_lut(meta, window, True)[0] is not first
    other_table = replace(meta, modality_lut=ModalityLut(table=np.linspace(0, 4095, 4096), first_mapped=0))
    assert shared_lut(other_table, window, False)[0] is not first
    reference = build_display_lut(meta, window)
    assert np.array_equal(first.table, reference.table)
    grey = first32.table & 0xFF
    assert np.array_equal(grey.astype(np.uint8), reference.table)
    assert np.all(first32.table >> 24 == 0xFF)


def test_window_drag_reuses_the_raster_and_only_relooks_up(tmp_path) -> None:
    meta = _meta(tmp_path)
    level = np.random.default_rng(0).integers(0, 4096, (128, 104)).astype(np.uint16)
    raster = screen_raster(None, "view", 0, level, (0.0, 0.0, 104.0, 128.0), (200, 200), True)
    assert raster is not None and raster.values.shape == (128, 104)
    assert screen_raster(raster, "view", 0, level, (0.0, 0.0, 104.0, 128.0), (200, 200), True) is raster
    assert screen_raster(raster, "view", 0, level, (1.0, 0.0, 104.0, 128.0), (200, 200), True) is not raster
    assert screen_raster(None, "view", 0, level, (300.0, 0.0, 104.0, 128.0), (200, 200), True) is None
    lut8, lut32 = shared_lut(meta, Window(1500.0, 1000.0), False)
    frame = raster.render(lut32)
    assert np.array_equal((frame & 0xFF).astype(np.uint8), lut8.apply(level))


def test_a_hidpi_raster_has_the_device_pixels_of_the_same_logical_place() -> None:
    level = np.random.default_rng(1).integers(0, 4096, (400, 300)).astype(np.uint16)
    one = screen_raster(None, "view", 0, level, (10.0, 20.0, 150.0, 200.0), (200, 260), True)
    two = screen_raster(None, "view", 0, level, (10.0, 20.0, 150.0, 200.0), (200, 260), True, ratio=2.0)
    assert one is not None and two is not None
    assert one.values.shape == (200, 150) and two.values.shape == (400, 300)  # level 0 at device pixels
    assert two.origin == (20, 40) and two.logical_origin == one.logical_origin == (10.0, 20.0)
    assert np.array_equal(two.values, level)  # 1:1 at ratio 2: each stored pixel a device pixel
    # clipped to the widget's device pixels
    clipped = screen_raster(None, "view", 0, level, (100.0, 0.0, 150.0, 200.0), (200, 260), True, ratio=2.0)
    assert clipped is not None and clipped.values.shape == (400, 200) and clipped.origin == (200, 0)
    assert screen_raster(two, "view", 0, level, (10.0, 20.0, 150.0, 200.0), (200, 260), True, ratio=2.0) is two
    assert screen_raster(two, "view", 0, level, (10.0, 20.0, 150.0, 200.0), (200, 260), True) is not two
