"""A seed ensemble of one detector recipe, measured from its cross-validations.

Each work folder is one ``mammotriage train --kfold 4 --second-look --cv-only --work W``
run of the same recipe under another ``--seed`` on the same patient folds, so every dev
image has one out-of-fold prediction per run, each from a model that never saw its
patient. The ensemble's prediction of an image is the weighted box fusion of the runs'
marks (:func:`mammotriage.model.twostage.fuse_views`) and the mean of their image
scores. Printed, one figure per line, per stage: each run's and the ensemble's
sensitivity at 0.5 / 1 / 2 FP per image and image AUC, and the paired patient-level
bootstrap 95 % CI of ensemble minus each run at 1 FP/image (1,000 resamples).

An ensemble of k models costs k times the detection time per view. Marks of different
kinds are never fused, while the overall sensitivity counts a hit of either kind: a lesion
one run calls a mass and another a calcification cluster keeps two marks (one of them a
false positive), so the overall figure leans against the ensemble; the per-kind lines
count kinds as fused.

    python benchmarks/seed_ensemble.py --mias ../shared/data/mias/dev W_SEED0 W_SEED1 W_SEED2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.model.crossval import _records_from_json, paired_bootstrap
from mammotriage.model.data import read_mias
from mammotriage.model.evaluate import evaluate_predictions
from mammotriage.model.twostage import fuse_views

RATES = ("0.5", "1", "2")


def ensemble(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per image: the runs' marks fused, their image scores averaged."""
    out = []
    for same in zip(*runs, strict=True):
        if len({r["key"] for r in same}) != 1:
            raise ValueError("the runs list other images (or in another order)")
        boxes, scores, kinds = fuse_views([(r["boxes"], r["scores"], r.get("finding_kinds") or ["mass"] * len(r["scores"]))
                                           for r in same])
        first = same[0]
        out.append({**first, "boxes": boxes, "scores": scores, "finding_kinds": kinds,
                    "image_score": float(np.mean([float(r["image_score"]) for r in same]))})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="work folders of one recipe under different seeds")
    ap.add_argument("--mias", type=Path, required=True, help="the mini-MIAS dev folder (patients of the images)")
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        raise SystemExit("an ensemble needs at least two runs")
    group_of = {s.key: s.group for s in read_mias(args.mias)}
    saved = [json.loads((w / "second_look_records.json").read_text()) for w in args.runs]
    for stage in ("stage_one", "second_look"):
        keys = sorted(r["key"] for r in saved[0][stage])
        runs = []
        for w, data in zip(args.runs, saved, strict=True):
            by_key = {r["key"]: r for r in _records_from_json(data[stage])}
            if set(by_key) != set(keys):
                raise SystemExit(f"{w}: {stage} holds predictions of other images")
            runs.append([by_key[k] for k in keys])
        fused = ensemble(runs)
        groups = [group_of[k] for k in keys]
        me = evaluate_predictions(fused)
        for i, run in enumerate(runs):
            m = evaluate_predictions(run)
            print(f"{stage}_run{i}_sens@1 {m.froc['1']:.3f}")
            print(f"{stage}_run{i}_image_auc {m.image_auc:.3f}")
            lo, hi = paired_bootstrap(run, fused, groups, n=args.boot, rate="1")["sens_diff_ci"]
            print(f"{stage}_ensemble_minus_run{i}_sens@1_ci {lo:+.3f} {hi:+.3f}")
        for rate in RATES:
            print(f"{stage}_ensemble_sens@{rate} {me.froc[rate]:.3f}")
        print(f"{stage}_ensemble_image_auc {me.image_auc:.3f}")
        for kind in sorted(me.per_kind):
            print(f"{stage}_ensemble_{kind}_sens@1 {me.per_kind[kind]['sens@1']:.3f} of {int(me.per_kind[kind]['n'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
