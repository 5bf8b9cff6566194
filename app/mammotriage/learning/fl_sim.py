"""``mammotriage federate --simulate N``: a federation of N simulated hospitals on FLARE's simulator.

Each simulated site holds a different distribution (phantom exams; one exam is one
patient, so every split is by patient):

* ``calc`` - exams with calcification clusters (and normal exams), the usual scanner;
* ``mass`` - exams with masses only (and normal exams), the usual scanner;
* ``newscanner`` - exams with masses only (and normal exams) from a "new scanner": the
  same anatomy through another intensity model (:func:`new_scanner`: a harder gamma and
  compressed contrast, the way a detector and processing change reshape grey levels).

Every site has a locked validation set of its own (exams never trained on, by anyone).
The parent model is trained on the usual scanner's exams without calcification clusters,
so no site can fix everything alone: ``calc`` has the missing kind, ``newscanner`` the
new grey levels. Measured on the union of the validation sets, per kind, sensitivity at
1 false positive per image (findings labelled with the lesion's kind):

* each site's **local-only** model: the parent fine-tuned on that site's images alone,
  for as many iterations as the site trains in the whole federation;
* the **federated** model: FLARE's simulator, one process per site, the server's
  :class:`~mammotriage.learning.fl_flare.FederationController`;
* the **pooled** model (the ceiling): every site's training images in one place,
  trained for as many iterations as all the sites together.

A site can be added that attacks (``malicious``: NaN updates, or its update scaled
100x): the server must reject it and the round still complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammotriage.learning.federation import FederationError
from mammotriage.learning.fl_config import FAULTS, PROFILES, SimConfig
from mammotriage.learning.fl_site import DetectorSiteEngine, JobParams, RoundLog, SiteClient
from mammotriage.model.data import Sample

KINDS = ("mass", "calcification")


def new_scanner(img: np.ndarray) -> np.ndarray:
    """The "new scanner" intensity model on an 8-bit display image: gamma 1.8, then the
    grey range compressed to 30..200 (tissue darker, lesions lower in contrast)."""
    x = np.asarray(img, dtype=np.float32) / 255.0
    y = 30.0 + 170.0 * np.power(x, 1.8)
    out: np.ndarray = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return out


def _exam_samples(seed: int, number: int, rows: int, columns: int, scanner: str) -> tuple[list[Sample], set[str]]:
    from mammotriage.model.data import _row_spacing
    from mammotriage.phantom import generate_exam

    exam = generate_exam(seed, exam_number=number, rows=rows, columns=columns)
    out = []
    for img in exam.images:
        les = [lesion for lesion in exam.lesions if lesion.sop_uid == img.sop_uid]

        def load(ds: Any = img.dataset, pixels: np.ndarray = img.pixels) -> np.ndarray:
            from mammotriage.dicom.read import parse_metadata
            from mammotriage.model.preprocess import display_from_mammo

            d = display_from_mammo(parse_metadata(ds), pixels)
            return new_scanner(d) if scanner == "new" else d

        out.append(Sample(key=f"fedsim:{scanner}:{seed}:{number}:{img.label}", group=f"fedsim:{seed}:{number}",
                          source="phantom", abnormal=bool(les),
                          boxes=np.array([lesion.box for lesion in les], dtype=np.float64).reshape(-1, 4),
                          kinds=[lesion.kind for lesion in les], load=load, spacing_mm=_row_spacing(img.dataset)))
    return out, {lesion.kind for lesion in exam.lesions}


def profile_samples(profile: str, seed: int, n_lesion: int, n_normal: int, rows: int, columns: int,
                    start: int = 1) -> list[Sample]:
    """``n_lesion`` exams of the profile's kind and ``n_normal`` normal exams of phantom
    ``seed``, taken in exam-number order from ``start`` (deterministic)."""
    if profile not in PROFILES:
        raise FederationError(f"unknown site profile {profile!r}; use one of {', '.join(PROFILES)}")
    scanner = "new" if profile == "newscanner" else "usual"
    out: list[Sample] = []
    got_lesion = got_normal = 0
    n = start
    while got_lesion < n_lesion or got_normal < n_normal:
        samples, kinds = _exam_samples(seed, n, rows, columns, scanner)
        n += 1
        if not kinds:
            if got_normal < n_normal:
                out.extend(samples)
                got_normal += 1
        elif got_lesion < n_lesion and ((profile == "calc" and "calcification" in kinds)
                                        or (profile != "calc" and kinds == {"mass"})):
            out.extend(samples)
            got_lesion += 1
        if n - start > 50 * (n_lesion + n_normal + 1):
            raise FederationError(f"phantom seed {seed} has too few exams for profile {profile}")
    return out


def site_names(cfg: SimConfig) -> list[tuple[str, str]]:
    """(site name, profile) of each simulated site; the attacker last."""
    out = [(f"site-{i + 1}-{PROFILES[i % len(PROFILES)]}", PROFILES[i % len(PROFILES)]) for i in range(cfg.sites)]
    if cfg.malicious:
        out.append((f"site-{cfg.sites + 1}-malicious-{cfg.malicious}", "mass"))
    return out


def _site_data(cfg: Mapping[str, Any], split: str) -> list[Sample]:
    seed = int(cfg["seed"])
    rows, columns = int(cfg["rows"]), int(cfg["columns"])
    # training and validation exams come from different phantom seeds: disjoint patients
    if split == "train":
        return profile_samples(cfg["profile"], 1000 + 10 * seed + PROFILES.index(cfg["profile"]),
                               int(cfg["train_lesion_exams"]), int(cfg["train_normal_exams"]), rows, columns)
    return profile_samples(cfg["profile"], 5000 + 10 * seed + PROFILES.index(cfg["profile"]),
                           int(cfg["val_lesion_exams"]), int(cfg["val_normal_exams"]), rows, columns)


def _fault(kind: str | None) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None:
    if not kind:
        return None
    if kind not in FAULTS:
        raise FederationError(f"unknown fault {kind!r}; use one of {', '.join(FAULTS)}")

    def apply(delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in delta.items():
            if not v.is_floating_point():
                out[k] = v
            elif kind == "nan":
                out[k] = torch.full_like(v, float("nan"))
            else:
                out[k] = v * 100.0
        return out

    return apply


def build_site_client(site: str, cfg: Mapping[str, Any]) -> tuple[SiteClient, Any]:
    """A site's client from its own configuration (what :func:`fl_flare.run_site` runs):
    ``{"parent": package, "data": {...}, "log": file, "threads", "seed", "opt_out_rounds",
    "fault"}``. ``data`` is ``{"type": "phantom-sim", "profile", "seed", ...}`` (a simulated
    site) or ``{"type": "snapshot", "archive": file, "snapshot": sha256}`` (the site's own
    training snapshot, validation images removed)."""
    data = dict(cfg["data"])
    if data.get("type") == "phantom-sim":
        samples = _site_data(data, "train")
    elif data.get("type") == "snapshot":
        from mammotriage.learning.dataset_check import check_snapshot
        from mammotriage.learning.snapshot_data import training_set

        # the same data tests as a local retrain: a snapshot that fails them never trains
        check = check_snapshot(str(data["snapshot"]), data["archive"])
        if not check["passed"]:
            raise FederationError(f"site {site}: training snapshot {str(data['snapshot'])[:12]} fails its data tests "
                                  f"(`mammotriage dataset check {str(data['snapshot'])[:12]}`): "
                                  + "; ".join(check["reasons"]))
        samples = training_set(str(data["snapshot"]), data["archive"]).samples
    else:
        raise FederationError(f"site {site}: unknown data type {data.get('type')!r}")
    engine = DetectorSiteEngine(cfg["parent"], samples, threads=int(cfg.get("threads", 1)),
                                seed=int(cfg.get("seed", 0)), optimizer=str(cfg.get("optimizer", "adamw")))
    client = SiteClient(site, engine, RoundLog(cfg["log"]), opt_out_rounds=cfg.get("opt_out_rounds", ()),
                        seed=int(cfg.get("seed", 0)))
    return client, _fault(cfg.get("fault"))


# ------------------------------------------------------------------ the experiment


def train_parent(out_dir: Path, cfg: SimConfig, log: Callable[[str], None]) -> Path:
    """The shared parent: usual-scanner phantom exams without calcification clusters."""
    from mammotriage.learning.snapshot_data import phantom_pool
    from mammotriage.model.network import NetworkConfig
    from mammotriage.model.package import ModelPackageError, save_package, verify
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.train import TrainParams, train

    source = {"type": "phantom", "n_exams": cfg.parent_exams, "seed": 100, "rows": cfg.rows,
              "columns": cfg.columns, "exclude_kinds": ["calcification"], "epochs": cfg.parent_epochs}
    if out_dir.is_dir():
        try:
            verify(out_dir)
            from mammotriage.model.package import read_metadata

            had = ((read_metadata(out_dir).get("training_data") or {}).get("sources") or [{}])[0]
            if {k: had.get(k) for k in source} == source:
                return out_dir  # trained by an earlier run with this output folder and these settings
            log(f"{out_dir}: a parent of other settings ({had}); training a new one")
        except (ModelPackageError, OSError, ValueError):
            pass
        import shutil

        shutil.rmtree(out_dir)
    config = NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=20)
    pp = PreprocessParams(canvas_rows=cfg.rows, canvas_columns=int(round(cfg.columns * 0.923 / 8)) * 8)
    hp = TrainParams(epochs=cfg.parent_epochs, batch_size=2, patch_rows=cfg.rows, pretrained=True,
                     threads=cfg.threads, checkpoint_every=10**9, warmup_iters=10, lr=6e-4, seed=3)
    samples = phantom_pool(cfg.parent_exams, 100, cfg.rows, cfg.columns, ("calcification",))
    t = time.monotonic()
    result = train(samples, out_dir.parent / f".{out_dir.name}-work", hp, config, pp, resume=False,
                   progress=False, log_every=0)
    log(f"parent trained on {len(samples)} images in {time.monotonic() - t:.0f} s")
    training = {"summary": "phantom exams without calcification clusters (federation simulation parent)",
                "sources": [{**source, "images": len(samples)}],
                "n_images": len(samples)}
    save_package(out_dir, result.detector, config, pp, version="0.9.0-fedsim",
                 description="federation simulation parent", training=training, hyper_parameters=hp.to_json(),
                 seed=hp.seed, eval_metrics={}, operating_points={})
    return out_dir


def _figures(records: list[dict[str, Any]]) -> dict[str, float]:
    from mammotriage.learning.gate import kind_sensitivity

    out = {f"{k}_sens@1": round(float(kind_sensitivity(records, k, 1.0)), 4) for k in KINDS}
    out["mean_sens@1"] = round(float(np.mean([out[f"{k}_sens@1"] for k in KINDS])), 4)
    return out


def _state_of(parent: Path) -> dict[str, torch.Tensor]:
    from mammotriage.learning.retrain import load_parent_for_training

    det = load_parent_for_training(parent)[0]
    return {k: v.detach().clone() for k, v in det.network.state_dict().items()}


def sim_data_config(cfg: SimConfig, seed: int) -> dict[str, Any]:
    """A simulated site's phantom draw (with its ``profile`` added: :func:`_site_data`)."""
    return {"seed": seed, "rows": cfg.rows, "columns": cfg.columns, "train_lesion_exams": cfg.train_lesion_exams,
            "train_normal_exams": cfg.train_normal_exams, "val_lesion_exams": cfg.val_lesion_exams,
            "val_normal_exams": cfg.val_normal_exams}


