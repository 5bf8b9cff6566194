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


# ---------------------------------------------------------------- calc_path_cv

def _calc_samples_and_cache(rng: np.random.Generator, n_images: int = 24, n_phantoms: int = 2):
    """Samples (two images per patient, every other one with a calcification cluster at
    (100, 100)) and an example cache whose first feature tells clusters from the rest."""
    from mammotriage.model.data import Sample

    samples, cache = [], {}
    for i in range(n_images):
        calc = i % 2 == 0
        circles = np.array([[100.0, 100.0, 12.0]]) if calc else np.zeros((0, 3))
        samples.append(Sample(key=f"img{i}", group=f"p{i // 2}", source="mias", abnormal=calc,
                              boxes=np.zeros((len(circles), 4)), kinds=["calcification"] * len(circles),
                              load=lambda: np.zeros((8, 8), np.uint8), circles=circles))
    for i in range(n_images + n_phantoms):
        pos = i % 2 == 0
        boxes = [[300.0 + 30 * j, 300.0, 320.0 + 30 * j, 320.0] for j in range(4)]
        y = [0, 0, 0, 0]
        if pos:
            boxes.append([92.0, 92.0, 108.0, 108.0])
            y.append(1)
        X = rng.normal(size=(len(y), 6))
        X[:, 0] += 3.0 * np.array(y)
        cache[f"{i}.X"], cache[f"{i}.y"], cache[f"{i}.boxes"] = X, np.array(y), np.array(boxes)
        if not pos and i < n_images:  # simulated clusters in the normal images
            cache[f"{i}.Xs"], cache[f"{i}.ys"] = rng.normal(size=(3, 6)) + np.array([3, 0, 0, 0, 0, 0]), np.ones(3, int)
    cache["keys"] = np.array([s.key for s in samples] + [f"ph{j}" for j in range(n_phantoms)])
    return samples, cache


def test_the_calcification_path_cv_scores_each_fold_with_trees_that_never_saw_its_labels():
    from mammotriage.model.crossval import calc_path_cv
    from mammotriage.model.data import patient_folds
    from mammotriage.model.evaluate import evaluate_predictions

    samples, cache = _calc_samples_and_cache(np.random.default_rng(3))
    recs = calc_path_cv(samples, cache, 4, 2, seed=0)
    assert [r["key"] for r in recs] == [s.key for s in samples]
    assert all(set(r["finding_kinds"]) <= {"calcification"} for r in recs)
    assert [r["abnormal"] for r in recs] == [i % 2 == 0 for i in range(len(samples))]
    m = evaluate_predictions(recs)
    assert m.n_lesions == 12
    assert m.froc["1"] >= 0.75  # the first feature separates clusters by 3 SD
    # Fold 0's labels flipped: its own scores do not move, the other folds' do.
    fold_of = patient_folds(samples, 4)
    flipped = dict(cache)
    for i in (i for i in range(len(samples)) if fold_of[i] == 0):
        flipped[f"{i}.y"] = 1 - cache[f"{i}.y"]
    again = calc_path_cv(samples, flipped, 4, 2, seed=0)
    for i, (a, b) in enumerate(zip(recs, again, strict=True)):
        if fold_of[i] == 0:
            np.testing.assert_array_equal(a["scores"], b["scores"])
    assert any(not np.array_equal(a["scores"], b["scores"]) for i, (a, b) in enumerate(zip(recs, again, strict=True))
               if fold_of[i] != 0)


def test_the_calcification_path_cv_leaves_out_the_training_rows_it_is_told_to():
    from mammotriage.model.crossval import calc_path_cv

    samples, cache = _calc_samples_and_cache(np.random.default_rng(4))
    other = dict(cache)
    for name in [n for n in cache if n.endswith(".Xs")]:
        other[name] = cache[name] - 10.0  # simulated clusters that look like nothing else
    for j in (24, 25):
        other[f"{j}.X"] = cache[f"{j}.X"] + 10.0
    same = [calc_path_cv(samples, c, 4, 2, training="real_only") for c in (cache, other)]
    for a, b in zip(*same, strict=True):
        np.testing.assert_array_equal(a["scores"], b["scores"])
    moved = [calc_path_cv(samples, c, 4, 2, training="no_phantoms") for c in (cache, other)]
    assert any(not np.array_equal(a["scores"], b["scores"]) for a, b in zip(*moved, strict=True))
    with pytest.raises(ValueError, match="unknown training set"):
        calc_path_cv(samples, cache, 4, 2, training="everything")
    with pytest.raises(ValueError, match="other images"):
        calc_path_cv(samples[:-1], cache, 4, 2)
