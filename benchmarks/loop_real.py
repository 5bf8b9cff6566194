"""Site adaptation on real images: the learning loop on mini-MIAS, through the app's own code.

mini-MIAS (``../shared/data/mias/dev``) is split **by patient** into

* **A** ("vendor"): the parent model's training data; it holds *no* patient with a
  calcification cluster, so the parent never saw a real one;
* **B** ("site"): written as real MG DICOM files (the phantom writer's dataset builder
  with the film's own pixels), imported into a real archive; a simulated reader records
  its ground truth through ``CorrectionLog`` (every image read: lesions added, BI-RADS);
* **C** (locked site validation): also DICOM in the archive, its labels recorded by a
  second reader, frozen as the site's locked validation snapshot.

Calcification patients are dealt alternately to B and C; the others 2 : 1 : 1 to A, B, C.
Then, through ``mammotriage.learning``: a training snapshot of B, ``retrain`` (candidate;
replay of A, which is the parent's recorded training source), a shuffled-label control
(``shuffle_labels``), the ``validate`` gate of both against the parent on C, and
``models promote`` (the CLI) of both: the candidate must be promoted, the control refused.
Figures on C (parent and candidate): per-kind sensitivity at 1 false positive per image
(findings labelled with the lesion's kind, and any finding) and the image AUC, with
patient-level bootstrap 95 % intervals; one figure per line::

    python benchmarks/loop_real.py --work DIR [--json]                  # full size (<= 1 h, 2 cores)
    python benchmarks/loop_real.py --work DIR --canvas-rows 320 \\
        --parent-epochs 2 --ft-epochs 2 --n-boot 200                    # reduced

Every stage checkpoints under ``--work`` (outside the repository): run it again with
the same arguments and it resumes after the last finished stage. The parent has a
calcification path (cluster trees, prior shift; no stage two, like the shipped v0.3.0)
fitted on A as ``train --second-look`` fits one: A holds no real calcification, so its
trees learn from simulated clusters in A's normal films and phantom clusters only.
``retrain`` refits them on A's examples plus B's (the clusters the reader marked) and
says so in the candidate's ``fine_tuning.second_look``; the figures give both models'
calcification sensitivity on C.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for p in (ROOT / "app", HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

MIAS = ROOT.parent / "shared" / "data" / "mias" / "dev"


@dataclass
class RealConfig:
    canvas_rows: int = 512  # the network canvas (columns: 0.8 x rows, a multiple of 8): 0.4 mm per pixel
    parent_epochs: float = 6.0
    parent_lr: float = 6e-4
    ft_epochs: float = 4.0
    ft_lr: float = 3e-4
    ft_warmup: int = 20
    replay_fraction: float = 1.0
    control_iterations: int = 150
    threads: int = 1
    n_boot: int = 1000  # the gate's and the patient-level bootstrap's resamples
    seed: int = 1  # fine-tuning seed
    parent_seed: int = 3
    calc_phantom_exams: int = 6  # phantom exams (1024 x 832) the parent's cluster trees learn from


# ------------------------------------------------------------------ split and DICOM


def split_patients(samples: list) -> dict[str, list[str]]:
    """Patient groups -> A / B / C, deterministic (sorted; calcification patients alternate B, C)."""
    groups: dict[str, list] = defaultdict(list)
    for s in samples:
        groups[s.group].append(s)
    calc = sorted(g for g, ss in groups.items() if any(k == "calcification" for s in ss for k in s.kinds))
    rest = sorted(g for g in groups if g not in calc)
    out: dict[str, list[str]] = {"A": [], "B": [], "C": []}
    for i, g in enumerate(calc):
        out["BC"[i % 2]].append(g)
    for i, g in enumerate(rest):
        out["AABC"[i % 4]].append(g)
    return out


def vendor_folder(work: Path, samples: list, groups: list[str]) -> Path:
    """A mini-MIAS-format folder (links + filtered labels.csv) holding only set A: the
    parent's training source, so that ``retrain``'s replay rebuilds A and nothing else."""
    folder = work / "vendor-A"
    folder.mkdir(parents=True, exist_ok=True)
    images = {s.key.split(":", 1)[1] for s in samples if s.group in set(groups)}
    with open(MIAS / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["image"].strip() in images]
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for im in images:
        link = folder / f"{im}.png"
        if not link.exists():
            link.symlink_to(MIAS / f"{im}.png")
    return folder


def write_mias_exam(folder: Path, patient: str, samples: list, number: int) -> tuple[str, list[dict[str, Any]]]:
    """One exam (the patient's MLO views) as MG DICOM files (``phantom.writer.film_exam``:
    film pixels, 12-bit, 0.2 mm); returns the study UID and the lesions in stored pixels
    ``{"sop_uid", "box", "kind"}``."""
    from mammotriage.phantom.writer import film_exam

    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(samples, key=lambda x: x.key)
    ids = [s.key.split(":", 1)[1] for s in ordered]
    views = [(s.load(), "R" if int(im[3:]) % 2 else "L", "MLO", im)  # images 2k-1, 2k: right, left breast
             for s, im in zip(ordered, ids, strict=True)]
    datasets = film_exam(views, patient_id=f"MIAS-{patient}", patient_name=f"MIAS^{patient.upper()}",
                         exam_number=number, spacing_mm=ordered[0].spacing_mm or 0.2, namespace="mias",
                         source="mini-MIAS (digitised film)", institution="MIAS",
                         description="Screening mammography (mini-MIAS film, MLO only)")
    lesions = []
    for s, im, ds in zip(ordered, ids, datasets, strict=True):
        ds.save_as(folder / f"{im}.dcm", enforce_file_format=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
        for box, kind in zip(s.boxes, s.kinds, strict=True):
            x0, y0, x1, y1 = (max(0.0, min(float(v), lim)) for v, lim in zip(box, (columns, rows) * 2, strict=True))
            lesions.append({"sop_uid": str(ds.SOPInstanceUID), "box": [x0, y0, x1, y1], "kind": kind})
    return str(datasets[0].StudyInstanceUID), lesions


def import_set(archive_file: Path, root: Path, by_group: dict[str, list], groups: list[str], start: int) -> list:
    from retrain_sim import SimExam

    from mammotriage.store import Archive

    made = []
    for i, g in enumerate(groups):
        patient = g.split(":", 1)[1]
        study, les = write_mias_exam(root / patient, patient, by_group[g], start + i)
        made.append((patient, study, les))
    with Archive(archive_file) as archive:
        report = archive.import_paths([root])
        if report.rejected:
            raise RuntimeError(report.summary())
        by_study = {uid: e for e in archive.exams() for uid in e.study_uids}
    return [SimExam(start + i, by_study[study].exam_key, study, f"MIAS-{p}", sorted({x["kind"] for x in les}), les)
            for i, (p, study, les) in enumerate(made)]


# ------------------------------------------------------------------ figures


def patient_bootstrap(records: list[dict], groups: list[str], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Per-kind sensitivity at 1 FP/image (labelled, any) and image AUC, with 95 % intervals
    from resampling patients (both views of a patient together)."""
    import numpy as np

    from mammotriage.learning.gate import kind_sensitivity
    from mammotriage.model.evaluate import roc_auc

    def figs(recs: list[dict]) -> dict[str, float]:
        out = {"image_auc": roc_auc([int(r["abnormal"]) for r in recs], [r["image_score"] for r in recs])}
        for k in ("mass", "calcification"):
            out[f"{k}_sens@1_labelled"] = kind_sensitivity(recs, k, 1.0)
            out[f"{k}_sens@1_any"] = kind_sensitivity(recs, k, 1.0, labelled=False)
        return out

    by_pat: dict[str, list[dict]] = defaultdict(list)
    for r, g in zip(records, groups, strict=True):
        by_pat[g].append(r)
    pats = sorted(by_pat)
    point = figs(records)
    rng = np.random.default_rng([seed, 31])
    boots: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        pick = rng.integers(0, len(pats), len(pats))
        f = figs([r for i in pick for r in by_pat[pats[i]]])
        for k, v in f.items():
            boots[k].append(v)
    out = {}
    for k, v in point.items():
        b = np.asarray(boots[k], dtype=np.float64)
        b = b[np.isfinite(b)]
        ci = [round(float(np.percentile(b, 2.5)), 3), round(float(np.percentile(b, 97.5)), 3)] if len(b) else None
        out[k] = {"value": None if not np.isfinite(v) else round(float(v), 3), "ci95": ci}
    return out


