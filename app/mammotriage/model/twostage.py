"""The second look (no torch): training sets of the calcification classifier and of the
stage-two rescoring of RetinaNet candidates, their features, containment-aware
suppression, and the exam/breast score.

Stage one (RetinaNet) proposes up to ``detections_per_img`` candidates per view at a low
score threshold (high recall, several false positives per image).  Stage two rescores
each candidate with gradient-boosted trees on features of the candidate's box, its
place in the breast and the *other breast's same view* at the mirrored place (normal
breasts are roughly symmetric).  The calcification path (:mod:`mammotriage.model.calc`)
adds cluster candidates scored by its own trees.  Overlapping marks are then reduced to
one per lesion by :func:`suppress`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from mammotriage.model.calc import (
    DEFAULT_CALC,
    FEATURES,
    CalcParams,
    Cluster,
    TreeEnsemble,
    find_clusters,
    insert_cluster,
)
from mammotriage.model.preprocess import as_box

#: Columns of a cluster's feature row.
N_CALC_FEATURES = len(FEATURES)

STAGE2_FEATURES = (
    "s1_score", "s1_logit", "kind", "log_area_mm2", "aspect", "depth", "height", "edge_mm",
    "inside_fraction", "contrast", "inner_std", "inner_mean", "contra_contrast", "contra_score",
    "contra_mean_diff",
)


def hits(boxes: np.ndarray, circles: np.ndarray) -> np.ndarray:
    """(M, N) bool: box i hits lesion j (centre inside the circle, or IoU with the circle's
    bounding box >= 0.1) — the hit rule of :mod:`mammotriage.model.evaluate`."""
    from mammotriage.model.evaluate import _iou

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    circles = np.asarray(circles, np.float64).reshape(-1, 3)
    out = np.zeros((len(boxes), len(circles)), bool)
    if not len(boxes) or not len(circles):
        return out
    cboxes = np.stack([circles[:, 0] - circles[:, 2], circles[:, 1] - circles[:, 2],
                       circles[:, 0] + circles[:, 2], circles[:, 1] + circles[:, 2]], 1)
    for i, b in enumerate(boxes):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        inside = (cx - circles[:, 0]) ** 2 + (cy - circles[:, 1]) ** 2 <= circles[:, 2] ** 2
        out[i] = inside | (_iou(b, cboxes) >= 0.1)
    return out


# ------------------------------------------------------------------ calcification examples

def calc_examples(display: np.ndarray, spacing_mm: float, circles: np.ndarray,
                  params: CalcParams = DEFAULT_CALC) -> tuple[np.ndarray, np.ndarray, list[Cluster]]:
    """Cluster features of one view and their labels (hit a calcification lesion)."""
    cl = find_clusters(display, spacing_mm, params=params)
    if not cl:
        return np.zeros((0, N_CALC_FEATURES), np.float32), np.zeros(0, int), cl
    X = np.stack([c.features for c in cl])
    y = hits(np.array([c.box for c in cl]), circles).any(axis=1).astype(int)
    return X, y, cl


def synthetic_calc_examples(display: np.ndarray, spacing_mm: float, rng: np.random.Generator,
                            n: int = 1, params: CalcParams = DEFAULT_CALC
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Examples from ``n`` simulated clusters inserted into a normal view (one at a time)."""
    from mammotriage.model.preprocess import breast_mask

    mask = breast_mask(np.asarray(display))
    inner = ndimage.binary_erosion(mask, iterations=max(1, int(round(8.0 / spacing_mm))))
    ys, xs = np.nonzero(inner)
    Xs, ys_out = [], []
    for _ in range(n):
        if not len(xs):
            break
        j = int(rng.integers(len(xs)))
        img, circle = insert_cluster(display, spacing_mm, (float(xs[j]), float(ys[j])), rng)
        X, y, _ = calc_examples(img, spacing_mm, np.array([circle]), params)
        if len(X):
            Xs.append(X)
            ys_out.append(y)
    if not Xs:
        return np.zeros((0, N_CALC_FEATURES), np.float32), np.zeros(0, int)
    return np.concatenate(Xs), np.concatenate(ys_out)


# ------------------------------------------------------------------ stage-two features

