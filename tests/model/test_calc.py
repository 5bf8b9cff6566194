"""The calcification path on synthetic backgrounds: specks, clusters, insertion, trees."""

import numpy as np
import pytest

from mammotriage.model.calc import (
    CalcParams,
    TreeEnsemble,
    find_clusters,
    fit_trees,
    insert_cluster,
    working_image,
)
from mammotriage.model.twostage import hits, noisy_or, suppress


def _breast(rows=600, cols=400, seed=0) -> np.ndarray:
    """A smooth, noisy 'breast' half-disc on black (chest wall on the left)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    inside = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.9)) ** 2 <= 1
    from scipy import ndimage

    tex = ndimage.gaussian_filter(rng.normal(0, 1, (rows, cols)), 6) * 40
    img = np.where(inside, 120 + tex + rng.normal(0, 2, (rows, cols)), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_inserted_cluster_is_found_and_background_gives_few_clusters():
    bg = _breast()
    rng = np.random.default_rng(3)
    img, (cx, cy, r) = insert_cluster(bg, 0.2, (150.0, 300.0), rng, contrast_per_mm=150.0)
    assert img.dtype == np.uint8 and (img.astype(int) - bg).max() > 20
    found = find_clusters(img, 0.2)
    boxes = np.array([c.box for c in found]).reshape(-1, 4)
    assert hits(boxes, np.array([[cx, cy, r]])).any(), "the inserted cluster was not found"
    # the same background without the cluster: nothing at that place
    plain = np.array([c.box for c in find_clusters(bg, 0.2)]).reshape(-1, 4)
    assert not hits(plain, np.array([[cx, cy, r]])).any()


def test_candidate_count_is_capped_whatever_the_image_holds():
    rng = np.random.default_rng(0)
    noisy = _breast()
    noisy = np.clip(noisy.astype(int) + (rng.random(noisy.shape) < 0.05) * 80, 0, 255).astype(np.uint8)
    p = CalcParams(max_specks=500, max_clusters=10)
    found = find_clusters(noisy, 0.2, params=p)
    # each cluster scale keeps at most max_clusters clusters
    assert 0 < len(found) <= 3 * p.max_clusters


def test_working_grid_area_averages_finer_images():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out, factor = working_image(img, 0.1)
    assert factor == 2.0 and out.shape == (2, 2)
    assert out[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    same, f1 = working_image(img, 0.25)  # coarser than the grid: used as it is
    assert f1 == 1.0 and same.shape == (4, 4)


def test_exported_trees_match_scikit_learn_and_round_trip():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + rng.normal(0, 0.3, 300) > 0.5).astype(int)
    ens = fit_trees(X, y, n_estimators=40)
    again = TreeEnsemble.from_arrays(ens.to_arrays("t"), "t")
    assert np.allclose(again.predict_proba(X), ens.predict_proba(X))
    p = ens.predict_proba(X)
    assert p[y == 1].mean() > p[y == 0].mean() + 0.3


def test_containment_aware_suppression_keeps_one_mark_per_lesion():
    boxes = np.array([
        [100, 100, 200, 200],  # big box
        [130, 130, 160, 160],  # nested inside it, IoU only 0.09
        [400, 400, 450, 450],  # elsewhere
    ], float)
    keep = suppress(boxes, np.array([0.5, 0.9, 0.4]))
    assert keep.tolist() == [1, 2]


def test_noisy_or():
    assert noisy_or([0.5, 0.5]) == pytest.approx(0.75)
    assert noisy_or([]) == 0.0
    assert noisy_or([0.9, 0.1, 0.1, 0.1], top_k=1) == pytest.approx(0.9)


def test_prior_shift_moves_oversampled_trees_to_the_real_rate():
    from mammotriage.model.calc import fit_trees, prior_shift

    assert prior_shift(0.3, 0.3) == 0.0
    assert np.isclose(prior_shift(0.5, 0.1), np.log(1 / 9))
    # A population with 5 % positives; the trees learn from a sample with half positives
    # (as the cluster trees do, with simulated clusters in every normal image).
    rng = np.random.default_rng(3)
    n = 20000
    y = (rng.random(n) < 0.05).astype(int)
    X = rng.normal(size=(n, 3)) + y[:, None] * np.array([1.0, 0.5, 0.0])
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    train = np.concatenate([pos[: len(pos) // 2], neg[: len(pos) // 2]])
    test = np.concatenate([pos[len(pos) // 2:], neg[len(pos) // 2:]])
    trees = fit_trees(X[train], y[train], n_estimators=40)
    raw = trees.predict_proba(X[test])
    shifted = trees.predict_proba(X[test], prior_shift(float(y[train].mean()), 0.05))
    rate = float(y[test].mean())
    # Without the shift the mean probability is several times the real rate; with it the
    # mean lands near the rate (margins far above float noise), ranking unchanged.
    assert raw.mean() > 4 * rate
    assert 0.5 * rate < shifted.mean() < 2.0 * rate
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(shifted, kind="stable"))
