"""One hospital in a federation: what it reads from a job, trains, checks and sends.

Independent of the engine that carries the messages (NVIDIA FLARE, :mod:`.fl_flare`):

* :func:`read_job_params` - the only job parameters a site reads, from an allow-list
  (:data:`JOB_PARAMS`: rounds, local iterations, learning rate, FedProx mu, DP clipping
  and noise), each type- and range-checked; anything else a server sends is ignored and
  named in the site's log. A site never runs code or configuration from the server.
* :class:`SiteEngine` - the small interface the federation needs from local training
  (weights, train from given weights, evaluate); :class:`DetectorSiteEngine` is the app's
  own fine-tuning (:mod:`mammotriage.model.train`'s loop, frozen early stages, the
  backbone's BatchNorms in eval mode) on the site's own images.
* :class:`SiteClient` - one round at a site: the opt-out check, local training, the
  delta (trained minus received weights: weights only, never images, labels or
  identifiers), optional differential privacy (:func:`privatise`, with (epsilon, delta)
  from :func:`dp_epsilon`), the site's own review of the outgoing update (it may refuse
  it), and a line per round in the site's local log (:class:`RoundLog`) with the
  update's sha256, what was sent and why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mammotriage.learning.federation import FederationError, _norm, state_digest

if TYPE_CHECKING:
    from mammotriage.model.data import Sample

__all__ = [
    "JOB_PARAMS",
    "DetectorSiteEngine",
    "JobParams",
    "OutgoingUpdate",
    "RoundLog",
    "SiteClient",
    "SiteEngine",
    "dp_epsilon",
    "privatise",
    "read_job_params",
    "receive_global",
    "write_federated_candidate",
]

#: The job parameters a site reads: name -> (type, lowest, highest). Nothing else from a
#: job is read; in FLARE terms the site's client has custom code off.
JOB_PARAMS: dict[str, tuple[type, float, float]] = {
    "rounds": (int, 1, 200),
    "local_iterations": (int, 1, 10_000),
    "lr": (float, 1e-7, 1e-1),
    "fedprox_mu": (float, 0.0, 10.0),
    "dp_clip": (float, 0.0, 1e6),  # L2 bound of the update; 0: no differential privacy
    "dp_noise": (float, 0.0, 100.0),  # noise multiplier z: Gaussian sigma = z * dp_clip
}


@dataclass(frozen=True)
class JobParams:
    """A job's allow-listed parameters (defaults where the job says nothing)."""

    rounds: int = 3
    local_iterations: int = 20
    lr: float = 3e-4
    fedprox_mu: float = 0.0
    dp_clip: float = 0.0
    dp_noise: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_job_params(raw: Mapping[str, Any] | None) -> tuple[JobParams, list[str]]:
    """(the allow-listed parameters, the names of everything else, ignored).

    Raises
    ------
    FederationError
        An allow-listed parameter of the wrong type or outside its range (the round is
        not trained: a job that asks for 10^9 iterations or a learning rate of 5 is wrong).
    """
    raw = dict(raw or {})
    ignored = sorted(k for k in raw if k not in JOB_PARAMS)
    values: dict[str, Any] = {}
    for name, (kind, lo, hi) in JOB_PARAMS.items():
        if name not in raw:
            continue
        v = raw[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not float(v).is_integer()):
            raise FederationError(f"job parameter {name}={v!r} is not a {kind.__name__}")
        if not math.isfinite(float(v)) or not lo <= float(v) <= hi:
            raise FederationError(f"job parameter {name}={v!r} is outside {lo:g}..{hi:g}")
        values[name] = kind(v)
    params = JobParams(**values)
    if params.dp_noise > 0 and params.dp_clip <= 0:
        raise FederationError(f"job asks for DP noise (dp_noise={params.dp_noise:g}) without a clipping bound (dp_clip)")
    return params, ignored


# ------------------------------------------------------------------ differential privacy

#: Rényi orders the accountant tries (those Opacus uses by default).
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])


