"""Consensus maths of dataset snapshots: pure functions over label dicts, no database.

Labels are manifest label dicts (:mod:`mammotriage.store.datasets`): geometry in
stored-image pixels, boxes half-open ``[x0, y0, x1, y1]``.

Consensus rules (positive labels only: accepted AI marks and reader-added findings;
two labels *match* when the IoU of their bounding boxes is >= :data:`MATCH_IOU`;
matching labels form clusters, the connected components of the match graph):

``union``
    Every cluster is a consensus finding.
``majority``
    A cluster is kept when more than half of the image's readers have a label in it.
``adjudicator:NAME``
    The named reader's labels win on every exam that reader read; exams the adjudicator
    did not read fall back to ``majority`` (marked ``"consensus_source"`` per image).
``arbitrated``
    Double reading (:mod:`mammotriage.store.double_reading`; applied per exam by
    :mod:`mammotriage.store.datasets`): an arbitrated exam takes the arbitrator's labels
    and assessment (``consensus_source`` ``arbitration``); a concordant exam the union of
    its two readers' labels, BI-RADS and density (``concordant-union``; the agreed recall,
    the more suspicious read's assessment); any other exam falls back to ``union`` over its
    readers (``union``, or ``awaiting-arbitration-union`` for a discordant exam not
    arbitrated yet).

A consensus finding's geometry is its single member's geometry, or for a cluster of
several the box whose coordinates are the means of the members' bounding boxes; its
kind the most frequent member kind (ties: the order of :data:`~mammotriage.dicom.vocab.FINDING_KINDS`);
its id ``consensus:`` + 16 hex digits of the sha256 of its sorted ``reader/label_id``
members (stable while the membership is). BI-RADS consensus: union = most suspicious
(1 < 2 < 3 < 0 < 4 < 5 < 6), majority = most frequent (ties: most suspicious),
adjudicator = the adjudicator's; density likewise with A < B < C < D.

Reader agreement (:func:`agreement`): per reader pair, the per-lesion match rate (IoU >=
:data:`MATCH_IOU`, matched one-to-one) and Cohen's kappa on BI-RADS and density.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from mammotriage.dicom.vocab import FINDING_KINDS as KINDS

__all__ = [
    "BIRADS_ORDER", "DENSITY_ORDER", "MATCH_IOU", "RULES", "ConsensusRule", "DatasetError", "agreement", "bbox",
    "cohen_kappa", "consensus_for_image", "exam_consensus", "iou", "match_count",
]

#: Two labels match (same lesion) when the IoU of their bounding boxes is at least this.
MATCH_IOU = 0.3
#: Consensus rule names.
RULES = ("union", "majority", "adjudicator", "arbitrated")

#: BI-RADS assessment categories from least to most suspicious (0 = needs more imaging).
BIRADS_ORDER = (1, 2, 3, 0, 4, 5, 6)
#: Breast density categories from least to most dense.
DENSITY_ORDER = ("A", "B", "C", "D")


class DatasetError(ValueError):
    """A snapshot that cannot be made, found or trusted."""


# --------------------------------------------------------------------------- rule


@dataclass(frozen=True)
class ConsensusRule:
    """A declared consensus rule: ``union``, ``majority`` or ``adjudicator:NAME``."""

    name: str
    adjudicator: str | None = None

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise DatasetError(f"unknown consensus rule {self.name!r} (one of union, majority, "
                               "adjudicator:READER, arbitrated)")
        if (self.name == "adjudicator") != bool(self.adjudicator):
            raise DatasetError("the adjudicator rule needs a reader name: adjudicator:READER"
                               if self.name == "adjudicator" else
                               f"rule {self.name} takes no reader name")

    @classmethod
    def parse(cls, text: str | ConsensusRule) -> ConsensusRule:
        """``"union"``, ``"majority"``, ``"adjudicator:NAME"`` or ``"arbitrated"``."""
        if isinstance(text, ConsensusRule):
            return text
        name, _, reader = str(text).strip().partition(":")
        return cls(name.strip(), reader.strip() or None)

    def __str__(self) -> str:
        return f"adjudicator:{self.adjudicator}" if self.adjudicator else self.name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.name, "match_iou": MATCH_IOU}
        if self.adjudicator:
            out["adjudicator"] = self.adjudicator
        return out


# --------------------------------------------------------------------------- geometry


def bbox(geometry: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` of a stored geometry (box, ellipse or polygon)."""
    if geometry.get("type") == "polygon":
        xs = [float(p[0]) for p in geometry["points"]]
        ys = [float(p[1]) for p in geometry["points"]]
        return (min(xs), min(ys), max(xs), max(ys))
    x0, y0, x1, y1 = (float(v) for v in geometry["box"])
    return (x0, y0, x1, y1)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_count(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                threshold: float = MATCH_IOU) -> int:
    """One-to-one matches between two box lists: greedy by decreasing IoU, IoU >= threshold."""
    pairs = sorted(((iou(x, y), i, j) for i, x in enumerate(a) for j, y in enumerate(b)),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    for value, i, j in pairs:
        if value < threshold:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a)


