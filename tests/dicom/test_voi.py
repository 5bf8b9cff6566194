"""Display transform: modality LUT, VOI functions, inversion, 8-bit tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_voi_lut

from mammotriage.dicom import read_image
from mammotriage.dicom.image import ModalityLut, WindowPreset
from mammotriage.dicom.voi import (
    Window,
    apply_modality_lut,
    apply_voi_window,
    auto_window,
    build_display_lut,
    needs_inversion,
    render_8bit,
)
from mtsupport import require_shared


def _pydicom_reference(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """pydicom's own windowing, normalised to [0, 1], as an independent reference."""
    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 16, 0, "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    out = apply_voi_lut(values.astype(np.float64), ds, prefer_lut=False)
    return out / 65535.0


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(2048, 4096), (1000, 300), (2262, 380), (10, 2)])
def test_window_functions_match_pydicom(function: str, center: float, width: float) -> None:
    values = np.arange(0, 4096, dtype=np.float64)
    ours = apply_voi_window(values, center, width, function)
    ref = _pydicom_reference(values, center, width, function)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_window_formula_details() -> None:
    # PS3.3 C.11.2.1.2.1 LINEAR: c=2048, w=4096 -> x <= 0 is min, x > 4095 is max
    assert apply_voi_window(np.array([0.0]), 2048, 4096)[0] == 0.0
    assert apply_voi_window(np.array([4096.0]), 2048, 4096)[0] == 1.0
    # LINEAR_EXACT is exact: centre maps to the middle
    assert apply_voi_window(np.array([100.0]), 100, 50, "LINEAR_EXACT")[0] == pytest.approx(0.5)
    # SIGMOID: centre at 0.5, symmetric
    y = apply_voi_window(np.array([90.0, 100.0, 110.0]), 100, 40, "SIGMOID")
    assert y[1] == pytest.approx(0.5) and y[0] + y[2] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        apply_voi_window(np.array([1.0]), 0, 0.5, "LINEAR")
    with pytest.raises(ValueError):
        apply_voi_window(np.array([1.0]), 0, 1, "GAMMA")


def test_modality_lut_rescale_and_table() -> None:
    values = np.array([0, 1, 10])
    np.testing.assert_allclose(apply_modality_lut(values, ModalityLut(slope=2, intercept=-5)), [-5, -3, 15])
    table = ModalityLut(table=np.array([100.0, 200.0, 300.0]), first_mapped=1)
    np.testing.assert_allclose(apply_modality_lut(np.array([0, 1, 2, 3, 9]), table), [100, 100, 200, 300, 300])


def test_inversion_rules() -> None:
    assert needs_inversion("MONOCHROME1", None)
    assert needs_inversion("MONOCHROME1", "INVERSE")  # the same single inversion
    assert not needs_inversion("MONOCHROME2", "IDENTITY")
    assert needs_inversion("MONOCHROME2", "INVERSE")


def _meta(photometric: str = "MONOCHROME2", shape: str | None = None, bits: int = 12):
    from mammotriage.dicom.read import parse_metadata
    from mtsupport import make_mg_dataset

    ds = make_mg_dataset(photometric=photometric)
    ds.BitsStored = bits
    meta = parse_metadata(ds)
    return dataclasses.replace(meta, presentation_lut_shape=shape)


def test_display_lut_equals_float_pipeline() -> None:
    meta = _meta()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(50, 40), dtype=np.uint16)
    for window in (Window(1500, 800), Window(2000, 300, "SIGMOID"), Window(1000, 1000, "LINEAR_EXACT")):
        lut = build_display_lut(meta, window)
        expected = np.clip(np.rint(apply_voi_window(pixels, window.center, window.width, window.function) * 255), 0, 255)
        np.testing.assert_array_equal(lut.apply(pixels), expected.astype(np.uint8))
    assert lut.table.size == 4096 and lut.table.dtype == np.uint8