def dp_epsilon(releases: int, noise_multiplier: float, delta: float = 1e-5) -> float:
    """Epsilon of ``releases`` Gaussian-mechanism releases with noise multiplier ``z``
    (sigma = z x sensitivity) at ``delta``: Rényi DP of the Gaussian mechanism,
    alpha / (2 z^2) per release (Mironov 2017), composed by addition, converted to
    (epsilon, delta) with the conversion Opacus uses (Balle et al. 2020), minimised over
    :data:`RDP_ORDERS`. No subsampling: a site's whole update is released each round, so
    this is site-level privacy (the unit protected is everything the site contributes).
    ``inf`` without noise."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    best = math.inf
    for a in RDP_ORDERS:
        rdp = releases * a / (2.0 * noise_multiplier ** 2)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(0.0, best)


def privatise(delta: Mapping[str, torch.Tensor], clip: float, noise_multiplier: float,
              generator: torch.Generator, released: set[str] | None = None
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Clip the update to L2 norm ``clip`` and add Gaussian noise of standard deviation
    ``noise_multiplier * clip`` to every floating-point value released.

    ``released``: the tensors the site trains (default: every floating-point one); the
    others are sent as exact zeros, so they reveal nothing and the global model's frozen
    weights and normalisation statistics (a noisy running variance could turn negative)
    stay as they are."""
    if released is not None:
        delta = {k: (v if k in released else torch.zeros_like(v)) for k, v in delta.items()}
    norm = _norm(delta)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    sigma = noise_multiplier * clip
    out: dict[str, torch.Tensor] = {}
    for name, t in delta.items():
        if not t.is_floating_point() or (released is not None and name not in released):
            out[name] = t.clone()
            continue
        v = t.double() * scale
        if sigma > 0:
            v = v + sigma * torch.randn(v.shape, generator=generator, dtype=torch.float64)
        out[name] = v.to(t.dtype)
    return out, {"norm_before": norm, "clipped": scale < 1.0, "clip": clip, "noise_multiplier": noise_multiplier,
                 "sigma": sigma, "released_values": int(sum(t.numel() for k, t in out.items() if t.is_floating_point()
                                                            and (released is None or k in released)))}


# ------------------------------------------------------------------ the site's engine


