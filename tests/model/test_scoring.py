"""Breast and exam scores from view scores."""

from __future__ import annotations

import pytest

from mammotriage.model.scoring import breast_scores, exam_score


def test_breast_is_the_mean_of_its_two_projections() -> None:
    b = breast_scores([("R", "CC", 0.9), ("R", "MLO", 0.7), ("L", "CC", 0.85), ("L", "MLO", 0.1)])
    assert b == pytest.approx({"R": 0.8, "L": 0.475})
    assert exam_score(b) == pytest.approx(0.8)  # seen in both views beats one bright view


def test_repeated_and_extra_views_and_single_projection() -> None:
    b = breast_scores([("L", "CC", 0.2), ("L", "CC", 0.6), ("L", "MLO", 0.4), ("L", "ML", 0.9), ("R", "MLO", 0.3)])
    assert b["L"] == pytest.approx((0.6 + 0.9) / 2)  # ML counts as the lateral projection
    assert b["R"] == pytest.approx(0.3)  # one projection only: its score
    assert breast_scores([("L", "XCCL", 0.5)]) == {"L": 0.5}
    assert breast_scores([(None, "CC", 0.5)]) == {}
    assert exam_score({}, [0.2, 0.4]) == 0.4 and exam_score({}) == 0.0


def test_category_from_package_operating_points() -> None:
    from mammotriage.model.scoring import category_from

    ops = {"suspicious": {"threshold": 0.6}, "likely_normal": {"threshold": 0.2}}
    assert category_from(0.61, ops) == "suspicious"
    assert category_from(0.6, ops) == "suspicious"
    assert category_from(0.3, ops) == "indeterminate"
    assert category_from(0.19, ops) == "likely normal"
    assert category_from(0.5, {}) is None
    # a rule-out threshold above the suspicious one is clamped, never inverted
    assert category_from(0.5, {"suspicious": 0.4, "likely_normal": 0.7}) == "suspicious"


def test_extra_views_count_with_their_projection_family() -> None:
    # FB (from below) is a reversed CC; ISO and AT are obliques: with CC and MLO present
    # they still count with the projection they belong to (they were ignored before)
    b = breast_scores([("L", "CC", 0.2), ("L", "FB", 0.8), ("L", "MLO", 0.4),
                       ("R", "CC", 0.1), ("R", "MLO", 0.1), ("R", "ISO", 0.7),
                       ("R", "AT", 0.5)])
    assert b["L"] == pytest.approx((0.8 + 0.4) / 2)
    assert b["R"] == pytest.approx((0.1 + 0.7) / 2)
    cv = breast_scores([("L", "CC", 0.1), ("L", "CV", 0.9), ("L", "MLO", 0.3), ("L", "XCC", 0.2)])
    assert cv["L"] == pytest.approx((0.9 + 0.3) / 2)
