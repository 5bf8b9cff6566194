"""Open a DICOM file and return a typed :class:`MammoImage` or a clear, typed error.

The reader never lets a library exception escape for bad input: every failure is a
:class:`~mammotriage.dicom.errors.MammoReadError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
)

from mammotriage.dicom.codes import (
    MAMMO_SOP_CLASSES,
    MODIFIER_CODES,
    MODIFIER_MEANINGS,
    VIEW_CODES,
    VIEW_MEANINGS,
    VIEW_POSITIONS,
)
from mammotriage.dicom.codestream import DEFLATED, check_frame, inflate_bounded, walk_explicit_le
from mammotriage.dicom.errors import (
    CorruptPixelDataError,
    MammoReadError,
    NotAnImageError,
    NotDicomError,
    NotMammogramError,
    UnreadableFileError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from mammotriage.dicom.image import (
    Laterality,
    MammoImage,
    MammoMetadata,
    ModalityLut,
    PixelSpacing,
    PresentationIntent,
    SpacingSource,
    View,
    WindowPreset,
)

PIXEL_DATA = 0x7FE00010
MAX_DIMENSION = 16384
MAX_PIXELS = 120_000_000
#: decoding plugins in order of preference (pylibjpeg covers JPEG, JPEG-LS, JPEG 2000)
PLUGIN_PREFERENCE = ("pylibjpeg", "gdcm", "pyjpegls", "pillow", "pydicom")

_NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "REG", "SEG", "RWV", "DOC", "AU", "ECG", "PLAN"}
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_LAT_WORDS = re.compile(r"(?<![A-Z])(LEFT|RIGHT|L|R)(?=[_\s\-]|CC|MLO|ML|LM|$)", re.I)
_VIEW_WORDS = re.compile(r"(?<![A-Z])(XCCL|XCCM|MLO|LMO|CC|ML|LM|FB|SIO|AT)(?![A-Z])", re.I)


# --------------------------------------------------------------------------- helpers

#: ``warnings.catch_warnings`` swaps process-wide state: readers in several threads (the
#: DICOM node's associations) take turns.  Parsing holds the GIL anyway.
_WARNINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def _named_warnings(path: Path) -> Iterator[None]:
    """Re-issue pydicom's warnings (character sets, odd values) with the file's name."""
    caught: list[warnings.WarningMessage] = []
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # also when the file is rejected: its warnings may say why
        seen: set[str] = set()
        for w in caught:
            text = f"{path}: {w.message}"
            if text not in seen:
                seen.add(text)
                warnings.warn_explicit(text, w.category, w.filename, w.lineno)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _date(ds: Dataset, keyword: str) -> _dt.date | None:
    value = _text(ds, keyword)
    if len(value) >= 8 and value[:8].isdigit():
        try:
            return _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            return None
    return None


def _floats(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        items = list(value)
    else:
        items = [value]
    out = []
    for v in items:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def _open_deflated(path: Path) -> Dataset | None:
    """Parse a Deflated Explicit VR Little Endian file with bounded inflation.

    Returns ``None`` when the file is not deflated (then pydicom reads it as usual).
    pydicom itself inflates the whole stream without a limit; here the inflated size
    is capped and the element structure walked before pydicom parses it.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    try:
        with open(path, "rb") as fh:
            preamble = read_preamble(fh, False)
            file_meta = _read_file_meta_info(fh)
            if str(file_meta.get("TransferSyntaxUID", "")).strip() != DEFLATED:
                return None
            inflated = inflate_bounded(fh, path)
    except (InvalidDicomError, EOFError, ValueError, TypeError, struct.error, KeyError):
        return None  # not a plain deflated file: the normal reader says what it is
    walk_explicit_le(inflated, path)
    # pydicom annotates BinaryIO, but its own DicomBytesIO is what its readers pass here
    dataset = read_dataset(DicomBytesIO(inflated), False, True)  # type: ignore[arg-type]
    ds = pydicom.dataset.FileDataset(str(path), dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _open(path: Path) -> Dataset:
    """Parse a file, deferring large values (pixel data is not loaded here)."""
    ds: Dataset | None = None
    try:
        ds = _open_deflated(path)
        if ds is None:
            ds = pydicom.dcmread(path, defer_size="256 KB")
    except InvalidDicomError:
        pass
    except MammoReadError:
        raise
    except OSError as exc:
        if exc.errno is None:  # raised by the parser, not by the file system
            raise NotDicomError(f"cannot parse DICOM: {type(exc).__name__}: {exc}", path) from exc
        raise UnreadableFileError(f"cannot read file: {exc.strerror or exc}", path) from exc
    except Exception as exc:  # truncated or damaged header
        raise NotDicomError(f"cannot parse DICOM: {type(exc).__name__}: {exc}", path) from exc
    if ds is not None:
        if len(ds) == 0:
            raise NotDicomError("DICOM file with an empty data set", path)
        return ds
    # No 'DICM' preamble: some legitimate files omit it. Accept only if it parses into
    # something that looks like a DICOM object.
    try:
        ds = pydicom.dcmread(path, defer_size="256 KB", force=True)
        has_core = "SOPClassUID" in ds or ("Rows" in ds and PIXEL_DATA in ds)
    except Exception:  # noqa: BLE001 - whatever a forced parse raises, the file is not DICOM
        has_core = False
    if ds is None or not has_core:
        raise NotDicomError("not a DICOM file (no DICM preamble and no DICOM elements found)", path)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def open_dataset(path: str | Path) -> Dataset:
    """A DICOM file's data set, parsed as the reader parses it: a deflated one inflated
    within :data:`~mammotriage.dicom.codestream.MAX_INFLATED_BYTES` and its element
    structure walked first, large values (pixel data) deferred, a file without preamble
    accepted only when it parses into DICOM. For code that needs a file's header and
    not its image (the outbox, for one).

    Raises
    ------
    MammoReadError
        The file cannot be read, is not DICOM, or is hostile; the message names the
        reason and ``.path`` the file.
    """
    return _open(Path(path))


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(ts)) if ts else pydicom.uid.ImplicitVRLittleEndian


