"""The product's vocabulary, defined once: finding kinds and projection families.

Everything that names a finding kind (the correction log, the model's classes, the
SR and SEG writers, the exports, the phantom) or sorts a view into a projection
(the hanging, breast scores, the extra-view pane) imports it from here. The string
values are stored in SQLite rows, SR codes and saved packages: never change them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

__all__ = ["DETECTED_KINDS", "FINDING_KINDS", "DetectedKind", "FindingKind"]


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