class SiteEngine(Protocol):
    """What a federation needs from local training (swap the engine, keep the rest)."""

    @property
    def n_images(self) -> int:
        """The number of corrected images trained on (FedAvg's weight)."""
        ...

    @property
    def trained_names(self) -> set[str]:
        """The tensors local training changes (what differential privacy releases)."""
        ...

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The weights the site holds now."""
        ...

    def train(self, global_state: Mapping[str, torch.Tensor], params: JobParams, round: int) -> dict[str, torch.Tensor]:
        """Train from ``global_state`` for ``params.local_iterations``; return the new weights."""
        ...

    def evaluate(self, state: Mapping[str, torch.Tensor], samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """Evaluation records of ``samples`` under ``state``."""
        ...


#: Local optimisers: ``adamw`` (the app's fine-tuning) or ``sgd`` (momentum 0.9, the
#: optimiser FedAvg was analysed with: Adam's per-weight normalisation gives a small but
#: consistent gradient, such as a site's "no calcification here", the same step size as a
#: large one, which the server's average then weighs equally).
OPTIMIZERS = ("adamw", "sgd")


class DetectorSiteEngine:
    """The app's fine-tuning on a site's own images, from weights a federation gives.

    Deterministic on CPU for fixed inputs and thread count: iteration ``i`` of round ``r``
    draws its patches from ``(seed, r * local_iterations + i)``. FedProx (``fedprox_mu`` >
    0) adds ``mu * (w - w_global)`` to every trainable weight's gradient: the gradient of
    the proximal term ``mu / 2 * ||w - w_global||^2`` that keeps a site with a skewed
    distribution near the global model.
    """

    def __init__(self, parent_dir: str | Path, samples: Sequence[Sample], *, threads: int = 1, seed: int = 0,
                 batch_size: int = 2, patch_rows: int | None = None, warmup_iters: int = 5,
                 optimizer: str = "adamw") -> None:
        from mammotriage.learning.retrain import RetrainParams, load_parent_for_training
        from mammotriage.model.train import prepare

        torch.set_num_threads(max(1, int(threads)))
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.parent_dir = Path(parent_dir)
        self.detector, self.config, self.pp, self.meta = load_parent_for_training(parent_dir)
        self.threads, self.seed, self.warmup_iters = int(threads), int(seed), int(warmup_iters)
        if optimizer not in OPTIMIZERS:
            raise FederationError(f"unknown local optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        self.optimizer = optimizer
        self._rp = RetrainParams(batch_size=batch_size, patch_rows=patch_rows or self.pp.canvas_rows,
                                 threads=threads, seed=seed)
        self.samples = sorted(samples, key=lambda s: s.key)
        self.prepared = []
        for s in self.samples:
            self.prepared.extend(prepare([s], self.pp))

    @property
    def n_images(self) -> int:
        return len(self.samples)

    @property
    def trained_names(self) -> set[str]:
        from mammotriage.model.train import set_frozen

        set_frozen(self.detector, self._rp.train_params(self.pp.canvas_rows))
        return {n for n, q in self.detector.network.named_parameters() if q.requires_grad}

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.detector.network.state_dict().items()}

    def train(self, global_state: Mapping[str, torch.Tensor], params: JobParams, round: int) -> dict[str, torch.Tensor]:
        from dataclasses import replace

        from mammotriage.model.train import backbone_bn_eval, set_frozen, train_step

        if not self.prepared:
            raise FederationError("this site has no training images")
        torch.set_num_threads(self.threads)
        self.detector.network.load_state_dict(dict(global_state), strict=True)
        hp = replace(self._rp, lr=params.lr).train_params(self.pp.canvas_rows)
        set_frozen(self.detector, hp)
        named = [(n, q) for n, q in self.detector.network.named_parameters() if q.requires_grad]
        trainable = [q for _, q in named]
        opt: torch.optim.Optimizer
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(trainable, lr=params.lr, momentum=0.9, weight_decay=self._rp.weight_decay)
        else:
            opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=self._rp.weight_decay)
        hooks = []
        if params.fedprox_mu > 0:
            mu = float(params.fedprox_mu)
            for _, q in named:
                anchor = q.detach().clone()
                hooks.append(q.register_hook(  # type: ignore[no-untyped-call]
                    lambda g, q=q, anchor=anchor: g + mu * (q.detach() - anchor)))
        self.detector.train()
        backbone_bn_eval(self.detector)
        base = round * params.local_iterations
        try:
            for i in range(params.local_iterations):
                lr = params.lr * min(1.0, (i + 1) / max(1, self.warmup_iters))
                train_step(self.detector, opt, trainable, self.prepared, base + i, hp, self.pp, lr, self.seed)
        finally:
            for h in hooks:
                h.remove()
            self.detector.eval()
        return self.get_weights()

    def evaluate(self, state: Mapping[str, torch.Tensor], samples: Sequence[Sample]) -> list[dict[str, Any]]:
        from mammotriage.model.evaluate import predict_samples
        from mammotriage.model.infer import Engine
        from mammotriage.model.network import build_detector

        det = build_detector(self.config, train_components=False)
        det.network.load_state_dict(dict(state), strict=True)
        engine = Engine(det, self.config, self.pp, threads=self.threads)
        return predict_samples(engine, list(samples))


# ------------------------------------------------------------------ one round at a site


@dataclass
class OutgoingUpdate:
    """What a site would send for one round (weights only) and what it says about it."""

    round: int
    delta: dict[str, torch.Tensor]
    n_images: int
    sha256: str
    norm: float
    tensors: int
    values: int
    dp: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the site sees before it sends: no weights, only what they are."""
        return {"round": self.round, "n_images": self.n_images, "sha256": self.sha256,
                "norm": round(self.norm, 6), "tensors": self.tensors, "values": self.values, "dp": self.dp,
                "contains": "weight differences only (no images, labels or identifiers)"}


