"""How the second look merges RetinaNet's marks with the calcification clusters, measured
on finished network cross-validations (no network is trained here).

Each work folder is what ``mammotriage train --kfold 4 --second-look --no-stage-two
--cv-only --work W`` leaves (``W/cv/fold<f>/records.json``: every dev image's out-of-fold
RetinaNet candidates; ``W/cv/calc_examples.npz``: the cluster candidates). For every
folder and tree seed the second look is cross-validated twice on the same folds
(:func:`mammotriage.model.crossval.second_look_cv`): A keeps the RetinaNet scores (the
shipped v0.3.0 rule), B maps them to the probability that a candidate is a lesion by
Platt scaling on the other folds' candidates (``train --calibrate-stage-one``), so that
one threshold ranks masses and clusters by how likely each mark is right. The network's
own training noise is shared by A and B (same folds, same network runs).

Printed, one figure per line: each run's sensitivity at 0.5 / 1 / 2 FP/image (all lesions,
masses, calcification clusters) and image AUC for A and B, then the mean over runs and
the seeded patient-and-run bootstrap CI of B - A (:func:`seeded_bootstrap`, verdict
from 3 runs).

    python benchmarks/second_look_merge.py --mias ../shared/data/mias/dev W_SEED0 W_SEED1 --tree-seeds 0 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.model.crossval import second_look_cv, seeded_bootstrap
from mammotriage.model.data import phantom_samples, read_mias
from mammotriage.model.evaluate import evaluate_predictions

RATES = ("0.5", "1", "2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("works", type=Path, nargs="+", help="work folders of finished network cross-validations")
    ap.add_argument("--mias", type=Path, required=True, help="the mini-MIAS dev folder")
    ap.add_argument("--kfold", type=int, default=4)
    ap.add_argument("--phantoms", type=int, default=60, help="phantom exams of the training run (train --phantoms)")
    ap.add_argument("--phantom-seed", type=int, default=1000)
    ap.add_argument("--calc-phantoms", type=int, default=24)
    ap.add_argument("--tree-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args(argv)
    real = read_mias(args.mias)
    # the first --calc-phantoms exams of the training run's phantoms (exam n depends only on n and the seed)
    phantoms = phantom_samples(min(args.phantoms, args.calc_phantoms), args.phantom_seed)
    groups = [s.group for s in real]
    arms: dict[str, list[list[dict[str, Any]]]] = {"a": [], "b": []}
    for work in args.works:
        for seed in args.tree_seeds:
            for arm, calibrate in (("a", False), ("b", True)):
                t0 = time.perf_counter()
                out = second_look_cv(real, work / "cv", args.kfold, phantoms=phantoms, seed=seed,
                                     stage_two=False, calibrate_stage_one=calibrate)
                recs = out["second_look"]
                arms[arm].append(recs)
                m = evaluate_predictions(recs)
                tag = f"{work.name}_tree{seed}_{arm}"
                print(f"{tag}_sens@{'/'.join(RATES)} " + " ".join(f"{m.froc[r]:.3f}" for r in RATES)
                      + f" ({time.perf_counter() - t0:.0f} s)")
                for kind in sorted(m.per_kind):
                    pk = m.per_kind[kind]
                    print(f"{tag}_{kind}_sens@{'/'.join(RATES)} "
                          + " ".join(f"{pk['sens@' + r]:.3f}" for r in RATES) + f" of {int(pk['n'])}")
                print(f"{tag}_image_auc {m.image_auc:.3f}")
                if calibrate:
                    a, b = out["final"].stage1_platt
                    print(f"{tag}_platt_a_b {a:.3f} {b:.3f}")
    for rate in RATES:
        res = seeded_bootstrap(arms["a"], arms["b"], groups, n=args.boot, rate=rate)
        print(f"merge_sens@{rate}_a {res['sens_a']:.3f}")
        print(f"merge_sens@{rate}_b {res['sens_b']:.3f}")
        lo, hi = res["sens_diff_ci"]
        print(f"merge_sens@{rate}_diff_ci {lo:+.3f} {hi:+.3f}")
        if rate == "1":
            print(f"merge_b_beats_a {({True: 'yes', False: 'no', None: 'not judged'})[res['beats']]}")
            print(f"merge_rule {res['reason']}")
            if res["auc_diff_ci"] is not None:
                print(f"merge_image_auc_a {np.mean(res['auc_a_runs']):.3f}")
                print(f"merge_image_auc_b {np.mean(res['auc_b_runs']):.3f}")
                lo, hi = res["auc_diff_ci"]
                print(f"merge_image_auc_diff_ci {lo:+.3f} {hi:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