def _decoder_name(ts: UID) -> str:
    if not ts.is_compressed:
        return "native"
    try:
        decoder = pydicom.pixels.get_decoder(ts)
    except NotImplementedError:
        return "none"
    plugins = decoder.available_plugins
    for name in PLUGIN_PREFERENCE:
        if name in plugins:
            return name
    return plugins[0] if plugins else "none"


# --------------------------------------------------------------------------- semantics

def _is_breast(ds: Dataset) -> tuple[bool, str]:
    sop = _text(ds, "SOPClassUID")
    if sop in MAMMO_SOP_CLASSES:
        return True, "SOP class"
    if _text(ds, "Modality").upper() == "MG":
        return True, "Modality MG"
    if _text(ds, "BodyPartExamined").upper() == "BREAST":
        return True, "BodyPartExamined BREAST"
    for item in ds.get("ViewCodeSequence", []) or []:
        if str(item.get("CodeValue", "")) in VIEW_CODES:
            return True, "ViewCodeSequence"
    for item in ds.get("AnatomicRegionSequence", []) or []:
        if str(item.get("CodeValue", "")) in {"76752008", "T-04000", "80248007"}:
            return True, "AnatomicRegionSequence"
    return False, ""


def _laterality(ds: Dataset) -> tuple[Laterality, str]:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword).upper()
        if value in ("L", "R", "B"):
            return Laterality(value), keyword
    for keyword in ("ViewPosition", "SeriesDescription", "ProtocolName", "ImageComments",
                    "AcquisitionDeviceProcessingDescription", "PatientID"):
        text = _text(ds, keyword).upper()
        if not text:
            continue
        m = _LAT_WORDS.search(text)
        if m:
            return (Laterality.LEFT if m.group(1).upper().startswith("L") else Laterality.RIGHT,
                    f"{keyword} text")
    return Laterality.UNKNOWN, "none"