# ------------------------------------------------------------------ the run


def parent_second_look(work: Path, samples: list, cfg: RealConfig) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The vendor's calcification path on A (``crossval.fit_second_look``, the settings of
    ``train --second-look``, no stage two): A's clusters (none real), simulated clusters in
    A's normal films, and the clusters of ``cfg.calc_phantom_exams`` phantom exams, which
    the package names (``trees.phantom_source``) so that a refit rebuilds them."""
    from mammotriage.learning.snapshot_data import phantom_pool
    from mammotriage.model.crossval import (
        SECOND_LOOK_TREES,
        calc_example_cache,
        calc_row_counts,
        fit_second_look,
    )

    t = time.monotonic()
    source = {"type": "phantom", "n_exams": cfg.calc_phantom_exams, "seed": 1000, "rows": 1024, "columns": 832}
    trees = {**SECOND_LOOK_TREES, "calc_phantom_exams": cfg.calc_phantom_exams, "phantom_source": source}
    phantoms = phantom_pool(cfg.calc_phantom_exams, 1000, 1024, 832)
    cache = calc_example_cache(samples, phantoms, work / "parent-calc-examples.npz",
                               synthetic_per_normal=trees["synthetic_per_normal"], seed=trees["synthetic_seed"])
    idx = list(range(len(samples)))
    ph = list(range(len(samples), len(samples) + len(phantoms)))
    sl = fit_second_look(cache, idx, ph, seed=trees["seed"], trees=trees)
    return sl, trees, {"real": calc_row_counts(cache, idx), "phantoms": calc_row_counts(cache, ph),
                       "calc_offset": sl.calc_offset, "seconds": round(time.monotonic() - t, 1)}


def stage(work: Path, name: str, fn, log) -> Any:
    """Run ``fn`` once: its JSON result is kept in ``work/stages/name.json``."""
    f = work / "stages" / f"{name}.json"
    if f.is_file():
        log(f"{name}: done before (resumed)")
        return json.loads(f.read_text())
    t = time.monotonic()
    out = fn()
    out["seconds"] = round(time.monotonic() - t, 1)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(out, indent=1, default=str))
    log(f"{name}: {out['seconds']} s")
    return out


def cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAMMOTRIAGE_HOME": str(work / "home"), "PYTHONPATH": str(ROOT / "app")}
    return subprocess.run([sys.executable, "-m", "mammotriage", *args], env=env, capture_output=True,
                          text=True, check=False)


def run(work: Path, cfg: RealConfig, log=print) -> dict[str, Any]:
    from retrain_sim import gate_deltas, record_ground_truth

    from mammotriage.learning.gate import GateParams, _records, validate
    from mammotriage.learning.registry import ModelRegistry
    from mammotriage.learning.retrain import RetrainParams, retrain
    from mammotriage.learning.snapshot_data import lock_validation, shuffle_labels, snapshot_samples
    from mammotriage.model.data import hash_mias_folder, read_mias
    from mammotriage.model.infer import Engine
    from mammotriage.model.network import NetworkConfig
    from mammotriage.model.package import save_package, verify
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.train import TrainParams, train
    from mammotriage.store.datasets import create_snapshot, load_snapshot

    t_all = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "home" / "archive.sqlite"
    archive.parent.mkdir(parents=True, exist_ok=True)
    samples = read_mias(MIAS)
    by_group: dict[str, list] = defaultdict(list)
    for s in samples:
        by_group[s.group].append(s)
    split = split_patients(samples)
    figures: dict[str, Any] = {"config": asdict(cfg), "patients": {k: len(v) for k, v in split.items()}}
    for k, gs in split.items():
        ss = [s for g in gs for s in by_group[g]]
        figures[f"set_{k}"] = {"images": len(ss), "abnormal": sum(s.abnormal for s in ss),
                               **{kind: sum(x == kind for s in ss for x in s.kinds)
                                  for kind in ("mass", "calcification")}}
    log(f"split by patient: {json.dumps({k: figures[f'set_{k}'] for k in 'ABC'})}")
    config = NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=20)
    pp = PreprocessParams(canvas_rows=cfg.canvas_rows, canvas_columns=int(round(cfg.canvas_rows * 0.8 / 8)) * 8)
    parent_dir = work / "parent"

    def train_parent() -> dict[str, Any]:
        folder = vendor_folder(work, samples, split["A"])
        train_samples = read_mias(folder)
        hp = TrainParams(epochs=cfg.parent_epochs, batch_size=2, patch_rows=cfg.canvas_rows, pretrained=True,
                         threads=cfg.threads, checkpoint_every=25, warmup_iters=10, lr=cfg.parent_lr,
                         seed=cfg.parent_seed)
        result = train(train_samples, work / "parent-train", hp, config, pp, resume=True, progress=False,
                       log_every=0)
        source = {"type": "mias", "path": str(folder), "sha256": hash_mias_folder(folder),
                  "images": len(train_samples), "note": "vendor set A: no calcification patient"}
        training = {"summary": "mini-MIAS vendor set A (no calcification cluster)", "sources": [source],
                    "n_images": len(train_samples), "n_boxes": int(sum(len(s.kinds) for s in train_samples))}
        sl, trees, calc = parent_second_look(work, train_samples, cfg)
        save_package(parent_dir, result.detector, config, pp, version="0.8.0",
                     description="vendor parent (real-image learning loop)", training=training,
                     hyper_parameters=hp.to_json() | {"iterations": result.iterations,
                                                      "second_look": {**sl.to_json(), "trees": trees}},
                     seed=hp.seed, eval_metrics={}, operating_points={}, second_look=sl)
        return {"iterations": result.iterations, "images": len(train_samples), "second_look": calc}

    figures["parent_train"] = stage(work, "parent", train_parent, log)

    def build_archive() -> dict[str, Any]:
        with ModelRegistry(archive) as reg:
            reg.ensure_shipped(parent_dir)
        val = import_set(archive, work / "dicom-C", by_group, split["C"], 1)
        record_ground_truth(archive, val, reader="validator", model_version="0.8.0")
        vsnap = create_snapshot(archive, role="validation", name="site-validation-C")
        lock_validation(archive, vsnap.sha256, who="loop_real")
        corr = import_set(archive, work / "dicom-B", by_group, split["B"], 1000)
        events = record_ground_truth(archive, corr, reader="sim_reader", model_version="0.8.0")
        tsnap = create_snapshot(archive, role="training", name="site-corrections-B")
        return {"validation": vsnap.sha256, "training": tsnap.sha256, "correction_events": events,
                "exams_B": len(corr), "exams_C": len(val)}

    arch = stage(work, "archive", build_archive, log)
    figures["archive"] = arch
    rp = RetrainParams(epochs=cfg.ft_epochs, lr=cfg.ft_lr, warmup_iters=cfg.ft_warmup,
                       patch_rows=cfg.canvas_rows, threads=cfg.threads, seed=cfg.seed,
                       replay_fraction=cfg.replay_fraction, max_iterations=None)

    def do_retrain(name: str, **kw: Any) -> dict[str, Any]:
        res = retrain(arch["training"], archive_file=archive, params=kw.pop("params", rp),
                      out_dir=work / name, **kw)
        ft = res.metadata["fine_tuning"]
        return {"version": res.version, "path": str(res.path), "weights_sha256": res.weights_sha256,
                "iterations": ft["iterations"], "replay_images": ft["replay"]["n_images"],
                "second_look": ft.get("second_look")}

    cand = stage(work, "candidate", lambda: do_retrain("candidate"), log)
    control_rp = RetrainParams(**{**rp.__dict__, "max_iterations": cfg.control_iterations, "replay_fraction": 0.0})
    ctrl = stage(work, "control", lambda: do_retrain(
        "control", params=control_rp, transform=lambda s: shuffle_labels(s, seed=7),
        note="negative control: labels shuffled"), log)
    figures["candidate"], figures["control"] = cand, ctrl
    gp = GateParams(n_boot=cfg.n_boot, threads=cfg.threads)

    def gate(name: str, version: str) -> dict[str, Any]:
        rep = validate(version, archive_file=archive, params=gp, out_dir=work / "gate" / name)
        return {"passed": rep["passed"], "reasons": rep["reasons"], "deltas": gate_deltas(rep),
                "report_path": rep["report_path"], "operating_points": rep.get("operating_points")}

    figures["gate_candidate"] = stage(work, "gate-candidate", lambda: gate("candidate", cand["version"]), log)
    figures["gate_control"] = stage(work, "gate-control", lambda: gate("control", ctrl["version"]), log)

    def promote() -> dict[str, Any]:
        out = {}
        for name, rec, rep in (("control", ctrl, figures["gate_control"]),
                               ("candidate", cand, figures["gate_candidate"])):
            p = cli(work, "models", "promote", rec["version"], "--report", rep["report_path"])
            out[name] = {"rc": p.returncode, "said": (p.stdout + p.stderr).strip()[-400:]}
        with ModelRegistry(archive) as reg:
            active = reg.active()
            out["active"] = active.version if active else None
        return out

    figures["promote"] = stage(work, "promote", promote, log)

    def per_kind() -> dict[str, Any]:
        vs = snapshot_samples(load_snapshot(arch["validation"], archive))
        out = {}
        for name, path in (("parent", parent_dir), ("candidate", Path(cand["path"])), ("control", Path(ctrl["path"]))):
            meta = verify(path)
            rec = _records(Engine.from_package(path, threads=cfg.threads), vs, meta["weights_sha256"], gp)
            out[name] = patient_bootstrap(rec, [s.group for s in vs], cfg.n_boot)
        return out

    figures["on_C"] = stage(work, "figures-C", per_kind, log)
    figures["total_s"] = round(time.monotonic() - t_all, 1)  # this process (a resumed run: the rest)
    figures["stages_s"] = {f.stem: json.loads(f.read_text())["seconds"] for f in sorted((work / "stages").glob("*.json"))}
    return figures


def lines(figs: dict[str, Any]) -> list[str]:
    out = []
    for who in ("parent", "candidate", "control"):
        for k, v in figs["on_C"][who].items():
            out.append(f"C {who} {k} {v['value']} ci95 {v['ci95']}")
    for who in ("candidate", "control"):
        g = figs[f"gate_{who}"]
        out.append(f"gate {who} passed {g['passed']}")
        for k, v in g["deltas"].items():
            out.append(f"gate {who} {k} delta {v['delta']} margin {v['margin']}")
    ps = figs["parent_train"].get("second_look") or {}
    if ps:
        out.append(f"parent calc_trees_fit_s {ps['seconds']}")
        out.append(f"parent calc_offset {round(ps['calc_offset'], 4)}")
    for who in ("candidate", "control"):
        sl = figs[who].get("second_look") or {}
        out.append(f"{who} second_look {sl.get('action')}")
        if sl.get("action") == "refitted":
            out.append(f"{who} second_look_refit_s {sl['seconds']}")
            out.append(f"{who} calc_offset {round(sl['calc_offset'], 4)}")
            for part in ("vendor", "phantoms", "site"):
                d = sl[part]
                out.append(f"{who} refit_{part} images {d['images']} labelled_clusters {d['labelled_clusters']} "
                           f"synthetic_clusters {d['synthetic_clusters']} candidates {d['candidates']} "
                           f"labelled_cluster_hits {d['labelled_cluster_hits']}")
    for who in ("candidate", "control"):
        out.append(f"promote {who} rc {figs['promote'][who]['rc']}")
    out.append(f"active {figs['promote']['active']}")
    out.append(f"total_s {figs['total_s']}")
    out.append(f"all_stages_s {round(sum(figs['stages_s'].values()), 1)}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="work folder (outside the repository); resumes")
    for name, value in asdict(RealConfig()).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not (MIAS / "labels.csv").is_file():
        print(f"mini-MIAS not found at {MIAS}: nothing to run", file=sys.stderr)
        return 2
    cfg = RealConfig(**{k: getattr(a, k) for k in asdict(RealConfig())})
    a.work.mkdir(parents=True, exist_ok=True)
    saved = a.work / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != asdict(cfg):
        print(f"{a.work} holds a run with another configuration ({saved}): use another --work", file=sys.stderr)
        return 2
    saved.write_text(json.dumps(asdict(cfg), indent=1))
    import torch

    torch.set_num_threads(cfg.threads)
    figs = run(a.work, cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(figs, indent=1, default=str) if a.json else "\n".join(lines(figs)))
    ok = (figs["gate_candidate"]["passed"] and not figs["gate_control"]["passed"]
          and figs["promote"]["active"] == figs["candidate"]["version"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
