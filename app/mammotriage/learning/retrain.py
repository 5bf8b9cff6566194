"""On-site fine-tuning: the current model + a training snapshot (+ replay) -> a candidate package.

::

    parent package ──(verified weights)──┐
    training snapshot ─(validation images removed, reviewed only)─┤
    replay: seeded sample of the parent's own training data ──────┴─> fine_tune -> candidate

The loop is :mod:`mammotriage.model.train`'s (same patches, augmentation, frozen early
stages, backbone BatchNorms in eval mode) started from the parent's weights with a
short warm-up and a cosine decay. It is bit-for-bit reproducible on CPU: inputs are
sorted, every random draw of iteration ``i`` comes from ``(seed, i)``, torch runs
deterministic kernels on a fixed number of threads, so the same parent, snapshot and
seed give the same weights file (same sha256) — and the same version name, which is
derived from those inputs.

After the network, the parent's second look is refitted (:func:`refit_second_look`):
the calcification trees on the vendor's examples (the parent's training data, rebuilt)
plus the snapshot's, their prior shift, and stage two on the new network's candidates;
it is carried unchanged, with the reason, when the vendor's data cannot be rebuilt.

The candidate's metadata names its parent (version and weights hash), the snapshot
hash, what was excluded and why, the replay data (or that it was unavailable), what
happened to the second look and every parameter. It is registered (origin ``site``) but never made active: promotion goes
through the validation gate (:mod:`mammotriage.learning.gate`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammotriage.learning.snapshot_data import (
    archive_or_default,
    class_counts,
    phantom_pool,
    replay_pool,
    replay_sample,
    resolve_model,
    samples_digest,
    training_set,
    uid_digest,
)
from mammotriage.model.data import Sample

if TYPE_CHECKING:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    from mammotriage.model.network import NetworkConfig
    from mammotriage.model.preprocess import PreprocessParams
    from mammotriage.model.train import TrainParams

#: ``progress(stage, done, total, note)``; stages: "load", "prepare", "train",
#: "second_look" (refitting the calcification trees and stage two), "write".
Progress = Callable[[str, int, int, str], None]


@dataclass
class RetrainParams:
    """Fine-tuning parameters (all recorded in the candidate's metadata)."""

    epochs: float = 1.0  # passes over the snapshot (+ replay) training list
    replay_fraction: float = 0.5  # replay images per snapshot image
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 30
    batch_size: int = 2
    patch_rows: int = 512  # capped at the canvas height
    positive_fraction: float = 0.6
    abnormal_repeat: int = 2
    freeze: tuple[str, ...] = ("conv_stem", "bn1", "blocks.0", "blocks.1")
    seed: int = 0
    threads: int = 2
    max_iterations: int | None = 240  # the budget: ~8 min on 2 CPU cores at the shipped canvas
    max_minutes: float | None = None  # a wall-time cap makes the result time-dependent
    aug_scale: tuple[float, float] = (0.85, 1.15)
    aug_gamma: tuple[float, float] = (0.75, 1.35)
    aug_vflip: bool = True
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("freeze", "aug_scale", "aug_gamma"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RetrainParams:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("freeze", "aug_scale", "aug_gamma"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def signature(self) -> dict[str, Any]:
        """What decides the weights (not the wall-time cap)."""
        return {k: v for k, v in self.to_json().items() if k != "max_minutes"}

    def train_params(self, canvas_rows: int) -> TrainParams:
        from mammotriage.model.train import TrainParams

        return TrainParams(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, warmup_iters=self.warmup_iters,
                           patch_rows=min(self.patch_rows, canvas_rows),
                           positive_fraction=self.positive_fraction, abnormal_repeat=self.abnormal_repeat,
                           freeze=self.freeze, pretrained=False, seed=self.seed, threads=self.threads,
                           aug_scale=self.aug_scale, aug_gamma=self.aug_gamma, aug_vflip=self.aug_vflip)


class RetrainError(RuntimeError):
    """Fine-tuning refused or impossible, with the reason."""


@dataclass
class FineTuneResult:
    detector: Any
    config: Any
    pp: Any
    parent_meta: dict[str, Any]
    iterations: int
    total_iterations: int
    seconds: float
    prepare_seconds: float
    final_loss: float
    finished: bool
    n_train: int
    n_replay: int


@dataclass
class RetrainResult:
    version: str
    path: Path
    weights_sha256: str
    metadata: dict[str, Any]
    finished: bool
    seconds: float
    registered: bool


def _say(progress: Progress | None, stage: str, done: int, total: int, note: str = "") -> None:
    if progress is not None:
        progress(stage, done, total, note)


def _lr_at(it: int, total: int, p: RetrainParams) -> float:
    from mammotriage.model.train import cosine_lr

    return cosine_lr(it, total, p.lr, p.warmup_iters, floor=0.05)


def load_parent_for_training(parent_dir: str | Path
                             ) -> tuple[RetinaNetDetector, NetworkConfig, PreprocessParams, dict[str, Any]]:
    """(detector with training components, config, preprocessing, metadata) of a verified package."""
    from mammotriage.model.infer import load_detector
    from mammotriage.model.network import build_detector

    det, config, pp, meta = load_detector(parent_dir)
    trainable = build_detector(config, train_components=True)
    trainable.network.load_state_dict(det.network.state_dict(), strict=True)
    return trainable, config, pp, meta


def fine_tune(parent_dir: str | Path, samples: list[Sample], replay: list[Sample],
              params: RetrainParams | None = None, progress: Progress | None = None,
              stop_at: int | None = None) -> FineTuneResult:
    """Fine-tune the parent on ``samples`` + ``replay`` (each sorted by key here).

    Deterministic on CPU for fixed inputs, parameters and thread count.
    """
    import torch

    from mammotriage.model.train import (
        _epoch_list,
        backbone_bn_eval,
        prepare,
        set_frozen,
        train_step,
    )

    p = params or RetrainParams()
    torch.set_num_threads(max(1, int(p.threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(p.seed)
    _say(progress, "load", 0, 1, f"parent {parent_dir}")
    detector, config, pp, meta = load_parent_for_training(parent_dir)
    hp = p.train_params(pp.canvas_rows)
    ordered = sorted(samples, key=lambda s: s.key) + sorted(replay, key=lambda s: s.key)
    t0 = time.monotonic()
    prepared = []
    for i, s in enumerate(ordered):
        prepared.extend(prepare([s], pp))
        _say(progress, "prepare", i + 1, len(ordered), s.key)
    prepare_seconds = time.monotonic() - t0
    set_frozen(detector, hp)
    trainable = [q for q in detector.network.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=p.weight_decay)
    per_epoch = max(1, len(_epoch_list(prepared, hp)) // hp.batch_size)
    total = max(1, int(round(p.epochs * per_epoch)))
    if p.max_iterations is not None:
        total = max(1, min(total, int(p.max_iterations)))
    detector.train()
    backbone_bn_eval(detector)
    t1 = time.monotonic()
    it = 0
    loss_ema = float("nan")
    finished = True
    while it < total:
        if (stop_at is not None and it >= stop_at) or \
                (p.max_minutes is not None and time.monotonic() - t1 > p.max_minutes * 60):
            finished = False
            break
        lv, _, _ = train_step(detector, opt, trainable, prepared, it, hp, pp, _lr_at(it, total, p), p.seed)
        loss_ema = lv if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * lv
        it += 1
        _say(progress, "train", it, total, f"loss {loss_ema:.3f}")
    detector.eval()
    return FineTuneResult(detector, config, pp, meta, it, total, time.monotonic() - t1, prepare_seconds,
                          loss_ema, finished, len(samples), len(replay))


# ------------------------------------------------------------------ candidate package

def candidate_version(parent_meta: dict[str, Any], inputs: dict[str, Any]) -> str:
    """``<root version>-site.<8 hex>``: a pure function of the parent and the inputs, so a
    reproduced run gets the same version (and registering it again is a no-op)."""
    root = str(parent_meta.get("version", "0")).split("-site.")[0]
    h = hashlib.sha256(json.dumps({"parent": parent_meta.get("weights_sha256"), **inputs},
                                  sort_keys=True).encode()).hexdigest()[:8]
    return f"{root}-site.{h}"


def candidate_inputs(train_desc: dict[str, Any], samples: list[Sample], replay: list[Sample],
                     params: RetrainParams, note: str = "") -> dict[str, Any]:
    """Everything besides the parent that decides a candidate's weights."""
    return {"snapshot": train_desc.get("sha256"),
            "samples": samples_digest(sorted(samples, key=lambda s: s.key)),
            "replay": samples_digest(sorted(replay, key=lambda s: s.key)),
            "params": params.signature(), "note": note}


def _card(meta: dict[str, Any]) -> str:
    ft = meta["fine_tuning"]
    snap = ft["snapshot"]
    rep = ft["replay"]
    lines = [f"# Mammo Triage lesion detector v{meta['version']} (site fine-tuned candidate)", "",
             f"**Intended use:** {meta['intended_use']}.", "",
             f"Fine-tuned on site from **v{ft['parent']['version']}** (weights sha256 "
             f"`{ft['parent']['weights_sha256'][:16]}…`).", "",
             "## Data",
             f"* Training snapshot `{snap['sha256']}` ({snap.get('name') or 'unnamed'}): {snap['images']} reviewed "
             f"images ({snap['abnormal_images']} with findings, {snap['patients']} patients), lesions "
             f"{json.dumps(snap['lesions'])}.",
             f"* Excluded before training: {json.dumps(snap['excluded']) if snap['excluded'] else 'nothing'} "
             f"(validation snapshots guarded: {', '.join(s[:12] for s in snap['validation_snapshots_excluded']) or 'none'}).",
             f"* Replay of the parent's training data: {rep['n_images']} images "
             + ("" if rep["available"] else "— **original training data unavailable, snapshot only**; ")
             + "; ".join(f"{s['type']}: {s['note']}" for s in rep["sources"]) + ".", "",
             "## Training",
             f"{ft['iterations']}/{ft['total_iterations']} iterations in {ft['seconds']:.0f} s "
             f"({'finished' if ft['finished'] else 'stopped early: NOT reproducible'}); seed {meta['seed']}.", "",
             "```", json.dumps(meta["hyper_parameters"], indent=1), "```", "",
             "## Validation",
             "Not yet validated: run `mammotriage validate " + meta["version"] + "` (validation gate) "
             "before promoting. Operating points are inherited from the parent (the gate recalibrates them).",
             f"Second look: {ft.get('second_look', {}).get('action', 'none')} "
             f"({ft.get('second_look', {}).get('reason', '')}).", *_refit_lines(ft.get("second_look", {})), ""]
    return "\n".join(lines)


def _refit_lines(sl: dict[str, Any]) -> list[str]:
    """The card's account of a refitted second look (nothing for a carried one)."""
    if sl.get("action") != "refitted":
        return []
    v, site, ph = sl["vendor"], sl["site"], sl["phantoms"]
    st2 = sl["stage_two"]
    return [f"* Calcification trees refitted on {v['images']} vendor images ({v['labelled_clusters']} labelled "
            f"clusters, {v['synthetic_clusters']} simulated) + {ph['images']} phantom images "
            f"({ph['labelled_clusters']} clusters) + {site['images']} site images ({site['labelled_clusters']} "
            f"clusters marked by readers, {site['synthetic_clusters']} simulated); prior-shift offset "
            f"{sl['parent_calc_offset']:.3f} -> **{sl['calc_offset']:.3f}** (labelled clusters among the real "
            f"images' candidates: {sl['real_cluster_rate']:.4f}); {sl['seconds']:.0f} s.",
            "* Stage two: " + (f"refitted on {st2['rows']} candidates of the new network "
                               f"({st2['positives']} hits) over the same real images."
                               if st2["action"] == "refitted" else f"{st2['action']} ({st2['reason']}).")]


def write_candidate(out_dir: str | Path, result: FineTuneResult, parent_dir: str | Path,
                    params: RetrainParams, train_desc: dict[str, Any], replay_desc: dict[str, Any],
                    samples: list[Sample], replay: list[Sample], *, version: str | None = None,
                    note: str = "", refit: SecondLookRefit | None = None) -> tuple[str, Path, dict[str, Any]]:
    """Write the candidate package; returns (version, folder, metadata).

    ``refit``: what :func:`refit_second_look` made of the parent's second look (its
    fitted :class:`~mammotriage.model.twostage.SecondLook`, or None when it was carried,
    and the record for ``fine_tuning.second_look``); without it the parent's second look
    is carried unchanged (:func:`second_look_policy`)."""
    import torch

    from mammotriage.model.infer import load_second_look
    from mammotriage.model.package import read_metadata, save_package

    parent = result.parent_meta
    inputs = candidate_inputs(train_desc, samples, replay, params, note)
    if refit is not None and refit.second_look is not None:
        inputs["second_look"] = refit.inputs
    digest_train, digest_replay = inputs["samples"], inputs["replay"]
    version = version or candidate_version(parent, inputs)
    hp = params.to_json()
    hp.update(iterations=result.iterations, total_iterations=result.total_iterations,
              train_seconds=round(result.seconds, 1), prepare_seconds=round(result.prepare_seconds, 1),
              final_loss=None if math.isnan(result.final_loss) else round(result.final_loss, 4),
              patch_rows_used=min(params.patch_rows, result.pp.canvas_rows))
    parent_training = parent.get("training_data", {})
    snap_source = {k: train_desc[k] for k in ("type", "sha256", "name", "images")}
    training = {
        "summary": f"fine-tuned from v{parent.get('version')} on site snapshot {str(train_desc.get('sha256'))[:12]}"
                   + (f" + {len(replay)} replay images" if replay else " (no replay)"),
        "sources": [*parent_training.get("sources", []), snap_source],
        "sha256": hashlib.sha256((digest_train + digest_replay).encode()).hexdigest(),
        "n_images": len(samples) + len(replay),
        "n_boxes": int(sum(len(s.kinds) for s in samples) + sum(len(s.kinds) for s in replay)),
        "parent_training": parent_training,
    }
    fine = {
        "parent": {"version": parent.get("version"), "weights_sha256": parent.get("weights_sha256"),
                   "path": str(Path(parent_dir).resolve())},
        "snapshot": train_desc,
        "replay": replay_desc,
        "params": params.to_json(),
        "state_sha256": weights_digest(result.detector),  # fp32 tensors only (no file header)
        "samples_sha256": digest_train,
        "replay_sha256": digest_replay,
        "class_counts": {"snapshot": class_counts(samples), "replay": class_counts(replay)},
        "site_images": sorted(uid_digest(s.key.split(":", 1)[1]) for s in samples if s.source == "site"),
        "iterations": result.iterations,
        "total_iterations": result.total_iterations,
        "finished": result.finished,
        "seconds": round(result.seconds, 1),
        "determinism": {"torch": torch.__version__, "threads": params.threads,
                        "deterministic_algorithms": True, "device": "cpu"},
        "note": note,
    }
    second_look = load_second_look(parent_dir, parent)
    fine["second_look"] = refit.info if refit is not None else second_look_policy(parent)
    if refit is not None and refit.second_look is not None:
        second_look = refit.second_look
        hp["second_look"] = {**refit.second_look.to_json(), "trees": refit.trees}
    elif (parent.get("hyper_parameters") or {}).get("second_look"):
        hp["second_look"] = parent["hyper_parameters"]["second_look"]  # carried: its settings travel too
    ops = dict(parent.get("operating_points") or {})
    if ops:
        ops["inherited_from"] = parent.get("version")
    changelog = dict(parent.get("changelog") or {})
    changelog[version] = training["summary"] + (f" [{note}]" if note else "")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    save_package(out_dir, result.detector, result.config, result.pp, version=version,
                 description=f"site fine-tuned candidate of v{parent.get('version')}", training=training,
                 hyper_parameters=hp, seed=params.seed, eval_metrics={}, operating_points=ops,
                 parent_version=parent.get("version"), changelog=changelog,
                 # the second look (stage two, calcification trees): refitted (refit_second_look)
                 # or carried over unchanged (second_look_policy says why)
                 second_look=second_look,
                 extra={"fine_tuning": fine, "name_of_parent": parent.get("name"),
                        # the drift monitor's baseline stays the parent's training data
                        "input_reference": parent.get("input_reference") or {},
                        "training_scanners": parent.get("training_scanners") or []})
    lic = Path(parent_dir) / "LICENSE"
    if lic.is_file():
        shutil.copyfile(lic, out_dir / "LICENSE")
    meta = read_metadata(out_dir)
    (out_dir / "docs" / "README.md").write_text(_card(meta))
    return version, out_dir, meta


def second_look_policy(parent_meta: dict[str, Any], reason: str = "") -> dict[str, Any]:
    """The ``fine_tuning.second_look`` record of a candidate that keeps the parent's second
    look (``second_look.*``: stage two and the calcification trees) unchanged.

    :func:`retrain` refits them when it can (:func:`refit_second_look`); it carries them
    when the parent's training data (the vendor's images the trees learnt from) cannot
    be rebuilt here, since trees refitted on a site's few clusters alone would forget
    the vendor's. Carried trees still face the gate: the candidate is validated with
    them (``Engine.from_package`` runs the whole package), and its operating points are
    recalibrated from those predictions.
    """
    if "second_look" not in parent_meta:
        return {"action": "none", "reason": "the parent has no second look (stage one only)"}
    return {"action": "carried", "from": parent_meta.get("version"),
            "reason": reason or "kept unchanged (not refitted: written without a refit); the gate "
                                "validates the candidate with them and recalibrates its operating points"}


@dataclass
class SecondLookRefit:
    """What :func:`refit_second_look` made: the refitted second look (None: carried), the
    ``fine_tuning.second_look`` record, the tree settings, and what decides the trees."""

    second_look: Any
    info: dict[str, Any]
    trees: dict[str, Any] = field(default_factory=dict[str, Any])
    inputs: dict[str, Any] = field(default_factory=dict[str, Any])


def tree_settings(parent_meta: dict[str, Any]) -> dict[str, Any]:
    """The parent's tree and example settings (``hyper_parameters.second_look.trees``),
    else those of ``train --second-look`` (:data:`~mammotriage.model.crossval.SECOND_LOOK_TREES`).

    Besides those keys a package may name ``phantom_source`` (a phantom source as in
    ``training_data.sources``): the phantom exams its trees learnt from when its network
    did not; otherwise the trees' phantoms are the first ``calc_phantom_exams`` phantom
    exams of the training data, as ``train --second-look --calc-phantoms`` takes them."""
    from mammotriage.model.crossval import SECOND_LOOK_TREES

    stored = ((parent_meta.get("hyper_parameters") or {}).get("second_look") or {}).get("trees") or {}
    return {**SECOND_LOOK_TREES, **stored}


def refit_second_look(parent_dir: str | Path, parent_meta: dict[str, Any], result: FineTuneResult,
                      pool: list[Sample], sources: list[dict[str, Any]], site: list[Sample],
                      cache_dir: str | Path, progress: Progress | None = None, threads: int = 1) -> SecondLookRefit:
    """Refit the parent's calcification trees (and stage two) for the candidate.

    Cluster rows exactly as :func:`~mammotriage.model.crossval.second_look_cv` builds
    them, over the parent's training images rebuilt by :func:`replay_pool` (real labelled
    clusters and every other candidate, simulated clusters in the normal images,
    phantom clusters) plus the site's training images (the clusters the readers marked,
    simulated clusters in the site's normal images); the prior-shift offset from the
    rate of labelled clusters among all real images' candidates; stage two (when the
    parent has one) on the candidates of the fine-tuned network over the same real
    images. The vendor's examples are cached in ``cache_dir`` (named by a digest of the
    images, labels and settings). When the parent's training data cannot be rebuilt the
    second look is carried unchanged, with that reason.
    """
    from mammotriage.model.crossval import (
        _calc_training,
        calc_example_cache,
        calc_row_counts,
        fit_second_look,
        merge_calc_caches,
    )
    from mammotriage.model.infer import load_second_look

    sl_meta = parent_meta.get("second_look")
    if not sl_meta:
        return SecondLookRefit(None, second_look_policy(parent_meta))
    parent_sl = load_second_look(parent_dir, parent_meta)
    if parent_sl is None or parent_sl.calc is None:
        return SecondLookRefit(None, second_look_policy(
            parent_meta, "the parent's second look has no calcification trees to refit: carried unchanged"))
    missing = [f"{s.get('type')}: {s.get('note')}" for s in sources if not s.get("available")]
    if missing or not sources:
        return SecondLookRefit(None, second_look_policy(
            parent_meta, "the parent's training data (the vendor's images its trees learnt from) is unavailable "
                         f"here ({'; '.join(missing) or 'no training source recorded'}): trees refitted on the "
                         "site's clusters alone would forget the vendor's, so they are carried unchanged; the gate "
                         "validates the candidate with them and recalibrates its operating points"))
    t0 = time.monotonic()
    trees = tree_settings(parent_meta)
    params = parent_sl.calc_params
    site_keys = {s.key for s in site}
    vendor = sorted((s for s in pool if s.source != "phantom" and s.key not in site_keys), key=lambda s: s.key)
    spec = trees.get("phantom_source")  # phantoms the trees learnt from but the network did not
    phantoms = (phantom_pool(int(spec["n_exams"]), int(spec.get("seed", 1000)), int(spec.get("rows", 1024)),
                             int(spec.get("columns", 832)), spec.get("exclude_kinds", ()))
                if spec else [s for s in pool if s.source == "phantom"])
    phantoms = phantoms[: 4 * max(0, int(trees["calc_phantom_exams"]))]
    site = sorted(site, key=lambda s: s.key)
    n_all = len(vendor) + len(phantoms) + len(site)
    done = [0]

    def tick(_i: int, _n: int, key: str) -> None:
        done[0] += 1
        _say(progress, "second_look", done[0], n_all, key)

    syn = dict(synthetic_per_normal=int(trees["synthetic_per_normal"]), seed=int(trees["synthetic_seed"]),
               params=params, progress=tick)
    tag = json.dumps({"vendor": samples_digest(vendor), "phantoms": samples_digest(phantoms),
                      "calc_params": params.to_json(), **{k: trees[k] for k in ("synthetic_per_normal",
                                                                                "synthetic_seed")}},
                     sort_keys=True)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    vendor_file = cache_dir / f"vendor-{hashlib.sha256(tag.encode()).hexdigest()[:20]}.npz"
    cached = vendor_file.exists()
    if cached:
        _say(progress, "second_look", 0, n_all, f"vendor examples from {vendor_file.name}")
        done[0] = len(vendor) + len(phantoms)
    vendor_cache = calc_example_cache(vendor, phantoms, vendor_file, **syn)  # type: ignore[arg-type]
    site_file = cache_dir / f".site-{os.getpid()}.npz"
    try:
        site_cache = calc_example_cache(site, [], site_file, **syn)  # type: ignore[arg-type]
    finally:
        site_file.unlink(missing_ok=True)
    cache, (vendor_idx, site_idx) = merge_calc_caches([vendor_cache, site_cache])
    real_idx = vendor_idx[: len(vendor)] + site_idx
    phantom_idx = vendor_idx[len(vendor):]
    if not sum(len(cache.get(f"{i}.{y}", ())) for i in real_idx + phantom_idx for y in ("y", "ys")):
        return SecondLookRefit(None, second_look_policy(
            parent_meta, f"no cluster candidate on any of the {n_all} images to refit the trees on: "
                         "carried unchanged"))
    stage2 = None
    stage_two: dict[str, Any] = {"action": "none", "reason": "the parent has no stage two"}
    if parent_sl.stage2 is not None:
        stage2, stage_two = _stage_two_rows(result, vendor + site, progress, threads)
    sl = fit_second_look(cache, real_idx, phantom_idx, stage2=stage2, seed=int(trees["seed"]),
                         calc_prior_shift=bool(trees["calc_prior_shift"]), trees=trees, like=parent_sl)
    if parent_sl.stage2 is not None and sl.stage2 is None:
        sl.stage2 = parent_sl.stage2  # no candidate to learn from: the parent's stage two stays
    _, yc, rate = _calc_training(cache, real_idx, phantom_idx)

    def part(idx: list[int], samples: list[Sample], simulated: bool = True) -> dict[str, Any]:
        return {"labelled_clusters": sum(k == "calcification" for s in samples for k in s.kinds),
                "synthetic_clusters": int(trees["synthetic_per_normal"]) * sum(not s.abnormal for s in samples)
                if simulated else 0, **calc_row_counts(cache, idx)}

    info = {"action": "refitted", "from": parent_meta.get("version"),
            "reason": "calcification trees refitted on the vendor's examples (the parent's training data, rebuilt) "
                      "plus the site's (clusters the readers marked, simulated clusters in its normal images)",
            "trees": trees, "vendor": part(vendor_idx[: len(vendor)], vendor),
            "phantoms": part(phantom_idx, phantoms, simulated=False), "site": part(site_idx, site),
            "cluster_rows": int(len(yc)), "train_cluster_rate": round(float(np.mean(yc)), 6),
            "real_cluster_rate": round(float(rate), 6), "calc_offset": sl.calc_offset,
            "parent_calc_offset": parent_sl.calc_offset, "stage_two": stage_two,
            "vendor_examples_cached": cached, "seconds": round(time.monotonic() - t0, 1)}
    _say(progress, "second_look", n_all, n_all, f"offset {sl.calc_offset:.3f}")
    return SecondLookRefit(sl, info, trees, {"trees": trees, "calc_params": params.to_json(),
                                             "phantoms": samples_digest(phantoms)})


def _stage_two_rows(result: FineTuneResult, samples: list[Sample], progress: Progress | None, threads: int
                    ) -> tuple[tuple[np.ndarray, np.ndarray] | None, dict[str, Any]]:
    """Stage-two rows from the fine-tuned network's candidates over ``samples``."""
    from mammotriage.model.crossval import _partner_index, _stage2_rows
    from mammotriage.model.evaluate import predict_samples
    from mammotriage.model.infer import Engine
    from mammotriage.model.twostage import ViewGeometry

    engine = Engine(result.detector, result.config, result.pp, device="cpu", threads=max(1, int(threads)))
    records = []
    for i, s in enumerate(samples):
        records.extend(predict_samples(engine, [s]))
        _say(progress, "second_look", i + 1, len(samples), f"stage two: {s.key}")
    for r in records:
        r["scores"] = np.asarray(r["scores"]).reshape(-1)
    if not any(len(r["scores"]) for r in records):
        return None, {"action": "carried", "reason": "the new network proposed no candidate on these images"}
    geoms = [ViewGeometry.of(s.load(), s.spacing_mm or 0.2, s.chest_wall) for s in samples]
    X2, y2 = _stage2_rows(samples, records, geoms, _partner_index(samples), list(range(len(samples))))
    return (X2, y2), {"action": "refitted", "rows": int(len(y2)), "positives": int(np.sum(y2)),
                      "images": len(samples),
                      "note": "candidates of the fine-tuned network on images it trained on (in-sample)"}



# ------------------------------------------------------------------ the whole step

def default_candidates_dir(archive_file: str | Path | None = None) -> Path:
    """``models/`` beside the archive (the site's own candidates)."""
    return archive_or_default(archive_file).expanduser().resolve().parent / "models"


def retrain(snapshot: str | Path | dict[str, Any], *, archive_file: str | Path | None = None,
            parent: str | Path | None = None, out_dir: str | Path | None = None,
            params: RetrainParams | None = None, register: bool = True, who: str = "system",
            progress: Progress | None = None, transform: Callable[[list[Sample]], list[Sample]] | None = None,
            note: str = "") -> RetrainResult:
    """Fine-tune the current (or ``parent``) model on a training snapshot -> candidate package.

    The snapshot must pass its data tests first
    (:func:`~mammotriage.learning.dataset_check.check_snapshot`); a failing one is refused
    with the reasons. ``transform`` rewrites the training samples before training
    (``note`` then says what it did; used for negative controls such as
    :func:`~mammotriage.learning.snapshot_data.shuffle_labels`).
    """
    from mammotriage.learning.dataset_check import check_snapshot
    from mammotriage.model.package import read_metadata
    from mammotriage.store.datasets import load_snapshot

    p = params or RetrainParams()
    archive_file = archive_or_default(archive_file)
    parent_dir = resolve_model(parent, archive_file)
    parent_meta = read_metadata(parent_dir)
    _say(progress, "load", 0, 1, "snapshot")
    manifest = dict(snapshot) if isinstance(snapshot, dict) else load_snapshot(snapshot, archive_file)
    if manifest.get("role") == "training":  # training_set refuses the others with its own reason
        check = check_snapshot(manifest, archive_file)
        if not check["passed"]:
            raise RetrainError(f"snapshot {str(manifest.get('sha256'))[:12]} fails its data tests "
                               f"(`mammotriage dataset check {str(manifest.get('sha256'))[:12]}`): "
                               + "; ".join(check["reasons"]))
    ts = training_set(manifest, archive_file)
    samples = ts.samples if transform is None else transform(list(ts.samples))
    pool, sources = replay_pool(parent_meta.get("training_data", {}), archive_file)
    n_replay = int(round(p.replay_fraction * len(samples)))
    replay = replay_sample(pool, n_replay, p.seed, exclude_groups={s.group for s in samples})
    available = any(s.get("available") for s in sources)
    replay_desc = {"available": available and bool(replay), "requested": n_replay, "n_images": len(replay),
                   "pool_images": len(pool), "seed": p.seed, "sources": sources,
                   "class_counts": class_counts(replay),
                   "note": "" if (available and replay) else
                   "the parent's original training data is unavailable: fine-tuned on the snapshot only"}
    result = fine_tune(parent_dir, samples, replay, p, progress=progress)
    candidates = Path(out_dir).parent if out_dir else default_candidates_dir(archive_file)
    refit = refit_second_look(parent_dir, parent_meta, result, pool, sources, samples,
                              candidates / ".second-look-cache", progress, threads=p.threads)
    _say(progress, "write", 0, 1, "package")
    desc = ts.describe()
    if transform is not None:
        desc["transformed"] = note or getattr(transform, "__name__", "transformed")
    inputs = candidate_inputs(desc, samples, replay, p, note)
    if refit.second_look is not None:
        inputs["second_look"] = refit.inputs
    version = candidate_version(parent_meta, inputs)
    final = Path(out_dir) if out_dir else candidates / version
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = final.parent / f".{final.name}.writing"
    folder: Path | None
    _, folder, meta = write_candidate(tmp_dir, result, parent_dir, p, desc, replay_desc, samples, replay,
                                      version=version, note=note, refit=refit)
    if final.exists():
        from mammotriage.model.package import ModelPackageError, verify

        try:
            same = verify(final).get("weights_sha256") == meta["weights_sha256"]
        except ModelPackageError:
            same = False
        if same:  # a reproduced run: keep the package that may already be registered or in use
            shutil.rmtree(folder)
            folder = None
        else:
            shutil.rmtree(final)
    if folder is not None:
        folder.rename(final)
    from mammotriage.model.package import read_metadata as _read

    meta = _read(final)
    registered = False
    if register:
        from mammotriage.model.registry import ModelRegistry

        with ModelRegistry(archive_file) as reg:
            reg.register(final, origin="site", who=who)
        registered = True
    _say(progress, "write", 1, 1, str(final))
    return RetrainResult(version, final, meta["weights_sha256"], meta, result.finished,
                         result.seconds + result.prepare_seconds, registered)


def weights_digest(detector: RetinaNetDetector) -> str:
    """sha256 over the fp32 state dict (for in-memory comparisons)."""
    h = hashlib.sha256()
    for k, v in sorted(detector.network.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().numpy()).tobytes())
    return h.hexdigest()
