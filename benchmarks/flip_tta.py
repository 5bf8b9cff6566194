"""Flip test-time augmentation of the stage-one network, measured on a finished cross-validation.

The canvas keeps the chest wall on the left, so the flip the network was trained with is
the vertical one (``TrainParams.aug_vflip``: half the training patches upside down); a
left-right flip would show it a chest wall on the right, which it never saw. For every
fold of ``WORK`` (what ``mammotriage train --kfold 4 --cv-only --work WORK`` leaves: each
fold's ``network.pt`` and held-out images) each held-out view is predicted twice, as it
is and with its canvas content flipped top to bottom (the marks flipped back), and the
two passes' marks are fused (:func:`mammotriage.model.twostage.fuse_views`: a mark only
one pass makes keeps half its score); the image score is the best fused mark's, as the
engine scores a view.

Printed, one figure per line: sensitivity at 0.5 / 1 / 2 FP per image and image AUC as
it is and with the flip, the paired patient-level bootstrap 95 % CI of the difference at
1 FP/image (1,000 resamples), and the seconds per view of each. ``--out OUT`` also writes
the fused marks as ``OUT/cv/fold<f>/records.json`` (with the calcification cache when
WORK has one), so the second look can be cross-validated on them with the same command
as on WORK (``train ... --second-look --no-stage-two --cv-only --work OUT``: the folds are
read, not trained) and compared with ``benchmarks/compare_recipes.py WORK OUT``:

    python benchmarks/flip_tta.py --mias ../shared/data/mias/dev WORK --out WORK_FLIP
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammotriage.model.crossval import _records_json, paired_bootstrap, patient_folds
from mammotriage.model.data import read_mias
from mammotriage.model.evaluate import evaluate_predictions, sample_record
from mammotriage.model.infer import Engine
from mammotriage.model.network import NetworkConfig, build_detector
from mammotriage.model.preprocess import PreprocessParams, preprocess_display
from mammotriage.model.twostage import fuse_views

RATES = ("0.5", "1", "2")


def _record(s: Any, boxes: np.ndarray, scores: np.ndarray, kinds: list[str]) -> dict[str, Any]:
    """The view's record; its image score the best mark's, as the engine scores a view."""
    return sample_record(s, boxes, scores, kinds, float(np.max(scores)) if len(scores) else 0.0)


def flip_view(engine: Engine, display: np.ndarray, chest_wall: str | None) -> tuple[tuple, tuple, float, float]:
    """(boxes, scores, kinds) of one view as it is and with the flip fused; seconds of each."""
    t0 = time.perf_counter()
    c = preprocess_display(display, engine.params, chest_wall)
    boxes, labels, scores, m = engine.predict_canvases([c])[0]
    plain = engine._to_stored(c, boxes, labels, scores, m, 512)
    t1 = time.perf_counter()
    rows = c.transform.content[0]
    image = c.image.copy()
    image[:rows] = c.image[:rows][::-1]
    fb, fl, fs, fm = engine.predict_canvases([replace(c, image=image)])[0]
    fb = fb.copy()
    fb[:, [1, 3]] = rows - fb[:, [3, 1]]  # back to the canvas as it is
    flipped = engine._to_stored(c, fb, fl, fs, fm, 512)
    t2 = time.perf_counter()
    views = [(np.array([f.box for f in r.findings]).reshape(-1, 4), np.array([f.score for f in r.findings]),
              [f.kind for f in r.findings]) for r in (plain, flipped)]
    return views[0], fuse_views(views), t1 - t0, t2 - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="work folder of a finished stage-one cross-validation")
    ap.add_argument("--mias", type=Path, required=True)
    ap.add_argument("--out", type=Path, help="write the flipped-and-fused folds here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--per-fold", type=int, help="only the first N held-out views of each fold (to try it)")
    args = ap.parse_args(argv)
    cv = json.loads((args.work / "cv" / "cv.json").read_text())
    config, pp, k = NetworkConfig.from_json(cv["config"]), PreprocessParams.from_json(cv["preprocess"]), int(cv["k"])
    real = read_mias(args.mias)
    fold_of = patient_folds(real, k, seed=0)
    plain_recs: list[dict[str, Any]] = []
    flip_recs: list[dict[str, Any]] = []
    t_plain: list[float] = []
    t_flip: list[float] = []
    for f in range(k):
        det = build_detector(config, train_components=True)
        det.network.load_state_dict(torch.load(args.work / "cv" / f"fold{f}" / "network.pt", map_location="cpu",
                                               weights_only=True))
        engine = Engine(det, config, pp, device="cpu", threads=args.threads)
        fold_flip = []
        held = [s for s, g in zip(real, fold_of, strict=True) if g == f]
        for s in held[: args.per_fold]:
            plain, fused, tp, tf = flip_view(engine, s.load(), s.chest_wall)
            plain_recs.append(_record(s, *plain))
            fold_flip.append(_record(s, *fused))
            t_plain.append(tp)
            t_flip.append(tf)
        flip_recs += fold_flip
        if args.out is not None:
            (args.out / "cv" / f"fold{f}").mkdir(parents=True, exist_ok=True)
            (args.out / "cv" / f"fold{f}" / "records.json").write_text(json.dumps(
                {"info": {"fold": f, "flip_tta": "vertical", "from": str(args.work)},
                 "records": _records_json(fold_flip)}))
    if args.out is not None:
        (args.out / "cv" / "cv.json").write_text(json.dumps({**cv, "flip_tta": "vertical"}, indent=1))
        cache = args.work / "cv" / "calc_examples.npz"
        if cache.exists():
            shutil.copyfile(cache, args.out / "cv" / "calc_examples.npz")
    group_of = {s.key: s.group for s in real}
    groups = [group_of[r["key"]] for r in plain_recs]  # the flipped records are in the same order
    ma, mb = evaluate_predictions(plain_recs), evaluate_predictions(flip_recs)
    print(f"cv_pooled_sens@1 {cv['pooled']['froc']['1']:.3f}")  # the CV's own figure: plain should give it
    for rate in RATES:
        print(f"plain_sens@{rate} {ma.froc[rate]:.3f}")
        print(f"flip_sens@{rate} {mb.froc[rate]:.3f}")
    boot = paired_bootstrap(plain_recs, flip_recs, groups, n=args.boot, rate="1")
    lo, hi = boot["sens_diff_ci"]
    print(f"flip_minus_plain_sens@1_ci {lo:+.3f} {hi:+.3f}")
    print(f"plain_image_auc {ma.image_auc:.3f}")
    print(f"flip_image_auc {mb.image_auc:.3f}")
    lo, hi = boot["auc_diff_ci"]
    print(f"flip_minus_plain_image_auc_ci {lo:+.3f} {hi:+.3f}")
    for kind in sorted(mb.per_kind):
        print(f"plain_{kind}_sens@1 {ma.per_kind[kind]['sens@1']:.3f}")
        print(f"flip_{kind}_sens@1 {mb.per_kind[kind]['sens@1']:.3f}")
    print(f"plain_s_per_view {np.median(t_plain):.3f}")
    print(f"flip_s_per_view {np.median(t_flip):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
