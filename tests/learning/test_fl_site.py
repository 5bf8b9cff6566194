"""A site in a federation: the job-parameter allow-list, differential privacy and its
accountant, one round at a site (opt-out, refusal, the local log), the returned global
model as a candidate behind the site's gate.

The round tests train a randomly initialised 128 x 96 detector for a few iterations on
two phantom exams (seconds); the gate test uses the simulated-reader learning loop's
trained parent and archive (the session fixture), copied."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from retrain_sim import tiny_parent

from mammotriage.learning.federation import FederationError, state_digest
from mammotriage.learning.fl_site import (
    DetectorSiteEngine,
    JobParams,
    RoundLog,
    SiteClient,
    dp_epsilon,
    privatise,
    read_job_params,
    write_federated_candidate,
)

# ------------------------------------------------------------------ job parameters


def test_only_allow_listed_job_parameters_are_read():
    params, ignored = read_job_params({"rounds": 4, "local_iterations": 25, "lr": 1e-4, "fedprox_mu": 0.01,
                                       "script": "rm -rf /", "custom_code": "import os", "threads": 64})
    assert params == JobParams(rounds=4, local_iterations=25, lr=1e-4, fedprox_mu=0.01)
    assert ignored == ["custom_code", "script", "threads"]
    assert read_job_params(None) == (JobParams(), [])


@pytest.mark.parametrize("raw, word", [
    ({"local_iterations": 10**9}, "outside"),
    ({"lr": 5.0}, "outside"),
    ({"lr": float("nan")}, "outside"),
    ({"rounds": 2.5}, "not a int"),
    ({"rounds": "3"}, "not a int"),
    ({"fedprox_mu": True}, "not a float"),
    ({"dp_noise": 1.0}, "without a clipping bound"),
])
def test_bad_job_parameters_are_refused_by_name(raw, word):
    with pytest.raises(FederationError, match=word) as exc:
        read_job_params(raw)
    assert next(iter(raw)) in str(exc.value)


# ------------------------------------------------------------------ differential privacy


def _exact_gaussian_epsilon(z: float, delta: float) -> float:
    """The tight epsilon of one Gaussian-mechanism release (sensitivity 1, sigma z) at
    delta (Balle and Wang 2018): delta(eps) = Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def d(eps: float) -> float:
        return norm.cdf(1 / (2 * z) - eps * z) - math.exp(eps) * norm.cdf(-1 / (2 * z) - eps * z) - delta

    return brentq(d, 0.0, 500.0)


@pytest.mark.parametrize("z", [0.8, 1.0, 2.0, 5.0])
def test_the_accountant_is_sound_and_not_loose(z):
    # one release: the RDP bound can only be above the exact privacy loss, and not far
    eps = dp_epsilon(1, z, 1e-5)
    exact = _exact_gaussian_epsilon(z, 1e-5)
    assert exact <= eps <= 1.5 * exact + 0.1
    # T releases compose: dearer than one, cheaper than T separate ones (RDP's point)
    eps10 = dp_epsilon(10, z, 1e-5)
    assert eps < eps10 < 10 * eps


def test_the_accountant_edges():
    assert dp_epsilon(0, 1.0) == 0.0
    assert dp_epsilon(5, 0.0) == math.inf
    assert dp_epsilon(5, 4.0) < dp_epsilon(5, 2.0) < dp_epsilon(5, 1.0)


def test_privatise_clips_the_whole_update_and_adds_the_stated_noise():
    gen = torch.Generator().manual_seed(0)
    delta = {"a": torch.full((100, 100), 0.5), "b": torch.full((10,), -3.0), "n": torch.tensor(7)}
    clipped, info = privatise(delta, clip=1.0, noise_multiplier=0.0, generator=gen)
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for k, v in clipped.items() if k != "n"))
    assert info["clipped"] and norm == pytest.approx(1.0, rel=1e-6)
    assert info["norm_before"] == pytest.approx(math.sqrt(10000 * 0.25 + 10 * 9.0))
    assert torch.equal(clipped["n"], delta["n"])  # counters are not weights
    noisy, info = privatise({"a": torch.zeros(200, 200)}, clip=0.5, noise_multiplier=2.0, generator=gen)
    assert info["sigma"] == 1.0
    assert float(noisy["a"].std()) == pytest.approx(1.0, rel=0.02)
    small, info = privatise({"a": torch.full((4,), 0.1)}, clip=10.0, noise_multiplier=0.0, generator=gen)
    assert not info["clipped"] and torch.allclose(small["a"], torch.full((4,), 0.1))


# ------------------------------------------------------------------ one round at a site


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from mammotriage.learning.fl_sim import profile_samples

    parent = tiny_parent(tmp_path_factory.mktemp("fl-parent") / "parent")
    samples = profile_samples("calc", 7, 1, 1, 128, 104)
    return DetectorSiteEngine(parent, samples, threads=1, seed=3, batch_size=2, warmup_iters=1)


def _client(engine, tmp_path, **kw):
    return SiteClient("site-a", engine, RoundLog(tmp_path / "rounds.jsonl"), **kw)


def test_a_round_sends_weight_differences_and_logs_their_hash(engine, tmp_path):
    start = engine.get_weights()
    client = _client(engine, tmp_path)
    up = client.round("job-1", 0, start, {"local_iterations": 2, "lr": 1e-3, "evil": 1})
    assert up is not None and up.n_images == 8
    assert set(up.delta) == set(start)
    assert all(up.delta[k].shape == start[k].shape and up.delta[k].dtype == start[k].dtype for k in start)
    assert up.norm > 0 and up.sha256 == state_digest(up.delta)
    # the trained weights are the global ones plus the delta
    trained = engine.get_weights()
    k = "classification_head.cls_logits.weight"
    assert torch.allclose(start[k] + up.delta[k], trained[k], atol=1e-6)
    (entry,) = client.log.entries()
    assert entry["sent"] is True and entry["sha256"] == up.sha256 and entry["round"] == 0
    assert entry["ignored_params"] == ["evil"] and entry["params"]["local_iterations"] == 2
    assert entry["contains"].startswith("weight differences only")


