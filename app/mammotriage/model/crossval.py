"""Patient-level k-fold cross-validation on a mini-MIAS folder (plus optional phantoms that
are added to every training fold, never to a validation fold)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammotriage.model.data import Sample, patient_folds
from mammotriage.model.evaluate import (
    _circles_from_boxes,
    evaluate_predictions,
    predict_samples,
    roc_auc,
)
from mammotriage.model.network import DEFAULT_CONFIG, NetworkConfig
from mammotriage.model.preprocess import DEFAULT_PARAMS, PreprocessParams
from mammotriage.model.train import TrainParams, prepare, train

if TYPE_CHECKING:
    from mammotriage.model.calc import CalcParams
    from mammotriage.model.twostage import SecondLook, ViewGeometry


def _records_json(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        out.append({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()})
    return out


def _records_from_json(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in items:
        r = dict(r)
        for k in ("circles", "boxes", "scores"):
            r[k] = np.asarray(r[k], dtype=np.float64)
        r["circles"] = r["circles"].reshape(-1, 3)
        r["boxes"] = r["boxes"].reshape(-1, 4)
        out.append(r)
    return out


def cross_validate(samples: list[Sample], k: int, out_dir: str | Path, hp: TrainParams,
                   extra_train: list[Sample] | None = None, config: NetworkConfig = DEFAULT_CONFIG,
                   pp: PreprocessParams = DEFAULT_PARAMS, folds: list[int] | None = None,
                   fold_seed: int = 0, stop_at: int | None = None) -> dict[str, Any]:
    """Train k models, each validated on the patients it never saw; pooled metrics.

    Each fold's held-out predictions go to ``out_dir/fold{i}/records.json`` (a finished
    fold is not trained again when re-run), the pooled metrics to ``out_dir/cv.json``.
    ``stop_at`` ends every fold's training after that many iterations (a fixed, cheaper
    budget on the same learning-rate schedule).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fold_of = patient_folds(samples, k, seed=fold_seed)
    extra_train = extra_train or []
    print(f"preparing {len(samples)} + {len(extra_train)} images", file=sys.stderr, flush=True)
    prepared = prepare(samples, pp)
    prepared_extra = prepare(extra_train, pp)
    all_records: list[dict[str, Any]] = []
    per_fold = []
    for f in range(k) if folds is None else folds:
        fold_dir = out_dir / f"fold{f}"
        rec_path = fold_dir / "records.json"
        val = [s for s, g in zip(samples, fold_of, strict=True) if g == f]
        if rec_path.exists():
            saved = json.loads(rec_path.read_text())
            records = _records_from_json(saved["records"])
            info = saved["info"]
        else:
            tr = [p for p, g in zip(prepared, fold_of, strict=True) if g != f] + prepared_extra
            t0 = time.monotonic()
            result = train([], fold_dir, replace(hp, seed=hp.seed + f), config, pp,
                           prepared=tr, progress=False, stop_at=stop_at)
            from mammotriage.model.infer import Engine

            engine = Engine(result.detector, config, pp, threads=hp.threads)
            records = predict_samples(engine, val)
            info = {"fold": f, "train_images": len(tr), "val_images": len(val),
                    "iterations": result.iterations, "total_iterations": result.total_iterations,
                    "finished": result.finished, "train_seconds": round(result.seconds, 1),
                    "seconds": round(time.monotonic() - t0, 1),
                    "images_per_second": round(result.images_per_second, 3)}
            fold_dir.mkdir(parents=True, exist_ok=True)
            rec_path.write_text(json.dumps({"info": info, "records": _records_json(records)}))
            # Keep the fold's network (second-stage training, test-time augmentation and
            # re-scoring need the model that never saw this fold); drop the optimiser state.
            import torch

            torch.save(result.detector.network.state_dict(), fold_dir / "network.pt")
            (fold_dir / "checkpoint.pt").unlink(missing_ok=True)
        m = evaluate_predictions(records)
        info = {**info, **m.to_json()}
        print(f"fold {f}: {json.dumps(info)}", file=sys.stderr, flush=True)
        per_fold.append(info)
        all_records.extend(records)
    pooled = evaluate_predictions(all_records)
    aucs = [p["image_auc"] for p in per_fold if p.get("image_auc") is not None]
    summary = {"k": k, "pooled": pooled.to_json(), "per_fold": per_fold,
               "fold_auc_mean": float(np.mean(aucs)) if aucs else None,
               "fold_auc_std": float(np.std(aucs)) if aucs else None,
               "hp": hp.to_json(), "config": config.to_json(), "preprocess": pp.to_json(),
               "n_extra_train": len(extra_train)}
    (out_dir / "cv.json").write_text(json.dumps(summary, indent=1))
    return {"summary": summary, "pooled": pooled, "records": all_records}


