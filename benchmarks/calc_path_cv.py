"""The calcification-cluster path alone, cross-validated on the detector's patient folds.

No network is trained: the cluster candidates and their features of every dev image (and
of the phantom exams) are computed once (``calc_examples.npz`` in ``--work``, the same
file a ``mammotriage train --second-look`` work folder keeps under ``cv/``), then for
each fold the cluster trees learn from the other folds and score the fold
(:func:`mammotriage.model.crossval.calc_path_cv`). So the weakest part of the detector
(calcification clusters, 14 located in mini-MIAS dev) can be measured under several tree
seeds and training sets in minutes, where one network cross-validation costs 45-80 min
of a core.

Printed, one figure per line, for each training set (``--training``; default all of
:data:`mammotriage.model.crossval.CALC_TRAINING_SETS`) and tree seed: sensitivity for
calcification clusters at 0.125 / 0.25 / 0.5 / 1 / 2 / 4 *calcification* false positives
per image (over every dev image; a second mark on a hit cluster is a false positive) and
the image AUC for "holds a calcification cluster"; then the mean over the seeds, the
candidate recall (clusters with any candidate), and each training set against ``all``
by the seeded patient-and-run bootstrap
(:func:`mammotriage.model.crossval.seeded_bootstrap`) at 0.25 and 1 FP/image. In the
whole detector the mass marks share the false-positive budget, so these sensitivities are
an upper bound of what the calcification path adds there.

    python benchmarks/calc_path_cv.py --mias ../shared/data/mias/dev --work W --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mammotriage.model.crossval import (
    CALC_TRAINING_SETS,
    calc_circles,
    calc_example_cache,
    calc_path_cv,
    seeded_bootstrap,
)
from mammotriage.model.data import phantom_samples, read_mias
from mammotriage.model.evaluate import evaluate_predictions, match_image

RATES = ("0.125", "0.25", "0.5", "1", "2", "4")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mias", type=Path, required=True, help="the mini-MIAS dev folder")
    ap.add_argument("--work", type=Path, required=True, help="folder for the example cache (outside the repo)")
    ap.add_argument("--kfold", type=int, default=4)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--phantoms", type=int, default=60, help="phantom exams of the training run (train --phantoms)")
    ap.add_argument("--phantom-seed", type=int, default=1000)
    ap.add_argument("--calc-phantoms", type=int, default=24, help="of them, exams whose clusters the trees use")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="tree seeds (subsampling)")
    ap.add_argument("--training", nargs="+", default=list(CALC_TRAINING_SETS), choices=list(CALC_TRAINING_SETS))
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args(argv)
    real = read_mias(args.mias)
    if not real:
        raise SystemExit(f"no labelled images in {args.mias}")
    # the first --calc-phantoms exams of the training run's phantoms (exam n depends only on n and the seed)
    phantoms = phantom_samples(min(args.phantoms, args.calc_phantoms), args.phantom_seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cache = calc_example_cache(real, phantoms, args.work / "calc_examples.npz")
    print(f"cache_seconds {time.perf_counter() - t0:.1f}")
    groups = [s.group for s in real]

    runs: dict[str, list[list[dict]]] = {}
    for training in args.training:
        runs[training] = []
        per_rate: dict[str, list[float]] = {r: [] for r in RATES}
        aucs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            recs = calc_path_cv(real, cache, args.kfold, len(phantoms), fold_seed=args.fold_seed, seed=seed,
                                training=training)
            m = evaluate_predictions(recs)
            runs[training].append(recs)
            for r in RATES:
                per_rate[r].append(m.froc[r])
            aucs.append(m.image_auc)
            figs = " ".join(f"{m.froc[r]:.3f}" for r in RATES)
            print(f"calc_{training}_seed{seed}_sens@{'/'.join(RATES)} {figs} "
                  f"(of {m.n_lesions}; {time.perf_counter() - t0:.1f} s)")
            print(f"calc_{training}_seed{seed}_image_auc {m.image_auc:.3f}")
        for r in RATES:
            print(f"calc_{training}_sens@{r}_mean {np.mean(per_rate[r]):.3f}")
        print(f"calc_{training}_image_auc_mean {np.mean(aucs):.3f}")

    # candidate recall: clusters that any candidate hits (the trees' ceiling)
    any_hit = total = 0
    for i, s in enumerate(real):
        circles = calc_circles(s)
        if not len(circles):
            continue
        boxes = np.asarray(cache[f"{i}.boxes"]).reshape(-1, 4)
        _fp, les = match_image(boxes, np.ones(len(boxes)), circles)
        any_hit += int(np.sum(les > 0))
        total += len(circles)
    print(f"calc_candidate_recall {any_hit} of {total}")

    if "all" in runs:
        for training, rs in runs.items():
            if training == "all":
                continue
            for rate in ("0.25", "1"):
                out = seeded_bootstrap(runs["all"], rs, groups, n=args.boot, rate=rate)
                lo, hi = out["sens_diff_ci"]
                print(f"calc_{training}_minus_all_sens@{rate}_diff_ci {lo:+.3f} {hi:+.3f}")
                if rate == "1":
                    verdict = {True: "yes", False: "no", None: "not judged"}[out["beats"]]
                    print(f"calc_{training}_beats_all {verdict}")
    print("done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
