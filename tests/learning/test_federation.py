"""Federated aggregation on real torch state dicts (a small conv net with batch norm):
FedAvg's weights, the robust options, and the rejection of broken or hostile updates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammotriage.learning.federation import (
    FederationError,
    SiteUpdate,
    aggregate,
    check_compatible,
    state_digest,
)


def _net(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _delta(reference: dict[str, torch.Tensor], seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g, dtype=torch.float64) * scale).to(v.dtype)
            if v.is_floating_point() else torch.zeros_like(v) for k, v in reference.items()}


def test_fedavg_is_the_mean_weighted_by_corrected_images() -> None:
    base = _net()
    updates = [SiteUpdate("calc-site", 30, _delta(base, 1)), SiteUpdate("mass-site", 10, _delta(base, 2)),
               SiteUpdate("new-scanner", 60, _delta(base, 3))]
    result = aggregate(base, updates, round=4)
    assert result.accepted == ["calc-site", "mass-site", "new-scanner"] and result.rejected == {}
    for name, value in base.items():
        if value.is_floating_point():
            want = value.double() + sum(u.n_images * u.delta[name].double() for u in updates) / 100
            assert torch.allclose(result.state[name].double(), want, atol=1e-6), name
        else:  # counters keep the global value
            assert torch.equal(result.state[name], value)
    assert [row["round"] for row in result.log] == [4, 4, 4]
    assert all(row["sha256"] == state_digest(u.delta) for row, u in zip(result.log, updates, strict=True))


def test_nan_and_scaled_updates_are_rejected_and_the_round_completes() -> None:
    base = _net()
    honest = [SiteUpdate(f"site-{i}", 20, _delta(base, i)) for i in range(3)]
    poisoned = _delta(base, 7)
    poisoned["0.weight"][0, 0, 0, 0] = float("nan")
    scaled = {k: v * 100 for k, v in _delta(base, 8).items()}
    result = aggregate(base, [*honest, SiteUpdate("nan-site", 20, poisoned), SiteUpdate("loud-site", 500, scaled)],
                       round=2)
    assert result.accepted == ["site-0", "site-1", "site-2"]
    assert "non-finite" in result.rejected["nan-site"] and "0.weight" in result.rejected["nan-site"]
    assert "median" in result.rejected["loud-site"]
    rows = {row["site"]: row for row in result.log}
    assert rows["loud-site"]["accepted"] is False and rows["loud-site"]["round"] == 2
    clean = aggregate(base, honest, round=2)
    for name in base:
        assert torch.allclose(result.state[name].double(), clean.state[name].double(), atol=1e-9), name
    assert all(bool(torch.isfinite(v).all()) for v in result.state.values() if v.is_floating_point())


def test_robust_aggregation_bounds_a_wrong_site_that_passes_the_checks() -> None:
    """Two of five sites push the same wrong direction (the norm check off: a wrong update
    need not look large): the median and the trimmed mean stay near the honest sites'
    mean; FedAvg is pulled 2/5 of the way."""
    base = _net()
    honest = [SiteUpdate(f"h{i}", 10, _delta(base, i, scale=0.002)) for i in range(3)]
    wrong = {k: torch.full_like(v, 0.1) if v.is_floating_point() else torch.zeros_like(v) for k, v in base.items()}
    sites = [*honest, SiteUpdate("w1", 10, wrong), SiteUpdate("w2", 10, dict(wrong))]
    honest_mean = aggregate(base, honest).state

    def off(state: dict[str, torch.Tensor]) -> float:
        diffs = [(state[k].double() - honest_mean[k].double()).abs().flatten()
                 for k in base if base[k].is_floating_point()]
        return float(torch.cat(diffs).mean())

    fedavg = aggregate(base, sites, norm_factor=None)
    median = aggregate(base, sites, method="median", norm_factor=None)
    trimmed = aggregate(base, sites, method="trimmed-mean", trim=0.4, norm_factor=None)
    assert off(fedavg.state) > 0.035  # 2/5 of 0.1
    assert off(median.state) < 0.2 * off(fedavg.state)  # within the honest sites' spread (about 0.002)
    assert off(trimmed.state) < 0.2 * off(fedavg.state)


@pytest.mark.parametrize("damage, reason", [
    ("shape", "has shape"), ("missing", "missing"), ("extra", "unknown"), ("dtype", "dtype"), ("weight", "weight"),
])
def test_malformed_updates_are_named(damage: str, reason: str) -> None:
    base = _net()
    bad = _delta(base, 5)
    n_images = 10
    if damage == "shape":
        bad["0.weight"] = torch.zeros(5, 1, 3, 3)
    elif damage == "missing":
        del bad["1.running_mean"]
    elif damage == "extra":
        bad["head.weight"] = torch.zeros(2)
    elif damage == "dtype":
        bad["0.bias"] = bad["0.bias"].double()
    else:
        n_images = 0
    result = aggregate(base, [SiteUpdate("ok", 10, _delta(base, 1)), SiteUpdate("bad", n_images, bad)])
    assert result.accepted == ["ok"]
    assert reason in result.rejected["bad"]


def test_a_round_without_enough_acceptable_updates_changes_nothing() -> None:
    base = _net()
    broken = _delta(base, 1)
    broken["0.bias"][:] = float("inf")
    with pytest.raises(FederationError, match="0 acceptable update"):
        aggregate(base, [SiteUpdate("a", 10, broken)], round=3)
    with pytest.raises(FederationError, match="2 needed"):
        aggregate(base, [SiteUpdate("a", 10, _delta(base, 1))], min_sites=2)
    with pytest.raises(FederationError, match="more than one update"):
        aggregate(base, [SiteUpdate("a", 10, _delta(base, 1)), SiteUpdate("a", 10, _delta(base, 2))])
    with pytest.raises(FederationError, match="unknown aggregation"):
        aggregate(base, [], method="mean")


def test_digest_follows_every_value() -> None:
    base = _net()
    assert state_digest(base) == state_digest({k: v.clone() for k, v in reversed(list(base.items()))})
    changed = {k: v.clone() for k, v in base.items()}
    changed["4.bias"][1] += 1e-6
    assert state_digest(changed) != state_digest(base)


def test_sites_on_other_versions_are_refused_clearly() -> None:
    server = {"app_version": "0.9.0", "format_version": 3}
    assert check_compatible({"app_version": "0.9.0", "format_version": 3}, server) is None
    text = check_compatible({"app_version": "0.8.1", "format_version": 2}, server)
    assert text is not None and "app version 0.8.1 here, 0.9.0 on the server" in text
    assert "model format version 2 here, 3 on the server" in text
    assert "unknown" in (check_compatible({"app_version": "0.9.0"}, server) or "")


def test_the_server_learning_rate_scales_the_aggregated_step():
    g = {"w": torch.zeros(3)}
    ups = [SiteUpdate("a", 1, {"w": torch.tensor([1.0, 2.0, 3.0])}), SiteUpdate("b", 1, {"w": torch.tensor([3.0, 2.0, 1.0])})]
    assert torch.allclose(aggregate(g, ups).state["w"], torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(aggregate(g, ups, server_lr=2.0).state["w"], torch.tensor([4.0, 4.0, 4.0]))
    for bad in (0.0, -1.0, float("nan"), 11.0):
        with pytest.raises(FederationError, match="server learning rate"):
            aggregate(g, ups, server_lr=bad)