def test_a_round_is_reproducible(engine, tmp_path):
    start = engine.get_weights()
    a = _client(engine, tmp_path / "a").round("job", 1, start, {"local_iterations": 2})
    b = _client(engine, tmp_path / "b").round("job", 1, start, {"local_iterations": 2})
    assert a is not None and b is not None and a.sha256 == b.sha256


def test_opting_out_and_refusing_send_nothing_and_say_why(engine, tmp_path):
    start = engine.get_weights()
    out = _client(engine, tmp_path / "o", opt_out_rounds=[3])
    assert out.round("job", 3, start, {"local_iterations": 1}) is None
    assert out.log.entries()[-1]["reason"] == "opted out of this round"
    seen = []

    def review(summary):
        seen.append(summary)
        return "the norm is larger than our policy allows"

    refused = _client(engine, tmp_path / "r", review=review)
    assert refused.round("job", 0, start, {"local_iterations": 1}) is None
    (entry,) = refused.log.entries()
    assert entry["sent"] is False and "policy" in entry["reason"]
    assert seen and set(seen[0]) >= {"sha256", "norm", "n_images", "tensors", "values", "contains"}
    assert entry["sha256"] == seen[0]["sha256"]  # what was refused is identifiable


def test_dp_rounds_report_their_privacy_spend(engine, tmp_path):
    start = engine.get_weights()
    client = _client(engine, tmp_path)
    ups = [client.round("job", r, start, {"local_iterations": 1, "dp_clip": 0.05, "dp_noise": 1.0}) for r in (0, 1)]
    assert all(u is not None for u in ups)
    assert ups[0].dp["epsilon"] < ups[1].dp["epsilon"] == pytest.approx(dp_epsilon(2, 1.0, 1e-5))
    assert ups[0].dp["clipped"]  # a fine-tuning step moves the weights by far more than 0.05
    # noise only on what the site trains: frozen weights and normalisation statistics stay exact
    trained = engine.trained_names
    assert trained and len(trained) < len(start)
    for k, v in ups[0].delta.items():
        if k not in trained:
            assert not bool(v.any()), k
    assert any("running_var" in k for k in start)
    assert ups[0].dp["released_values"] == sum(start[k].numel() for k in trained)


def test_fedprox_keeps_a_site_nearer_the_global_model(engine):
    start = engine.get_weights()
    free = engine.train(start, JobParams(local_iterations=6, lr=3e-3), 0)
    prox = engine.train(start, JobParams(local_iterations=6, lr=3e-3, fedprox_mu=1e4), 0)

    def dist(s):
        return math.sqrt(sum(float(((s[k].double() - start[k].double()) ** 2).sum()) for k in start
                             if start[k].is_floating_point()))

    assert dist(prox) < 0.5 * dist(free)
    # and the proximal hooks are gone afterwards: a plain round is the plain round again
    again = engine.train(start, JobParams(local_iterations=6, lr=3e-3), 0)
    assert state_digest(again) == state_digest(free)


# ------------------------------------------------------------------ the returned global model


def test_a_global_model_that_fails_the_sites_gate_is_a_candidate_never_promoted(learning_loop, tmp_path):
    from mammotriage.learning.gate import validate
    from mammotriage.learning.registry import ModelRegistry, RegistryError
    from mammotriage.learning.retrain import load_parent_for_training
    from mammotriage.model.package import read_metadata

    home = tmp_path / "home"
    shutil.copytree(learning_loop.archive.parent, home)
    archive = home / learning_loop.archive.name
    det = load_parent_for_training(learning_loop.parent)[0]
    state = {k: v.detach().clone() for k, v in det.network.state_dict().items()}
    # a broken global model: the classification head answers "background" everywhere
    state["classification_head.cls_logits.weight"].zero_()
    state["classification_head.cls_logits.bias"].fill_(-30.0)
    prov = {"federation": "fed-test", "job": "fed-test", "rounds": 3, "method": "fedavg",
            "participants": ["site-1", "site-2"], "job_params": {"rounds": 3}}
    version, folder = write_federated_candidate(state, learning_loop.parent, prov, archive_file=archive)
    meta = read_metadata(folder)
    assert meta["federation"]["participants"] == ["site-1", "site-2"]
    assert meta["federation"]["parent"]["version"] == read_metadata(learning_loop.parent)["version"]
    assert meta["federation"]["state_sha256"] == state_digest(state)
    with ModelRegistry(archive) as reg:
        active = reg.active()
        cand = reg.get(version)
        assert cand is not None and cand.origin == "federation"
        assert active is not None and active.version != version
    report = validate(version, archive_file=archive)
    assert report["passed"] is False and report["reasons"]
    with ModelRegistry(archive) as reg:
        with pytest.raises(RegistryError, match="promotion refused"):
            reg.promote(version, report, who="it-admin")
        assert reg.active().version == active.version


def test_a_round_log_cut_by_a_crash_still_reads(tmp_path):
    """A crash mid-append leaves half a line; the rounds before it stay readable (it
    raised, and with it the simulation's report)."""
    from mammotriage.learning.fl_site import RoundLog

    log = RoundLog(tmp_path / "rounds.jsonl")
    log.append({"round": 0, "sent": True})
    with open(log.path, "a", encoding="utf-8") as f:
        f.write('{"round": 1, "se')
    assert [e["round"] for e in log.entries()] == [0]
