"""Detector recipes under several training seeds: the cross-validations, side by side.

One run per recipe cannot tell a recipe from a lucky training seed (docs/model.md section
9), so ``benchmarks/compare_recipes.py`` judges two recipes from 3 runs each
(``--a-seeds`` / ``--b-seeds``). This starts those runs: one ``mammotriage train --kfold 4
--second-look --no-stage-two --cv-only`` process per recipe and seed, at most ``--jobs``
at a time, each in ``ROOT/RECIPE-sSEED`` (the same patient folds, ``--seed`` the training
seed). On a machine with a GPU they share it (``--device cuda``; each process keeps one
CPU thread); the second look (calcification trees, suppression) runs on the CPU. A
finished fold is never trained again, so a call stopped half-way resumes where it was.
``--calc-cache FILE`` copies an existing ``calc_examples.npz`` (the calcification
candidates, the same for every recipe) into each run instead of computing it again.

Printed, one figure per line, per run: stage one and second look, image AUC and
sensitivity at 1 FP/image, and the run's seconds; then the comparison to run:

    python benchmarks/recipe_seeds.py --mias ../shared/data/mias/dev --root R \
        --recipes v030 item5 --seeds 0 100 200 --jobs 6 --device cuda
    python benchmarks/compare_recipes.py --mias ../shared/data/mias/dev R/v030-s0 R/item5-s0 \
        --a-seeds R/v030-s100 R/v030-s200 --b-seeds R/item5-s100 R/item5-s200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: The recipes' own flags (on top of the v0.3.0 CV command below).
RECIPES: dict[str, list[str]] = {
    "v030": [],
    "item5": ["--intensity", "breast_percentiles", "--aug-looks", "0.3"],
    "percentiles": ["--intensity", "breast_percentiles"],
}


def command(mias: Path, work: Path, recipe: str, seed: int, device: str | None, stage_one_only: bool,
            cv_epochs: float = 1.6688) -> list[str]:
    cmd = [sys.executable, "-m", "mammotriage", "train", "--mias", str(mias), "--phantoms", "60",
           "--kfold", "4", "--cv-epochs", str(cv_epochs), "--threads", "1", "--seed", str(seed),
           "--work", str(work), "--cv-only", "--out", str(work / "pkg"), *RECIPES[recipe]]
    if not stage_one_only:
        cmd += ["--second-look", "--no-stage-two", "--calc-phantoms", "24"]
    if device:
        cmd += ["--device", device]
    return cmd


def _figure(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "none"


def report(name: str, work: Path, seconds: float, stage_one_only: bool) -> None:
    """The run's figures from the files its command wrote (a file missing or unreadable: said)."""
    path = work / "cv" / "cv.json" if stage_one_only else work / "second_look.json"
    try:
        d = json.loads(path.read_text())
        stages = {"stage_one": d["pooled"]} if stage_one_only else {s: d[s] for s in ("stage_one", "second_look")}
        for stage, m in stages.items():
            print(f"{name}_{stage}_image_auc {_figure(m.get('image_auc'))}")
            print(f"{name}_{stage}_sens@1 {_figure(m['froc'].get('1'))}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"{name}: no figures in {path} ({exc})", file=sys.stderr)
    print(f"{name}_seconds {seconds:.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mias", type=Path, required=True, help="the mini-MIAS dev folder")
    ap.add_argument("--root", type=Path, required=True, help="one work folder per run goes here")
    ap.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["v030", "item5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 100, 200])
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    ap.add_argument("--stage-one-only", action="store_true", help="no second look")
    ap.add_argument("--calc-cache", type=Path, help="a calc_examples.npz to reuse in every run")
    ap.add_argument("--cv-epochs", type=float, default=1.6688,
                    help="epochs per fold (default 1.6688, the v0.3.0 CV's; less only to try the script)")
    args = ap.parse_args(argv)
    if args.calc_cache is not None and not args.calc_cache.is_file():
        ap.error(f"--calc-cache {args.calc_cache}: no such file")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS where there is CUDA
    args.recipes, args.seeds = list(dict.fromkeys(args.recipes)), list(dict.fromkeys(args.seeds))  # one run per folder
    todo = [(r, s) for r in args.recipes for s in args.seeds]
    running: dict[tuple[str, int], tuple[subprocess.Popen[bytes], float]] = {}
    failed = 0
    while todo or running:
        while todo and len(running) < max(1, args.jobs):
            recipe, seed = todo.pop(0)
            work = args.root / f"{recipe}-s{seed}"
            (work / "cv").mkdir(parents=True, exist_ok=True)
            if args.calc_cache is not None and not (work / "cv" / "calc_examples.npz").exists():
                shutil.copyfile(args.calc_cache, work / "cv" / "calc_examples.npz")
            with open(work / "log.txt", "ab") as log:
                proc = subprocess.Popen(command(args.mias, work, recipe, seed, args.device, args.stage_one_only,
                                                args.cv_epochs),
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
            running[(recipe, seed)] = (proc, time.monotonic())
        time.sleep(2)
        for (recipe, seed), (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[(recipe, seed)]
            name, work = f"{recipe}-s{seed}", args.root / f"{recipe}-s{seed}"
            if proc.returncode:
                failed += 1
                print(f"{name}: failed (exit {proc.returncode}); see {work / 'log.txt'}", file=sys.stderr)
            else:
                report(name, work, time.monotonic() - t0, args.stage_one_only)
    if len(args.recipes) >= 2 and len(args.seeds) >= 1:
        a, b = args.recipes[:2]
        first, rest = args.seeds[0], args.seeds[1:]
        r = args.root
        print("compare: python benchmarks/compare_recipes.py --mias", args.mias, r / f"{a}-s{first}",
              r / f"{b}-s{first}", *(["--a-seeds", *[str(r / f"{a}-s{s}") for s in rest],
                                      "--b-seeds", *[str(r / f"{b}-s{s}") for s in rest]] if rest else []),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
