"""Exam assembly and the standard screening hanging.

Screening hanging (the "back to back" layout)::

    RCC  | LCC
    RMLO | LMLO

Right-breast images sit left of the centre line with their chest wall on the pane's
right edge; left-breast images mirror them, chest wall on the pane's left edge. CC
views show lateral up; MLO-like views show superior (head) up.

The display orientation is derived from DICOM Patient Orientation (0020,0020) when
present (PS3.3 C.7.6.1.1.1: first value = direction of increasing column index,
second = direction of increasing row index). Without it, the chest-wall side is
inferred from the pixels: the breast is attached to the chest wall, so the image edge
with the most tissue touching it is the chest-wall side.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from mammotriage.dicom.image import Laterality, MammoMetadata, PresentationIntent, View
from mammotriage.dicom.vocab import CC_FAMILY, MLO_FAMILY

#: the four screening slots, in reading order
SCREENING_SLOTS = ("RCC", "LCC", "RMLO", "LMLO")
T = TypeVar("T")
_SPLIT_VIEW_SUFFIX = re.compile(r"^(?P<base>.+?)_(?:LEFT|RIGHT)_(?:CC|MLO|ML|LM)$", re.IGNORECASE)


@dataclass(frozen=True)
class DisplayOrientation:
    """How to turn the stored image into its hanging orientation.

    Applied in this order: optional transpose (rows <-> columns), horizontal flip,
    vertical flip. ``chest_wall`` is the side of the chest wall in the *stored* image
    (``"left"``, ``"right"``, ``"top"`` or ``"bottom"``).
    """

    flip_h: bool
    flip_v: bool
    transpose: bool = False
    chest_wall: str = "unknown"
    source: str = "default"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Return a view of ``image`` in display orientation (no copy)."""
        out = image.T if self.transpose else image
        if self.flip_h:
            out = out[:, ::-1]
        if self.flip_v:
            out = out[::-1, :]
        return out

    def display_shape(self, stored_shape: tuple[int, int]) -> tuple[int, int]:
        rows, cols = stored_shape
        return (cols, rows) if self.transpose else (rows, cols)

    def stored_to_display(self, x: float, y: float, stored_shape: tuple[int, int]) -> tuple[float, float]:
        """Map a stored-image point (column, row) to display (column, row).

        Coordinates are continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``).
        """
        if self.transpose:
            x, y = y, x
        rows, cols = self.display_shape(stored_shape)
        if self.flip_h:
            x = cols - x
        if self.flip_v:
            y = rows - y
        return x, y

    def display_to_stored(self, x: float, y: float, stored_shape: tuple[int, int]) -> tuple[float, float]:
        """Inverse of :meth:`stored_to_display`."""
        rows, cols = self.display_shape(stored_shape)
        if self.flip_v:
            y = rows - y
        if self.flip_h:
            x = cols - x
        if self.transpose:
            x, y = y, x
        return x, y


def wanted_chest_wall(laterality: Laterality) -> str:
    """Side of its pane the chest wall should be on in the screening hanging."""
    return "left" if laterality is Laterality.LEFT else "right"