def pooled_auc(records: list[dict[str, Any]]) -> float:
    return roc_auc([int(r["abnormal"]) for r in records], [r["image_score"] for r in records])


# ------------------------------------------------------------------ the second look

def _partner_index(samples: list[Sample]) -> list[int | None]:
    """For each image, the other breast's image of the same patient (mini-MIAS: MLO only)."""
    by_group: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_group.setdefault(s.group, []).append(i)
    out: list[int | None] = []
    for i, s in enumerate(samples):
        others = [j for j in by_group[s.group] if j != i]
        out.append(others[0] if len(others) == 1 else None)
    return out


def calc_circles(s: Sample) -> np.ndarray:
    """(N, 3) x, y, r of a sample's calcification lesions (from its boxes without circles)."""
    sel = [k == "calcification" for k in s.kinds]
    circles = s.circles if s.circles is not None else _circles_from_boxes(s.boxes)
    return circles[sel] if len(sel) else np.zeros((0, 3))


def calc_example_cache(samples: list[Sample], phantoms: list[Sample], path: Path,
                       synthetic_per_normal: int = 2, seed: int = 7, *,
                       params: CalcParams | None = None,
                       progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Calcification-cluster examples of every image (real lesions, synthetic clusters in
    normal images, phantom clusters), computed once and kept in ``path`` (npz).

    ``params``: the speck and cluster parameters (default: the program's, as every
    package so far was fitted with); a cache made with other parameters is not reused.
    ``progress(done, total, key)`` is told after each image."""
    from mammotriage.model.calc import DEFAULT_CALC
    from mammotriage.model.twostage import calc_examples, synthetic_calc_examples

    params = params or DEFAULT_CALC
    stamp = None if params == DEFAULT_CALC else np.array(json.dumps(params.to_json(), sort_keys=True))
    keys = np.array([s.key for s in samples + phantoms])
    if path.exists():
        z = np.load(path, allow_pickle=False)
        same_params = (stamp is None and "calc_params" not in z.files) or \
            (stamp is not None and "calc_params" in z.files and str(z["calc_params"]) == str(stamp))
        if "keys" in z.files and np.array_equal(z["keys"], keys) and same_params:
            return {k: z[k] for k in z.files}
    out: dict[str, np.ndarray] = {"keys": keys}
    if stamp is not None:
        out["calc_params"] = stamp
    for i, s in enumerate(samples + phantoms):
        d = s.load()
        X, y, cl = calc_examples(d, s.spacing_mm or 0.2, calc_circles(s), params)
        out[f"{i}.X"], out[f"{i}.y"] = X, y
        out[f"{i}.boxes"] = np.array([c.box for c in cl]).reshape(-1, 4)
        if i < len(samples) and not s.abnormal and synthetic_per_normal:
            Xs, ys = synthetic_calc_examples(d, s.spacing_mm or 0.2, np.random.default_rng([seed, i]),
                                             n=synthetic_per_normal, params=params)
            out[f"{i}.Xs"], out[f"{i}.ys"] = Xs, ys
        if progress is not None:
            progress(i + 1, len(samples) + len(phantoms), s.key)
        if (i + 1) % 25 == 0:
            print(f"calcification examples: {i + 1}/{len(samples) + len(phantoms)} images",
                  file=sys.stderr, flush=True)
    # numpy types **kwds as if a key could be allow_pickle; every key here is "<i>.<name>"
    # written beside and renamed into place: a run that reads the cache while another
    # writes it sees the old file or the new one, never half of one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(tmp, **out)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _calc_training(cache: dict[str, Any], idx: list[int], phantom_idx: list[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Cluster training rows of images ``idx`` (+ phantoms), and the positive rate among the
    clusters found on the real images of ``idx`` alone (what the trees will meet)."""
    Xs, ys, real = [], [], []
    for i in idx + phantom_idx:
        for xk, yk in ((f"{i}.X", f"{i}.y"), (f"{i}.Xs", f"{i}.ys")):
            if xk in cache and len(cache[yk]):
                Xs.append(cache[xk])
                ys.append(cache[yk])
        if i not in phantom_idx and f"{i}.y" in cache:
            real.append(cache[f"{i}.y"])
    real_y = np.concatenate(real) if real else np.zeros(0)
    # One pseudo-count each way keeps the rate finite when the folds hold no real cluster.
    rate = (float(real_y.sum()) + 1.0) / (len(real_y) + 2.0)
    return np.concatenate(Xs), np.concatenate(ys), rate


def merge_calc_caches(parts: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[list[int]]]:
    """One example cache of several (:func:`calc_example_cache`), images renumbered in
    order, and each part's image indices in the merged cache."""
    out: dict[str, Any] = {}
    keys, index, start = [], [], 0
    for part in parts:
        n = len(part["keys"])
        keys.append(np.asarray(part["keys"]))
        for name, v in part.items():
            head, sep, tail = name.partition(".")
            if sep and head.isdigit():
                out[f"{int(head) + start}.{tail}"] = v
        index.append(list(range(start, start + n)))
        start += n
    out["keys"] = np.concatenate(keys) if keys else np.array([], dtype=str)
    return out, index


def calc_row_counts(cache: dict[str, Any], idx: Sequence[int]) -> dict[str, int]:
    """What images ``idx`` of an example cache give the cluster trees: cluster candidates
    found on the images and how many hit a labelled calcification, and the simulated
    clusters' candidates and hits."""
    cand = pos = syn = syn_pos = 0
    for i in idx:
        if f"{i}.y" in cache:
            cand += len(cache[f"{i}.y"])
            pos += int(np.sum(cache[f"{i}.y"]))
        if f"{i}.ys" in cache:
            syn += len(cache[f"{i}.ys"])
            syn_pos += int(np.sum(cache[f"{i}.ys"]))
    return {"images": len(idx), "candidates": cand, "labelled_cluster_hits": pos,
            "synthetic_candidates": syn, "synthetic_cluster_hits": syn_pos}


#: Tree and example settings of :func:`second_look_cv` and ``train --second-look``
#: (``--calc-phantoms``' default): what a refit uses for a package whose metadata does
#: not name its own (``hyper_parameters.second_look.trees``).
SECOND_LOOK_TREES: dict[str, Any] = {"n_estimators": 150, "max_depth": 3, "learning_rate": 0.05, "seed": 0,
                                     "synthetic_per_normal": 2, "synthetic_seed": 7,
                                     "calc_phantom_exams": 24, "calc_prior_shift": True}


def fit_second_look(cache: dict[str, Any], idx: list[int], phantom_idx: list[int], *,
                    stage2: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
                    calc_prior_shift: bool = True, trees: dict[str, Any] | None = None,
                    like: SecondLook | None = None,
                    stage1_platt: tuple[float, float] | None = None) -> SecondLook:
    """The second look fitted on the cluster rows of images ``idx`` (+ phantoms) and, with
    ``stage2`` (rows, labels), stage two; the cluster trees' prior shift goes to the rate
    of labelled clusters among the real images' candidates (:func:`_calc_training`).
    ``trees``: ``n_estimators``, ``max_depth``, ``learning_rate`` (default: :func:`fit_trees`');
    ``like``: a second look whose fixed settings (speck parameters, suppression, top-k)
    the result keeps (and its stage-one calibration, unless ``stage1_platt`` gives one);
    ``stage1_platt``: (a, b) mapping RetinaNet scores to probabilities when there is no
    stage two (:func:`stage_one_calibration`)."""
    from mammotriage.model.calc import fit_trees, prior_shift
    from mammotriage.model.twostage import SecondLook

    kw = {k: (trees or {})[k] for k in ("n_estimators", "max_depth", "learning_rate") if k in (trees or {})}
    Xc, yc, real_rate = _calc_training(cache, idx, phantom_idx)
    calc = fit_trees(Xc, yc, seed=seed, **kw)
    st2 = fit_trees(stage2[0], stage2[1], seed=seed, **kw) if stage2 is not None else None
    offset = prior_shift(float(np.mean(yc)), real_rate) if calc_prior_shift else 0.0
    # stage two replaces the stage-one scores; without it a refit keeps the parent's map
    platt = None if st2 is not None else stage1_platt or (like.stage1_platt if like is not None else None)
    if like is None:
        return SecondLook(calc, st2, calc_offset=offset, stage1_platt=platt)
    return SecondLook(calc, st2, like.calc_params, top_k=like.top_k, iou=like.iou, contain=like.contain,
                      min_score=like.min_score, max_findings=like.max_findings, calc_offset=offset,
                      stage1_platt=platt)


def candidate_labels(record: dict[str, Any], kind_labels: bool = True) -> np.ndarray:
    """1 for each of a record's candidate boxes that hits a lesion (of its own kind)."""
    from mammotriage.model.twostage import hits

    h = hits(record["boxes"], record["circles"])
    if kind_labels and len(record.get("kinds", [])) and h.size:
        same = np.array([[fk == lk for lk in record["kinds"]] for fk in record["finding_kinds"]]).reshape(h.shape)
        h = h & same
    return h.any(axis=1).astype(int) if h.size else np.zeros(len(np.asarray(record["scores"]).reshape(-1)), int)


def stage_one_calibration(records: Sequence[dict[str, Any]], idx: Sequence[int]) -> tuple[float, float]:
    """Platt scaling (a, b) of the RetinaNet scores of images ``idx``' out-of-fold
    candidates, labelled by a hit of the candidate's own kind: the stage-one score becomes
    the probability that a candidate is a lesion, on the scale of the cluster trees'
    (prior-shifted) probabilities, so one threshold ranks both kinds of mark by how likely
    they are to be right."""
    from mammotriage.model.twostage import fit_platt

    scores = [np.asarray(records[i]["scores"], np.float64).reshape(-1) for i in idx]
    labels = [candidate_labels(records[i]) for i in idx]
    return fit_platt(np.concatenate(scores) if scores else np.zeros(0),
                     np.concatenate(labels) if labels else np.zeros(0))


def _stage2_rows(samples: list[Sample], records: Sequence[dict[str, Any]], geoms: Sequence[ViewGeometry],
                 partner: Sequence[int | None], idx: Sequence[int], kind_labels: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    from mammotriage.model.twostage import stage2_features

    Xs, ys = [], []
    for i in idx:
        r = records[i]
        if not len(r["scores"]):
            continue
        j = partner[i]
        X = stage2_features(r["boxes"], r["scores"], r["finding_kinds"], geoms[i],
                            geoms[j] if j is not None else None,
                            records[j]["boxes"] if j is not None else None,
                            records[j]["scores"] if j is not None else None)
        Xs.append(X)
        ys.append(candidate_labels(r, kind_labels))
    return np.concatenate(Xs), np.concatenate(ys)


def second_look_cv(samples: list[Sample], cv_dir: str | Path, k: int, phantoms: list[Sample] | None = None,
                   fold_seed: int = 0, seed: int = 0, calc_prior_shift: bool = True,
                   stage_two: bool = True, calibrate_stage_one: bool = False,
                   trees: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cross-validate the second look on the folds of a finished stage-one CV in ``cv_dir``.

    For fold f the calcification trees learn from the clusters of the other folds' images
    (their real calcifications, simulated clusters inserted into their normal images,
    and phantom clusters) and stage two from the other folds' out-of-fold RetinaNet
    candidates (unless ``stage_two`` is False: the candidates then keep their RetinaNet
    scores, or with ``calibrate_stage_one`` those scores mapped to probabilities by
    :func:`stage_one_calibration` of the other folds' candidates); both are applied to
    fold f.  ``trees``: tree settings of :func:`fit_second_look`.  Returns the stage-one and second-look
    records (same images, same folds), the final :class:`SecondLook` fitted on all
    folds, and the pooled metrics of both.
    """
    from mammotriage.model.twostage import ViewCandidates, ViewGeometry, noisy_or

    cv_dir = Path(cv_dir)
    phantoms = phantoms or []
    fold_of = patient_folds(samples, k, seed=fold_seed)
    key_index = {s.key: i for i, s in enumerate(samples)}
    found_records: list[dict[str, Any] | None] = [None] * len(samples)
    for f in range(k):
        saved = json.loads((cv_dir / f"fold{f}" / "records.json").read_text())
        for r in _records_from_json(saved["records"]):
            found_records[key_index[r["key"]]] = r
    records = [r for r in found_records if r is not None]
    if len(records) != len(samples):
        raise RuntimeError(f"{cv_dir}: stage-one cross-validation is not complete")
    for r in records:
        r["scores"] = r["scores"].reshape(-1)
    print("second look: breast geometry of every image", file=sys.stderr, flush=True)
    geoms = [ViewGeometry.of(s.load(), s.spacing_mm or 0.2, s.chest_wall) for s in samples]
    partner = _partner_index(samples)
    cache = calc_example_cache(samples, phantoms, cv_dir / "calc_examples.npz")
    phantom_idx = list(range(len(samples), len(samples) + len(phantoms)))

    def fit(train_idx: list[int]) -> SecondLook:
        st2 = _stage2_rows(samples, records, geoms, partner, train_idx) if stage_two else None
        platt = stage_one_calibration(records, train_idx) if calibrate_stage_one and not stage_two else None
        return fit_second_look(cache, train_idx, phantom_idx, stage2=st2, seed=seed,
                               calc_prior_shift=calc_prior_shift, trees=trees, stage1_platt=platt)

    new_records: list[dict[str, Any] | None] = [None] * len(samples)
    for f in range(k):
        tr = [i for i in range(len(samples)) if fold_of[i] != f]
        va = [i for i in range(len(samples)) if fold_of[i] == f]
        sl = fit(tr)
        if sl.calc is None:
            raise RuntimeError("the fitted second look has no calcification trees")
        for i in va:
            r = records[i]
            j = partner[i]
            cand = ViewCandidates(r["boxes"], r["scores"], list(r["finding_kinds"]))
            other = None if j is None else ViewCandidates(records[j]["boxes"], records[j]["scores"],
                                                          list(records[j]["finding_kinds"]))
            s2 = sl.rescore(cand, geoms[i], geoms[j] if j is not None else None, other)
            cb = cache[f"{i}.boxes"]
            cp = sl.calc_proba(cache[f"{i}.X"]) if len(cb) else np.zeros(0)
            found = sl.combine(np.concatenate([r["boxes"].reshape(-1, 4), cb.reshape(-1, 4)]),
                               np.concatenate([s2, cp]), list(r["finding_kinds"]) + ["calcification"] * len(cp))
            new_records[i] = {**r, "boxes": np.array([x.box for x in found]).reshape(-1, 4),
                              "scores": np.array([x.score for x in found]),
                              "finding_kinds": [x.kind for x in found],
                              "image_score": noisy_or([x.score for x in found], sl.top_k)}
        print(f"second look: fold {f} done", file=sys.stderr, flush=True)
    final = fit(list(range(len(samples))))
    rescored = [r for r in new_records if r is not None]
    if len(rescored) != len(samples):
        raise RuntimeError("the folds do not cover every image")
    old_m = evaluate_predictions(records)
    new_m = evaluate_predictions(rescored)
    return {"stage_one": records, "second_look": rescored, "final": final, "fold_of": fold_of,
            "metrics": {"stage_one": old_m.to_json(), "second_look": new_m.to_json()}}


#: Training sets of :func:`calc_path_cv`: which rows the cluster trees learn from besides
#: the training folds' real cluster candidates (labelled calcifications and hard negatives).
CALC_TRAINING_SETS: dict[str, tuple[bool, bool]] = {
    # name: (simulated clusters in the normal training images, phantom clusters)
    "all": (True, True),
    "no_synthetic": (False, True),
    "no_phantoms": (True, False),
    "real_only": (False, False),
}


def calc_path_cv(samples: list[Sample], cache: dict[str, Any], k: int, n_phantoms: int, *,
                 fold_seed: int = 0, seed: int = 0, training: str = "all",
                 trees: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The calcification path alone, cross-validated on the stage-one CV's patient folds.

    For fold f the cluster trees learn from the other folds' images (and, per
    ``training`` (:data:`CALC_TRAINING_SETS`), the simulated clusters of their normal images
    and the phantom clusters, the last ``n_phantoms`` images of ``cache``) and score fold
    f's cluster candidates; containment-aware suppression as in the second look. No
    network is involved, so this costs seconds once ``cache``
    (:func:`calc_example_cache`) exists. One record per image (the order of ``samples``)
    holding only calcification marks and only the calcification lesions as ground truth
    (``abnormal``: the image holds one), so :func:`evaluate_predictions` gives the path's
    own FROC (false positives per image over every image) and its image AUC for "holds a
    calcification cluster"."""
    from mammotriage.model.twostage import noisy_or

    if training not in CALC_TRAINING_SETS:
        raise ValueError(f"unknown training set {training!r}: one of {', '.join(CALC_TRAINING_SETS)}")
    if len(cache["keys"]) != len(samples) + n_phantoms or \
            list(cache["keys"][: len(samples)]) != [s.key for s in samples]:
        raise ValueError("the example cache holds other images than these samples (+ phantoms)")
    synthetic, phantoms = CALC_TRAINING_SETS[training]
    use = cache if synthetic else {n: v for n, v in cache.items() if not n.endswith((".Xs", ".ys"))}
    phantom_idx = list(range(len(samples), len(samples) + n_phantoms)) if phantoms else []
    fold_of = patient_folds(samples, k, seed=fold_seed)
    out: list[dict[str, Any] | None] = [None] * len(samples)
    for f in range(k):
        tr = [i for i in range(len(samples)) if fold_of[i] != f]
        sl = fit_second_look(use, tr, phantom_idx, seed=seed, trees=trees)
        for i in (i for i in range(len(samples)) if fold_of[i] == f):
            s = samples[i]
            boxes = np.asarray(cache[f"{i}.boxes"], np.float64).reshape(-1, 4)
            probs = sl.calc_proba(cache[f"{i}.X"]) if len(boxes) else np.zeros(0)
            found = sl.combine(boxes, probs, ["calcification"] * len(probs))
            circles = calc_circles(s)
            out[i] = {"key": s.key, "abnormal": bool(len(circles)), "circles": circles,
                      "kinds": ["calcification"] * len(circles),
                      "boxes": np.array([x.box for x in found], np.float64).reshape(-1, 4),
                      "scores": np.array([x.score for x in found], np.float64),
                      "finding_kinds": [x.kind for x in found],
                      "image_score": noisy_or([x.score for x in found], sl.top_k)}
    return [r for r in out if r is not None]


def paired_bootstrap(a: list[dict[str, Any]], b: list[dict[str, Any]], groups: list[str], n: int = 1000, seed: int = 0,
                     rate: str = "1") -> dict[str, Any]:
    """Patient-level bootstrap of sensitivity at ``rate`` FP/image and image AUC for two
    sets of records over the same images: each value with its 95 % CI, and the CI of b - a.

    Each image is matched once (the hit rule of :func:`evaluate_predictions`); a resample
    pools the matched images of the patients drawn."""
    from mammotriage.model.evaluate import match_image, roc_auc, sensitivity_at

    def matched(records: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [match_image(r["boxes"], r["scores"], r["circles"]) for r in records]

    ma, mb = matched(a), matched(b)
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in names}
    labels = np.array([int(r["abnormal"]) for r in a])
    score_a = np.array([float(r["image_score"]) for r in a])
    score_b = np.array([float(r["image_score"]) for r in b])
    rate_f = float(rate)
    sa: list[float] = []
    sb: list[float] = []
    aa: list[float] = []
    ab: list[float] = []
    for _ in range(n):
        pick = rng.choice(len(names), size=len(names), replace=True)
        idx = [i for p in pick for i in members[names[p]]]
        for m, out in ((ma, sa), (mb, sb)):
            fp = np.concatenate([m[i][0] for i in idx])
            les = np.concatenate([m[i][1] for i in idx])
            out.append(sensitivity_at(fp, les, len(idx), rate_f) if len(les) else float("nan"))
        aa.append(roc_auc(labels[idx], score_a[idx]))
        ab.append(roc_auc(labels[idx], score_b[idx]))

    def ci(v: Sequence[float] | np.ndarray) -> list[float]:
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]
        return [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]

    return {"n": n, "rate": rate, "sens_a_ci": ci(sa), "sens_b_ci": ci(sb),
            "sens_diff_ci": ci(np.array(sb) - np.array(sa)), "auc_a_ci": ci(aa), "auc_b_ci": ci(ab),
            "auc_diff_ci": ci(np.array(ab) - np.array(aa))}


MIN_SEEDS = 3


def seeded_bootstrap(runs_a: Sequence[list[dict[str, Any]]], runs_b: Sequence[list[dict[str, Any]]],
                     groups: list[str], n: int = 1000, seed: int = 0, rate: str = "1",
                     min_seeds: int = MIN_SEEDS) -> dict[str, Any]:
    """Two recipes compared over several training seeds each (every run a full
    cross-validation on the same folds and images, in the same order).

    One training run per recipe cannot tell a recipe from a lucky seed: the patient
    bootstrap of :func:`paired_bootstrap` resamples patients, not training runs, and a
    change of seed alone moves sensitivity at 1 FP/image by about 0.1 on mini-MIAS. Here
    each resample draws the patients with replacement and, for each recipe, as many of
    its runs as it has, with replacement; a recipe's figure is the mean over the runs
    drawn. "B beats A" means at least ``min_seeds`` runs of each recipe and the 95 % CI
    of the difference of means (B - A) at ``rate`` FP/image lying above 0. With three
    runs the seed draw spreads a little less than the runs do (by (k-1)/k), which is
    why fewer are not judged at all."""
    from mammotriage.model.evaluate import match_image, roc_auc, sensitivity_at

    if not runs_a or not runs_b:
        raise ValueError("each recipe needs at least one run")
    keys = [r["key"] for r in runs_a[0]]
    for run in [*runs_a, *runs_b]:
        if [r["key"] for r in run] != keys:
            raise ValueError("the runs hold predictions of different images (or in another order)")
    if len(groups) != len(keys):
        raise ValueError("one patient per image is needed")
    matched = [[[match_image(r["boxes"], r["scores"], r["circles"]) for r in run] for run in runs]
               for runs in (runs_a, runs_b)]
    scores = [[np.array([float(r["image_score"]) for r in run]) for run in runs] for runs in (runs_a, runs_b)]
    labels = np.array([int(r["abnormal"]) for r in runs_a[0]])
    names = sorted(set(groups))
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in names}
    rate_f = float(rate)

    def sens(m: list[tuple[np.ndarray, np.ndarray]], idx: list[int]) -> float:
        les = np.concatenate([m[i][1] for i in idx])
        if not len(les):
            return float("nan")
        return sensitivity_at(np.concatenate([m[i][0] for i in idx]), les, len(idx), rate_f)

    every = list(range(len(keys)))
    per_run = [[round(sens(m, every), 4) for m in matched[j]] for j in (0, 1)]
    auc_run = [[round(roc_auc(labels, s), 4) for s in scores[j]] for j in (0, 1)]
    rng = np.random.default_rng(seed)
    diffs: list[float] = []
    auc_diffs: list[float] = []
    for _ in range(n):
        pick = rng.choice(len(names), size=len(names), replace=True)
        idx = [i for p in pick for i in members[names[p]]]
        mean_s, mean_a = [], []
        for j in (0, 1):
            drawn = rng.choice(len(matched[j]), size=len(matched[j]), replace=True)
            mean_s.append(float(np.mean([sens(matched[j][k], idx) for k in drawn])))
            mean_a.append(float(np.mean([roc_auc(labels[idx], scores[j][k][idx]) for k in drawn])))
        diffs.append(mean_s[1] - mean_s[0])
        auc_diffs.append(mean_a[1] - mean_a[0])

    def ci(v: list[float]) -> list[float] | None:
        x = np.asarray(v, float)
        x = x[np.isfinite(x)]
        if not len(x):  # e.g. an AUC without normal images
            return None
        return [round(float(np.percentile(x, 2.5)), 4), round(float(np.percentile(x, 97.5)), 4)]

    sens_ci = ci(diffs)
    if sens_ci is None:
        raise ValueError("no lesions to compare")
    lo, hi = sens_ci
    enough = min(len(runs_a), len(runs_b)) >= min_seeds
    if not enough:
        verdict, reason = None, (f"not judged: {len(runs_a)} and {len(runs_b)} run(s); "
                                 f"at least {min_seeds} seeds per recipe are needed")
    elif lo > 0:
        verdict, reason = True, f"B beats A: the CI of the difference at {rate} FP/image lies above 0"
    else:
        verdict, reason = False, f"B does not beat A: the CI of the difference at {rate} FP/image reaches {lo:+.3f}"
    return {"n": n, "rate": rate, "runs": [len(runs_a), len(runs_b)],
            "sens_a_runs": per_run[0], "sens_b_runs": per_run[1],
            "sens_a": round(float(np.mean(per_run[0])), 4), "sens_b": round(float(np.mean(per_run[1])), 4),
            "auc_a_runs": auc_run[0], "auc_b_runs": auc_run[1],
            "sens_diff_ci": [lo, hi], "auc_diff_ci": ci(auc_diffs), "beats": verdict, "reason": reason}