def _view(ds: Dataset) -> tuple[View, str, tuple[str, ...]]:
    modifiers: list[str] = []
    view = View.UNKNOWN
    source = "none"
    for item in ds.get("ViewCodeSequence", []) or []:
        code = str(item.get("CodeValue", ""))
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        if view is View.UNKNOWN:
            if code in VIEW_CODES:
                view, source = VIEW_CODES[code], "ViewCodeSequence"
            elif meaning in VIEW_MEANINGS:
                view, source = VIEW_MEANINGS[meaning], "ViewCodeSequence meaning"
        for mod in item.get("ViewModifierCodeSequence", []) or []:
            mcode = str(mod.get("CodeValue", ""))
            mmeaning = str(mod.get("CodeMeaning", "")).strip().lower()
            label = MODIFIER_CODES.get(mcode) or MODIFIER_MEANINGS.get(mmeaning)
            if label and label not in modifiers:
                modifiers.append(label)
    if view is View.UNKNOWN:
        vp = _text(ds, "ViewPosition").upper()
        if vp in VIEW_POSITIONS:
            view, source = VIEW_POSITIONS[vp], "ViewPosition"
    if view is View.UNKNOWN:
        # some archives (e.g. CBIS-DDSM) put the view into PatientOrientation or IDs
        po = ds.get("PatientOrientation")
        if po is not None and not isinstance(po, pydicom.multival.MultiValue):
            value = str(po).strip().upper()
            if value in VIEW_POSITIONS:
                view, source = VIEW_POSITIONS[value], "PatientOrientation (misused)"
    if view is View.UNKNOWN:
        for keyword in ("SeriesDescription", "ProtocolName", "PatientID", "ImageComments"):
            text = _text(ds, keyword).upper().replace("_", " ")
            m = _VIEW_WORDS.search(text)
            if m:
                view, source = VIEW_POSITIONS[m.group(1).upper()], f"{keyword} text"
                break
    for keyword in ("SeriesDescription", "ProtocolName"):
        text = _text(ds, keyword).upper()
        if re.search(r"\bSPOT\b", text) and "SPOT" not in modifiers:
            modifiers.append("SPOT")
        if re.search(r"\bMAG(NIFI\w*)?\b", text) and "MAGNIFICATION" not in modifiers:
            modifiers.append("MAGNIFICATION")
    return view, source, tuple(modifiers)


def _orientation(ds: Dataset) -> tuple[str, str] | None:
    po = ds.get("PatientOrientation")
    if isinstance(po, pydicom.multival.MultiValue) and len(po) == 2:
        row, col = (str(v).strip().upper() for v in po)
        if row and col and set(row + col) <= set("APLRHF"):
            return row, col
    return None


def _spacing(ds: Dataset) -> tuple[PixelSpacing | None, float | None]:
    def ok(vals: list[float]) -> bool:
        return len(vals) == 2 and all(0.005 <= v <= 2.0 for v in vals)

    magnification = _floats(ds.get("EstimatedRadiographicMagnificationFactor"))
    factor = magnification[0] if magnification and magnification[0] > 0 else None
    imager = _floats(ds.get("ImagerPixelSpacing"))
    if ok(imager):
        if factor is not None and abs(factor - 1.0) > 1e-6:
            return PixelSpacing(imager[0] / factor, imager[1] / factor, SpacingSource.MAGNIFIED), factor
        return PixelSpacing(imager[0], imager[1], SpacingSource.AT_DETECTOR), factor
    pixel = _floats(ds.get("PixelSpacing"))
    if ok(pixel):
        return PixelSpacing(pixel[0], pixel[1], SpacingSource.PIXEL_SPACING), factor
    return None, factor


