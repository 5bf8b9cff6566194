"""Simulated reader on phantom data: the helpers behind the learning-loop test and benchmarks.

Not a benchmark itself. It builds what a site would have after some weeks of reading:

* :func:`train_phantom_parent` - a model trained on phantom exams that *lack* one lesion
  kind (its metadata records that, so its replay data can be regenerated);
* :func:`import_phantom_exams` - phantom exams written as DICOM and imported into a real
  archive (:class:`mammotriage.store.Archive`);
* :func:`record_ground_truth` - a reader who marks every ground-truth lesion
  (``CorrectionLog.append(action="add", ...)``, with the pixel hash of the image), the
  way the corrections panel records a finding the AI missed;
* :func:`run_learning_loop` - the whole simulated-reader experiment.

Run directly for the full simulated-reader experiment with the figures of the report
(bounded time; prints one figure per line)::

    python benchmarks/retrain_sim.py [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "app") not in sys.path:
    sys.path.insert(0, str(ROOT / "app"))


@dataclass
class SimExam:
    number: int
    exam_key: str
    study_uid: str
    patient_id: str
    kinds: list[str]
    lesions: list[dict[str, Any]]  # {"sop_uid", "box", "kind"}


def phantom_numbers(seed: int, count: int, rows: int, columns: int, *, need_kind: str | None = None,
                    lacking_kind: str | None = None, start: int = 1, normal_every: int = 0) -> list[int]:
    """Exam numbers of ``generate_exam(seed, n)`` that hold a lesion of ``need_kind``
    (or, with ``lacking_kind``, none of that kind); every ``normal_every``-th pick is a
    normal exam instead (0: none)."""
    from mammotriage.phantom import generate_exam

    out: list[int] = []
    n = start
    while len(out) < count:
        want_normal = normal_every and (len(out) + 1) % normal_every == 0
        exam = generate_exam(seed, exam_number=n, rows=rows, columns=columns)
        kinds = {lesion.kind for lesion in exam.lesions}
        if want_normal:
            ok = not kinds
        else:
            ok = (need_kind is None or need_kind in kinds) and (lacking_kind is None or lacking_kind not in kinds)
            ok = ok and (need_kind is None or bool(kinds))
        if ok:
            out.append(n)
        n += 1
    return out


def train_phantom_parent(out_dir: Path, *, n_exams: int, seed: int, rows: int, columns: int, config, pp,
                         hp, exclude_kinds: Sequence[str] = ("calcification",), version: str = "0.9.0",
                         work: Path | None = None) -> Path:
    """Train (from ImageNet weights when ``hp.pretrained``) on phantom exams without
    ``exclude_kinds`` and write a package whose metadata says so."""
    from mammotriage.learning.snapshot_data import phantom_pool
    from mammotriage.model.package import save_package
    from mammotriage.model.train import train

    samples = phantom_pool(n_exams, seed, rows, columns, exclude_kinds)
    result = train(samples, work or (out_dir.parent / f".{out_dir.name}-work"), hp, config, pp,
                   resume=False, progress=False, log_every=0)
    source = {"type": "phantom", "n_exams": n_exams, "seed": seed, "rows": rows, "columns": columns,
              "exclude_kinds": list(exclude_kinds), "images": len(samples)}
    training = {"summary": f"phantom exams without {', '.join(exclude_kinds) or 'nothing'}",
                "sources": [source], "n_images": len(samples),
                "n_boxes": int(sum(len(s.kinds) for s in samples))}
    hyper = hp.to_json() | {"iterations": result.iterations, "train_seconds": round(result.seconds, 1)}
    save_package(out_dir, result.detector, config, pp, version=version,
                 description="phantom parent (learning-loop simulation)", training=training,
                 hyper_parameters=hyper, seed=hp.seed, eval_metrics={}, operating_points={})
    return out_dir


def import_phantom_exams(archive_file: Path, folder: Path, seed: int, numbers: Iterable[int],
                         rows: int, columns: int) -> list[SimExam]:
    """Write ``generate_exam(seed, n)`` for each number under ``folder`` and import them."""
    from mammotriage.phantom import generate_exam
    from mammotriage.store import Archive

    exams = []
    for n in numbers:
        exam = generate_exam(seed, exam_number=n, rows=rows, columns=columns)
        exam.save(folder / f"s{seed}-e{n:04d}")
        exams.append((n, exam))
    with Archive(archive_file) as archive:
        report = archive.import_paths([folder])
        if report.rejected:
            raise RuntimeError(report.summary())
        by_study = {uid: e for e in archive.exams() for uid in e.study_uids}
    out = []
    for n, exam in exams:
        rec = by_study[exam.study_uid]
        out.append(SimExam(n, rec.exam_key, exam.study_uid, exam.patient_id,
                           sorted({lesion.kind for lesion in exam.lesions}),
                           [{"sop_uid": lesion.sop_uid, "box": list(lesion.box), "kind": lesion.kind}
                            for lesion in exam.lesions]))
    return out


def record_ground_truth(archive_file: Path, exams: Sequence[SimExam], reader: str = "sim_reader",
                        model_version: str = "", kinds: Iterable[str] | None = None,
                        birads: bool = True) -> int:
    """The simulated reader reviews every image of ``exams``: adds each ground-truth lesion
    (of ``kinds``; all when None) as a box, and gives a BI-RADS. Returns events written."""
    from mammotriage.dicom import read_image
    from mammotriage.dicom.image import pixel_sha256
    from mammotriage.store import Archive
    from mammotriage.store.events import CorrectionLog

    keep = set(kinds) if kinds is not None else None
    n = 0
    with Archive(archive_file) as archive, CorrectionLog(archive_file, workstation="sim") as log:
        log.add_reader(reader)
        for e in exams:
            rec = archive.exam(e.exam_key)
            for img in rec.images:
                ctx = dict(reader=reader, exam_key=e.exam_key, study_uid=img.study_uid,
                           series_uid=img.series_uid, sop_uid=img.sop_uid, model_version=model_version,
                           pixel_sha256=pixel_sha256(read_image(img.path).pixels))
                lesions = [les for les in e.lesions if les["sop_uid"] == img.sop_uid
                           and (keep is None or les["kind"] in keep)]
                for les in lesions:
                    log.append(action="add", kind=les["kind"], payload={"suspicion": 0.9},
                               geometry={"type": "box", "box": [float(v) for v in les["box"]]}, **ctx)
                    n += 1
            if birads:
                log.append(reader=reader, exam_key=e.exam_key, action="birads",
                           payload={"birads": 4 if e.lesions else 1})
                n += 1
    return n


# ------------------------------------------------------------------ a tiny site (unit tests)


@dataclass
class TinySite:
    archive: Path
    parent: Path
    validation: str  # snapshot sha256
    training: str
    validation_exams: list[SimExam]
    training_exams: list[SimExam]


def tiny_parent(out_dir: Path, *, config=None, pp=None, seed: int = 0, version: str = "0.0.1",
                training: dict | None = None) -> Path:
    """A randomly initialised package (tests of the plumbing, not of learning)."""
    import torch

    from mammotriage.model.network import NetworkConfig, build_detector
    from mammotriage.model.package import save_package
    from mammotriage.model.preprocess import PreprocessParams

    config = config or NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=20)
    pp = pp or PreprocessParams(canvas_rows=128, canvas_columns=96)
    torch.manual_seed(seed)
    det = build_detector(config, train_components=False)
    training = training if training is not None else {
        "summary": "2 phantom exams", "sources": [{"type": "phantom", "n_exams": 2, "seed": 5, "rows": 256,
                                                  "columns": 208}]}
    return save_package(out_dir, det, config, pp, version=version, description="tiny test parent",
                        training=training, hyper_parameters={}, seed=seed, eval_metrics={},
                        operating_points={})


def build_tiny_site(root: Path, *, n_validation: int = 1, n_training: int = 2, seed: int = 21,
                    rows: int = 256, columns: int = 208) -> TinySite:
    """Archive with ``n_validation`` exams in a validation snapshot, then ``n_training``
    more exams and a training snapshot (which also holds the validation exams: the
    guard must drop them); a tiny parent registered and active."""
    from mammotriage.learning.registry import ModelRegistry
    from mammotriage.store.datasets import create_snapshot

    archive = root / "home" / "archive.sqlite"
    parent = tiny_parent(root / "parent")
    with ModelRegistry(archive) as reg:
        reg.ensure_shipped(parent)
    numbers = phantom_numbers(seed, n_validation + n_training, rows, columns, need_kind="mass")
    val = import_phantom_exams(archive, root / "src-val", seed, numbers[:n_validation], rows, columns)
    record_ground_truth(archive, val, reader="validator")
    vsnap = create_snapshot(archive, role="validation", name="tiny-validation")
    tr = import_phantom_exams(archive, root / "src-train", seed, numbers[n_validation:], rows, columns)
    record_ground_truth(archive, tr, reader="reader")
    tsnap = create_snapshot(archive, role="training", name="tiny-corrections")
    return TinySite(archive, parent, vsnap.sha256, tsnap.sha256, val, tr)


# ------------------------------------------------------------------ the experiment


@dataclass
class LoopConfig:
    """Sizes of the simulated-reader experiment (defaults: the CI test's)."""

    rows: int = 256
    columns: int = 208
    parent_exams: int = 30  # generated; the calcification exams among them are dropped
    parent_epochs: float = 3.0
    parent_lr: float = 6e-4
    corrections: int = 24  # exams with calcification clusters, read by the simulated reader ...
    corrections_mass: int = 16  # ... exams with masses only (the reader confirms the parent's kind) ...
    corrections_normal: int = 16  # ... and normal exams (read, nothing marked; most screening exams are)
    validation_calc: int = 8  # validation exams with calcifications ...
    validation_mass: int = 8  # ... with masses only ...
    validation_normal: int = 12  # ... and normal
    ft_epochs: float = 5.0  # 3.0 left the calcification any-mark check on a knife edge under ATEN avx2
    ft_lr: float = 3e-4
    ft_warmup: int = 30
    replay_fraction: float = 1.0
    control_iterations: int = 150  # the shuffled-label control: this long, no replay
    control_replay: float = 0.0
    threads: int = 1
    n_boot: int = 200
    seed: int = 1  # fine-tuning (and the shuffled control's) seed
    parent_seed: int = 3  # the parent's training seed


@dataclass
class LoopResult:
    archive: Path
    parent: Path
    candidate: Any  # RetrainResult
    shuffled: Any  # RetrainResult (labels shuffled: negative control)
    validation: str
    training: str
    gate_candidate: dict[str, Any]
    gate_shuffled: dict[str, Any]
    figures: dict[str, Any]


def run_learning_loop(out: Path, cfg: LoopConfig | None = None, log=print) -> LoopResult:
    """parent (no calcifications) -> validation + corrections through the real store ->
    snapshots -> retrain (and a shuffled-label control) -> gate -> per-kind figures."""
    from mammotriage.learning.gate import GateParams, _records, kind_sensitivity, validate
    from mammotriage.learning.registry import ModelRegistry
    from mammotriage.learning.retrain import RetrainParams, retrain
    from mammotriage.learning.snapshot_data import shuffle_labels, snapshot_samples
    from mammotriage.model.infer import Engine
    from mammotriage.model.network import NetworkConfig
    from mammotriage.model.package import verify
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.train import TrainParams
    from mammotriage.store.datasets import create_snapshot, load_snapshot

    cfg = cfg or LoopConfig()
    t_all = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"config": cfg.__dict__.copy()}
    config = NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=20)
    pp = PreprocessParams(canvas_rows=cfg.rows, canvas_columns=int(round(cfg.columns * 0.923 / 8)) * 8)
    hp = TrainParams(epochs=cfg.parent_epochs, batch_size=2, patch_rows=cfg.rows, pretrained=True,
                     threads=cfg.threads, checkpoint_every=10**9, warmup_iters=10, lr=cfg.parent_lr, seed=cfg.parent_seed)
    t = time.monotonic()
    parent = train_phantom_parent(out / "parent", n_exams=cfg.parent_exams, seed=100, rows=cfg.rows,
                                  columns=cfg.columns, config=config, pp=pp, hp=hp)
    figures["parent_train_s"] = round(time.monotonic() - t, 1)
    log(f"parent trained in {figures['parent_train_s']} s")
    archive = out / "home" / "archive.sqlite"
    with ModelRegistry(archive) as reg:
        reg.ensure_shipped(parent)
    t = time.monotonic()
    r, c = cfg.rows, cfg.columns
    val_numbers = sorted(set(phantom_numbers(300, cfg.validation_calc, r, c, need_kind="calcification")
                             + phantom_numbers(300, cfg.validation_mass, r, c, need_kind="mass",
                                               lacking_kind="calcification")
                             + phantom_numbers(300, cfg.validation_normal, r, c, normal_every=1)))
    val = import_phantom_exams(archive, out / "src-val", 300, val_numbers, r, c)
    record_ground_truth(archive, val, reader="validator", model_version="0.9.0")
    vsnap = create_snapshot(archive, role="validation", name="site-validation")
    corr_numbers = sorted(set(phantom_numbers(200, cfg.corrections, r, c, need_kind="calcification")
                              + phantom_numbers(200, cfg.corrections_mass, r, c, need_kind="mass",
                                                lacking_kind="calcification")
                              + phantom_numbers(200, cfg.corrections_normal, r, c, normal_every=1)))
    corr = import_phantom_exams(archive, out / "src-corr", 200, corr_numbers, r, c)
    record_ground_truth(archive, corr, reader="sim_reader", model_version="0.9.0")
    tsnap = create_snapshot(archive, role="training", name="corrections-1")
    figures["archive_s"] = round(time.monotonic() - t, 1)
    figures["validation_lesions"] = {k: sum(les["kind"] == k for e in val for les in e.lesions)
                                     for k in ("mass", "calcification")}
    figures["correction_lesions"] = {k: sum(les["kind"] == k for e in corr for les in e.lesions)
                                     for k in ("mass", "calcification")}
    log(f"archive + snapshots in {figures['archive_s']} s; validation {vsnap.sha256[:12]} "
        f"{figures['validation_lesions']}, training {tsnap.sha256[:12]} {figures['correction_lesions']}")
    rp = RetrainParams(epochs=cfg.ft_epochs, lr=cfg.ft_lr, warmup_iters=cfg.ft_warmup, patch_rows=cfg.rows,
                       threads=cfg.threads, seed=cfg.seed, replay_fraction=cfg.replay_fraction,
                       max_iterations=None)
    t = time.monotonic()
    good = retrain(tsnap.sha256, archive_file=archive, params=rp, out_dir=out / "candidate")
    figures["retrain_s"] = round(time.monotonic() - t, 1)
    figures["candidate_sha256"] = good.weights_sha256
    log(f"retrained in {figures['retrain_s']} s -> {good.version} {good.weights_sha256[:16]}")
    t = time.monotonic()
    rp_control = RetrainParams(**{**rp.__dict__, "max_iterations": cfg.control_iterations,
                                  "replay_fraction": cfg.control_replay})
    bad = retrain(tsnap.sha256, archive_file=archive, params=rp_control, out_dir=out / "shuffled",
                  transform=lambda s: shuffle_labels(s, seed=7), note="negative control: labels shuffled")
    figures["retrain_shuffled_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    gp = GateParams(n_boot=cfg.n_boot, threads=cfg.threads)
    gates = {}
    for name, res in (("candidate", good), ("shuffled", bad)):
        gates[name] = validate(res.path, archive_file=archive, params=gp)
        figures[f"gate_{name}"] = {"passed": gates[name]["passed"], "reasons": gates[name]["reasons"],
                                   "deltas": gate_deltas(gates[name])}
        log(f"gate {name}: passed={gates[name]['passed']} reasons={gates[name]['reasons']}")
    figures["gate_s"] = round(time.monotonic() - t, 1)
    # per-kind figures on the validation exams (fresh: never trained on), from the gate's predictions
    vsamples = snapshot_samples(load_snapshot(vsnap.sha256, archive))
    for name, path in (("parent", parent), ("candidate", good.path), ("shuffled", bad.path)):
        meta = verify(path)
        rec = _records(Engine.from_package(path, threads=cfg.threads), vsamples, meta["weights_sha256"], gp)
        figures[name] = {
            **{f"{k}_sens@1_labelled": round(kind_sensitivity(rec, k, 1.0), 3) for k in ("mass", "calcification")},
            **{f"{k}_sens@1_any": round(kind_sensitivity(rec, k, 1.0, labelled=False), 3)
               for k in ("mass", "calcification")}}
        log(f"{name}: {json.dumps(figures[name])}")
    figures["total_s"] = round(time.monotonic() - t_all, 1)
    return LoopResult(archive, parent, good, bad, vsnap.sha256, tsnap.sha256, gates["candidate"],
                      gates["shuffled"], figures)


def gate_deltas(report: dict[str, Any]) -> dict[str, Any]:
    """Per gated check: candidate minus current, and its margin to the tolerance (how far
    from flipping the decision is: > 0 passes that check)."""
    return {c["metric"] + ("" if c["set"] == "validation" else f"@{c['set']}"):
            {"delta": c["delta"], "margin": None if c["delta"] is None else round(c["delta"] + c["tolerance"], 4)}
            for c in report["checks"]}


def monitoring_plots(res: LoopResult, out: Path, threads: int = 1) -> dict[str, Any]:
    """Triage every archived exam with the parent, promote the candidate (passed gate),
    triage again, and write the monitoring report and plots (``mammotriage monitor``)."""
    from mammotriage.learning.monitor import monitor_report, write_plots
    from mammotriage.learning.registry import ModelRegistry
    from mammotriage.model.package import read_metadata
    from mammotriage.store import Archive
    from mammotriage.triage import TriageQueue
    from mammotriage.triage.worker import load_model, process_one

    maps = out / "ai_maps"
    for folder in (res.parent, res.candidate.path):
        if folder == res.candidate.path:
            with ModelRegistry(res.archive) as reg:
                reg.promote(res.candidate.version, res.gate_candidate, who="sim")
        model = load_model(folder, threads=threads)
        with TriageQueue(res.archive) as queue, Archive(res.archive) as archive:
            queue.sync(model.version)
            while process_one(queue, archive, model, maps) is not None:
                pass
    meta = read_metadata(res.candidate.path)
    report = monitor_report(res.archive, meta, None)
    plots = write_plots(report, out / "monitor")
    (out / "monitor" / "monitor.json").write_text(json.dumps(report, indent=1, default=str))
    return {"monitor_plots": [str(p) for p in plots]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/mt-learning-loop"))
    for name, value in LoopConfig().__dict__.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    ap.add_argument("--monitor", action="store_true", help="also triage with both models and write monitoring plots")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import shutil

    cfg = LoopConfig(**{k: getattr(a, k) for k in LoopConfig().__dict__})
    shutil.rmtree(a.out, ignore_errors=True)
    res = run_learning_loop(a.out, cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    figs = res.figures
    if a.monitor:
        figs.update(monitoring_plots(res, a.out, cfg.threads))
    print(json.dumps(figs, indent=1) if a.json else "\n".join(f"{k} {v}" for k, v in figs.items()))


if __name__ == "__main__":
    main()
