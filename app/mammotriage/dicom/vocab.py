"""The product's vocabulary, defined once: finding kinds and projection families.

Everything that names a finding kind (the correction log, the model's classes, the
SR and SEG writers, the exports, the phantom) or sorts a view into a projection
(the hanging, breast scores, the extra-view pane) imports it from here. The string
values are stored in SQLite rows, SR codes and saved packages: never change them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from mammotriage.dicom.image import Laterality, View

__all__ = [
    "CC_FAMILY", "DETECTED_KINDS", "FINDING_KINDS", "MLO_FAMILY", "DetectedKind", "FindingKind",
    "breast_side", "projection_family",
]


class FindingKind(StrEnum):
    """What a finding is: a reader may mark any of these, the model detects two."""

    MASS = "mass"
    CALCIFICATION = "calcification"
    ARCHITECTURAL_DISTORTION = "architectural distortion"
    ASYMMETRY = "asymmetry"


#: Every finding kind, in the order of the enum (export class indices follow it).
FINDING_KINDS: tuple[str, ...] = tuple(k.value for k in FindingKind)
#: The kinds the detector outputs, in class-index order (the network's classes).
DETECTED_KINDS: tuple[str, ...] = (FindingKind.MASS.value, FindingKind.CALCIFICATION.value)
#: :data:`DETECTED_KINDS` as a type (a test keeps the two equal).
DetectedKind = Literal["mass", "calcification"]

#: Views hung and scored with the cranio-caudal projection (PS3.16 CID 4014): the
#: exaggerated CCs, the caudo-cranial "from below" view (a reversed CC) and the
#: cleavage view (a CC of both medial breasts).
CC_FAMILY: frozenset[View] = frozenset({View.CC, View.XCC, View.XCCL, View.XCCM, View.FB, View.CV})
#: Views hung and scored with the oblique / lateral projection (PS3.16 CID 4014): the
#: lateral views, the reversed and the inferomedial/superolateral obliques, and the
#: axillary tail view (an oblique of the upper outer breast).
MLO_FAMILY: frozenset[View] = frozenset({View.MLO, View.ML, View.LM, View.LMO, View.SIO, View.ISO, View.AT})


def projection_family(view: View | str | None) -> str:
    """``"CC"`` or ``"MLO"`` for a view of that family, else the view's own name (``"?"`` for none).

    Accepts a :class:`View` or a ViewPosition-like string (``"XCCL"``, ``"RMLO"``); a
    string that names no known view falls back to containing ``CC`` or ``MLO``.
    """
    v = (view.value if isinstance(view, View) else (view or "")).upper()
    try:
        known: View | None = View(v)
    except ValueError:
        known = None
    if known in CC_FAMILY:
        return "CC"
    if known in MLO_FAMILY:
        return "MLO"
    if known is None:
        if "MLO" in v:
            return "MLO"
        if "CC" in v:
            return "CC"
    return v or "?"


def breast_side(laterality: Laterality | str | None) -> str:
    """``"R"`` for the right breast, ``"L"`` for anything else (the side a pane shows)."""
    value = laterality.value if isinstance(laterality, Laterality) else laterality
    return "R" if value == "R" else "L"
