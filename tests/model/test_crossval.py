"""Comparing two recipes over several training seeds (crossval.seeded_bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from mammotriage.model.crossval import paired_bootstrap, seeded_bootstrap

N = 80  # images with one lesion each, then NORMAL normal images; two images per patient
NORMAL = 20
GROUPS = [f"p{i // 2}" for i in range(N + NORMAL)]


def _run(hit: set[int]) -> list[dict]:
    """One cross-validation's records: every image has one confident-enough false
    positive (0.1) and, when hit, a box on its lesion (0.9)."""
    out = []
    for i in range(N):
        boxes = [[400.0, 20.0, 420.0, 40.0]]
        scores = [0.1]
        if i in hit:
            boxes.append([92.0, 92.0, 108.0, 108.0])
            scores.append(0.9)
        out.append({"key": f"img{i}", "abnormal": True, "circles": np.array([[100.0, 100.0, 10.0]]),
                    "boxes": np.array(boxes), "scores": np.array(scores),
                    "image_score": 0.9 if i in hit else 0.2})
    for i in range(N, N + NORMAL):
        out.append({"key": f"img{i}", "abnormal": False, "circles": np.zeros((0, 3)),
                    "boxes": np.array([[400.0, 20.0, 420.0, 40.0]]), "scores": np.array([0.1]),
                    "image_score": 0.3})
    return out


def _runs(counts: list[int], seed: int) -> list[list[dict]]:
    """Runs of one recipe: each seed hits its own random lesions, ``count`` of them."""
    rng = np.random.default_rng(seed)
    return [_run(set(rng.choice(N, size=c, replace=False).tolist())) for c in counts]


def test_a_lucky_seed_passes_the_single_run_rule_but_not_the_seeded_one():
    """Both recipes are one recipe: their seeds hit 30, 40 and 50 of 80 lesions. B's
    luckiest run against A's unluckiest passes the one-run paired bootstrap by far; over
    three seeds each the difference's CI holds 0."""
    a = _runs([30, 40, 50], seed=1)
    b = _runs([30, 40, 50], seed=2)
    lucky = paired_bootstrap(a[0], b[2], GROUPS, n=300)
    assert lucky["sens_diff_ci"][0] > 0.05  # 0.09 to 0.13 under other draws
    out = seeded_bootstrap(a, b, GROUPS, n=300)
    lo, hi = out["sens_diff_ci"]
    assert lo < -0.05 and hi > 0.05
    assert out["beats"] is False and "does not beat" in out["reason"]
    assert out["sens_a_runs"] == pytest.approx([30 / 80, 40 / 80, 50 / 80])
    assert out["sens_a"] == pytest.approx(0.5) and out["sens_b"] == pytest.approx(0.5)
    assert out["runs"] == [3, 3]


def test_a_real_gain_beats_over_every_seed():
    a = _runs([30, 34, 38], seed=3)
    b = _runs([60, 64, 68], seed=4)
    out = seeded_bootstrap(a, b, GROUPS, n=300)
    assert out["sens_diff_ci"][0] > 0.2
    assert out["beats"] is True and out["reason"].startswith("B beats A")
    assert out["auc_diff_ci"][0] > 0.1  # more lesions hit, higher image scores on them
    assert all(x < y for x, y in zip(out["auc_a_runs"], out["auc_b_runs"], strict=True))


def test_fewer_than_three_seeds_are_not_judged():
    a = _runs([30], seed=5)
    b = _runs([70, 72], seed=6)
    out = seeded_bootstrap(a, b, GROUPS, n=50)
    assert out["sens_diff_ci"][0] > 0.3  # far apart, and still
    assert out["beats"] is None and "at least 3 seeds" in out["reason"]


def test_runs_over_other_images_are_refused():
    a = _runs([30, 40, 50], seed=7)
    b = _runs([30, 40, 50], seed=8)
    b[1] = b[1][::-1]
    with pytest.raises(ValueError, match="different images"):
        seeded_bootstrap(a, b, GROUPS, n=10)
    with pytest.raises(ValueError, match="one patient per image"):
        seeded_bootstrap(a, a, GROUPS[:-1], n=10)
