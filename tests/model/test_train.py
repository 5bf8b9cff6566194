import numpy as np
import pytest
import torch

from mammotriage.model.data import Sample
from mammotriage.model.train import TrainParams, make_batch, prepare, train


@pytest.fixture(scope="module")
def tiny_samples(make_breast):
    out = []
    for i in range(3):
        img = make_breast(seed=i, chest_wall="right" if i % 2 else "left")
        boxes = np.array([[100.0, 120.0, 130.0, 150.0]]) if i < 2 else np.zeros((0, 4))
        kinds = ["mass"] if i < 2 else []
        out.append(Sample(key=f"t{i}", group=f"p{i}", source="test", abnormal=i < 2, boxes=boxes,
                          kinds=kinds, load=lambda img=img: img))
    return out


def _hp(**kw):
    base = dict(epochs=1.0, batch_size=2, patch_rows=128, pretrained=False, threads=1,
                checkpoint_every=1, warmup_iters=1, seed=5)
    base.update(kw)
    return TrainParams(**base)


def test_batches_are_a_function_of_seed_and_iteration(tiny_samples, tiny_pp):
    prep = prepare(tiny_samples, tiny_pp)
    x1, t1 = make_batch(prep, 3, _hp(), tiny_pp)
    x2, t2 = make_batch(prep, 3, _hp(), tiny_pp)
    assert torch.equal(x1, x2)
    assert x1.shape == (2, 1, 128, tiny_pp.canvas_columns)
    for a, b in zip(t1, t2, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])
        if len(a["boxes"]):  # MONAI order (row0, col0, row1, col1) inside the patch
            assert (a["boxes"][:, 2] <= 128).all() and (a["boxes"][:, 3] <= tiny_pp.canvas_columns).all()


def test_resume_gives_the_same_weights(tiny_samples, tiny_pp, tiny_config, tmp_path):
    hp = _hp()
    full = train(tiny_samples, tmp_path / "a", hp, tiny_config, tiny_pp, progress=False)
    assert full.finished and full.iterations == full.total_iterations == 2
    part = train(tiny_samples, tmp_path / "b", hp, tiny_config, tiny_pp, progress=False, stop_at=1)
    assert not part.finished and part.iterations == 1
    resumed = train(tiny_samples, tmp_path / "b", hp, tiny_config, tiny_pp, progress=False)
    assert resumed.finished
    ckpt_seconds = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["seconds"]
    assert resumed.seconds >= ckpt_seconds > part.seconds  # the interrupted run's time counts too
    sa = full.detector.network.state_dict()
    sb = resumed.detector.network.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_simulated_looks_change_the_breast_and_keep_the_background(make_breast):
    from mammotriage.model.preprocess import PreprocessParams, normalise_breast
    from mammotriage.model.train import simulated_look

    img = make_breast(rows=256, cols=192, label=False, seed=4)
    pp = PreprocessParams(intensity="breast_percentiles")
    changed = 0
    for seed in range(12):
        out = simulated_look(img, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out > 0, img > 0)  # background stays background, breast stays breast
        changed += np.abs(out.astype(int) - img)[img > 0].max() > 5
        again = normalise_breast(out, out > 0, pp)
        inside = again[again > 0]
        assert abs(np.percentile(inside, 98) - 0.9 * 255) < 8
    assert changed >= 10  # almost every draw gives another look


def test_looks_off_keep_the_batches_of_older_recipes(tiny_samples, tiny_pp):
    """aug_looks = 0 draws nothing from the generator: batches are those of recipes that
    predate it; aug_looks = 1 changes them."""
    prep = prepare(tiny_samples, tiny_pp)
    x0, _ = make_batch(prep, 2, _hp(), tiny_pp)
    x_off, _ = make_batch(prep, 2, _hp(aug_looks=0.0), tiny_pp)
    x_on, _ = make_batch(prep, 2, _hp(aug_looks=1.0), tiny_pp)
    assert torch.equal(x0, x_off)
    assert not torch.equal(x0, x_on)