def sim_validation(cfg: SimConfig, seed: int, sites: Sequence[tuple[str, str]]) -> list[Sample]:
    """The union of the simulated sites' locked validation exams."""
    data = sim_data_config(cfg, seed)
    return [s for _, p in sites for s in _site_data({**data, "profile": p}, "val")]


def sim_site_configs(work: Path, parent: Path, cfg: SimConfig, seed: int,
                     more_sites: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]]]:
    """The simulated sites (name, profile) and each one's configuration
    (:func:`build_site_client`), logs under ``work/sites``."""
    sites = site_names(cfg)
    site_cfg: dict[str, dict[str, Any]] = {}
    for name, profile in sites:
        fault = cfg.malicious if "malicious" in name else None
        site_cfg[name] = {
            "parent": str(parent), "threads": cfg.threads, "seed": seed, "optimizer": cfg.optimizer,
            "log": str(work / "sites" / name / "rounds.jsonl"),
            "fault": fault,
            "data": {"type": "phantom-sim", "profile": profile, **sim_data_config(cfg, seed)}}
    for name, extra in (more_sites or {}).items():
        site_cfg[name] = {"log": str(work / "sites" / name / "rounds.jsonl"), "threads": cfg.threads,
                          "seed": seed, "optimizer": cfg.optimizer, **dict(extra)}
        sites.append((name, str(extra.get("data", {}).get("profile", extra.get("data", {}).get("type", "")))))
    return sites, site_cfg


