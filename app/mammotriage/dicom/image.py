"""Typed representation of a mammogram: pixels plus the metadata the product relies on.

Everything below the UI uses one coordinate system: pixel (column, row) of the *stored*
image, before any display flip or zoom.  ``MammoImage.pixels`` is that stored image
(rows x columns, the stored values after decoding; no modality or VOI step applied).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Laterality(str, Enum):
    """Which breast an image shows."""

    LEFT = "L"
    RIGHT = "R"
    BOTH = "B"
    UNKNOWN = "U"


class View(str, Enum):
    """Mammographic projection (DICOM CID 4014 subset plus ViewPosition values)."""

    CC = "CC"
    MLO = "MLO"
    ML = "ML"
    LM = "LM"
    XCCL = "XCCL"
    XCCM = "XCCM"
    XCC = "XCC"
    FB = "FB"
    SIO = "SIO"
    ISO = "ISO"
    LMO = "LMO"
    AT = "AT"
    CV = "CV"
    UNKNOWN = "UNKNOWN"


class PresentationIntent(str, Enum):
    """DICOM Presentation Intent Type (0008,0068)."""

    PRESENTATION = "FOR PRESENTATION"
    PROCESSING = "FOR PROCESSING"
    UNKNOWN = "UNKNOWN"


class SpacingSource(str, Enum):
    """Where a pixel spacing came from; the ruler shows this next to its length."""

    AT_DETECTOR = "at detector"  # Imager Pixel Spacing, no magnification correction
    MAGNIFIED = "magnified"  # Imager Pixel Spacing / Estimated Radiographic Magnification Factor
    PIXEL_SPACING = "pixel spacing"  # Pixel Spacing (0028,0030), calibrated or unspecified
    ASSUMED = "assumed"  # no attribute: a documented default (e.g. 0.2 mm for digitised film)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class WindowPreset:
    """One VOI preset from the file: a window or a VOI LUT table.

    For a window, ``center``/``width`` are set and ``lut`` is ``None``. For a VOI LUT
    Sequence item, ``lut`` holds the table and ``first_mapped``/``lut_bits`` its
    descriptor (PS3.3 C.11.2.1.1).
    """

    explanation: str
    center: float | None = None
    width: float | None = None
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.3)
    lut: np.ndarray | None = field(default=None, compare=False, repr=False)
    first_mapped: int = 0
    lut_bits: int = 0

    @property
    def is_lut(self) -> bool:
        return self.lut is not None


@dataclass(frozen=True)
class PixelSpacing:
    """Physical size of a pixel in millimetres, with the attribute it came from."""

    row_mm: float  # distance between rows (vertical)
    col_mm: float  # distance between columns (horizontal)
    source: SpacingSource


@dataclass(frozen=True)
class ModalityLut:
    """Modality LUT step: either a linear rescale or a table (PS3.3 C.11.1)."""

    slope: float = 1.0
    intercept: float = 0.0
    table: np.ndarray | None = field(default=None, compare=False, repr=False)
    first_mapped: int = 0

    @property
    def is_identity(self) -> bool:
        return self.table is None and self.slope == 1.0 and self.intercept == 0.0


@dataclass(frozen=True)
class MammoMetadata:
    """What the reader understood about one image (no pixels)."""

    path: str | None
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    transfer_syntax_name: str
    decoder: str
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    laterality: Laterality
    laterality_source: str
    view: View
    view_source: str
    view_modifiers: tuple[str, ...]  # e.g. ("SPOT", "MAGNIFICATION")
    presentation_intent: PresentationIntent
    patient_orientation: tuple[str, str] | None
    spacing: PixelSpacing | None
    presets: tuple[WindowPreset, ...]
    modality_lut: ModalityLut
    presentation_lut_shape: str | None  # IDENTITY / INVERSE / None
    manufacturer: str
    manufacturer_model: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: _dt.date | None
    study_time: str
    acquisition_date: _dt.date | None
    study_description: str
    series_description: str
    body_part: str
    estimated_magnification: float | None = None
    #: what the reader set aside and why (a broken window or VOI LUT, a rescale that is
    #: not a number): shown by ``info`` and the triage output, never silent
    warnings: tuple[str, ...] = ()
    patient_birth_date: _dt.date | None = None
    patient_age: str = ""  # Patient's Age (0010,1010) as written, e.g. "052Y"
    #: Issuer of Patient ID (0010,0021): two hospitals may hand out the same Patient ID
    patient_id_issuer: str = ""

    @property
    def age_at_exam(self) -> int | None:
        """Age in years on the study date: from the birth date, else Patient's Age."""
        if self.patient_birth_date is not None and self.study_date is not None:
            b, d = self.patient_birth_date, self.study_date
            return d.year - b.year - ((d.month, d.day) < (b.month, b.day))
        age = self.patient_age.strip().upper()
        if len(age) == 4 and age[:3].isdigit() and age[3] == "Y":
            return int(age[:3])
        return None

    @property
    def is_spot_or_magnified(self) -> bool:
        return bool(set(self.view_modifiers) & {"SPOT", "MAGNIFICATION"})

    @property
    def label(self) -> str:
        """Short reading-room label such as ``RCC`` or ``LMLO``."""
        lat = self.laterality.value if self.laterality in (Laterality.LEFT, Laterality.RIGHT) else "?"
        return f"{lat}{self.view.value if self.view is not View.UNKNOWN else '?'}"


@dataclass(frozen=True)
class MammoImage:
    """Stored pixels (rows x columns) and their metadata."""

    pixels: np.ndarray
    meta: MammoMetadata

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def pixel_sha256(pixels: np.ndarray) -> str:
    """sha256 of decoded stored pixels (shape and dtype included), independent of encoding.

    Correction events carry it, so a label can always be matched to the exact pixels it
    was drawn on, whatever transfer syntax the file used.
    """
    import hashlib

    arr = np.ascontiguousarray(pixels)
    h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape[0]}x{arr.shape[1]}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()