def cohen_kappa(pairs: Sequence[tuple[Any, Any]]) -> float | None:
    """Cohen's kappa of two raters' categorical ratings (``None`` if undefined).

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e``
    the agreement expected from the raters' marginal frequencies. Undefined (``None``)
    without pairs or when ``p_e = 1`` (both raters used one and the same category).
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    ca = Counter(a for a, _ in pairs)
    cb = Counter(b for _, b in pairs)
    expected = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return round((observed - expected) / (1.0 - expected), 6)


def _cluster_id(members: Iterable[tuple[str, str]]) -> str:
    key = "|".join(sorted(f"{reader}/{lid}" for reader, lid in members))
    return "consensus:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _majority_kind(kinds: Iterable[str]) -> str:
    counts = Counter(kinds)
    rank = {k: i for i, k in enumerate(KINDS)}
    return min(counts, key=lambda k: (-counts[k], rank.get(k, len(rank)), k))


def _clusters(items: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Connected components of the IoU >= MATCH_IOU graph over (reader, label) items."""
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    boxes = [bbox(lab["geometry"]) for _, lab in items]
    for i, j in combinations(range(len(items)), 2):
        if iou(boxes[i], boxes[j]) >= MATCH_IOU:
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(find(i), []).append(i)
    return [[items[i] for i in sorted(g)] for g in groups.values()]


