"""Evaluation: image-level ROC AUC and lesion-level FROC (MONAI's FROC utilities), plots.

Hit rule (mini-MIAS circles): a predicted box hits a lesion when its centre lies inside
the lesion circle, or its IoU with the circle's bounding box is >= 0.1.  Boxes are taken
best first; a box that hits a lesion no better box has claimed claims it (each lesion
counts once, with that score).  Every other box is a false positive: one that hits no
lesion, and also a second box on an already-hit lesion (a duplicate mark costs the
reader as much as any other false mark).

The overall FROC ignores kinds.  Per-kind sensitivity counts a hit only when the
predicted kind matches the lesion's kind (a mass mark on a calcification cluster is a
false positive there); its false positives are all marks of every kind that are not
such a hit, so every curve is read against the marks the reader would see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mammotriage.model.data import Sample
    from mammotriage.model.infer import Engine

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN with one class only."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    thr = np.unique(s)[::-1]
    tpr = [0.0] + [float((s[y] >= t).mean()) if y.any() else 0.0 for t in thr]
    fpr = [0.0] + [float((s[~y] >= t).mean()) if (~y).any() else 0.0 for t in thr]
    return np.array(fpr), np.array(tpr)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou: np.ndarray = inter / np.maximum(a + b - inter, 1e-9)
    return iou


def match_image(pred_boxes: np.ndarray, pred_scores: np.ndarray, circles: np.ndarray,
                pred_kinds: Sequence[str] | None = None, lesion_kinds: Sequence[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(fp_scores, lesion_scores): scores of false positives, and per lesion the score of
    the box that claimed it (0 when missed).  With ``pred_kinds`` and ``lesion_kinds`` a
    box only hits lesions of its own kind."""
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    circles = np.asarray(circles, dtype=np.float64).reshape(-1, 3)
    kind_aware = pred_kinds is not None and lesion_kinds is not None
    lk = np.asarray(list(lesion_kinds or ()), dtype=np.str_)
    lesion = np.zeros(len(circles))
    claimed = np.zeros(len(circles), dtype=bool)
    fps = []
    cboxes = np.stack([circles[:, 0] - circles[:, 2], circles[:, 1] - circles[:, 2],
                       circles[:, 0] + circles[:, 2], circles[:, 1] + circles[:, 2]], 1)
    for i in np.argsort(-pred_scores, kind="stable"):
        b = pred_boxes[i]
        if len(circles):
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            inside = (cx - circles[:, 0]) ** 2 + (cy - circles[:, 1]) ** 2 <= circles[:, 2] ** 2
            hit = inside | (_iou(b, cboxes) >= 0.1)
            if kind_aware and pred_kinds is not None:
                hit &= lk == pred_kinds[i]
        else:
            hit = np.zeros(0, dtype=bool)
        new = hit & ~claimed
        if new.any():
            lesion[new] = np.maximum(lesion[new], pred_scores[i])
            claimed |= new
        else:
            fps.append(pred_scores[i])
    return np.array(fps, dtype=np.float64), lesion


@dataclass
class EvalResult:
    image_auc: float
    froc: dict[str, float]
    froc_mean: float
    n_images: int
    n_lesions: int
    n_abnormal: int
    per_kind: dict[str, dict[str, float]]
    fps_curve: np.ndarray
    sens_curve: np.ndarray
    roc: tuple[np.ndarray, np.ndarray]

    def to_json(self) -> dict[str, Any]:
        return {"image_auc": _r(self.image_auc), "froc": {k: _r(v) for k, v in self.froc.items()},
                "froc_mean": _r(self.froc_mean), "n_images": self.n_images,
                "n_lesions": self.n_lesions, "n_abnormal": self.n_abnormal,
                "per_kind": {k: {kk: _r(vv) for kk, vv in v.items()} for k, v in self.per_kind.items()}}


