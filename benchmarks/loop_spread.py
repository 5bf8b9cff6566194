"""Does the learning-loop proof flip? Run it under other seeds, thread counts and CPU code paths.

Runs ``benchmarks/retrain_sim.py`` (the proof behind ``tests/model/test_learning_loop.py``,
default sizes) once per configuration, one after the other, at low CPU priority, and
prints its gate figures one per line (``CONFIG FIGURE VALUE``), then a table of the
spread. A check's *margin* is candidate minus current plus its tolerance: above 0 the
check passes, and the smallest margin says how far the decision is from flipping.

Configurations: three seeds (fine-tuning and parent training), 1 and 2 torch threads,
``ATEN_CPU_CAPABILITY=default`` and ``avx2`` (torch's vectorised CPU kernels) and
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN convolutions)::

    python benchmarks/loop_spread.py [--only seed1,threads2] [--out DIR] [--nice 10] [--jobs 2]

About 8-10 minutes of one CPU core per configuration (the proof at its current sizes, 5 fine-tuning epochs; 506-630 s at load 2-4); on a
loaded machine much longer (33 min wall at load 9-14 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (extra retrain_sim arguments, environment overrides)
CONFIGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "seed1": ([], {}),
    "seed2": (["--seed", "2", "--parent-seed", "4"], {}),
    "seed3": (["--seed", "3", "--parent-seed", "5"], {}),
    "threads2": (["--threads", "2"], {"OMP_NUM_THREADS": "2"}),
    "aten-default": ([], {"ATEN_CPU_CAPABILITY": "default"}),
    "aten-avx2": ([], {"ATEN_CPU_CAPABILITY": "avx2"}),
    "onednn-avx2": ([], {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
}


def run_one(name: str, out: Path, nice: int) -> dict:
    args, env = CONFIGS[name]
    # idle OpenMP threads sleep: two spinning threads on a busy 2-core machine run many times slower
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **env}
    cmd = [sys.executable, str(HERE / "retrain_sim.py"), "--out", str(out / name), "--json", *args]
    proc = subprocess.run(cmd, env=environ, capture_output=True, text=True,
                          preexec_fn=(lambda: os.nice(nice)) if nice else None, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: retrain_sim.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def summary(figs: dict) -> dict[str, object]:
    cand, bad = figs["gate_candidate"], figs["gate_shuffled"]
    d = cand["deltas"]
    # the shuffled control must be refused: its margin is how far its worst check is below 0
    bad_margins = [v["margin"] for v in bad["deltas"].values() if v["margin"] is not None]
    return {
        "candidate_passed": cand["passed"],
        "shuffled_refused": not figs["gate_shuffled"]["passed"],
        "min_margin": min(v["margin"] for v in d.values() if v["margin"] is not None),
        "shuffled_min_margin": min(bad_margins) if bad_margins else None,
        "val_froc_delta": d["froc_mean"]["delta"],
        "val_auc_delta": d["image_auc"]["delta"],
        "val_calc_labelled_delta": d["labelled_froc_mean:calcification"]["delta"],
        "corr_labelled_delta": d["labelled_froc_mean@corrections"]["delta"],
        "calc_sens1_candidate": figs["candidate"]["calcification_sens@1_labelled"],
        "mass_sens1_candidate": figs["candidate"]["mass_sens@1_labelled"],
        "shuffled_val_froc_delta": bad["deltas"]["froc_mean"]["delta"],
        "candidate_sha256": figs["candidate_sha256"][:12],
        "total_s": figs["total_s"],
    }


def check_rows(figs: dict) -> list[tuple[str, str, float | None, float | None]]:
    """(model, gated check, candidate minus current, margin) for both gate reports."""
    return [(who, check, v["delta"], v["margin"]) for who in ("candidate", "shuffled")
            for check, v in figs[f"gate_{who}"]["deltas"].items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated configurations (default: all)")
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=1, help="configurations run at once (each one torch thread)")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    out = a.out or Path(tempfile.mkdtemp(prefix="mt-loop-spread-"))
    rows = {}
    checks: dict[str, list] = {}
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {name: pool.submit(run_one, name, out, a.nice) for name in names}
        for name in names:
            figs = futures[name].result()
            s = summary(figs)
            rows[name] = s
            checks[name] = check_rows(figs)
            for k, v in s.items():
                print(f"{name} {k} {v}", flush=True)
            for who, check, delta, margin in checks[name]:
                print(f"{name} {who}:{check} delta {delta} margin {margin}", flush=True)
    cols = list(next(iter(rows.values())))
    print("| config | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for name, s in rows.items():
        print(f"| {name} | " + " | ".join(str(s[c]) for c in cols) + " |")
    print("\n| config | model | check | delta | margin |\n| --- | --- | --- | --- | --- |")
    for name, cr in checks.items():
        for who, check, delta, margin in cr:
            print(f"| {name} | {who} | {check} | {delta} | {margin} |")
    flipped = [n for n, s in rows.items() if not (s["candidate_passed"] and s["shuffled_refused"])]
    print("outcome flipped in: " + (", ".join(flipped) if flipped else "none"))
    return 1 if flipped else 0


if __name__ == "__main__":
    sys.exit(main())
