"""Progressive JPEG 2000 decoding against pydicom's decoder (the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammotriage.dicom import CorruptPixelDataError, read_image
from mammotriage.dicom.progressive import (
    decomposition_levels,
    preview_factor,
    read_image_progressive,
)
from mammotriage.dicom.pyramid import downsample2
from mammotriage.phantom import generate_exam

pytest.importorskip("glymur")


@pytest.fixture(scope="module")
def j2k_exam(tmp_path_factory) -> dict[str, Path]:
    exam = generate_exam(5, rows=1024, columns=832, bits_stored=16, transfer_syntax="jpeg2000")
    return exam.save(tmp_path_factory.mktemp("j2k"))


def _reference_reduced(reference: np.ndarray, r: int) -> np.ndarray:
    out = reference
    for _ in range(r):
        out = downsample2(out)
    return out.astype(np.float64)


def _assert_close_to_reference(reduced: np.ndarray, reference: np.ndarray, r: int) -> None:
    ref = _reference_reduced(reference, r)
    assert reduced.shape == (-(-reference.shape[0] // 2 ** r), -(-reference.shape[1] // 2 ** r))
    common = reduced[:ref.shape[0], :ref.shape[1]].astype(np.float64)
    span = float(reference.max()) - float(reference.min())
    # a wavelet low-pass is not a box filter: they agree closely, not exactly
    assert np.mean(np.abs(common - ref)) < 0.02 * span
    assert np.corrcoef(common.ravel(), ref.ravel())[0, 1] > 0.98


def test_full_resolution_equals_pydicom_bit_for_bit(j2k_exam) -> None:
    path = j2k_exam["LCC"]
    image, r = read_image_progressive(path, 0, threads=2)
    reference = pydicom.dcmread(path).pixel_array
    assert r == 0 and image.pixels.dtype == reference.dtype
    assert np.array_equal(image.pixels, reference)
    assert image.meta.decoder == "glymur"
    assert np.array_equal(image.pixels, read_image(path).pixels)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_reduced_levels_match_a_downsampled_reference(j2k_exam, r) -> None:
    path = j2k_exam["RMLO"]
    image, used = read_image_progressive(path, r, threads=1)
    assert used == r
    _assert_close_to_reference(image.pixels, pydicom.dcmread(path).pixel_array, r)


def test_reduce_is_capped_at_the_codestream_levels(j2k_exam) -> None:
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(j2k_exam["RCC"])
    levels = decomposition_levels(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert levels is not None and levels >= 3
    image, used = read_image_progressive(j2k_exam["RCC"], levels + 4)
    assert used == levels and image.pixels.shape[0] == -(-1024 // 2 ** levels)


def test_preview_factor_targets_a_pane() -> None:
    assert preview_factor(4096, 3328) == 3  # 512 rows
    assert preview_factor(600, 400) == 0


def test_real_lossy_mammogram_matches_pydicom(dicom_data) -> None:
    path = dicom_data / "wg04" / "MG1_J2KI.dcm"
    result = read_image_progressive(path, 0, allow_non_breast=True)
    assert result is not None
    reference = pydicom.dcmread(path).pixel_array
    assert np.array_equal(result[0].pixels, reference)
    reduced, r = read_image_progressive(path, 3, allow_non_breast=True)
    _assert_close_to_reference(reduced.pixels, reference, r)


def test_real_lossless_cr_matches_pydicom(dicom_data) -> None:
    path = dicom_data / "wg04" / "RG3_J2KR.dcm"
    result = read_image_progressive(path, 0, allow_non_breast=True)
    assert result is not None
    assert np.array_equal(result[0].pixels, pydicom.dcmread(path).pixel_array)


def test_header_that_lies_about_the_codestream_is_refused_before_decoding(j2k_exam, tmp_path) -> None:
    ds = pydicom.dcmread(j2k_exam["LCC"])
    ds.Rows = 512  # the SIZ marker still says 1024
    path = tmp_path / "lie.dcm"
    ds.save_as(path)
    with pytest.raises(CorruptPixelDataError, match="refused before decoding"):
        read_image_progressive(path, 3)


def test_other_syntaxes_are_left_to_the_reference_reader(tmp_path) -> None:
    exam = generate_exam(2, rows=256, columns=208, transfer_syntax="rle")
    paths = exam.save(tmp_path)
    assert read_image_progressive(paths["LCC"], 2) is None


def test_htj2k_matches_pydicom(j2k_exam, tmp_path) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    if not imagecodecs.HTJ2K.available:
        pytest.skip("imagecodecs without HTJ2K")
    from pydicom.encaps import encapsulate
    from pydicom.uid import HTJ2KLossless

    ds = pydicom.dcmread(j2k_exam["RCC"])
    pixels = ds.pixel_array
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(pixels, level=0)])
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds["PixelData"].is_undefined_length = True
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path)
    full, _ = read_image_progressive(path, 0)
    assert np.array_equal(full.pixels, pixels)
    try:
        reference = pydicom.dcmread(path).pixel_array
    except Exception as exc:  # noqa: BLE001 - the reference may lack HTJ2K; the source pixels are known
        pytest.skip(f"pydicom cannot decode HTJ2K here: {exc}")
    assert np.array_equal(full.pixels, reference)
    reduced, r = read_image_progressive(path, 2)
    _assert_close_to_reference(reduced.pixels, pixels, r)
