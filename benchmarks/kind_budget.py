"""Per-kind false-positive budgets for the merged second look, measured on finished runs.

Under ``evaluate``'s rule every mark's false positive counts against one FP/image axis,
and the calcification clusters' probabilities rank under RetinaNet's mass false
positives, so the merged list finds 0-1 of 14 clusters at 1 FP/image although the
cluster path alone finds about 5 of 14 at 0.5 cluster FP per image (docs/model.md
section 9). Here each mark's score is replaced by ``exp(-r / w_kind)``, where ``r`` is the
false positives per image that marks of its kind reach at that score on the *other*
folds' second-look records (a table per fold, from those folds' labels only) and
``w_kind`` the kind's share (1 for masses; ``--calc-weights`` for clusters): one threshold
then spends the FP budget on the kinds in that ratio. Printed, one figure per line per
run and weight: sensitivity at 0.5 / 1 / 2 FP/image, clusters and masses at 1 FP/image,
against the records as they are.

The other folds' records come from fold models that saw the evaluated fold's images
(only their labels, not the evaluated fold's, fit the table), so this is a screening
check of the idea, not a nested cross-validation.

    python benchmarks/kind_budget.py --mias ../shared/data/mias/dev W_SEED0 W_SEED1 W_SEED2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.model.crossval import _records_from_json, candidate_labels, patient_folds
from mammotriage.model.data import read_mias
from mammotriage.model.evaluate import evaluate_predictions

KINDS = ("mass", "calcification")


def fp_scores(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each kind's false-positive mark scores over ``records`` (a hit needs the mark's own kind)."""
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in records:
        labels = candidate_labels(r)
        for s, hit, kind in zip(np.asarray(r["scores"]).reshape(-1), labels, r["finding_kinds"], strict=True):
            if not hit and kind in out:
                out[kind].append(float(s))
    return {k: np.sort(np.array(v)) for k, v in out.items()}


def budgeted(records: list[dict[str, Any]], fold_of: dict[str, int], k: int,
             weights: dict[str, float]) -> list[dict[str, Any]]:
    out = []
    for f in range(k):
        other = [r for r in records if fold_of[r["key"]] != f]
        table, n = fp_scores(other), len(other)
        for r in (r for r in records if fold_of[r["key"]] == f):
            scores = np.asarray(r["scores"], float).reshape(-1)
            new = []
            for s, kind in zip(scores, r["finding_kinds"], strict=True):
                fps = table.get(kind, np.zeros(0))
                rate = (len(fps) - np.searchsorted(fps, s, side="left")) / max(n, 1)  # FPs/image at >= s
                # ties above every table score keep their own order
                new.append((1 - 1e-6) * np.exp(-rate / weights.get(kind, 1.0)) + 1e-6 * s)
            out.append({**r, "scores": np.array(new)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("works", type=Path, nargs="+", help="work folders with second_look_records.json")
    ap.add_argument("--mias", type=Path, required=True)
    ap.add_argument("--kfold", type=int, default=4)
    ap.add_argument("--calc-weights", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    args = ap.parse_args(argv)
    real = read_mias(args.mias)
    fold_of = dict(zip([s.key for s in real], patient_folds(real, args.kfold, seed=0), strict=True))
    for work in args.works:
        records = _records_from_json(json.loads((work / "second_look_records.json").read_text())["second_look"])
        for r in records:
            r["scores"] = np.asarray(r["scores"]).reshape(-1)
        arms = {"as_is": records}
        arms.update({f"calc_w{w:g}": budgeted(records, fold_of, args.kfold, {"calcification": w})
                     for w in args.calc_weights})
        for arm, recs in arms.items():
            m = evaluate_predictions(recs)
            tag = f"{work.name}_{arm}"
            print(f"{tag}_sens@0.5/1/2 {m.froc['0.5']:.3f} {m.froc['1']:.3f} {m.froc['2']:.3f}")
            calc, mass = m.per_kind.get("calcification", {}), m.per_kind.get("mass", {})
            print(f"{tag}_calcification_sens@1 {calc.get('sens@1', 0.0):.3f} of {int(calc.get('n', 0))}")
            print(f"{tag}_mass_sens@1 {mass.get('sens@1', 0.0):.3f} of {int(mass.get('n', 0))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
