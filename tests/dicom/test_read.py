"""mammotriage.dicom.read on real files (../shared/data) and a corpus of broken inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammotriage.dicom import (
    CorruptPixelDataError,
    Laterality,
    MammoReadError,
    NotAnImageError,
    NotDicomError,
    NotMammogramError,
    PresentationIntent,
    SpacingSource,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
    View,
    read_image,
    read_metadata,
)
from mtsupport import make_mg_dataset, require_shared, write_mg

CBIS_EXPECTED = {
    "benign-P_00173/1-130.dcm": ("L", "CC"),
    "benign-P_00173/1-131.dcm": ("L", "MLO"),
    "benign-P_00173/1-132.dcm": ("R", "CC"),
    "benign-P_00173/1-133.dcm": ("R", "MLO"),
    "malignant-left-P_00820/1-280.dcm": ("L", "CC"),
    "malignant-left-P_00820/1-281.dcm": ("L", "MLO"),
    "malignant-left-P_00820/1-282.dcm": ("R", "CC"),
    "malignant-left-P_00820/1-283.dcm": ("R", "MLO"),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(CBIS_EXPECTED))
def test_cbis_ddsm_decodes_with_laterality_and_view(name: str) -> None:
    path = require_shared("dicom", "cbis-ddsm") / name
    image = read_image(path)
    lat, view = CBIS_EXPECTED[name]
    assert image.meta.laterality is Laterality(lat)
    assert image.meta.view is View(view)
    assert image.meta.decoder == "pydicom"  # RLE Lossless, pydicom's own decoder
    assert image.pixels.shape == (image.meta.rows, image.meta.columns)
    assert image.pixels.shape[0] > 4000 and image.pixels.dtype == np.uint16
    assert image.pixels.max() > image.pixels.min()


@pytest.mark.realdata
def test_mg1_j2k_decodes_as_breast_image() -> None:
    image = read_image(require_shared("dicom", "wg04", "MG1_J2KI.dcm"))
    assert image.meta.laterality is Laterality.LEFT
    assert image.meta.view is View.MLO
    assert image.meta.decoder == "pylibjpeg"
    assert image.pixels.shape == (4664, 3064)
    assert 0 < image.pixels.max() <= 4095


@pytest.mark.realdata
def test_mg1_jpeg_extended_12bit_fails_cleanly() -> None:
    path = require_shared("dicom", "wg04", "MG1_JPLY.dcm")
    meta = read_metadata(path)  # header is fine
    assert meta.view is View.MLO
    with pytest.raises(UnsupportedTransferSyntaxError) as err:
        read_image(path)
    assert "cannot decode: transfer syntax JPEG Extended" in str(err.value)
    assert "1.2.840.10008.1.2.4.51" in str(err.value)
    assert err.value.path == str(path)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG2_JLSL.dcm", "RG3_J2KR.dcm", "RG3_JPLL.dcm", "RG3_RLE.dcm"])
def test_chest_cr_files_decode_but_are_not_mammograms(name: str) -> None:
    path = require_shared("dicom", "wg04", name)
    with pytest.raises(NotMammogramError) as err:
        read_metadata(path)
    assert "not a mammogram" in err.value.reason
    image = read_image(path, allow_non_breast=True)
    assert image.pixels.ndim == 2 and image.pixels.max() > 0


@pytest.mark.realdata
def test_rg3_lossless_encodings_agree() -> None:
    """The same CR image in JPEG 2000 lossless, JPEG lossless and RLE decodes identically."""
    wg04 = require_shared("dicom", "wg04")
    arrays = [read_image(wg04 / n, allow_non_breast=True).pixels for n in ("RG3_J2KR.dcm", "RG3_JPLL.dcm")]
    assert np.array_equal(arrays[0], arrays[1])
    rle = read_image(wg04 / "RG3_RLE.dcm", allow_non_breast=True)
    assert rle.meta.photometric == "MONOCHROME1"


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["MG-RDSR-Hologic_2D.dcm", "MG-RDSR-Hologic_mix.dcm"])
def test_dose_reports_are_skipped_with_reason(name: str) -> None:
    with pytest.raises(NotAnImageError) as err:
        read_metadata(require_shared("dicom", "vendor-headers", name))
    assert "Dose SR" in err.value.reason


@pytest.mark.realdata
def test_ge_for_presentation_presets_and_function() -> None:
    meta = read_metadata(require_shared("dicom", "vendor-headers", "MG-Im-GE_Seno_1_ForPresentation.dcm"))
    windows = [p for p in meta.presets if not p.is_lut]
    luts = [p for p in meta.presets if p.is_lut]
    assert [(p.explanation, p.center, p.width, p.function) for p in windows] == [
        ("NORMAL", 2262, 380, "SIGMOID"), ("HARDER", 2286, 380, "SIGMOID"), ("SOFTER", 2262, 500, "SIGMOID")]
    assert [(p.explanation, len(p.lut), p.first_mapped, p.lut_bits) for p in luts] == [
        ("NORMAL (VOI LUT)", 1715, 1405, 12), ("HARDER (VOI LUT)", 1715, 1429, 12),
        ("SOFTER (VOI LUT)", 2255, 1135, 12)]
    assert meta.photometric == "MONOCHROME2" and meta.presentation_lut_shape == "IDENTITY"
    assert meta.presentation_intent is PresentationIntent.PRESENTATION
    assert (meta.laterality, meta.view, meta.view_source) == (Laterality.LEFT, View.CC, "ViewCodeSequence")
    # ImagerPixelSpacing with magnification factor 1.0: a detector-plane measurement.
    assert meta.spacing.source is SpacingSource.AT_DETECTOR
    assert meta.spacing.row_mm == pytest.approx(0.094090909)


@pytest.mark.realdata
def test_ge_for_processing_is_monochrome1_processing() -> None:
    meta = read_metadata(require_shared("dicom", "vendor-headers", "MG-Im-GE_Seno_1_ForProcessing.dcm"))
    assert meta.presentation_intent is PresentationIntent.PROCESSING
    assert meta.photometric == "MONOCHROME1" and meta.presentation_lut_shape == "INVERSE"


@pytest.mark.realdata
def test_hologic_header_laterality_from_laterality_and_view_from_code() -> None:
    meta = read_metadata(require_shared("dicom", "vendor-headers", "MG-Im-Hologic-PropProj.dcm"),
                         check_pixels=False)
    # ImageLaterality is absent: falls back to Laterality; ViewPosition is FLATFIELD but
    # ViewCodeSequence says cranio-caudal, which wins.
    assert meta.laterality is Laterality.RIGHT and meta.laterality_source == "Laterality"
    assert meta.view is View.CC and meta.view_source == "ViewCodeSequence"
    assert meta.manufacturer.upper().startswith("HOLOGIC")


@pytest.mark.realdata
def test_hologic_header_without_pixels_is_rejected_for_import() -> None:
    with pytest.raises(CorruptPixelDataError, match="no Pixel Data"):
        read_metadata(require_shared("dicom", "vendor-headers", "MG-Im-Hologic-PropProj.dcm"))


def test_magnification_factor_corrects_spacing(tmp_path: Path) -> None:
    ds = make_mg_dataset()
    ds.EstimatedRadiographicMagnificationFactor = 1.8
    ds.ViewCodeSequence = [pydicom.Dataset()]
    item = ds.ViewCodeSequence[0]
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "399162004", "SCT", "cranio-caudal"
    mod = pydicom.Dataset()
    mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = "399163009", "SCT", "Magnification"
    item.ViewModifierCodeSequence = [mod]
    path = tmp_path / "mag.dcm"
    ds.save_as(path, enforce_file_format=True)
    meta = read_metadata(path)
    assert meta.spacing.source is SpacingSource.MAGNIFIED
    assert meta.spacing.row_mm == pytest.approx(0.1 / 1.8)
    assert meta.view_modifiers == ("MAGNIFICATION",)
    assert meta.is_spot_or_magnified


def test_valid_synthetic_file_round_trip(tmp_path: Path) -> None:
    path = write_mg(tmp_path / "ok.dcm", rows=40, columns=30, laterality="R", view="MLO")
    image = read_image(path)
    assert image.meta.label == "RMLO"
    assert image.meta.decoder == "native"
    assert image.pixels.shape == (40, 30)


# --------------------------------------------------------------------------- broken inputs

def _broken_corpus(root: Path) -> dict[str, tuple[Path, type[MammoReadError]]]:
    good = write_mg(root / "good.dcm")
    data = good.read_bytes()
    corpus: dict[str, tuple[Path, type[MammoReadError]]] = {}

    def put(name: str, content: bytes, error: type[MammoReadError]) -> None:
        p = root / name
        p.write_bytes(content)
        corpus[name] = (p, error)

    put("empty.dcm", b"", NotDicomError)
    put("text.dcm", b"this is not a DICOM file\n" * 20, NotDicomError)
    put("random.bin", np.random.default_rng(0).bytes(4096), NotDicomError)
    put("preamble-only.dcm", b"\0" * 128 + b"DICM", NotDicomError)
    put("truncated-header.dcm", data[:200], NotDicomError)
    put("truncated-pixels.dcm", data[: len(data) - 1000], CorruptPixelDataError)

    def variant(name: str, error: type[MammoReadError], **changes) -> None:
        ds = make_mg_dataset()
        for k, v in changes.items():
            if v is None:
                delattr(ds, k)
            else:
                setattr(ds, k, v)
        p = root / name
        ds.save_as(p, enforce_file_format=True)
        corpus[name] = (p, error)

    variant("no-pixel-data.dcm", CorruptPixelDataError, PixelData=None)
    variant("absurd-size.dcm", CorruptPixelDataError, Rows=60000, Columns=60000)
    variant("zero-size.dcm", CorruptPixelDataError, Rows=0)
    variant("bits-allocated-12.dcm", CorruptPixelDataError, BitsAllocated=12)
    variant("bits-allocated-32.dcm", CorruptPixelDataError, BitsAllocated=32)
    variant("bits-stored-too-big.dcm", CorruptPixelDataError, BitsStored=20)
    variant("short-pixel-data.dcm", CorruptPixelDataError, PixelData=b"\0" * 100)
    variant("rgb.dcm", UnsupportedImageError, SamplesPerPixel=3, PhotometricInterpretation="RGB")
    variant("multiframe.dcm", UnsupportedImageError, NumberOfFrames=5)
    variant("chest.dcm", NotMammogramError, Modality="CR", SOPClassUID="1.2.840.10008.5.1.4.1.1.1",
            ImageLaterality=None, BodyPartExamined="CHEST")
    variant("no-rows.dcm", CorruptPixelDataError, Rows=None)
    return corpus


def test_broken_inputs_give_clear_typed_errors(tmp_path: Path) -> None:
    corpus = _broken_corpus(tmp_path)
    for name, (path, error) in corpus.items():
        for reader in (read_metadata, read_image):
            with pytest.raises(MammoReadError) as err:
                reader(path)
            assert isinstance(err.value, error), f"{name}: {type(err.value).__name__}: {err.value}"
            assert err.value.path == str(path), name
            assert err.value.reason and len(err.value.reason) < 400, name


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotDicomError, match="no such file"):
        read_image(tmp_path / "nope.dcm")
    with pytest.raises(NotDicomError, match="not a regular file"):
        read_metadata(tmp_path)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_a_file_that_cannot_be_read_is_unreadable_not_not_dicom(tmp_path: Path) -> None:
    from mammotriage.dicom import UnreadableFileError
    from mammotriage.store import Archive

    # /proc/self/mem is a regular file whose first page cannot be read (EIO), even as root
    with pytest.raises(UnreadableFileError, match="cannot read file") as err:
        read_metadata("/proc/self/mem")
    assert err.value.code == "unreadable" and err.value.path == "/proc/self/mem"
    link = tmp_path / "dangling.dcm"
    link.symlink_to(tmp_path / "gone.dcm")
    with pytest.raises(UnreadableFileError, match="broken symbolic link"):
        read_image(link)
    with Archive(tmp_path / "a.sqlite") as archive:
        report = archive.import_paths(["/proc/self/mem"])
    assert [r.code for r in report.rejected] == ["unreadable"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    from mammotriage.dicom import UnreadableFileError

    path = write_mg(tmp_path / "locked.dcm")
    path.chmod(0)
    with pytest.raises(UnreadableFileError, match="permission denied"):
        read_metadata(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzzed_headers_never_escape_as_other_exceptions(tmp_path: Path) -> None:
    """Random byte flips in a valid file: either a MammoImage or a MammoReadError."""
    data = bytearray(write_mg(tmp_path / "seed.dcm", rows=16, columns=16).read_bytes())
    rng = np.random.default_rng(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(150):
        mutated = bytearray(data)
        for pos in rng.integers(132, 132 + 600, size=int(rng.integers(1, 6))):
            if pos < len(mutated):
                mutated[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"fuzz{i}.dcm"
        p.write_bytes(bytes(mutated))
        try:
            read_image(p)
            outcomes["ok"] += 1
        except MammoReadError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and sum(outcomes.values()) == 150


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
                                    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50",
                                    "1.2.840.10008.1.2.1.99"])
def test_valid_encodings_pass_the_checks_made_before_decoding(tmp_path: Path, syntax: str) -> None:
    """The codestream checks (J2K SIZ, JPEG SOF, JPEG-LS SOF55, RLE header, bounded
    inflation) accept what real encoders write, and the pixels come back unchanged."""
    from io import BytesIO

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, (300, 200)).astype(np.uint16)
    ds = make_mg_dataset(300, 200, pixels=pixels)
    ts = UID(syntax)
    if syntax == "1.2.840.10008.1.2.4.50":  # 8-bit baseline: Pillow encodes it
        pixels = (pixels % 256).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        buf = BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds.file_meta.TransferSyntaxUID = ts
    elif ts.is_compressed and syntax != "1.2.840.10008.1.2.1.99":
        kwargs = {"jls_error": 2} if syntax.endswith(".81") else {"j2k_cr": [20]} if syntax.endswith(".91") else {}
        ds.compress(ts, **kwargs)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    path = tmp_path / "valid.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = read_image(path)
    assert image.pixels.shape == (300, 200)
    if syntax in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
                  "1.2.840.10008.1.2.1.99"):
        assert np.array_equal(image.pixels, pixels)  # lossless
