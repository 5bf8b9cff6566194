"""One vocabulary: finding kinds and projection families are defined once."""

from __future__ import annotations

from typing import get_args

import pytest

from mammotriage.dicom.codes import VIEW_CODES
from mammotriage.dicom.image import Laterality, View
from mammotriage.dicom.vocab import (
    CC_FAMILY,
    DETECTED_KINDS,
    FINDING_KINDS,
    MLO_FAMILY,
    DetectedKind,
    FindingKind,
    breast_side,
    projection_family,
)


def test_finding_kind_values_are_the_stored_strings() -> None:
    # these strings are in SQLite rows, SR content and saved packages: never change them
    assert FINDING_KINDS == ("mass", "calcification", "architectural distortion", "asymmetry")
    assert DETECTED_KINDS == ("mass", "calcification")
    assert get_args(DetectedKind) == DETECTED_KINDS
    assert f"{FindingKind.MASS}" == "mass" and FindingKind("asymmetry") is FindingKind.ASYMMETRY


def test_every_user_takes_the_kinds_from_the_vocabulary() -> None:
    from mammotriage.dicom.sr import FINDING_CODES
    from mammotriage.model.network_constants import CLASSES
    from mammotriage.phantom.anatomy import LesionKind
    from mammotriage.store.events import KINDS

    assert KINDS is FINDING_KINDS
    assert CLASSES is DETECTED_KINDS
    assert LesionKind is DetectedKind
    assert tuple(FINDING_CODES) == FINDING_KINDS


def test_every_view_is_in_one_projection_family() -> None:
    assert not CC_FAMILY & MLO_FAMILY
    assert set(View) - {View.UNKNOWN} == CC_FAMILY | MLO_FAMILY
    assert set(VIEW_CODES.values()) <= CC_FAMILY | MLO_FAMILY  # every CID 4014 code we read


@pytest.mark.parametrize(("view", "family"), [
    ("CC", "CC"), ("XCC", "CC"), ("XCCL", "CC"), ("XCCM", "CC"), ("FB", "CC"), ("CV", "CC"),
    ("MLO", "MLO"), ("ML", "MLO"), ("LM", "MLO"), ("LMO", "MLO"), ("SIO", "MLO"), ("ISO", "MLO"),
    ("AT", "MLO"), (View.CV, "CC"), (View.AT, "MLO"), ("xccl", "CC"),
    # ViewPosition-like strings that name no view keep the old substring rule
    ("RMLO", "MLO"), ("LCC", "CC"), ("SPOT", "SPOT"), (View.UNKNOWN, "UNKNOWN"), ("", "?"), (None, "?"),
])
def test_projection_family(view, family) -> None:
    assert projection_family(view) == family


def test_breast_side() -> None:
    assert breast_side(Laterality.RIGHT) == "R" and breast_side("R") == "R"
    assert breast_side(Laterality.LEFT) == "L" and breast_side(Laterality.BOTH) == "L" and breast_side(None) == "L"