def _presets(ds: Dataset, modality_lut: ModalityLut, value_range: tuple[float, float] | None,
             notes: list[str]) -> tuple[WindowPreset, ...]:
    """The file's VOI presets in order; broken ones are left out, each with a note.

    A broken *optional* presentation attribute (a window that is not a number or lies
    outside every value the image can hold, a VOI LUT whose descriptor or data do not
    agree) must not change what the reader or the model sees: the next preset, or the
    automatic window, is used instead, and ``notes`` says why.
    """
    presets: list[WindowPreset] = []
    function = _text(ds, "VOILUTFunction").upper() or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notes.append(f"VOI LUT Function {function!r} is not defined: LINEAR used")
        function = "LINEAR"
    try:
        centers = _floats(ds.get("WindowCenter"))
        widths = _floats(ds.get("WindowWidth"))
        explanations = ds.get("WindowCenterWidthExplanation")
    except Exception as exc:  # noqa: BLE001 - a damaged optional attribute
        notes.append(f"Window Center/Width unreadable ({type(exc).__name__}): not used")
        centers, widths, explanations = [], [], None
    if explanations is not None and not isinstance(explanations, pydicom.multival.MultiValue):
        explanations = [explanations]
    explanations = [str(e) for e in (explanations or [])]
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        label = explanations[i] if i < len(explanations) and explanations[i] else f"WINDOW {i + 1}"
        if not (math.isfinite(c) and math.isfinite(w)):
            notes.append(f"window {label!r} (center {c}, width {w}) is not a finite number: not used")
            continue
        minimum = 0.0 if function == "SIGMOID" else (1.0 if function == "LINEAR" else 0.0)
        if w <= minimum and not (function == "LINEAR" and w >= 1):
            notes.append(f"window {label!r} has width {w:g}, not valid for {function}: not used")
            continue
        if value_range is not None and (c + w / 2 < value_range[0] or c - w / 2 > value_range[1]):
            notes.append(f"window {label!r} (center {c:g}, width {w:g}) lies outside the image's values "
                         f"{value_range[0]:g}..{value_range[1]:g}: not used")
            continue
        presets.append(WindowPreset(explanation=label, center=c, width=w, function=function))
    try:
        items = list(ds.get("VOILUTSequence", []) or [])
    except Exception as exc:  # noqa: BLE001 - a damaged optional attribute
        notes.append(f"VOI LUT Sequence unreadable ({type(exc).__name__}): not used")
        items = []
    for i, item in enumerate(items):
        try:
            label = f"{item.get('LUTExplanation', '') or f'VOI LUT {i + 1}'} (VOI LUT)"
        except Exception:  # noqa: BLE001
            label = f"VOI LUT {i + 1} (VOI LUT)"
        try:
            descriptor, data = _lut(item)
        except ValueError as exc:
            notes.append(f"{label}: {exc}: not used")
            continue
        except Exception as exc:  # noqa: BLE001 - any damage to an optional table
            notes.append(f"{label}: unreadable ({type(exc).__name__}: {exc}): not used")
            continue
        if float(data.max()) == float(data.min()):
            notes.append(f"{label}: every entry is {data[0]:g} (the image would be blank): not used")
            continue
        presets.append(WindowPreset(explanation=label, lut=data, first_mapped=descriptor[1],
                                    lut_bits=descriptor[2]))
    return tuple(presets)


