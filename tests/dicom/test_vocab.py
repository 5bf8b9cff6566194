"""One vocabulary: finding kinds and projection families are defined once."""

from __future__ import annotations

from typing import get_args

from mammotriage.dicom.vocab import DETECTED_KINDS, FINDING_KINDS, DetectedKind, FindingKind


def test_finding_kind_values_are_the_stored_strings() -> None:
    # these strings are in SQLite rows, SR content and saved packages: never change them
    assert FINDING_KINDS == ("mass", "calcification", "architectural distortion", "asymmetry")
    assert DETECTED_KINDS == ("mass", "calcification")
    assert get_args(DetectedKind) == DETECTED_KINDS
    assert f"{FindingKind.MASS}" == "mass" and FindingKind("asymmetry") is FindingKind.ASYMMETRY


def test_every_user_takes_the_kinds_from_the_vocabulary() -> None:
    from mammotriage.dicom.results import FINDING_CODES
    from mammotriage.model.network_constants import CLASSES
    from mammotriage.phantom.anatomy import LesionKind
    from mammotriage.store.events import KINDS

    assert KINDS is FINDING_KINDS
    assert CLASSES is DETECTED_KINDS
    assert LesionKind is DetectedKind
    assert tuple(FINDING_CODES) == FINDING_KINDS