def _r(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def _key(rate: float) -> str:
    return f"{rate:g}"


def froc_curve(fp_scores: np.ndarray, lesion_scores: np.ndarray, n_images: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's ``compute_froc_curve_data`` (same thresholds, same order), vectorised: with
    thousands of marks the original's loop over thresholds is quadratic."""
    fp = np.sort(np.asarray(fp_scores, np.float64))
    tp = np.sort(np.asarray(lesion_scores, np.float64))
    thresholds = np.unique(np.concatenate([fp, tp]))[1:]
    n_fp = len(fp) - np.searchsorted(fp, thresholds, side="left")
    n_tp = len(tp) - np.searchsorted(tp, thresholds, side="left")
    fps = np.append(n_fp, 0) / n_images
    sens = np.append(n_tp, 0) / len(tp)
    return fps, sens


def sensitivity_at(fp_scores: np.ndarray, lesion_scores: np.ndarray, n_images: int, rate: float) -> float:
    """Sensitivity at ``rate`` FP/image, read off the curve as :func:`froc_from` does."""
    fp = np.concatenate([np.asarray(fp_scores, np.float64), [0.0]])
    fps, sens = froc_curve(fp, lesion_scores, n_images)
    if len(fps) == 0:
        return 0.0
    x, y = fps[::-1], sens[::-1]
    return float(np.interp(rate, x, y, left=0.0, right=float(y[-1])))


def froc_from(fp_scores: np.ndarray, lesion_scores: np.ndarray, n_images: int,
              rates: Sequence[float] = FP_RATES) -> tuple[dict[str, float], float, np.ndarray, np.ndarray]:
    """Sensitivity at each FP/image rate, the mean, and the curve (MONAI FROC utilities)."""
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    if len(lesion_scores) == 0:
        return {_key(r): float("nan") for r in rates}, float("nan"), np.zeros(0), np.zeros(0)
    # CAMELYON/MONAI convention: one entry per lesion (0 when missed); thresholds start
    # above the lowest value, so a 0 in the FP list keeps every real score a threshold.
    fp = np.concatenate([np.asarray(fp_scores, dtype=np.float64), [0.0]])
    tp = np.asarray(lesion_scores, dtype=np.float64)
    fps_curve, sens_curve = compute_froc_curve_data(fp, tp, num_targets=len(tp), num_images=n_images)
    fps_curve, sens_curve = np.asarray(fps_curve, float), np.asarray(sens_curve, float)
    if len(fps_curve) == 0:
        return {_key(r): 0.0 for r in rates}, 0.0, fps_curve, sens_curve
    # compute_froc_curve_data lists thresholds ascending (fps descending); np.interp needs
    # ascending x.  Beyond the last operating point the sensitivity stays at its maximum.
    x, y = fps_curve[::-1], sens_curve[::-1]
    vals = {_key(r): float(np.interp(r, x, y, left=0.0, right=float(y[-1]))) for r in rates}
    mean = float(compute_froc_score(fps_curve, sens_curve, eval_thresholds=tuple(rates)))
    return vals, mean, fps_curve, sens_curve


def evaluate_predictions(records: Sequence[dict[str, Any]], rates: Sequence[float] = FP_RATES) -> EvalResult:
    """Metrics from per-image records ``{"abnormal", "circles" (N,3), "kinds", "boxes" (M,4),
    "scores" (M,), "image_score"}``."""
    all_fp, all_les, kinds = [], [], []
    kfp, kles = [], []
    labels, scores = [], []
    for r in records:
        fp, les = match_image(r["boxes"], r["scores"], r["circles"])
        lesion_kinds = list(r.get("kinds", ["lesion"] * len(les)))
        pred_kinds = r.get("finding_kinds")
        if pred_kinds is None:
            pred_kinds = ["lesion"] * len(np.asarray(r["scores"]).reshape(-1))
            lesion_kinds = ["lesion"] * len(les)
        kf, kl = match_image(r["boxes"], r["scores"], r["circles"], list(pred_kinds), lesion_kinds)
        all_fp.append(fp)
        all_les.append(les)
        kfp.append(kf)
        kles.append(kl)
        kinds.extend(r.get("kinds", ["lesion"] * len(les)))
        labels.append(int(r["abnormal"]))
        scores.append(float(r["image_score"]))
    fp = np.concatenate(all_fp) if all_fp else np.zeros(0)
    les = np.concatenate(all_les) if all_les else np.zeros(0)
    kfp_all = np.concatenate(kfp) if kfp else np.zeros(0)
    kles_all = np.concatenate(kles) if kles else np.zeros(0)
    n = len(records)
    froc, mean, fc, sc = froc_from(fp, les, n, rates)
    per_kind = {}
    kinds_arr = np.array(kinds)
    for k in sorted(set(kinds)):
        sel = kinds_arr == k
        kv, _km, _, _ = froc_from(kfp_all, kles_all[sel], n, rates)
        per_kind[k] = {"n": int(sel.sum()), **{f"sens@{kk}": v for kk, v in kv.items()}}
    return EvalResult(roc_auc(labels, scores), froc, mean, n, int(len(les)), int(sum(labels)),
                      per_kind, fc, sc, roc_curve(labels, scores))


def sample_record(s: Sample, boxes: Any, scores: Any, kinds: Sequence[str], image_score: float) -> dict[str, Any]:
    """The evaluation record of one sample's marks (boxes xyxy in its stored pixels)."""
    return {"key": s.key, "abnormal": s.abnormal,
            "circles": s.circles if s.circles is not None else _circles_from_boxes(s.boxes),
            "kinds": list(s.kinds),
            "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            "scores": np.asarray(scores, dtype=np.float64).reshape(-1),
            "finding_kinds": list(kinds),
            "image_score": image_score}


def predict_samples(engine: Engine, samples: Sequence[Sample], batch: int = 4) -> list[dict[str, Any]]:
    """Run the engine over samples (with ``circles``) and return evaluation records."""
    records = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        results = engine.predict_displays([s.load() for s in chunk], [s.chest_wall for s in chunk])
        for s, r in zip(chunk, results, strict=True):
            records.append(sample_record(s, [f.box for f in r.findings], [f.score for f in r.findings],
                                         [f.kind for f in r.findings], r.score))
    return records


def _circles_from_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                     np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2], 1)


def froc_axes(ax: Axes, title: str, ymax: float = 1.0) -> None:
    """The FROC axes every plot of ours uses: log2 false positives per image, 1/16 to 8."""
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 8)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)


def roc_axes(ax: Axes, title: str) -> None:
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)


def save_figure(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(result: EvalResult, out_dir: str | Path, title: str = "") -> list[Path]:
    """FROC and ROC plots as PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    if len(result.fps_curve):
        order = np.argsort(result.fps_curve)
        ax.plot(result.fps_curve[order], result.sens_curve[order], "-", color="C0")
    ax.plot([float(k) for k in result.froc], list(result.froc.values()), "o", color="C1")
    froc_axes(ax, f"FROC {title} ({result.n_lesions} lesions, {result.n_images} images)")
    paths = [save_figure(fig, out_dir / "froc.png")]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    fpr, tpr = result.roc
    ax.plot(fpr, tpr, "-", color="C0")
    roc_axes(ax, f"ROC {title} (AUC {result.image_auc:.3f}, {result.n_abnormal}/{result.n_images} abnormal)")
    paths.append(save_figure(fig, out_dir / "roc.png"))
    return paths
