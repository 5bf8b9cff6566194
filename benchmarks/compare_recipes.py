"""Two detector recipes' cross-validations on the same folds, compared patient by patient.

Each work folder is what ``mammotriage train --kfold 4 --second-look --cv-only --work W``
leaves (``W/second_look_records.json``: every dev image's out-of-fold predictions, stage
one alone and with the second look). For each stage this prints, one figure per line,
both recipes' sensitivity at 0.5 / 1 / 2 FP per image and image AUC, and the paired
patient-level bootstrap 95 % CI of the difference (B - A; 1,000 resamples of patients,
:func:`mammotriage.model.crossval.paired_bootstrap`). "B beats A" in the detector
issue's sense means the CI of the difference at 1 FP/image lies above 0.

One run per recipe cannot tell a recipe from a lucky training seed (docs/model.md section
9: the same recipe under another seed passes that rule). With ``--a-seeds`` and
``--b-seeds`` (further work folders of the same recipes, trained under other ``--seed``
values on the same folds) it also prints the seeded comparison
(:func:`mammotriage.model.crossval.seeded_bootstrap`: patients and runs resampled, the
mean over each recipe's runs) and its verdict, given only from 3 runs per recipe:

    python benchmarks/compare_recipes.py --mias ../shared/data/mias/dev WORK_A WORK_B
    python benchmarks/compare_recipes.py --mias ../shared/data/mias/dev WORK_A WORK_B \
        --a-seeds WORK_A1 WORK_A2 --b-seeds WORK_B1 WORK_B2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mammotriage.model.crossval import _records_from_json, paired_bootstrap, seeded_bootstrap
from mammotriage.model.data import read_mias
from mammotriage.model.evaluate import evaluate_predictions

RATES = ("0.5", "1", "2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="work folder of recipe A (the baseline)")
    ap.add_argument("b", type=Path, help="work folder of recipe B")
    ap.add_argument("--mias", type=Path, required=True, help="the mini-MIAS dev folder (patients of the images)")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--a-seeds", type=Path, nargs="*", default=[], help="further runs of recipe A (other seeds)")
    ap.add_argument("--b-seeds", type=Path, nargs="*", default=[], help="further runs of recipe B (other seeds)")
    args = ap.parse_args(argv)
    group_of = {s.key: s.group for s in read_mias(args.mias)}
    a = json.loads((args.a / "second_look_records.json").read_text())
    b = json.loads((args.b / "second_look_records.json").read_text())
    for stage in ("stage_one", "second_look"):
        rb = _records_from_json(b[stage])
        by_key = {r["key"]: r for r in _records_from_json(a[stage])}
        if set(by_key) != {r["key"] for r in rb}:
            raise SystemExit(f"{stage}: the two folders hold predictions of different images")
        ra = [by_key[r["key"]] for r in rb]
        groups = [group_of[r["key"]] for r in rb]
        ma, mb = evaluate_predictions(ra), evaluate_predictions(rb)
        print(f"{stage}_image_auc_a {ma.image_auc:.3f}")
        print(f"{stage}_image_auc_b {mb.image_auc:.3f}")
        for rate in RATES:
            boot = paired_bootstrap(ra, rb, groups, n=args.boot, rate=rate)
            print(f"{stage}_sens@{rate}_a {ma.froc[rate]:.3f}")
            print(f"{stage}_sens@{rate}_b {mb.froc[rate]:.3f}")
            lo, hi = boot["sens_diff_ci"]
            print(f"{stage}_sens@{rate}_diff_ci {lo:+.3f} {hi:+.3f}")
        lo, hi = boot["auc_diff_ci"]
        print(f"{stage}_image_auc_diff_ci {lo:+.3f} {hi:+.3f}")
        for kind in sorted(mb.per_kind):
            print(f"{stage}_{kind}_sens@1_a {ma.per_kind[kind]['sens@1']:.3f} of {int(ma.per_kind[kind]['n'])}")
            print(f"{stage}_{kind}_sens@1_b {mb.per_kind[kind]['sens@1']:.3f} of {int(mb.per_kind[kind]['n'])}")
    if args.a_seeds or args.b_seeds:
        seeded(args, group_of)
    return 0


def _ordered(folder: Path, stage: str, keys: list[str]) -> list[dict]:
    by_key = {r["key"]: r for r in _records_from_json(json.loads((folder / "second_look_records.json")
                                                                 .read_text())[stage])}
    if set(by_key) != set(keys):
        raise SystemExit(f"{folder}: {stage} holds predictions of other images than {keys[0]}...")
    return [by_key[k] for k in keys]


def seeded(args: argparse.Namespace, group_of: dict[str, str]) -> None:
    folders_a, folders_b = [args.a, *args.a_seeds], [args.b, *args.b_seeds]
    for stage in ("stage_one", "second_look"):
        keys = sorted(r["key"] for r in json.loads((args.b / "second_look_records.json").read_text())[stage])
        runs_a = [_ordered(f, stage, keys) for f in folders_a]
        runs_b = [_ordered(f, stage, keys) for f in folders_b]
        groups = [group_of[k] for k in keys]
        for rate in RATES:
            out = seeded_bootstrap(runs_a, runs_b, groups, n=args.boot, rate=rate)
            runs = " ".join(f"{x:.3f}" for x in out["sens_a_runs"])
            print(f"{stage}_seeded_sens@{rate}_a {out['sens_a']:.3f} (runs {runs})")
            runs = " ".join(f"{x:.3f}" for x in out["sens_b_runs"])
            print(f"{stage}_seeded_sens@{rate}_b {out['sens_b']:.3f} (runs {runs})")
            lo, hi = out["sens_diff_ci"]
            print(f"{stage}_seeded_sens@{rate}_diff_ci {lo:+.3f} {hi:+.3f}")
            if rate == "1":
                verdict = {True: "yes", False: "no", None: "not judged"}[out["beats"]]
                print(f"{stage}_seeded_b_beats_a {verdict}")
                print(f"{stage}_seeded_rule {out['reason']}")
        if out["auc_diff_ci"] is not None:
            lo, hi = out["auc_diff_ci"]
            print(f"{stage}_seeded_image_auc_diff_ci {lo:+.3f} {hi:+.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