def _lut(item: Dataset) -> tuple[list[int], np.ndarray]:
    """(descriptor, table) of a LUT item (PS3.3 C.11.1.1.1, C.11.2.1.1), checked.

    Raises ``ValueError`` saying what does not agree.
    """
    raw_descriptor = item.get("LUTDescriptor")
    if raw_descriptor is None:
        raise ValueError("no LUT Descriptor")
    if isinstance(raw_descriptor, (bytes, bytearray)):
        raw_descriptor = list(struct.unpack(f"<{len(raw_descriptor) // 2}H", raw_descriptor[:len(raw_descriptor) // 2 * 2]))
    values = list(raw_descriptor) if isinstance(raw_descriptor, (list, tuple, pydicom.multival.MultiValue)) \
        else [raw_descriptor]
    if len(values) != 3:
        raise ValueError(f"LUT Descriptor has {len(values)} values, 3 required")
    descriptor = [int(v) for v in values]
    n = descriptor[0] or 65536
    if not 8 <= descriptor[2] <= 16:
        raise ValueError(f"LUT Descriptor declares {descriptor[2]} bits per entry (8 to 16 allowed)")
    raw = item.get("LUTData")
    if raw is None:
        raise ValueError("no LUT Data")
    if isinstance(raw, (bytes, bytearray)):
        data = np.frombuffer(raw[:len(raw) // 2 * 2] if descriptor[2] > 8 else raw,
                             dtype="<u2" if descriptor[2] > 8 else "u1")
    else:
        data = np.asarray(raw if isinstance(raw, (list, pydicom.multival.MultiValue)) else [raw],
                          dtype=np.float64)
    if data.size < n:
        raise ValueError(f"LUT Descriptor declares {n} entries but LUT Data holds {data.size}")
    data = np.asarray(data[:n], dtype=np.float64)
    if not np.isfinite(data).all():
        raise ValueError("LUT Data holds values that are not finite numbers")
    return descriptor, data


def _modality_lut(ds: Dataset, notes: list[str]) -> ModalityLut:
    try:
        seq = ds.get("ModalityLUTSequence")
        if seq:
            descriptor, table = _lut(seq[0])
            return ModalityLut(table=table, first_mapped=descriptor[1])
    except Exception as exc:  # noqa: BLE001 - a damaged table: fall back to the rescale
        notes.append(f"Modality LUT Sequence not used: {exc}")
    slope = _floats(ds.get("RescaleSlope"))
    intercept = _floats(ds.get("RescaleIntercept"))
    if (slope and not math.isfinite(slope[0])) or (intercept and not math.isfinite(intercept[0])):
        notes.append(f"Rescale Slope/Intercept ({slope[0] if slope else 1}, {intercept[0] if intercept else 0}) "
                     "are not finite numbers: identity rescale used")
        return ModalityLut()
    return ModalityLut(slope=slope[0] if slope and slope[0] != 0 else 1.0,
                       intercept=intercept[0] if intercept else 0.0)


def _value_range(ds: Dataset, modality_lut: ModalityLut) -> tuple[float, float] | None:
    """The smallest and largest modality output value the stored bit depth allows."""
    try:
        bits = max(1, min(int(ds.get("BitsStored", ds.get("BitsAllocated", 16))), 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
    except (TypeError, ValueError):
        return None
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    if modality_lut.table is not None:
        return float(modality_lut.table.min()), float(modality_lut.table.max())
    ends = (lo * modality_lut.slope + modality_lut.intercept, hi * modality_lut.slope + modality_lut.intercept)
    return min(ends), max(ends)


def _intent(ds: Dataset) -> PresentationIntent:
    value = _text(ds, "PresentationIntentType").upper()
    if value in ("FOR PRESENTATION", "FOR PROCESSING"):
        return PresentationIntent(value)
    sop = _text(ds, "SOPClassUID")
    if sop == DigitalMammographyXRayImageStorageForPresentation:
        return PresentationIntent.PRESENTATION
    if sop == DigitalMammographyXRayImageStorageForProcessing:
        return PresentationIntent.PROCESSING
    return PresentationIntent.UNKNOWN


# --------------------------------------------------------------------------- checks

def _check_image_attributes(ds: Dataset, path: Path) -> None:
    """Reject absurd or inconsistent image attributes *before* any allocation."""
    try:
        rows = int(ds.Rows)
        cols = int(ds.Columns)
        bits_alloc = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored", bits_alloc))
        spp = int(ds.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptPixelDataError(f"missing or invalid image attribute: {exc}", path) from exc
    if rows <= 0 or cols <= 0 or rows > MAX_DIMENSION or cols > MAX_DIMENSION or rows * cols > MAX_PIXELS:
        raise CorruptPixelDataError(f"implausible image size {rows}x{cols} (rows x columns)", path)
    if bits_alloc not in (8, 16):
        raise CorruptPixelDataError(
            f"BitsAllocated {bits_alloc} is not valid for a grayscale mammogram (expected 8 or 16)", path)
    if not 1 <= bits_stored <= bits_alloc:
        raise CorruptPixelDataError(f"BitsStored {bits_stored} does not fit BitsAllocated {bits_alloc}", path)
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"{photometric or 'unknown'} image with {spp} samples per pixel: mammograms are grayscale", path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"multi-frame image ({frames} frames, e.g. tomosynthesis) is not supported", path)
    elem = ds.get_item(PIXEL_DATA)
    if elem is None:
        raise CorruptPixelDataError("no Pixel Data (7FE0,0010)", path)
    ts = _transfer_syntax(ds)
    length = getattr(elem, "length", None)
    if length is None:
        value = getattr(elem, "value", None)
        length = len(value) if value is not None else 0
    if not ts.is_compressed:
        expected = rows * cols * bits_alloc // 8
        if length == 0xFFFFFFFF:
            raise CorruptPixelDataError("native Pixel Data with undefined length", path)
        if length < expected:
            raise CorruptPixelDataError(
                f"Pixel Data truncated: {length} bytes, expected {expected}", path)
    tell = getattr(elem, "value_tell", None)
    if ts.is_compressed and ts != DEFLATED:
        value = elem.value if elem.value is not None else b""
        if not isinstance(value, (bytes, bytearray)):
            raise CorruptPixelDataError("encapsulated Pixel Data is not a byte string", path)
        check_frame(bytes(value), str(ts), rows, cols, bits_alloc, spp, path)
    if ts == DEFLATED:
        tell = None  # offsets count in the inflated data set, not in the file
    if tell is not None and length not in (None, 0xFFFFFFFF):
        size = os.path.getsize(path)
        if tell + length > size:
            raise CorruptPixelDataError(
                f"file truncated: Pixel Data needs {tell + length} bytes, file has {size}", path)


# --------------------------------------------------------------------------- public API

def parse_metadata(ds: Dataset, path: str | Path | None = None, allow_non_breast: bool = False,
                   check_pixels: bool = True) -> MammoMetadata:
    """Build :class:`MammoMetadata` from a parsed dataset (see :func:`read_metadata`)."""
    p = Path(path) if path is not None else None
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality").upper()
    has_pixels = PIXEL_DATA in ds
    if sop_class.startswith(_SR_PREFIX) or (modality in _NON_IMAGE_MODALITIES and not has_pixels):
        try:
            name = UID(sop_class).name if sop_class else modality
        except Exception:  # noqa: BLE001 - a malformed UID is named as it is written
            name = sop_class
        raise NotAnImageError(f"not an image: {name or modality} (Modality {modality or '?'})", p)
    if not has_pixels and "Rows" not in ds:
        raise NotAnImageError(f"not an image: no Pixel Data (SOP class {sop_class or 'unknown'})", p)
    if p is not None and check_pixels:
        _check_image_attributes(ds, p)
    breast, _why = _is_breast(ds)
    if not breast and not allow_non_breast:
        body = _text(ds, "BodyPartExamined") or "not given"
        raise NotMammogramError(f"not a mammogram: Modality {modality or '?'}, Body Part {body}", p)
    ts = _transfer_syntax(ds)
    laterality, lat_source = _laterality(ds)
    view, view_source, modifiers = _view(ds)
    spacing, factor = _spacing(ds)
    shape = _text(ds, "PresentationLUTShape").upper() or None
    notes: list[str] = []
    modality_lut = _modality_lut(ds, notes)
    presets = _presets(ds, modality_lut, _value_range(ds, modality_lut), notes)
    return MammoMetadata(
        path=str(p) if p is not None else None,
        sop_class_uid=sop_class,
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=modality,
        transfer_syntax_uid=str(ts),
        transfer_syntax_name=ts.name,
        decoder=_decoder_name(ts),
        rows=int(ds.get("Rows", 0)),
        columns=int(ds.get("Columns", 0)),
        bits_allocated=int(ds.get("BitsAllocated", 16)),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        photometric=_text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
        laterality=laterality,
        laterality_source=lat_source,
        view=view,
        view_source=view_source,
        view_modifiers=modifiers,
        presentation_intent=_intent(ds),
        patient_orientation=_orientation(ds),
        spacing=spacing,
        presets=presets,
        modality_lut=modality_lut,
        presentation_lut_shape=shape,
        manufacturer=_text(ds, "Manufacturer"),
        manufacturer_model=_text(ds, "ManufacturerModelName"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_date(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        acquisition_date=_date(ds, "AcquisitionDate") or _date(ds, "ContentDate"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        body_part=_text(ds, "BodyPartExamined").upper(),
        estimated_magnification=factor,
        warnings=tuple(notes),
        patient_birth_date=_date(ds, "PatientBirthDate"),
        patient_age=_text(ds, "PatientAge"),
        patient_id_issuer=_text(ds, "IssuerOfPatientID"),
    )


def _parse(p: Path, allow_non_breast: bool, check_pixels: bool) -> tuple[Dataset, MammoMetadata]:
    if not p.exists() and not p.is_symlink():
        raise NotDicomError("no such file", p)
    if p.is_symlink() and not p.exists():
        raise UnreadableFileError("broken symbolic link", p)
    if not p.is_file():
        raise NotDicomError("not a regular file", p)
    if not os.access(p, os.R_OK):
        raise UnreadableFileError("cannot read file: permission denied", p)
    ds = _open(p)
    try:
        return ds, parse_metadata(ds, p, allow_non_breast=allow_non_breast, check_pixels=check_pixels)
    except MammoReadError:
        raise
    except Exception as exc:
        raise NotDicomError(f"unreadable DICOM attributes: {type(exc).__name__}: {exc}", p) from exc


def read_metadata(path: str | Path, allow_non_breast: bool = False,
                  check_pixels: bool = True) -> MammoMetadata:
    """Read what the product needs to know about a mammogram, without decoding pixels.

    Parameters
    ----------
    path
        A DICOM file.
    allow_non_breast
        Accept images that are not of the breast (used to test decoders on chest CR).
    check_pixels
        Verify the image attributes and the Pixel Data element (presence, size,
        truncation, and for compressed data the codestream's own frame size, see
        :mod:`mammotriage.dicom.codestream`). ``False`` reads header-only files (e.g.
        vendor test headers).

    Raises
    ------
    MammoReadError
        A subclass naming the reason: not DICOM, not an image (SR, dose report),
        not a mammogram, corrupt or truncated pixel data, unsupported image, a file
        that cannot be read (``unreadable``).

    Notes
    -----
    pydicom's warnings (unknown character sets, odd values) are re-issued with the
    file's path in front.
    """
    p = Path(path)
    with _named_warnings(p):
        return _parse(p, allow_non_breast, check_pixels)[1]


def decode_pixels(ds: Dataset, meta: MammoMetadata, path: Path | None = None) -> tuple[np.ndarray, str]:
    """Decode the pixel data of ``ds``; returns ``(pixels, plugin used)``.

    Compressed data is tried with each available plugin in :data:`PLUGIN_PREFERENCE`.
    """
    ts = UID(meta.transfer_syntax_uid)
    errors: list[str] = []
    if ts.is_compressed:
        try:
            decoder = pydicom.pixels.get_decoder(ts)
            plugins = [p for p in PLUGIN_PREFERENCE if p in decoder.available_plugins]
        except NotImplementedError:
            plugins = []
        if not plugins:
            raise UnsupportedTransferSyntaxError(
                f"cannot decode: transfer syntax {ts.name} ({ts}): no decoder installed", path)
    else:
        plugins = [""]
    for plugin in plugins:
        try:
            arr = pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is reported
            detail = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else ""
            errors.append(f"{plugin or 'native'}: {type(exc).__name__}: {detail}")
            continue
        if arr.ndim != 2 or arr.shape != (meta.rows, meta.columns):
            errors.append(f"{plugin or 'native'}: decoded shape {arr.shape} != ({meta.rows}, {meta.columns})")
            continue
        return arr, plugin or "native"
    if ts.is_compressed:
        raise UnsupportedTransferSyntaxError(
            f"cannot decode: transfer syntax {ts.name} ({ts}): " + "; ".join(errors), path)
    raise CorruptPixelDataError("cannot read Pixel Data: " + "; ".join(errors), path)


def read_image(path: str | Path, allow_non_breast: bool = False) -> MammoImage:
    """Read and decode a mammogram.

    Returns
    -------
    MammoImage
        Stored pixel values (rows x columns, no modality/VOI applied) and metadata;
        ``meta.decoder`` names the plugin that decoded the data.

    Raises
    ------
    MammoReadError
        See :func:`read_metadata`; plus ``UnsupportedTransferSyntaxError`` when no
        installed decoder can decode the data ("cannot decode: transfer syntax ...").
    """
    p = Path(path)
    with _named_warnings(p):
        ds, meta = _parse(p, allow_non_breast, True)
        pixels, plugin = decode_pixels(ds, meta, p)
    if plugin != meta.decoder:
        meta = _replace(meta, decoder=plugin)
    return MammoImage(pixels=pixels, meta=meta)


def _replace(meta: MammoMetadata, **changes: Any) -> MammoMetadata:
    from dataclasses import replace

    return replace(meta, **changes)