@dataclass
class ViewGeometry:
    """What stage two needs of a view besides the candidates: the image and its breast."""

    display: np.ndarray
    mask: np.ndarray
    edge: np.ndarray  # distance to the breast boundary, stored pixels
    spacing_mm: float
    chest_left: bool
    rows: tuple[int, int]  # first/last breast row
    cols: tuple[int, int]  # first/last breast column
    levels: tuple[float, float] = (0.0, 255.0)  # 2nd and 98th percentile inside the breast

    @classmethod
    def of(cls, display: np.ndarray, spacing_mm: float, chest_wall: str | None = None,
           mask: np.ndarray | None = None) -> ViewGeometry:
        """``mask``: the breast mask when the caller has it (the engine's preprocessing)."""
        from mammotriage.dicom.hanging import chest_wall_from_pixels
        from mammotriage.model.preprocess import breast_mask

        display = np.asarray(display)
        mask = breast_mask(display) if mask is None else mask
        step = max(1, int(np.ceil(max(display.shape) / 512)))
        edge = ndimage.distance_transform_edt(mask[::step, ::step]) * step
        rr = np.flatnonzero(mask.any(axis=1))
        cc = np.flatnonzero(mask.any(axis=0))
        if chest_wall is None:
            crop = np.where(mask, display, 0)[rr[0]:rr[-1] + 1, cc[0]:cc[-1] + 1]
            chest_wall = chest_wall_from_pixels(crop)
        # intensities inside the breast, so film (8-bit), digitised film and FFDM renderings
        # give stage two features on one scale
        lo, hi = (float(v) for v in np.percentile(display[::step, ::step][mask[::step, ::step]], [2, 98]))
        return cls(display, mask, edge, float(spacing_mm), chest_wall != "right",
                   (int(rr[0]), int(rr[-1])), (int(cc[0]), int(cc[-1])), (lo, max(hi, lo + 1.0)))

    def relative(self, x: float, y: float) -> tuple[float, float]:
        """(depth from the chest wall, height) of a point, both in [0, 1] of the breast."""
        c0, c1 = self.cols
        r0, r1 = self.rows
        d = (x - c0) / max(c1 - c0, 1) if self.chest_left else (c1 - x) / max(c1 - c0, 1)
        return float(d), float((y - r0) / max(r1 - r0, 1))

    def absolute(self, depth: float, height: float) -> tuple[float, float]:
        c0, c1 = self.cols
        r0, r1 = self.rows
        x = c0 + depth * (c1 - c0) if self.chest_left else c1 - depth * (c1 - c0)
        return float(x), float(r0 + height * (r1 - r0))

    def patch_stats(self, box: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
        """(inner mean, inner std, contrast to the surrounding ring, fraction in the breast);
        intensities as fractions of the breast's 2nd-98th percentile range."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        h, w = self.display.shape
        x0, x1 = max(0, min(x0, w - 1)), max(1, min(max(x1, x0 + 1), w))
        y0, y1 = max(0, min(y0, h - 1)), max(1, min(max(y1, y0 + 1), h))
        inner = self.display[y0:y1, x0:x1].astype(np.float32)
        m = self.mask[y0:y1, x0:x1]
        bw, bh = max(2, (x1 - x0) // 2), max(2, (y1 - y0) // 2)
        X0, X1, Y0, Y1 = max(0, x0 - bw), min(w, x1 + bw), max(0, y0 - bh), min(h, y1 + bh)
        outer = self.display[Y0:Y1, X0:X1].astype(np.float32)
        om = self.mask[Y0:Y1, X0:X1].copy()
        om[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0] = False
        lo, hi = self.levels
        inner_mean = float(inner[m].mean()) if m.any() else lo
        ring = float(outer[om].mean()) if om.any() else inner_mean
        span = hi - lo
        return (inner_mean - lo) / span, float(inner.std()) / span, (inner_mean - ring) / span, float(m.mean())


def stage2_features(boxes: np.ndarray, scores: np.ndarray, kinds: Sequence[str], view: ViewGeometry,
                    other: ViewGeometry | None, other_boxes: np.ndarray | None = None,
                    other_scores: np.ndarray | None = None) -> np.ndarray:
    """Feature rows (:data:`STAGE2_FEATURES`) of one view's stage-one candidates."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    rows = []
    px = view.spacing_mm
    rel: list[tuple[float, float]] = []
    if other is not None and other_boxes is not None and len(other_boxes):
        for b in np.asarray(other_boxes).reshape(-1, 4):
            rel.append(other.relative((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
    other_rel = np.array(rel).reshape(-1, 2)
    for b, s, k in zip(boxes, np.asarray(scores, np.float64), kinds, strict=True):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        w, h = max(b[2] - b[0], 1.0), max(b[3] - b[1], 1.0)
        depth, height = view.relative(cx, cy)
        step_e = view.mask.shape[0] / view.edge.shape[0]
        e = view.edge[min(int(cy / step_e), view.edge.shape[0] - 1), min(int(cx / step_e), view.edge.shape[1] - 1)]
        im, isd, con, inside = view.patch_stats(b)
        c_con, c_score, c_mean = 0.0, 0.0, 0.0
        if other is not None:
            ox, oy = other.absolute(depth, height)
            sx, sy = w * px / other.spacing_mm, h * px / other.spacing_mm
            om, _, oc, _ = other.patch_stats((ox - sx / 2, oy - sy / 2, ox + sx / 2, oy + sy / 2))
            c_con, c_mean = oc, im - om
            if len(other_rel):
                d = np.hypot(other_rel[:, 0] - depth, other_rel[:, 1] - height)
                near = d < 0.12
                c_score = float(np.max(np.asarray(other_scores)[near])) if near.any() else 0.0
        sc = float(np.clip(s, 1e-6, 1 - 1e-6))
        rows.append([sc, np.log(sc / (1 - sc)), float(k == "calcification"),
                     np.log(w * h * px * px), max(w, h) / min(w, h), depth, height, float(e) * px,
                     inside, con, isd, im, c_con, c_score, c_mean])
    return np.array(rows, np.float32).reshape(-1, len(STAGE2_FEATURES))


# ------------------------------------------------------------------ suppression, scores

def suppress(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float = 0.3,
             contain_thresh: float = 0.6) -> np.ndarray:
    """Indices kept by containment-aware non-maximum suppression, best first.

    A mark is dropped when a better one overlaps it by IoU >= ``iou_thresh``, or when
    ``contain_thresh`` of the smaller box's area lies inside the other (a box nested in
    a box, or a large box around a small one: one mark per lesion)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            ix = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            iy = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = ix * iy
            union = area[i] + area[j] - inter
            if union > 0 and inter / union >= iou_thresh:
                ok = False
                break
            small = min(area[i], area[j])
            if small > 0 and inter / small >= contain_thresh:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


def fuse_views(views: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]], iou_thresh: float = 0.3,
               contain_thresh: float = 0.6) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Weighted box fusion (Solovyev et al., 2019, "Weighted boxes fusion: ensembling boxes
    from different object detection models") of one view's marks from several models.

    ``views``: per model (boxes (N, 4), scores (N,), kinds). Marks are taken best first;
    one joins the fused mark of its kind that it overlaps as :func:`suppress` counts
    overlap (IoU or containment) with the highest IoU, else starts one. A fused mark's box is the
    score-weighted mean of its members' boxes, its score the sum over models of each
    model's best member score divided by the number of models (a mark only one of three
    models makes keeps a third of its score). Returns (boxes, scores, kinds), best first."""
    k = len(views)
    if k == 0:
        return np.zeros((0, 4)), np.zeros(0), []
    items = [(float(sc), m, np.asarray(b, np.float64), str(kd)) for m, (bx, scs, kds) in enumerate(views)
             for b, sc, kd in zip(np.asarray(bx, np.float64).reshape(-1, 4), np.asarray(scs, np.float64).reshape(-1),
                                  kds, strict=True)]
    items.sort(key=lambda t: -t[0])
    fused: list[dict[str, Any]] = []
    for score, model, box, kind in items:
        home, home_iou = None, -1.0
        for f in fused:  # the fused mark of its kind it overlaps most (by IoU), as WBF does
            if f["kind"] != kind:
                continue
            fb = f["box"]
            ix = max(0.0, min(box[2], fb[2]) - max(box[0], fb[0]))
            iy = max(0.0, min(box[3], fb[3]) - max(box[1], fb[1]))
            inter = ix * iy
            a = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
            b = max(0.0, fb[2] - fb[0]) * max(0.0, fb[3] - fb[1])
            union = a + b - inter
            iou = inter / union if union > 0 else 0.0
            if (iou >= iou_thresh or (min(a, b) > 0 and inter / min(a, b) >= contain_thresh)) and iou > home_iou:
                home, home_iou = f, iou
        if home is None:
            fused.append({"kind": kind, "box": box.copy(), "weights": [score], "boxes": [box], "best": {model: score}})
            continue
        home["weights"].append(score)
        home["boxes"].append(box)
        home["best"][model] = max(home["best"].get(model, 0.0), score)
        w = np.asarray(home["weights"])
        members = np.stack(home["boxes"])
        # members that all score 0 are averaged plainly (a weighted mean of them is 0/0)
        home["box"] = (members * w[:, None]).sum(0) / w.sum() if w.sum() > 0 else members.mean(0)
    scores = np.array([sum(f["best"].values()) / k for f in fused], np.float64)
    order = np.argsort(-scores, kind="stable")
    boxes = np.stack([fused[i]["box"] for i in order]) if fused else np.zeros((0, 4))
    return boxes, scores[order], [fused[i]["kind"] for i in order]


def _logit(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    """log(s / (1 - s)) of scores clipped to 1e-6 .. 1 - 1e-6."""
    s = np.clip(np.asarray(scores, np.float64), 1e-6, 1 - 1e-6)
    return np.log(s / (1 - s))


def platt(scores: np.ndarray | Sequence[float], a: float, b: float) -> np.ndarray:
    """sigmoid(a logit(s) + b) of scores in [0, 1] (clipped to 1e-6 .. 1 - 1e-6 first)."""
    return 1.0 / (1.0 + np.exp(-(a * _logit(scores) + b)))


def fit_platt(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[int],
              ridge: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """(a, b) of :func:`platt` by maximum likelihood (Newton's method, a small ridge on both).

    Platt, "Probabilistic outputs for support vector machines", 1999, on the score's
    log-odds; with fewer than one example of each label it returns the identity (1, 0)."""
    y = np.asarray(labels, np.float64).reshape(-1)
    z = _logit(np.asarray(scores, np.float64).reshape(-1))
    if len(y) != len(z):
        raise ValueError("one label per score is needed")
    if not len(y) or y.min() == y.max():
        return 1.0, 0.0
    X = np.stack([z, np.ones(len(z))], 1)
    w = np.array([1.0, 0.0])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.max(np.abs(step)) < 1e-9:
            break
    return float(w[0]), float(w[1])


def noisy_or(probs: Sequence[float], top_k: int = 3) -> float:
    """1 - prod(1 - p) over the ``top_k`` most probable findings of a view."""
    p = np.sort(np.clip(np.asarray(probs, np.float64), 0, 1))[::-1][:top_k]
    return float(1.0 - np.prod(1.0 - p)) if len(p) else 0.0


# ------------------------------------------------------------------ the second look at run time

@dataclass
class ViewCandidates:
    """One view's stage-one output, in stored pixels."""

    boxes: np.ndarray  # (N, 4)
    scores: np.ndarray  # (N,)
    kinds: list[str]


@dataclass
class Finding2:
    box: tuple[float, float, float, float]
    kind: str
    score: float


class SecondLook:
    """Stage two and the calcification classifier of a package, applied to an exam's views."""

    #: What the package metadata says about the rule (kept next to the code it describes).
    RULE: ClassVar[dict[str, str]] = {
        "stage2": "stage two: boosted-tree probability that a RetinaNet candidate is a lesion of "
                  "its kind, from the candidate's score, size, place in the breast, local contrast and "
                  "the other breast's same view at the mirrored place",
        "stage1": "RetinaNet candidate score",
        "stage1_platt": "RetinaNet candidate score mapped to the probability that a candidate is a "
                        "lesion of its kind (Platt scaling of its log-odds, a = {a:.4g}, b = {b:.4g}, "
                        "fitted on out-of-fold candidates), so that it ranks with the cluster probabilities",
        "calc": "calcification clusters: boosted-tree probability of a top-hat speck cluster, shifted "
                "from the training rate of clusters (real, simulated and phantom) to the real images' rate",
        "suppression": "containment-aware NMS over all marks of a view (IoU >= {iou}, or >= {contain} "
                       "of the smaller box inside the other)",
        "image": "noisy-OR of the view's {top_k} most probable findings",
    }

    def __init__(self, calc: TreeEnsemble | None, stage2: TreeEnsemble | None,
                 calc_params: CalcParams = DEFAULT_CALC, top_k: int = 3, iou: float = 0.3,
                 contain: float = 0.6, min_score: float = 0.01, max_findings: int = 20,
                 calc_offset: float = 0.0, stage1_platt: Sequence[float] | None = None):
        self.calc, self.stage2, self.calc_params = calc, stage2, calc_params
        #: (a, b) of the stage-one calibration without stage two: p = sigmoid(a logit(s) + b)
        self.stage1_platt: tuple[float, float] | None = \
            None if stage1_platt is None else (float(stage1_platt[0]), float(stage1_platt[1]))
        #: log-odds added to the cluster trees' output (:func:`~mammotriage.model.calc.prior_shift`)
        self.calc_offset = float(calc_offset)
        self.top_k, self.iou, self.contain = top_k, iou, contain
        self.min_score, self.max_findings = min_score, max_findings

    # ---- package form
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        if self.calc is not None:
            out.update(self.calc.to_arrays("second_look.calc"))
        if self.stage2 is not None:
            out.update(self.stage2.to_arrays("second_look.stage2"))
        return out

    def to_json(self) -> dict[str, Any]:
        from mammotriage.model.calc import FEATURES

        return {"calc_params": self.calc_params.to_json(), "calc_features": list(FEATURES),
                "stage2_features": list(STAGE2_FEATURES), "top_k": self.top_k, "iou": self.iou,
                "contain": self.contain, "min_score": self.min_score, "max_findings": self.max_findings,
                "has_calc": self.calc is not None, "has_stage2": self.stage2 is not None,
                "calc_offset": self.calc_offset,
                **({"stage1_platt": list(self.stage1_platt)} if self.stage1_platt is not None else {})}

    def describe(self) -> dict[str, str]:
        """The rule this instance applies, in words (the package metadata carries it)."""
        if self.stage2 is not None:
            parts = [self.RULE["stage2"]]
        elif self.stage1_platt is not None:
            parts = [self.RULE["stage1_platt"].format(a=self.stage1_platt[0], b=self.stage1_platt[1])]
        else:
            parts = [self.RULE["stage1"]]
        if self.calc is not None:
            parts.append(self.RULE["calc"])
        return {"finding": "; ".join(parts),
                **{k: self.RULE[k].format(iou=self.iou, contain=self.contain, top_k=self.top_k)
                   for k in ("suppression", "image")}}

    @classmethod
    def from_package(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> SecondLook:
        from mammotriage.model.calc import FEATURES

        if list(meta.get("calc_features", [])) != list(FEATURES) or \
                list(meta.get("stage2_features", [])) != list(STAGE2_FEATURES):
            raise ValueError("second-look features of the package differ from this program's")
        calc = TreeEnsemble.from_arrays(arrays, "second_look.calc") if meta.get("has_calc") else None
        st2 = TreeEnsemble.from_arrays(arrays, "second_look.stage2") if meta.get("has_stage2") else None
        return cls(calc, st2, CalcParams.from_json(meta.get("calc_params", {})), int(meta.get("top_k", 3)),
                   float(meta.get("iou", 0.3)), float(meta.get("contain", 0.6)),
                   float(meta.get("min_score", 0.01)), int(meta.get("max_findings", 20)),
                   float(meta.get("calc_offset", 0.0)), meta.get("stage1_platt"))

    # ---- run
    def calc_findings(self, display: np.ndarray, spacing_mm: float, mask: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        if self.calc is None:
            return np.zeros((0, 4)), np.zeros(0)
        cl = find_clusters(display, spacing_mm, mask=mask, params=self.calc_params)
        if not cl:
            return np.zeros((0, 4)), np.zeros(0)
        return np.array([c.box for c in cl]), self.calc_proba(np.stack([c.features for c in cl]))

    def calc_proba(self, X: np.ndarray) -> np.ndarray:
        """Cluster probabilities at the real images' rate (prior shift applied)."""
        if self.calc is None or not len(X):
            return np.zeros(0)
        return self.calc.predict_proba(X, self.calc_offset)

    def rescore(self, cand: ViewCandidates, view: ViewGeometry, other: ViewGeometry | None,
                other_cand: ViewCandidates | None) -> np.ndarray:
        if not len(cand.scores):
            return np.asarray(cand.scores, np.float64)
        if self.stage2 is None:
            if self.stage1_platt is None:
                return np.asarray(cand.scores, np.float64)
            return platt(cand.scores, *self.stage1_platt)
        X = stage2_features(cand.boxes, cand.scores, cand.kinds, view, other,
                            None if other_cand is None else other_cand.boxes,
                            None if other_cand is None else other_cand.scores)
        return self.stage2.predict_proba(X)

    def combine(self, boxes: np.ndarray, scores: np.ndarray, kinds: Sequence[str]) -> list[Finding2]:
        """Suppress overlapping marks and keep the best ``max_findings`` above ``min_score``."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64)
        keep = suppress(boxes, scores, self.iou, self.contain)
        out = [Finding2(as_box(boxes[i]), kinds[i], float(scores[i])) for i in keep
               if scores[i] >= self.min_score]
        return out[: self.max_findings]

    def view(self, cand: ViewCandidates, view: ViewGeometry, other: ViewGeometry | None,
             other_cand: ViewCandidates | None) -> tuple[list[Finding2], float]:
        """Findings of one view after the second look, and the view's score."""
        s2 = self.rescore(cand, view, other, other_cand)
        cb, cp = self.calc_findings(view.display, view.spacing_mm, view.mask)
        boxes = np.concatenate([np.asarray(cand.boxes).reshape(-1, 4), cb.reshape(-1, 4)])
        scores = np.concatenate([s2, cp])
        kinds = list(cand.kinds) + ["calcification"] * len(cp)
        found = self.combine(boxes, scores, kinds)
        return found, noisy_or([f.score for f in found], self.top_k)