class RoundLog:
    """The site's local log of rounds: one JSON line per round, appended and flushed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def entries(self) -> list[dict[str, Any]]:
        """The readable entries (a line cut by a crash is skipped, as the Model panel does)."""
        from mammotriage.learning.fl_config import read_round_log

        return read_round_log(self.path, limit=10**9)[0]


#: ``review(summary) -> None`` to send, or a reason to refuse.
Review = Callable[[dict[str, Any]], str | None]


class SiteClient:
    """One site's side of every round (the engine-independent part of the FLARE client)."""

    def __init__(self, site: str, engine: SiteEngine, log: RoundLog, *, review: Review | None = None,
                 opt_out_rounds: Sequence[int] = (), dp_delta: float = 1e-5, seed: int = 0) -> None:
        self.site, self.engine, self.log = site, engine, log
        self.review = review
        self.opt_out_rounds = set(int(r) for r in opt_out_rounds)
        self.dp_delta = dp_delta
        self.seed = seed
        self.dp_releases = 0

    def round(self, job: str, round: int, global_state: Mapping[str, torch.Tensor],
              raw_params: Mapping[str, Any] | None) -> OutgoingUpdate | None:
        """Train one round; the update to send, or None (opted out or refused: logged)."""
        base = {"job": job, "round": round, "site": self.site}
        try:
            params, ignored = read_job_params(raw_params)
        except FederationError as exc:
            self.log.append({**base, "sent": False, "reason": f"job refused: {exc}"})
            raise
        base["params"] = params.to_json()
        if ignored:
            base["ignored_params"] = ignored
        if round in self.opt_out_rounds:
            self.log.append({**base, "sent": False, "reason": "opted out of this round"})
            return None
        t0 = time.monotonic()
        trained = self.engine.train(global_state, params, round)
        delta = {k: (trained[k].detach().double() - global_state[k].detach().double()).to(global_state[k].dtype)
                 if global_state[k].is_floating_point() else torch.zeros_like(global_state[k])
                 for k in global_state}
        dp: dict[str, Any] = {}
        if params.dp_clip > 0:
            digest = hashlib.sha256(f"{self.seed}\0{job}\0{round}\0{self.site}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:7], "big"))
            delta, dp = privatise(delta, params.dp_clip, params.dp_noise, gen, released=self.engine.trained_names)
            self.dp_releases += 1
            dp["epsilon"] = dp_epsilon(self.dp_releases, params.dp_noise, self.dp_delta)
            dp["delta"] = self.dp_delta
            dp["releases"] = self.dp_releases
        up = OutgoingUpdate(round=round, delta=delta, n_images=int(self.engine.n_images), sha256=state_digest(delta),
                            norm=_norm(delta), tensors=len(delta), values=int(sum(t.numel() for t in delta.values())),
                            dp=dp)
        summary = up.summary()
        refusal = self.review(summary) if self.review is not None else None
        entry = {**base, **summary, "train_s": round_s(time.monotonic() - t0)}
        if refusal:
            self.log.append({**entry, "sent": False, "reason": f"refused by the site: {refusal}"})
            return None
        self.log.append({**entry, "sent": True, "reason": ""})
        return up


def round_s(v: float) -> float:
    return float(f"{v:.2f}")


# ------------------------------------------------------------------ the returned global model


def write_federated_candidate(state: Mapping[str, torch.Tensor], parent_dir: str | Path,
                              provenance: Mapping[str, Any], *, archive_file: str | Path | None = None,
                              out_dir: str | Path | None = None, site_images: Sequence[str] = (),
                              who: str = "federation") -> tuple[str, Path]:
    """A global model a federation returned, as a candidate package in this site's
    registry (origin ``federation``, never active): the parent's network, preprocessing,
    operating points and second look with the federation's weights; ``federation`` in its
    metadata holds the provenance (federation, job, rounds, participating sites,
    aggregation, parent). Promotion goes through this site's gate like any candidate.
    Returns (version, folder)."""
    import shutil

    from mammotriage.learning.retrain import default_candidates_dir, load_parent_for_training
    from mammotriage.model.infer import load_second_look
    from mammotriage.model.package import read_metadata, save_package
    from mammotriage.model.registry import ModelRegistry

    det, config, pp, meta = load_parent_for_training(parent_dir)
    det.network.load_state_dict(dict(state), strict=True)
    digest = state_digest(state)
    root = str(meta.get("version", "0")).split("-")[0]
    version = f"{root}-fed.{digest[:8]}"
    final = Path(out_dir) if out_dir else default_candidates_dir(archive_file) / version
    if final.exists():
        shutil.rmtree(final)
    prov = dict(provenance)
    prov.setdefault("parent", {"version": meta.get("version"), "weights_sha256": meta.get("weights_sha256")})
    prov["state_sha256"] = digest
    ops = dict(meta.get("operating_points") or {})
    if ops:
        ops["inherited_from"] = meta.get("version")
    changelog = dict(meta.get("changelog") or {})
    summary = (f"federated from v{meta.get('version')}: job {prov.get('job')}, {prov.get('rounds')} rounds, "
               f"{prov.get('method')}, sites {', '.join(prov.get('participants', []))}")
    changelog[version] = summary
    training = {"summary": summary, "sources": list((meta.get("training_data") or {}).get("sources", [])),
                "n_images": None, "parent_training": meta.get("training_data") or {}}
    save_package(final, det, config, pp, version=version, description=f"federated candidate of v{meta.get('version')}",
                 training=training, hyper_parameters={"federation": {k: prov.get(k) for k in
                                                                      ("method", "rounds", "job_params")}},
                 seed=0, eval_metrics={}, operating_points=ops, parent_version=meta.get("version"), changelog=changelog,
                 second_look=load_second_look(parent_dir, meta),
                 extra={"federation": prov,
                        # what the gate reads: the parent, and this site's images it contributed
                        "fine_tuning": {"parent": {"version": meta.get("version"),
                                                   "weights_sha256": meta.get("weights_sha256"),
                                                   "path": str(Path(parent_dir).resolve())},
                                        "site_images": sorted(site_images), "finished": True,
                                        "note": "global model of a federation"},
                        "input_reference": meta.get("input_reference") or {},
                        "training_scanners": meta.get("training_scanners") or []})
    read_metadata(final)
    from mammotriage.learning.snapshot_data import archive_or_default

    with ModelRegistry(archive_or_default(archive_file)) as reg:
        reg.register(final, origin="federation", who=who)
    return version, final


def receive_global(client: SiteClient, cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                   provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The federation's final global model at a site: with a registry (``cfg["archive"]``)
    it becomes a candidate there and this site's gate runs on it against the active model
    (never promoted here: promotion is a person's decision, and the registry refuses it
    without a passed report). Logged in the site's round log; returns what the server is told."""
    base = {"job": provenance.get("job"), "round": "final", "site": client.site}
    if not cfg.get("archive"):
        client.log.append({**base, "sent": False, "reason": "global model received; no registry at this site",
                           "sha256": state_digest(state)})
        return {"candidate": None}
    from mammotriage.learning.gate import GateError, validate
    from mammotriage.learning.snapshot_data import uid_digest

    images = [uid_digest(s.key.split(":", 1)[1]) for s in getattr(client.engine, "samples", [])
              if getattr(s, "source", "") == "site"]
    version, _ = write_federated_candidate(state, cfg["parent"], provenance, archive_file=cfg["archive"],
                                           site_images=images)
    try:
        report = validate(version, archive_file=cfg["archive"])
        passed, reasons = bool(report["passed"]), list(report["reasons"])
    except GateError as exc:
        passed, reasons = False, [str(exc)]
    client.log.append({**base, "sent": False, "reason": "global model registered as a candidate",
                       "candidate": version, "gate_passed": passed, "gate_reasons": reasons,
                       "sha256": state_digest(state)})
    return {"candidate": version, "gate_passed": passed, "gate_reasons": reasons}