def _consensus_label(cluster: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    if len(cluster) == 1:
        geometry = cluster[0][1]["geometry"]
    else:
        boxes = [bbox(lab["geometry"]) for _, lab in cluster]
        geometry = {"type": "box",
                    "box": [round(sum(b[k] for b in boxes) / len(boxes), 3) for k in range(4)]}
    suspicion = [lab["score"] for _, lab in cluster if lab["source"] == "reader" and lab["score"] is not None]
    members = sorted((reader, lab["label_id"]) for reader, lab in cluster)
    return {
        "label_id": _cluster_id(members),
        "kind": _majority_kind(lab["kind"] for _, lab in cluster),
        "geometry": geometry,
        "box": [round(v, 3) for v in bbox(geometry)],
        "readers": sorted({reader for reader, _ in cluster}),
        "members": [{"reader": r, "label_id": lid} for r, lid in members],
        "suspicion": max(suspicion) if suspicion else None,
    }


def consensus_for_image(readers: Mapping[str, Sequence[Mapping[str, Any]]], rule: ConsensusRule
                        ) -> tuple[list[dict[str, Any]], str]:
    """Consensus labels of one image and the rule actually applied.

    Parameters
    ----------
    readers
        Reader -> that reader's labels of the image (manifest label dicts); every reader
        of the image is a key, even one with no positive label.
    rule
        The declared rule.

    Returns
    -------
    (labels, source)
        ``source`` is the rule applied: ``union``, ``majority``,
        ``adjudicator:NAME``, or ``majority`` for an exam the adjudicator did not read.
    """
    adjudicator = rule.adjudicator
    if rule.name == "adjudicator" and adjudicator is not None and adjudicator in readers:
        own = [(adjudicator, dict(lab)) for lab in readers[adjudicator] if lab["positive"]]
        return [_consensus_label([item]) for item in own], str(rule)
    items = [(reader, dict(lab)) for reader, labels in sorted(readers.items())
             for lab in labels if lab["positive"]]
    clusters = _clusters(items)
    if rule.name == "union":
        kept = clusters
        source = "union"
    else:
        needed = len(readers) / 2
        kept = [c for c in clusters if len({r for r, _ in c}) > needed]
        source = "majority"
    out = [_consensus_label(c) for c in kept]
    out.sort(key=lambda lab: (lab["box"], lab["label_id"]))
    return out, source


def exam_consensus(values: Mapping[str, Any], order: Sequence[Any], rule: ConsensusRule) -> Any:
    """The consensus of the readers' exam-level ``values`` (BI-RADS or density, ``None`` =
    not given) under ``rule``, ``order`` ranking them from least to most suspicious."""
    given = {r: v for r, v in values.items() if v is not None}
    if not given:
        return None
    rank = {v: i for i, v in enumerate(order)}
    if rule.name == "adjudicator" and rule.adjudicator in given:
        return given[rule.adjudicator]
    if rule.name == "union":
        return max(given.values(), key=lambda v: rank.get(v, -1))
    counts = Counter(given.values())
    return max(counts, key=lambda v: (counts[v], rank.get(v, -1)))


def agreement(exams: list[dict[str, Any]], images: list[dict[str, Any]]) -> dict[str, Any]:
    """Per reader pair, the per-lesion match rate and Cohen's kappa on BI-RADS and density."""
    readers = sorted({r for e in exams for r in e["readers"]})
    pairs = []
    pooled = {"matched": 0, "lesions": 0}
    for a, b in combinations(readers, 2):
        n_images = n_a = n_b = matched = 0
        for img in images:
            if a in img["readers"] and b in img["readers"]:
                n_images += 1
                boxes_a = [lab["box"] for lab in img["readers"][a] if lab["positive"]]
                boxes_b = [lab["box"] for lab in img["readers"][b] if lab["positive"]]
                n_a += len(boxes_a)
                n_b += len(boxes_b)
                matched += match_count(boxes_a, boxes_b)
        if not n_images:
            continue
        pooled["matched"] += 2 * matched
        pooled["lesions"] += n_a + n_b
        both = [e for e in exams if a in e["readers"] and b in e["readers"]]
        birads = [(e["readers"][a]["birads"], e["readers"][b]["birads"]) for e in both
                  if e["readers"][a]["birads"] is not None and e["readers"][b]["birads"] is not None]
        density = [(e["readers"][a]["density"], e["readers"][b]["density"]) for e in both
                   if e["readers"][a]["density"] is not None and e["readers"][b]["density"] is not None]
        pairs.append({
            "readers": [a, b], "exams": len(both), "images": n_images,
            "lesions": {a: n_a, b: n_b}, "matched": matched,
            "match_rate": round(2 * matched / (n_a + n_b), 6) if n_a + n_b else None,
            "birads_kappa": {"n": len(birads), "kappa": cohen_kappa(birads)},
            "density_kappa": {"n": len(density), "kappa": cohen_kappa(density)},
        })
    return {
        "match_iou": MATCH_IOU,
        "definition": "match_rate = 2 * matched / (lesions of reader A + lesions of reader B) over the "
                      "images both read; lesions = positive labels (accepted AI marks and added "
                      "findings), matched one-to-one greedily by IoU of bounding boxes >= match_iou; "
                      "kappa = Cohen's kappa over the exams both assessed",
        "readers": readers,
        "pairs": pairs,
        "overall_match_rate": (round(pooled["matched"] / pooled["lesions"], 6)
                               if pooled["lesions"] else None),
    }