def test_monochrome1_inverted_after_voi_once() -> None:
    pixels = np.array([[0, 4095]], dtype=np.uint16)
    window = Window(2048, 4096)
    m2 = build_display_lut(_meta("MONOCHROME2", "IDENTITY"), window).apply(pixels)
    m1 = build_display_lut(_meta("MONOCHROME1", "INVERSE"), window).apply(pixels)
    m1_no_shape = build_display_lut(_meta("MONOCHROME1", None), window).apply(pixels)
    assert m2.tolist() == [[0, 255]]
    assert m1.tolist() == [[255, 0]]  # low stored value is white, inverted exactly once
    assert m1_no_shape.tolist() == [[255, 0]]
    # user invert toggles on top of that
    assert build_display_lut(_meta("MONOCHROME1", "INVERSE"), window, invert=True).apply(pixels).tolist() == [[0, 255]]
    # inversion happens after the (asymmetric) VOI step, not before
    sig = Window(1000, 400, "SIGMOID")
    m2s = build_display_lut(_meta("MONOCHROME2"), sig).apply(pixels)
    m1s = build_display_lut(_meta("MONOCHROME1"), sig).apply(pixels)
    np.testing.assert_array_equal(m1s, 255 - m2s)


def test_signed_pixels_offset() -> None:
    meta = dataclasses.replace(_meta(), pixel_representation=1, bits_stored=12)
    lut = build_display_lut(meta, Window(0, 4096))
    assert lut.offset == -2048
    out = lut.apply(np.array([[-2048, 0, 2047]], dtype=np.int16))
    assert out[0, 0] == 0 and out[0, 2] == 255 and 120 < out[0, 1] < 135


@pytest.mark.realdata
def test_ge_presets_render_windows_and_voi_lut() -> None:
    path = require_shared("dicom", "vendor-headers", "MG-Im-GE_Seno_1_ForPresentation.dcm")
    image = read_image(path)
    meta = image.meta
    sigmoid = meta.presets[0]
    lut_preset = next(p for p in meta.presets if p.is_lut)
    values = np.arange(1300, 3300, dtype=np.uint16)
    out = build_display_lut(meta, sigmoid).apply(values)
    assert out[0] < 5 and out[-1] > 250 and np.all(np.diff(out.astype(int)) >= 0)
    # VOI LUT table: values below first_mapped take the first entry, above take the last
    table_out = build_display_lut(meta, lut_preset).apply(np.array([0, 1405, 1405 + 1714, 4095], dtype=np.uint16))
    first, last = lut_preset.lut[0], lut_preset.lut[-1]
    assert table_out[0] == table_out[1] == round(first / 4095 * 255)
    assert table_out[2] == table_out[3] == round(last / 4095 * 255)
    # pydicom's VOI LUT agrees on the real pixels
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(ds.pixel_array, ds, index=0, prefer_lut=True)
    ours = build_display_lut(meta, lut_preset).apply(image.pixels)
    np.testing.assert_array_equal(ours, np.rint(ref / 4095 * 255).astype(np.uint8))


@pytest.mark.realdata
def test_ge_monochrome1_for_processing_renders_inverted() -> None:
    image = read_image(require_shared("dicom", "vendor-headers", "MG-Im-GE-SenDS-scaled.dcm"))
    meta = image.meta
    assert meta.photometric == "MONOCHROME1" and meta.presentation_lut_shape == "INVERSE"
    lo, hi = int(image.pixels.min()), int(image.pixels.max())
    out = build_display_lut(meta, Window((lo + hi) / 2, hi - lo + 1)).apply(np.array([lo, hi], dtype=np.uint16))
    assert out[0] > out[1]  # minimum stored value displayed bright


@pytest.mark.realdata
def test_cr_monochrome1_file_window_inverts() -> None:
    image = read_image(require_shared("dicom", "wg04", "RG3_RLE.dcm"), allow_non_breast=True)
    out = render_8bit(image.meta, image.pixels)  # the file's own window 550/1024
    dark_stored = image.pixels < 100
    bright_stored = image.pixels > 900
    assert out[dark_stored].mean() > out[bright_stored].mean()


@pytest.mark.realdata
def test_auto_window_for_files_without_presets() -> None:
    image = read_image(require_shared("dicom", "cbis-ddsm", "benign-P_00173", "1-130.dcm"))
    assert image.meta.presets == ()
    window = auto_window(image.meta, image.pixels)
    out = render_8bit(image.meta, image.pixels)
    # tissue occupies a real grey range, background stays black
    assert out.max() == 255 and np.percentile(out, 5) == 0
    assert 20 < np.median(out[out > 0]) < 240
    assert window.explanation == "AUTO"


def test_window_preset_metadata_flags() -> None:
    assert WindowPreset("A", lut=np.zeros(3)).is_lut
    assert not WindowPreset("B", center=1, width=2).is_lut
