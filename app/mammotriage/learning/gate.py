"""The validation gate: a candidate model against the current one, before promotion.

Both models predict the site's **locked validation snapshot** (never trained on; see
:mod:`mammotriage.learning.snapshot_data`) and the candidate's **new corrections** (the
images of its training snapshot). The figures are :mod:`mammotriage.model.evaluate`'s:
lesion FROC sensitivity at 0.125 … 4 false positives per image and its mean, per-kind
sensitivity, and image-level ROC AUC, each with a seeded bootstrap 95 % interval over
images (paired: both models are scored on the same resampled images, which also gives
the interval of the difference).

The candidate **passes** when no gated figure is worse than the current model's by more
than its tolerance (point estimates; absolute differences):

* validation FROC mean (``tolerance_froc``, default 0.05),
* validation image AUC (``tolerance_auc``, default 0.05),
* validation FROC mean per lesion kind with at least ``min_kind_lesions`` lesions
  (``tolerance_kind``, default 0.10), counting any finding (``froc_mean:KIND``, the
  figure of ``evaluate.py``) and counting only findings the model *labelled* with that
  kind (``labelled_froc_mean:KIND``: a calcification cluster marked "mass" is a miss);
  per-kind subsets are small, so a per-kind loss beyond tolerance refuses only when the
  paired bootstrap interval of the difference lies entirely below zero; where the current
  model finds a kind only under another label (its labelled figure below
  ``relabel_ratio``, 0.5, of its any-finding one: a parent that never learned the kind)
  the any-finding figure of that kind is a ceiling of mislabelled hits, reported and
  warned about but not gated (the labelled figure, the pooled FROC and the AUC gate),
* FROC mean on the new corrections (``tolerance_corrections``, default 0.05), counting a
  corrected lesion only when a finding *labelled with the reader's kind* hits it
  (``labelled_froc_mean``, every kind pooled; a finding that hits no lesion of its own
  kind is a false positive): the corrections say what a lesion is as well as where.
  The any-finding FROC on those images is reported, and warned about when lower beyond
  tolerance, but not gated: they were trained on, the parent often already marks their
  lesions under another kind (a ceiling the candidate can only fall from), and the
  any-finding FROC is gated on the validation set,

and it was not trained on any validation image. Otherwise it is refused, every reason
listed. The report (JSON, ``"passed"`` and ``"reasons"`` as
:meth:`mammotriage.learning.registry.ModelRegistry.promote` expects) and side-by-side
FROC / ROC / figure plots (PNG) go to the output folder.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammotriage.model.evaluate import (
    FP_RATES,
    EvalResult,
    evaluate_predictions,
    froc_axes,
    match_image,
    roc_auc,
    roc_axes,
    save_figure,
)

if TYPE_CHECKING:
    from mammotriage.model.data import Sample
    from mammotriage.model.infer import Engine

REPORT_FORMAT = "mammotriage.gate/1"
REPORT_NAME = "gate-report.json"

#: ``progress(stage, done, total, note)``
Progress = Callable[[str, int, int, str], None]


class GateError(RuntimeError):
    """The gate cannot run (no validation set, unreadable model, ...)."""


@dataclass
class GateParams:
    tolerance_froc: float = 0.05
    tolerance_auc: float = 0.05
    tolerance_kind: float = 0.10
    tolerance_corrections: float = 0.05
    #: a candidate fine-tuned on the corrections it is checked on must have learned them:
    #: the 95 % interval of its gain there (findings of the reader's kind) lies above 0 ...
    require_learning: bool = True
    #: ... unless there was nothing left to learn: the current model's figure there is
    #: already at least ``1 - learning_headroom`` (the readers confirmed what it finds)
    learning_headroom: float = 0.05
    #: a kind the current model finds mostly under another label (its labelled FROC for the
    #: kind below this share of its any-mark FROC): the any-mark figure is reported, not gated
    relabel_ratio: float = 0.5
    min_kind_lesions: int = 10
    n_boot: int = 200
    seed: int = 0
    threads: int = 2
    device: str | None = None
    fp_rates: tuple[float, ...] = FP_RATES
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fp_rates"] = list(self.fp_rates)
        return d


# --------------------------------------------------------------------------- figures


@dataclass
class _Pre:
    """Per-image pieces of the metrics, matched once, resampled many times."""

    fp: list[np.ndarray]
    les: list[np.ndarray]
    kinds: list[list[str]]
    labels: np.ndarray
    scores: np.ndarray
    # kind -> per image (fp scores, lesion scores) counting only findings labelled that kind
    labelled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]
    # per image, every kind pooled: a lesion counts only when found by a finding of its kind
    labelled_all: tuple[list[np.ndarray], list[np.ndarray]]


def labelled_match(record: dict[str, Any], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`~mammotriage.model.evaluate.match_image`, for the lesions of ``kind`` and
    only the findings the model labelled ``kind`` (a calcification cluster marked as a mass
    is missed, and that mark is a false positive for this kind)."""
    boxes = np.asarray(record["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(record["scores"], dtype=np.float64).reshape(-1)
    circles = np.asarray(record["circles"], dtype=np.float64).reshape(-1, 3)
    keep = np.array([k == kind for k in record.get("finding_kinds", [])], dtype=bool).reshape(-1)
    if len(keep) != len(scores):
        keep = np.zeros(len(scores), dtype=bool)
    sel = np.array([k == kind for k in record.get("kinds", [])], dtype=bool).reshape(-1)
    return match_image(boxes[keep], scores[keep], circles[sel] if len(sel) else circles[:0])


def labelled_match_all(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Every kind pooled: per lesion the best score of a finding labelled with the lesion's
    kind; a finding that hits no lesion of its own kind is a false positive."""
    kinds = sorted(set(record.get("kinds", [])) | set(record.get("finding_kinds", [])))
    pairs = [labelled_match(record, k) for k in kinds]
    return (np.concatenate([a for a, _ in pairs]) if pairs else np.zeros(0),
            np.concatenate([b for _, b in pairs]) if pairs else np.zeros(0))


def _precompute(records: Sequence[dict[str, Any]], kinds: Sequence[str] = ()) -> _Pre:
    fp, les, lk = [], [], []
    for r in records:
        a, b = match_image(r["boxes"], r["scores"], r["circles"])
        fp.append(a)
        les.append(b)
        lk.append(list(r.get("kinds", ["lesion"] * len(b))))
    labelled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {k: ([], []) for k in kinds}
    for k in kinds:
        for r in records:
            a, b = labelled_match(r, k)
            labelled[k][0].append(a)
            labelled[k][1].append(b)
    pooled = [labelled_match_all(r) for r in records]
    return _Pre(fp, les, lk, np.array([int(r["abnormal"]) for r in records]),
                np.array([float(r["image_score"]) for r in records]), labelled,
                ([a for a, _ in pooled], [b for _, b in pooled]))


def kind_sensitivity(records: Sequence[dict[str, Any]], kind: str, fp_rate: float = 1.0,
                     labelled: bool = True) -> float:
    """Sensitivity for lesions of ``kind`` at ``fp_rate`` false positives per image;
    ``labelled``: only findings the model labelled ``kind`` count (else any finding)."""
    fps, les = [], []
    for r in records:
        if labelled:
            a, b = labelled_match(r, kind)
        else:
            a, b = match_image(r["boxes"], r["scores"], r["circles"])
            b = b[np.array([k == kind for k in r.get("kinds", [])], dtype=bool).reshape(-1)]
        fps.append(a)
        les.append(b)
    vals, _ = froc_fast(np.concatenate(fps) if fps else np.zeros(0),
                        np.concatenate(les) if les else np.zeros(0), len(records), (fp_rate,))
    return vals[f"{fp_rate:g}"]


def froc_fast(fp_scores: np.ndarray, lesion_scores: np.ndarray, n_images: int,
              rates: Sequence[float] = FP_RATES) -> tuple[dict[str, float], float]:
    """:func:`mammotriage.model.evaluate.froc_from`'s sensitivities and mean, vectorised
    (the bootstrap calls it thousands of times; the figures are identical)."""
    keys = [f"{r:g}" for r in rates]
    tp = np.asarray(lesion_scores, dtype=np.float64)
    if len(tp) == 0:
        return {k: float("nan") for k in keys}, float("nan")
    fp = np.concatenate([np.asarray(fp_scores, dtype=np.float64), [0.0]])
    th = np.unique(np.concatenate([fp, tp]))[1:]
    total_fps = len(fp) - np.searchsorted(np.sort(fp), th, side="left")
    total_tps = len(tp) - np.searchsorted(np.sort(tp), th, side="left")
    fps = np.append(total_fps, 0) / float(n_images)
    sens = np.append(total_tps, 0) / float(len(tp))
    x, y = fps[::-1], sens[::-1]
    vals = {k: float(np.interp(r, x, y, left=0.0, right=float(y[-1]))) for k, r in zip(keys, rates, strict=True)}
    return vals, float(np.mean(np.interp(rates, x, y)))


def _figures(pre: _Pre, idx: np.ndarray, rates: Sequence[float], kinds: Sequence[str]) -> dict[str, float]:
    fp = np.concatenate([pre.fp[i] for i in idx]) if len(idx) else np.zeros(0)
    les = np.concatenate([pre.les[i] for i in idx]) if len(idx) else np.zeros(0)
    kk = np.array([k for i in idx for k in pre.kinds[i]], dtype=object)
    n = len(idx)
    out: dict[str, float] = {}
    froc, mean = froc_fast(fp, les, n, rates)
    out["froc_mean"] = mean
    for k, v in froc.items():
        out[f"sens@{k}"] = v
    out["image_auc"] = roc_auc(pre.labels[idx], pre.scores[idx])
    lfp, lles = pre.labelled_all
    out["labelled_froc_mean"] = froc_fast(np.concatenate([lfp[i] for i in idx]) if len(idx) else np.zeros(0),
                                          np.concatenate([lles[i] for i in idx]) if len(idx) else np.zeros(0),
                                          n, rates)[1]
    for kind in kinds:
        sel = kk == kind
        out[f"froc_mean:{kind}"] = froc_fast(fp, les[sel], n, rates)[1] if sel.any() else float("nan")
    for kind, (lfp, lles) in pre.labelled.items():
        a = np.concatenate([lfp[i] for i in idx]) if len(idx) else np.zeros(0)
        b = np.concatenate([lles[i] for i in idx]) if len(idx) else np.zeros(0)
        out[f"labelled_froc_mean:{kind}"] = froc_fast(a, b, n, rates)[1]
    return out


def _nan_to_none(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def paired_figures(parent_records: Sequence[dict[str, Any]], candidate_records: Sequence[dict[str, Any]], *,
                   n_boot: int = 200, seed: int = 0, rates: Sequence[float] = FP_RATES) -> dict[str, Any]:
    """Point figures and paired bootstrap 95 % intervals of both models and their difference.

    The records must describe the same images in the same order.
    """
    if [r["key"] for r in parent_records] != [r["key"] for r in candidate_records]:
        raise GateError("parent and candidate were evaluated on different images")
    kinds = sorted({k for r in parent_records for k in r.get("kinds", [])})
    pa, ca = _precompute(parent_records, kinds), _precompute(candidate_records, kinds)
    n = len(parent_records)
    full = np.arange(n)
    point = {"parent": _figures(pa, full, rates, kinds), "candidate": _figures(ca, full, rates, kinds)}
    names = list(point["parent"])
    boots: dict[str, dict[str, list[float]]] = {"parent": {k: [] for k in names}, "candidate": {k: [] for k in names},
             "difference": {k: [] for k in names}}
    rng = np.random.default_rng([seed, 2718])
    for _ in range(n_boot if n else 0):
        idx = rng.integers(0, n, n)
        p, c = _figures(pa, idx, rates, kinds), _figures(ca, idx, rates, kinds)
        for k in names:
            boots["parent"][k].append(p[k])
            boots["candidate"][k].append(c[k])
            boots["difference"][k].append(c[k] - p[k])

    def ci(values: list[float]) -> list[float | None]:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < max(10, n_boot // 4):
            return [None, None]
        return [_nan_to_none(np.percentile(v, 2.5)), _nan_to_none(np.percentile(v, 97.5))]

    out: dict[str, Any] = {"n_images": n, "n_lesions": int(sum(len(x) for x in pa.les)),
                           "n_abnormal": int(pa.labels.sum()),
                           "lesions_per_kind": {k: int(sum(x.count(k) for x in pa.kinds)) for k in kinds},
                           "n_boot": n_boot, "seed": seed}
    for who in ("parent", "candidate"):
        out[who] = {k: {"value": _nan_to_none(point[who][k]), "ci95": ci(boots[who][k])} for k in names}
    out["difference"] = {k: {"value": _nan_to_none(point["candidate"][k] - point["parent"][k]),
                             "ci95": ci(boots["difference"][k])} for k in names}
    return out


# --------------------------------------------------------------------------- plots


def write_comparison_plots(parent_ev: EvalResult, candidate_ev: EvalResult, figures: dict[str, Any], out_dir: str | Path,
                           parent_name: str, candidate_name: str,
                           corrections: dict[str, Any] | None = None) -> list[Path]:
    """``froc_compare.png``, ``roc_compare.png``, ``figures_compare.png`` (both models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = {"parent": "#4477aa", "candidate": "#ee7733"}
    labels = {"parent": f"current v{parent_name}", "candidate": f"candidate v{candidate_name}"}

    fig, ax = plt.subplots(figsize=(5.2, 4), dpi=100)
    for who, ev in (("parent", parent_ev), ("candidate", candidate_ev)):
        f = figures[who]["froc_mean"]
        lo, hi = f["ci95"]
        ci_txt = f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
        if len(ev.fps_curve):
            order = np.argsort(ev.fps_curve)
            ax.plot(ev.fps_curve[order], ev.sens_curve[order], "-", color=colours[who], alpha=0.8)
        ax.plot([float(k) for k in ev.froc], list(ev.froc.values()), "o", color=colours[who],
                label=f"{labels[who]}: mean {f['value'] if f['value'] is not None else float('nan'):.3f}{ci_txt}")
    froc_axes(ax, f"FROC, validation set ({figures['n_lesions']} lesions, {figures['n_images']} images)", ymax=1.02)
    ax.legend(fontsize=7, loc="lower right")
    paths.append(save_figure(fig, out_dir / "froc_compare.png"))

    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=100)
    for who, ev in (("parent", parent_ev), ("candidate", candidate_ev)):
        fpr, tpr = ev.roc
        a = figures[who]["image_auc"]
        txt = "n/a" if a["value"] is None else f"{a['value']:.3f}"
        ax.plot(fpr, tpr, "-", color=colours[who], label=f"{labels[who]}: AUC {txt}")
    roc_axes(ax, f"ROC, validation set ({figures['n_abnormal']}/{figures['n_images']} abnormal)")
    ax.legend(fontsize=7, loc="lower right")
    paths.append(save_figure(fig, out_dir / "roc_compare.png"))

    names = ["froc_mean", "image_auc"] + [k for k in figures["parent"] if ":" in k]
    titles = ["FROC mean", "image AUC"] + [k.split(":", 1)[1] + ("\n(labelled)" if k.startswith("labelled") else "\n(any mark)")
                                            for k in names[2:]]
    sets = [("validation", figures, names, titles)]
    if corrections:
        cnames = ["froc_mean"] + [k for k in corrections["parent"] if ":" in k]
        sets.append(("corrections", corrections, cnames,
                     ["corrections\nFROC mean"] + ["corrections\n" + k.split(":", 1)[1]
                                                   + (" (labelled)" if k.startswith("labelled") else "")
                                                   for k in cnames[1:]]))
    bars = [(title, src, name) for _, src, ns, ts in sets for name, title in zip(ns, ts, strict=True)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(bars) + 1), 3.8), dpi=100)
    x = np.arange(len(bars))
    for j, who in enumerate(("parent", "candidate")):
        vals, err_lo, err_hi = [], [], []
        for _, src, name in bars:
            d = src[who][name]
            v = d["value"] if d["value"] is not None else np.nan
            lo, hi = d["ci95"]
            vals.append(v)
            err_lo.append(v - lo if lo is not None else 0)
            err_hi.append(hi - v if hi is not None else 0)
        ax.bar(x + (j - 0.5) * 0.38, vals, 0.36, color=colours[who], label=labels[who],
               yerr=[err_lo, err_hi], capsize=3, ecolor="#333333")
    ax.set_xticks(x)
    ax.set_xticklabels([b[0] for b in bars], fontsize=7)
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title("validation and new-correction figures, bootstrap 95 % intervals", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    paths.append(save_figure(fig, out_dir / "figures_compare.png"))
    return paths


# --------------------------------------------------------------------------- the gate


def _check(name: str, figs: dict[str, Any], key: str, tol: float, where: str,
           need_significance: bool = False) -> dict[str, Any]:
    p = figs["parent"][key]["value"]
    c = figs["candidate"][key]["value"]
    ci = figs["difference"][key]["ci95"]
    if p is None or c is None:
        return {"name": name, "metric": key, "set": where, "parent": p, "candidate": c, "delta": None,
                "ci95_delta": ci, "tolerance": tol, "passed": None,
                "message": f"{name}: not measurable on this set"}
    delta = round(c - p, 4)
    ok = delta >= -tol - 1e-12
    if need_significance and not ok and (ci[1] is None or ci[1] >= 0):
        ok = True  # a small subset: worse beyond tolerance, but not clearly worse at all
    msg = (f"{name}: candidate {c:.3f} vs current {p:.3f} ({delta:+.3f}; "
           f"95 % CI of the difference {_fmt_ci(figs['difference'][key]['ci95'])}; tolerance {tol:.3f})")
    return {"name": name, "metric": key, "set": where, "parent": p, "candidate": c, "delta": delta,
            "ci95_delta": figs["difference"][key]["ci95"], "tolerance": tol, "passed": ok,
            "message": ("worse beyond tolerance: " if not ok else "") + msg}


def _fmt_ci(ci: list[float | None]) -> str:
    lo, hi = ci
    return "n/a" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"


def _learned(corrections: dict[str, Any], headroom: float = 0.05) -> dict[str, Any]:
    """Did the candidate learn the corrections it was trained on? The lower end of the
    95 % interval of its gain (findings of the reader's kind) must be above 0: a
    candidate that is merely no worse there (a fine-tune on shuffled labels of a weak
    parent can be better on the validation set just by seeing more of the site's
    images) has not learned what the readers said.

    Unless there was nothing to learn: when the current model already reaches
    ``1 - headroom`` there (the readers confirmed what it finds), no gain is required;
    the no-worse check on the corrections still applies (a shuffled-label fine-tune of
    such a parent falls there)."""
    key = "labelled_froc_mean"
    name = "the new corrections were learned (FROC mean, findings of the reader's kind)"
    p, c = corrections["parent"][key]["value"], corrections["candidate"][key]["value"]
    ci = corrections["difference"][key]["ci95"]
    if p is None or c is None or ci[0] is None:
        return {"name": name, "metric": key, "set": "corrections", "parent": p, "candidate": c, "delta": None,
                "ci95_delta": ci, "tolerance": 0.0, "passed": None, "message": f"{name}: not measurable"}
    delta = round(c - p, 4)
    ceiling = p >= 1.0 - headroom - 1e-12
    ok = ci[0] > 0 or ceiling
    rule = (f"no gain required: the current model already reaches {p:.3f} >= {1.0 - headroom:.3f}" if ceiling
            else "must lie above 0")
    msg = (f"{name}: candidate {c:.3f} vs current {p:.3f} ({delta:+.3f}; 95 % CI of the difference "
           f"{_fmt_ci(ci)}; {rule})")
    return {"name": name, "metric": key, "set": "corrections", "parent": p, "candidate": c, "delta": delta,
            "ci95_delta": ci, "tolerance": 0.0, "passed": ok,
            "message": ("not learned: " if not ok else "") + msg}


def _found_under_another_kind(validation: dict[str, Any], kind: str, ratio: float) -> bool:
    """The current model's FROC mean for ``kind`` counting only findings labelled ``kind``
    is below ``ratio`` times the one counting any finding: it marks these lesions, but
    calls them something else (a parent that never learned the kind)."""
    p_any = validation["parent"].get(f"froc_mean:{kind}", {}).get("value")
    p_lab = validation["parent"].get(f"labelled_froc_mean:{kind}", {}).get("value")
    return p_any is not None and p_lab is not None and p_any > 0 and p_lab < ratio * p_any


def gate_decision(validation: dict[str, Any], corrections: dict[str, Any] | None, params: GateParams,
                  own_corrections: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """The checks and the warnings; failing checks become the report's reasons.

    ``own_corrections``: ``corrections`` are the candidate's own training snapshot (its
    ``fine_tuning`` metadata names it); then, with ``params.require_learning``, the
    candidate must also show that it learned them (:func:`_learned`)."""
    checks = [_check("validation FROC mean", validation, "froc_mean", params.tolerance_froc, "validation"),
              _check("validation image AUC", validation, "image_auc", params.tolerance_auc, "validation")]
    warnings = []
    for kind, n in validation["lesions_per_kind"].items():
        if n >= params.min_kind_lesions:
            anymark = _check(f"validation FROC mean, {kind}", validation, f"froc_mean:{kind}",
                             params.tolerance_kind, "validation", need_significance=True)
            if _found_under_another_kind(validation, kind, params.relabel_ratio):
                # the current model finds this kind only under another label: its any-mark
                # figure is a ceiling of mislabelled hits; the labelled figure below, the
                # pooled FROC mean and the AUC gate the candidate
                if anymark["passed"] is False:
                    warnings.append(anymark["message"].replace(
                        "worse beyond tolerance: ", "lower beyond tolerance (not gated: the current model "
                        f"finds {kind} only under another kind): "))
            else:
                checks.append(anymark)
            checks.append(_check(f"validation FROC mean, {kind} (findings labelled {kind})", validation,
                                 f"labelled_froc_mean:{kind}", params.tolerance_kind, "validation",
                                 need_significance=True))
        else:
            warnings.append(f"{kind}: only {n} validation lesions (< {params.min_kind_lesions}); reported, not gated")
    if corrections is not None:
        checks.append(_check("FROC mean on the new corrections (findings of the reader's kind)", corrections,
                             "labelled_froc_mean", params.tolerance_corrections, "corrections"))
        anykind = _check("FROC mean on the new corrections (any finding)", corrections, "froc_mean",
                         params.tolerance_corrections, "corrections")
        if own_corrections and params.require_learning:
            checks.append(_learned(corrections, params.learning_headroom))
        if anykind["passed"] is False:  # reported: these images were trained on; validation gates this
            warnings.append(anykind["message"].replace("worse beyond tolerance: ", "lower beyond tolerance "
                                                       "(not gated on trained-on images): "))
    for c in checks:
        if c["passed"] is None:
            warnings.append(c["message"])
    return checks, warnings


#: (weights sha256, threads, device, image key) -> evaluation record. Inference is
#: deterministic, so a model's predictions on an image are computed once per process.
_PREDICTIONS: dict[tuple[str, int, str, str], dict[str, Any]] = {}


def _records(engine: Engine | None, samples: Sequence[Sample], weights_sha256: str,
             params: GateParams) -> list[dict[str, Any]]:
    """Evaluation records of ``samples``; ``engine`` may be None when all are cached."""
    from mammotriage.model.evaluate import predict_samples

    tag = (weights_sha256, params.threads, str(params.device))
    todo = [s for s in samples if (*tag, s.key) not in _PREDICTIONS]
    if todo:
        if engine is None:
            raise ValueError("records to predict but no engine loaded")
        for s, r in zip(todo, predict_samples(engine, todo), strict=True):
            _PREDICTIONS[(*tag, s.key)] = r
    return [_PREDICTIONS[(*tag, s.key)] for s in samples]


def validate(candidate: str | Path, *, parent: str | Path | None = None,
             archive_file: str | Path | None = None, validation: str | Path | None = None,
             corrections: str | Path | bool | None = None, out_dir: str | Path | None = None,
             params: GateParams | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the gate; returns the report (also written to ``out_dir/gate-report.json``).

    ``candidate`` / ``parent``: package folder or registered version (``parent``
    defaults to the registry's active model). ``validation``: a validation snapshot
    (default: the site's locked one). ``corrections``: a training snapshot, ``None`` for
    the candidate's own training snapshot (when its metadata names one), ``False`` to skip.
    """
    from mammotriage.learning.snapshot_data import (
        SnapshotDataError,
        locked_validation,
        resolve_model,
        snapshot_samples,
        training_set,
        uid_digest,
    )
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import verify
    from mammotriage.store.datasets import load_snapshot

    def say(stage: str, done: int, total: int, note: str = "") -> None:
        if progress is not None:
            progress(stage, done, total, note)

    from mammotriage.learning.snapshot_data import archive_or_default

    params = params or GateParams()
    archive_file = archive_or_default(archive_file)
    cand_dir = resolve_model(candidate, archive_file)
    parent_dir = resolve_model(parent, archive_file)
    cmeta, pmeta = verify(cand_dir), verify(parent_dir)  # weights hash checked
    if validation is None:
        vman = locked_validation(archive_file)
        if vman is None:
            raise GateError("the site has no validation snapshot: create one "
                            "(`mammotriage dataset snapshot --role validation`) before validating")
    else:
        vman = load_snapshot(validation, archive_file)
        if vman.get("role") != "validation":
            raise GateError(f"snapshot {vman['sha256'][:12]} is not a validation snapshot")
    vsamples = snapshot_samples(vman)
    reasons: list[str] = []
    warnings: list[str] = []
    if not vsamples:
        raise GateError(f"validation snapshot {vman['sha256'][:12]} holds no reviewed image")
    ft = cmeta.get("fine_tuning") or {}
    trained_on = set(ft.get("site_images", []))
    leaked = sorted({s.key for s in vsamples if uid_digest(s.key.split(":", 1)[1]) in trained_on})
    if leaked:
        reasons.append(f"the candidate was trained on {len(leaked)} image(s) of the validation set")
    if ft and ft.get("parent", {}).get("weights_sha256") not in (None, pmeta.get("weights_sha256")):
        warnings.append(f"the candidate was fine-tuned from v{ft['parent'].get('version')}, not from the "
                        f"model it is compared with (v{pmeta.get('version')})")
    if cmeta.get("weights_sha256") == pmeta.get("weights_sha256"):
        warnings.append("the candidate has the same weights as the model it is compared with")
    if not ft.get("finished", True):
        warnings.append("the candidate's training stopped early (time cap): not reproducible")

    csamples = None
    csnap = None
    ref = None
    if corrections is not False:
        ref = (ft.get("snapshot") or {}).get("sha256") if corrections is None or corrections is True else corrections
        if ref:
            try:
                ts = training_set(ref, archive_file)
                csamples, csnap = ts.samples, ts.manifest_sha256
            except (SnapshotDataError, ValueError, OSError) as exc:
                warnings.append(f"corrections not evaluated: {exc}")

    recs: dict[str, dict[str, list[dict[str, Any]]]] = {"validation": {}, "corrections": {}}
    total = 2 * (len(vsamples) + len(csamples or []))
    done = 0
    for who, folder, meta in (("parent", parent_dir, pmeta), ("candidate", cand_dir, cmeta)):
        engine = None
        for set_name, samples in (("validation", vsamples), ("corrections", csamples)):
            if not samples:
                continue
            out = []
            for i in range(0, len(samples), 8):
                chunk = samples[i:i + 8]
                tag = (str(meta["weights_sha256"]), params.threads, str(params.device))
                if engine is None and any((*tag, s.key) not in _PREDICTIONS for s in chunk):
                    engine = Engine.from_package(folder, device=params.device, threads=params.threads)
                out.extend(_records(engine, chunk, str(meta["weights_sha256"]), params))
                done += len(chunk)
                say("predict", done, total, f"{who} {set_name}")
            recs[set_name][who] = out
        del engine
    say("bootstrap", 0, 1)
    vfig = paired_figures(recs["validation"]["parent"], recs["validation"]["candidate"],
                          n_boot=params.n_boot, seed=params.seed, rates=params.fp_rates)
    cfig = None
    if csamples and any(len(s.kinds) for s in csamples):
        cfig = paired_figures(recs["corrections"]["parent"], recs["corrections"]["candidate"],
                              n_boot=params.n_boot, seed=params.seed, rates=params.fp_rates)
    elif csamples:
        warnings.append("the corrections hold no lesion: only the validation set is gated")
    if vfig["n_lesions"] == 0:
        reasons.append("the validation set holds no lesion: the FROC cannot be measured")
    own_snapshot = (ft.get("snapshot") or {}).get("sha256")
    own = bool(csnap) and bool(own_snapshot) and str(ref) == str(own_snapshot)
    checks, w = gate_decision(vfig, cfig, params, own_corrections=own)
    warnings.extend(w)
    reasons.extend(c["message"] for c in checks if c["passed"] is False)
    say("bootstrap", 1, 1)

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "passed": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "candidate": {"version": cmeta.get("version"), "weights_sha256": cmeta.get("weights_sha256"),
                      "path": str(cand_dir), "parent_version": cmeta.get("parent_version")},
        "parent": {"version": pmeta.get("version"), "weights_sha256": pmeta.get("weights_sha256"),
                   "path": str(parent_dir)},
        "validation": {"snapshot": vman["sha256"], "name": vman.get("name", ""), "figures": vfig},
        "corrections": {"snapshot": csnap, "figures": cfig} if csnap else None,
        "checks": checks,
        "params": params.to_json(),
        "rule": "refused when any gated figure of the candidate is lower than the current model's by "
                "more than its tolerance (absolute, point estimates; per-kind figures also need the "
                "bootstrap 95 % interval of the difference below zero), or when it was trained on "
                "validation images; a candidate checked on its own training snapshot must also have "
                "learned it (the interval of its gain there above zero), unless the current model "
                "already reached 1 - learning_headroom there",
    }
    if out_dir is None:
        out_dir = archive_file.expanduser().resolve().parent / "validation" / str(cmeta.get("version"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pev = evaluate_predictions(recs["validation"]["parent"], params.fp_rates)
    cev = evaluate_predictions(recs["validation"]["candidate"], params.fp_rates)
    try:
        plots = write_comparison_plots(pev, cev, vfig, out_dir, str(pmeta.get("version")),
                                       str(cmeta.get("version")), cfig)
        report["plots"] = [str(p) for p in plots]
    except Exception as exc:  # noqa: BLE001 - plots are a convenience; the decision stands
        report["plots"] = []
        warnings.append(f"plots not written: {type(exc).__name__}: {exc}")
    report["operating_points"] = recalibrated_points(recs["validation"]["candidate"], vman["sha256"])
    report["report_path"] = str(out_dir / REPORT_NAME)
    from mammotriage.learning.registry import ModelRegistry

    with ModelRegistry(archive_file) as reg:  # kept in the store: only stored reports promote
        reg.record_report(report)
        (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
        reg.after_gate(report)  # the site policy may promote a shipped candidate that passed
    return report


def recalibrated_points(records: Sequence[dict[str, Any]], snapshot: str) -> dict[str, Any]:
    """The candidate's operating points measured on its validation predictions (stored
    with its gate report; the app uses those of the report that promoted it)."""
    from mammotriage.model.card import operating_points

    ops = operating_points(list(records))
    if ops:
        ops["source"] = f"validation gate predictions on the site's validation snapshot {snapshot[:12]}"
    return ops


def latest_report(archive_file: str | Path | None = None, version: str | None = None) -> dict[str, Any] | None:
    """The newest gate report under ``validation/`` beside the archive (of ``version``)."""
    from mammotriage.learning.snapshot_data import archive_or_default

    root = archive_or_default(archive_file).expanduser().resolve().parent / "validation"
    if not root.is_dir():
        return None
    paths = sorted(root.glob(f"{version}/{REPORT_NAME}" if version else f"*/{REPORT_NAME}"),
                   key=lambda p: p.stat().st_mtime)
    if not paths:
        return None
    report: dict[str, Any] = json.loads(paths[-1].read_text())
    return report


def report_text(report: dict[str, Any]) -> str:
    """Plain-text summary: both models' figures side by side, the decision, the reasons."""
    v = report["validation"]["figures"]
    lines = [f"candidate v{report['candidate']['version']} vs current v{report['parent']['version']}",
             f"validation snapshot {report['validation']['snapshot'][:12]}: {v['n_images']} images, "
             f"{v['n_abnormal']} abnormal, {v['n_lesions']} lesions {json.dumps(v['lesions_per_kind'])}",
             f"{'figure':<34}{'current':>18}{'candidate':>18}{'difference':>20}"]

    def row(name: str, figs: dict[str, Any], key: str) -> str:
        def cell(d: dict[str, Any]) -> str:
            if d["value"] is None:
                return "n/a"
            lo, hi = d["ci95"]
            return f"{d['value']:.3f}" + (f" [{lo:.2f},{hi:.2f}]" if lo is not None else "")
        return f"{name:<34}{cell(figs['parent'][key]):>18}{cell(figs['candidate'][key]):>18}{cell(figs['difference'][key]):>20}"

    for key in v["parent"]:
        lines.append(row(key, v, key))
    c = (report.get("corrections") or {}).get("figures")
    if c:
        lines.append(f"corrections snapshot {report['corrections']['snapshot'][:12]}: {c['n_images']} images, "
                     f"{c['n_lesions']} lesions")
        for key in c["parent"]:
            lines.append(row(key, c, key))
    lines.append("PASSED" if report["passed"] else "REFUSED")
    lines += [f"  reason: {r}" for r in report["reasons"]]
    lines += [f"  warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)