def build_job(name: str, initial_weights: Path, out_dir: Path, cfg: SimConfig, sites: Sequence[str]) -> Any:
    """The FLARE job: :class:`fl_flare.FederationController` on the server, the app's own
    executor at every site; no script and no code travel with it."""
    from mammotriage.learning import fl_flare

    try:
        from nvflare.job_config.api import FedJob
    except ImportError as exc:  # pragma: no cover - a broken install
        raise FederationError(f"NVIDIA FLARE is not installed ({exc}); reinstall the app") from None
    job = FedJob(name=name, min_clients=len(sites))
    job.set_app_packages(["mammotriage"])  # the app is installed at every site: no code travels
    job.to_server(fl_flare.FederationController(
        initial_weights=str(initial_weights), out_dir=str(out_dir), rounds=cfg.rounds, min_sites=2,
        method=cfg.method, server_lr=cfg.server_lr, job_params=cfg.job_params(), job_name=name))
    for site in sites:
        job.to(fl_flare.site_executor(), site)
    return job


def run_flare(work: Path, parent: Path, cfg: SimConfig, seed: int, log: Callable[[str], None],
              more_sites: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One federated run on FLARE's simulator; returns the server's ``federation.json``
    with the sites' own logs. ``more_sites``: further sites by name, each with its whole
    configuration (:func:`build_site_client`; ``log`` defaults to the work folder)."""
    from safetensors.torch import save_file

    from mammotriage.learning import fl_flare

    work.mkdir(parents=True, exist_ok=True)
    init = work / "initial.safetensors"
    save_file({k: v.contiguous() for k, v in _state_of(parent).items()}, str(init))
    sites, site_cfg = sim_site_configs(work, parent, cfg, seed, more_sites)
    sites_file = work / "sites.json"
    sites_file.write_text(json.dumps(site_cfg, indent=1), encoding="utf-8")
    out = work / "server"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    job = build_job(f"fedsim-seed{seed}", init, out, cfg, [n for n, _ in sites])
    # the simulator runs the server and every site from one workspace: one policy for all
    fl_flare.write_component_policy(work / "flare" / "local", server=True, site=True)
    old = os.environ.get(fl_flare.SITES_ENV)
    os.environ[fl_flare.SITES_ENV] = str(sites_file)
    t = time.monotonic()
    try:
        # one simulator thread per site: each site's process lives for the whole job (fewer
        # threads than sites would start a site's process, and rebuild its data, per round)
        job.simulator_run(str(work / "flare"), threads=len(sites), log_config="concise")
    finally:
        if old is None:
            os.environ.pop(fl_flare.SITES_ENV, None)
        else:
            os.environ[fl_flare.SITES_ENV] = old
    summary_file = out / "federation.json"
    if not summary_file.is_file():
        raise FederationError(f"the FLARE simulation ended without a global model; its log is under {work / 'flare'}")
    summary: dict[str, Any] = json.loads(summary_file.read_text(encoding="utf-8"))
    summary["seconds"] = round(time.monotonic() - t, 1)
    summary["global_weights"] = str(out / "global.safetensors")
    summary["site_logs"] = {name: RoundLog(str(site_cfg[name]["log"])).entries() for name, _ in sites}
    log(f"seed {seed}: federation of {len(sites)} sites, {summary['completed_rounds']}/{cfg.rounds} rounds "
        f"in {summary['seconds']} s")
    return summary


def simulate(out: Path, cfg: SimConfig | None = None, log: Callable[[str], None] = print,
             baselines: bool = True) -> dict[str, Any]:
    """The whole experiment (module docstring); returns the JSON report."""
    from safetensors.torch import load_file

    cfg = cfg or SimConfig()
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    parent = train_parent(out / "parent", cfg, log)
    base_state = _state_of(parent)
    report: dict[str, Any] = {"config": {**asdict(cfg), "seeds": list(cfg.seeds)},
                              "sites": [{"site": n, "profile": p} for n, p in site_names(cfg)], "seeds": {}}
    for seed in cfg.seeds:
        t_seed = time.monotonic()
        honest = [(n, p) for n, p in site_names(cfg) if "malicious" not in n]
        data_cfg = sim_data_config(cfg, seed)
        train = {n: _site_data({**data_cfg, "profile": p}, "train") for n, p in honest}
        val = sim_validation(cfg, seed, honest)
        groups_train = {s.group for v in train.values() for s in v}
        assert not groups_train & {s.group for s in val}, "a patient in both training and validation"
        fig: dict[str, Any] = {"split": {n: {"train_images": len(v), "train_patients": len({s.group for s in v}),
                                              "lesions": {k: sum(s.kinds.count(k) for s in v) for k in KINDS}}
                                          for n, v in train.items()},
                               "validation": {"images": len(val), "patients": len({s.group for s in val}),
                                              "lesions": {k: sum(s.kinds.count(k) for s in val) for k in KINDS}}}
        evaluator = DetectorSiteEngine(parent, [], threads=cfg.threads, seed=seed)
        fig["parent"] = _figures(evaluator.evaluate(base_state, val))
        total = cfg.rounds * cfg.local_iterations
        if baselines:
            for name, samples in train.items():
                eng = DetectorSiteEngine(parent, samples, threads=cfg.threads, seed=seed, optimizer=cfg.optimizer)
                state = eng.train(base_state, JobParams(local_iterations=total, lr=cfg.lr), 0)
                fig[f"local:{name}"] = _figures(evaluator.evaluate(state, val))
                log(f"seed {seed}: local-only {name}: {fig[f'local:{name}']}")
            pooled = DetectorSiteEngine(parent, [s for v in train.values() for s in v], threads=cfg.threads,
                                        seed=seed, optimizer=cfg.optimizer)
            state = pooled.train(base_state, JobParams(local_iterations=total * len(train), lr=cfg.lr), 0)
            fig["pooled"] = _figures(evaluator.evaluate(state, val))
            log(f"seed {seed}: pooled: {fig['pooled']}")
        fed = run_flare(out / f"seed{seed}", parent, cfg, seed, log)
        fig["federated"] = _figures(evaluator.evaluate(load_file(fed["global_weights"]), val))
        log(f"seed {seed}: federated: {fig['federated']}")
        fig["federation"] = {k: fed[k] for k in ("completed_rounds", "participants", "sites", "final_sha256",
                                                 "seconds", "history", "site_logs")}
        fig["seconds"] = round(time.monotonic() - t_seed, 1)
        report["seeds"][str(seed)] = fig
    report["summary"] = summarise(report) if baselines else {}
    report["seconds"] = round(time.monotonic() - t_all, 1)
    return report


def summarise(report: Mapping[str, Any]) -> dict[str, Any]:
    """Means over seeds and the target: federated above every local-only model and within
    0.05 of pooled (both on the mean of the per-kind sensitivities at 1 FP/image)."""
    seeds = list(report["seeds"].values())
    models = [k for k in seeds[0] if k == "parent" or k.startswith("local:") or k in ("federated", "pooled")]
    mean = {m: {f: round(float(np.mean([s[m][f] for s in seeds])), 4) for f in seeds[0][m]} for m in models}
    best_local = max(mean[m]["mean_sens@1"] for m in models if m.startswith("local:"))
    fed, pooled = mean["federated"]["mean_sens@1"], mean["pooled"]["mean_sens@1"]
    per_seed = [{"federated_minus_best_local": round(s["federated"]["mean_sens@1"]
                                                     - max(s[m]["mean_sens@1"] for m in s if m.startswith("local:")), 4),
                 "pooled_minus_federated": round(s["pooled"]["mean_sens@1"] - s["federated"]["mean_sens@1"], 4)}
                for s in seeds]
    return {"mean_over_seeds": mean, "per_seed": per_seed,
            "target": {"federated_beats_every_local": fed > best_local,
                       "within_0.05_of_pooled": pooled - fed <= 0.05,
                       "federated": fed, "best_local": best_local, "pooled": pooled}}


def report_text(report: Mapping[str, Any]) -> str:
    """The report as lines a person reads."""
    lines = [f"federation simulation: {len(report['sites'])} sites, seeds {report['config']['seeds']}, "
             f"{report['config']['rounds']} rounds x {report['config']['local_iterations']} local iterations, "
             f"{report['config']['method']}, local {report['config'].get('optimizer', 'adamw')}, server learning rate {report['config'].get('server_lr', 1.0):g}"]
    lines += [f"  {s['site']}: {s['profile']}" for s in report["sites"]]
    for seed, fig in report["seeds"].items():
        lines.append(f"seed {seed}: validation {fig['validation']}")
        for m in [k for k in fig if k == "parent" or k.startswith("local:") or k in ("federated", "pooled")]:
            lines.append(f"  {m:32s} " + "  ".join(f"{k} {v:.3f}" for k, v in fig[m].items()))
        for h in fig["federation"]["history"]:
            rej = "; ".join(f"{s}: {r}" for s, r in (h.get("rejected") or {}).items())
            lines.append(f"  round {h['round']}: {'completed' if h.get('completed') else 'NOT completed'}, "
                         f"accepted {', '.join(h.get('accepted', [])) or '-'}" + (f"; rejected {rej}" if rej else ""))
    t = (report.get("summary") or {}).get("target")
    if t:
        lines.append(f"target: federated {t['federated']:.3f}, best local-only {t['best_local']:.3f}, pooled "
                     f"{t['pooled']:.3f}: beats every local-only {'yes' if t['federated_beats_every_local'] else 'NO'}, "
                     f"within 0.05 of pooled {'yes' if t['within_0.05_of_pooled'] else 'NO'}")
    lines.append(f"total {report['seconds']} s")
    return "\n".join(lines)