def chest_wall_from_pixels(display_like: np.ndarray) -> str:
    """Infer the chest-wall side (``"left"``/``"right"``) of a breast image from pixels.

    ``display_like`` must have tissue brighter than background (a display-ready image
    or MONOCHROME2 stored values). The chest-wall edge is the vertical image edge with
    more tissue along it; film borders and labels are suppressed by ignoring the
    outermost 1 % of columns and using the median of each edge band.
    """
    img = np.asarray(display_like, dtype=np.float32)
    step = max(1, max(img.shape) // 512)
    img = img[::step, ::step]
    _rows, cols = img.shape
    lo, hi = np.percentile(img, [5, 95])
    if hi <= lo:
        return "unknown"
    tissue = img > lo + 0.25 * (hi - lo)
    margin = max(1, cols // 100)
    band = max(2, cols // 12)
    left = tissue[:, margin:margin + band].mean()
    right = tissue[:, cols - margin - band:cols - margin].mean()
    if abs(left - right) < 0.02:
        return "unknown"
    return "left" if left > right else "right"


def display_orientation(meta: MammoMetadata, display_like: np.ndarray | None = None) -> DisplayOrientation:
    """Flips (and transpose) that bring the image into the screening hanging.

    Parameters
    ----------
    meta
        Image metadata (laterality, view, Patient Orientation).
    display_like
        Optional pixels with tissue bright, used only when Patient Orientation does
        not say where the chest wall is.
    """
    want = wanted_chest_wall(meta.laterality)
    po = meta.patient_orientation
    if po is not None:
        row_dir, col_dir = po
        transpose = False
        if not set(row_dir) & set("AP") and set(col_dir) & set("AP"):
            row_dir, col_dir, transpose = col_dir, row_dir, True
        if set(row_dir) & set("AP"):
            # increasing column index points to posterior -> chest wall on the right
            chest = "right" if "P" in row_dir else "left"
            flip_h = chest != want
            flip_v = _needs_vertical_flip(meta, col_dir)
            stored_side = chest if not transpose else {"right": "bottom", "left": "top"}[chest]
            return DisplayOrientation(flip_h=flip_h, flip_v=flip_v, transpose=transpose,
                                      chest_wall=stored_side, source="PatientOrientation")
    if display_like is not None:
        chest = chest_wall_from_pixels(display_like)
        if chest in ("left", "right"):
            return DisplayOrientation(flip_h=chest != want, flip_v=False, chest_wall=chest, source="pixels")
    return DisplayOrientation(flip_h=False, flip_v=False, chest_wall="unknown", source="default")


def _needs_vertical_flip(meta: MammoMetadata, col_dir: str) -> bool:
    """True if increasing row index points the wrong way for this view."""
    if meta.view in MLO_FAMILY:
        return "H" in col_dir and "F" not in col_dir  # want feet at the bottom
    if meta.view in CC_FAMILY:
        # want lateral at the top, i.e. increasing row towards medial
        if meta.laterality is Laterality.RIGHT:
            return "R" in col_dir and "L" not in col_dir
        if meta.laterality is Laterality.LEFT:
            return "L" in col_dir and "R" not in col_dir
    return False


def split_view_patient_id(patient_id: str) -> str | None:
    """Strip a ``_LEFT_CC``-style suffix from a one-view-per-study PatientID.

    Parameters
    ----------
    patient_id
        DICOM PatientID (0010,0020).

    Returns
    -------
    str or None
        The PatientID without its ``_(LEFT|RIGHT)_(CC|MLO|ML|LM)`` suffix, or ``None``
        when there is no such suffix.

    Examples
    --------
    >>> split_view_patient_id("Mass-Test_P_00173_LEFT_CC")
    'Mass-Test_P_00173'
    >>> split_view_patient_id("12345") is None
    True
    """
    match = _SPLIT_VIEW_SUFFIX.match(patient_id.strip())
    return match.group("base") if match else None


def exam_key_for(patient_id: str, study_uid: str, study_date: _dt.date | None) -> str:
    """Return the exam key that groups studies into one worklist exam.

    Rule: when ``patient_id`` ends with a laterality + view suffix
    (``_(LEFT|RIGHT)_(CC|MLO|ML|LM)``, case-insensitive, as in CBIS-DDSM's
    ``Mass-Test_P_00173_LEFT_CC``), the key is the stripped patient ID and the study
    date as ``"<stripped id>|<YYYYMMDD>"`` (``"<stripped id>|"`` without a date), so
    the single-image studies of one visit share a key.  Otherwise the key is the
    StudyInstanceUID: one study, one exam.

    Parameters
    ----------
    patient_id
        DICOM PatientID.
    study_uid
        StudyInstanceUID.
    study_date
        StudyDate, if known.

    Returns
    -------
    str
        The exam key.
    """
    base = split_view_patient_id(patient_id)
    if base is None:
        return study_uid
    return f"{base}|{study_date.strftime('%Y%m%d') if study_date else ''}"


def exam_key(meta: MammoMetadata) -> str:
    """Exam key of an image (see :func:`exam_key_for`)."""
    return exam_key_for(meta.patient_id, meta.study_instance_uid, meta.study_date)


@dataclass
class Exam:
    """One screening exam: the four hanging slots plus any extra views."""

    key: str
    slots: dict[str, MammoMetadata] = field(default_factory=dict)
    extras: list[MammoMetadata] = field(default_factory=list)

    @property
    def images(self) -> list[MammoMetadata]:
        return [self.slots[s] for s in SCREENING_SLOTS if s in self.slots] + list(self.extras)

    @property
    def missing(self) -> list[str]:
        return [s for s in SCREENING_SLOTS if s not in self.slots]


def _slot_rank(image: Any) -> tuple[bool, bool, str, str]:
    """Prefer For Presentation, then non spot/magnified, then the latest acquisition."""
    modifiers = set(getattr(image, "view_modifiers", ()) or ())
    date = getattr(image, "acquisition_date", None) or getattr(image, "study_date", None)
    return (
        getattr(image, "presentation_intent", None) is not PresentationIntent.PROCESSING,
        not modifiers & {"SPOT", "MAGNIFICATION"},
        str(date.isoformat()) if date else "",
        str(getattr(image, "sop_instance_uid", None) or getattr(image, "sop_uid", "")),
    )


def slot_of(image: Any) -> str | None:
    """Screening slot (``"RCC"`` ...) an image can fill, or ``None`` for extra views.

    Works on anything with ``laterality``, ``view`` and ``view_modifiers`` attributes
    (:class:`MammoMetadata` or an archive record).
    """
    if image.laterality not in (Laterality.LEFT, Laterality.RIGHT):
        return None
    if set(getattr(image, "view_modifiers", ()) or ()) & {"SPOT", "MAGNIFICATION"}:
        return None
    if image.view is View.CC:
        return f"{image.laterality.value}CC"
    if image.view is View.MLO:
        return f"{image.laterality.value}MLO"
    return None


def hang(images: Iterable[T]) -> tuple[dict[str, T], list[T]]:
    """Assign images of one exam to the screening slots; the rest are extra views."""
    slots: dict[str, T] = {}
    extras: list[T] = []
    for image in images:
        slot = slot_of(image)
        if slot is None:
            extras.append(image)
            continue
        current = slots.get(slot)
        if current is None:
            slots[slot] = image
        elif _slot_rank(image) > _slot_rank(current):
            extras.append(current)
            slots[slot] = image
        else:
            extras.append(image)
    return slots, extras


def assemble_exams(images: Iterable[MammoMetadata]) -> list[Exam]:
    """Group images into exams and assign RCC/LCC/RMLO/LMLO; the rest become extras."""
    groups: dict[str, list[MammoMetadata]] = {}
    for meta in images:
        groups.setdefault(exam_key(meta), []).append(meta)
    exams = []
    for key, members in groups.items():
        slots, extras = hang(members)
        exams.append(Exam(key=key, slots=slots, extras=extras))
    return exams
