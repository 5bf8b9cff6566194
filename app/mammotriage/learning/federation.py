"""Federated rounds, engine-independent: what a server does with the sites' updates.

A site sends the difference between the weights it trained and the global weights it was
given (a *delta*: weights only, never images, labels or identifiers). A round:

1. every update is checked on its own (:func:`check_update`): the same tensor names, shapes
   and dtypes as the global model, finite values only;
2. the updates that passed are checked against each other: a delta whose L2 norm is more
   than ``norm_factor`` times the round's median delta norm is an outlier (a site that
   sends a scaled or otherwise broken update). The median needs three updates to mean
   anything, so with fewer the optional absolute cap ``max_norm`` is the only bound;
3. what is left is aggregated (:func:`aggregate`): ``fedavg`` (the mean weighted by each
   site's number of corrected images), or, for sites that may be wrong without looking
   broken, the coordinate-wise ``trimmed-mean`` (``trim`` of the values cut at each end)
   or ``median`` (both unweighted: a weight is one more thing a wrong site could lie about).

Every rejection is recorded with the site, the round and the reason
(:attr:`RoundResult.rejected`, :attr:`RoundResult.log`). A round with fewer than
``min_sites`` accepted updates raises :class:`FederationError` and leaves the global model
as it was. Each update has a digest (:func:`state_digest`) that the site logs locally
with what it sent, and the server logs with what it received.

The engine that moves the updates (NVIDIA FLARE) calls these functions; they do not
depend on it. FedProx is a client-side change to local training (a proximal term), so it
does not appear here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "METHODS",
    "FederationError",
    "RoundResult",
    "SiteUpdate",
    "aggregate",
    "check_compatible",
    "check_update",
    "state_digest",
]

METHODS = ("fedavg", "trimmed-mean", "median")
State = Mapping[str, torch.Tensor]


class FederationError(Exception):
    """A round cannot complete (too few acceptable updates, or a bad request): the
    global model is unchanged."""


@dataclass(frozen=True)
class SiteUpdate:
    """One site's contribution to one round.

    Attributes
    ----------
    site
        The site's name in the federation (no patient or reader identifiers).
    n_images
        The number of corrected images it trained on: FedAvg's weight.
    delta
        Trained weights minus the global weights it received, per tensor name.
    """

    site: str
    n_images: int
    delta: dict[str, torch.Tensor]


@dataclass
class RoundResult:
    """What one round did: the new global weights and who counted."""

    round: int
    method: str
    state: dict[str, torch.Tensor]
    accepted: list[str]
    rejected: dict[str, str]
    norms: dict[str, float]
    digests: dict[str, str]
    log: list[dict[str, Any]] = field(default_factory=list)


def state_digest(state: State) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order
    (equal for equal weights on any machine; any changed value changes it)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _norm(delta: State) -> float:
    total = 0.0
    for t in delta.values():
        if t.is_floating_point():
            total += float(torch.sum(t.detach().double() ** 2))
    return math.sqrt(total)


def check_update(update: SiteUpdate, reference: State) -> str | None:
    """Why ``update`` cannot be used against the global weights ``reference``, or None.

    Checked: the weight (a positive whole number of images), the tensor names (none
    missing, none extra), each tensor's shape and dtype, and that every value is finite.
    """
    if not isinstance(update.n_images, int) or isinstance(update.n_images, bool) or update.n_images <= 0:
        return f"weight {update.n_images!r} is not a positive number of images"
    missing = sorted(set(reference) - set(update.delta))
    extra = sorted(set(update.delta) - set(reference))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unknown {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else [])
        return "tensors do not match the global model: " + "; ".join(parts)
    for name in sorted(reference):
        got, want = update.delta[name], reference[name]
        if not isinstance(got, torch.Tensor):
            return f"{name} is not a tensor ({type(got).__name__})"
        if tuple(got.shape) != tuple(want.shape):
            return f"{name} has shape {tuple(got.shape)}, the global model {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"{name} has dtype {got.dtype}, the global model {want.dtype}"
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            return f"{name} holds {bad} non-finite value(s) (NaN or Inf)"
    return None


def _combine(deltas: list[torch.Tensor], weights: list[float], method: str, trim: float) -> torch.Tensor:
    stacked = torch.stack([d.detach().double() for d in deltas])
    if method == "fedavg":
        w = torch.tensor(weights, dtype=torch.float64).reshape(-1, *([1] * (stacked.dim() - 1)))
        return (stacked * w).sum(0) / float(sum(weights))
    if method == "median":
        # the mean of the two middle values for an even count (torch.median takes the lower)
        ordered, _ = torch.sort(stacked, dim=0)
        n = ordered.shape[0]
        return ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    k = int(math.floor(trim * stacked.shape[0]))
    ordered, _ = torch.sort(stacked, dim=0)
    kept = ordered[k:stacked.shape[0] - k] if stacked.shape[0] - 2 * k > 0 else ordered
    return kept.mean(0)


def aggregate(global_state: State, updates: Sequence[SiteUpdate], *, round: int = 0, method: str = "fedavg",
              trim: float = 0.2, norm_factor: float | None = 10.0, max_norm: float | None = None,
              min_sites: int = 1, server_lr: float = 1.0) -> RoundResult:
    """One round: check the updates, reject the bad ones, aggregate the rest onto
    ``global_state`` (see the module docstring). Integer tensors (counters) keep the
    global value. ``server_lr`` scales the aggregated step (the server learning rate of
    FedOpt, Reddi et al. 2021; 1 is plain FedAvg).

    Raises
    ------
    FederationError
        An unknown method or trim, two updates from one site, or fewer than
        ``min_sites`` accepted updates (the global model is unchanged).
    """
    if method not in METHODS:
        raise FederationError(f"unknown aggregation {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 <= trim < 0.5:
        raise FederationError(f"trim {trim} must be at least 0 and below 0.5")
    if not (math.isfinite(server_lr) and 0.0 < server_lr <= 10.0):
        raise FederationError(f"server learning rate {server_lr} must be above 0 and at most 10")
    sites = [u.site for u in updates]
    if len(set(sites)) != len(sites):
        raise FederationError(f"round {round}: more than one update from {sorted({s for s in sites if sites.count(s) > 1})}")
    rejected: dict[str, str] = {}
    norms: dict[str, float] = {}
    digests: dict[str, str] = {}
    fit: list[SiteUpdate] = []
    for u in updates:
        reason = check_update(u, global_state)
        if reason is None:
            digests[u.site] = state_digest(u.delta)
            norms[u.site] = _norm(u.delta)
            if max_norm is not None and norms[u.site] > max_norm:
                reason = f"update norm {norms[u.site]:.4g} is above the cap {max_norm:.4g}"
        if reason is None:
            fit.append(u)
        else:
            rejected[u.site] = reason
    if norm_factor is not None and len(fit) >= 3:
        median = float(torch.tensor([norms[u.site] for u in fit], dtype=torch.float64).median())
        # an even count: torch's median is the lower middle value, the stricter reference
        limit = norm_factor * median
        for u in list(fit):
            if median > 0 and norms[u.site] > limit:
                rejected[u.site] = (f"update norm {norms[u.site]:.4g} is more than {norm_factor:g} x the round's "
                                    f"median {median:.4g}")
                fit.remove(u)
    log = [{"round": round, "site": u.site, "n_images": u.n_images, "accepted": u.site not in rejected,
            "reason": rejected.get(u.site, ""), "norm": norms.get(u.site), "sha256": digests.get(u.site)}
           for u in updates]
    if len(fit) < min_sites:
        raise FederationError(f"round {round}: {len(fit)} acceptable update(s), {min_sites} needed; rejected: "
                              + ("; ".join(f"{s}: {r}" for s, r in rejected.items()) or "none"))
    state: dict[str, torch.Tensor] = {}
    weights = [float(u.n_images) for u in fit]
    for name, base in global_state.items():
        if not base.is_floating_point():
            state[name] = base.detach().clone()
            continue
        step = _combine([u.delta[name] for u in fit], weights, method, trim)
        state[name] = (base.detach().double() + server_lr * step).to(base.dtype)
    return RoundResult(round=round, method=method, state=state, accepted=[u.site for u in fit],
                       rejected=rejected, norms=norms, digests=digests, log=log)


def check_compatible(site: Mapping[str, Any], server: Mapping[str, Any]) -> str | None:
    """Why a site cannot join the server's federation, or None: the app version and the
    model package format version must be the same on both (``{"app_version": ...,
    "format_version": ...}``; a missing value is a mismatch)."""
    problems = []
    for key, what in (("app_version", "app version"), ("format_version", "model format version")):
        ours, theirs = site.get(key), server.get(key)
        if ours is None or theirs is None or str(ours) != str(theirs):
            problems.append(f"{what} {ours if ours is not None else 'unknown'} here, "
                            f"{theirs if theirs is not None else 'unknown'} on the server")
    return ("refused: " + "; ".join(problems)) if problems else None
