import numpy as np
import pytest
import torch

from mammotriage.model.infer import Engine, pick_device, suspicion_maps


@pytest.fixture(scope="module")
def engine(tiny_config, tiny_pp):
    return Engine.untrained(tiny_config, tiny_pp, seed=3, device="cpu", threads=1, batch_size=2)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            pick_device("cuda")


def test_suspicion_map_is_max_over_anchors_and_levels():
    a = torch.full((1, 2 * 2, 2, 2), -10.0)  # 2 anchors x 2 classes
    a[0, 3, 1, 1] = 10.0  # anchor 1, class 1, bottom-right
    b = torch.full((1, 4, 1, 1), -10.0)
    m = suspicion_maps([a, b], num_anchors=2, num_classes=2, size=(4, 4))
    assert m.shape == (1, 2, 4, 4)
    assert float(m[0, 1, 3, 3]) > 0.99 and float(m[0, 0].max()) < 0.01


def test_predict_images_stored_coordinates_and_determinism(engine, phantom_exam):
    from mammotriage.dicom.image import MammoImage
    from mammotriage.dicom.read import parse_metadata

    images = [MammoImage(pixels=i.pixels, meta=parse_metadata(i.dataset)) for i in phantom_exam.images[:3]]
    r1 = engine.predict_images(images)
    r2 = engine.predict_images(images)
    assert len(r1) == 3
    for a, b, im in zip(r1, r2, images, strict=True):
        rows, cols = im.shape
        assert [f.box for f in a.findings] == [f.box for f in b.findings]  # bit-identical
        assert [f.score for f in a.findings] == [f.score for f in b.findings]
        assert np.array_equal(a.suspicion, b.suspicion)
        for f in a.findings:
            x0, y0, x1, y1 = f.box
            assert 0 <= x0 <= x1 <= cols and 0 <= y0 <= y1 <= rows
            assert f.kind in ("mass", "calcification")
        assert a.suspicion.shape == (rows, cols) or a.map_factor > 1
        assert a.score == max([f.score for f in a.findings], default=0.0)


def test_batched_equals_single(engine, make_breast):
    imgs = [make_breast(seed=1), make_breast(chest_wall="left", seed=2)]
    batched = engine.predict_displays(imgs)
    single = [engine.predict_displays([im])[0] for im in imgs]
    for a, b in zip(batched, single, strict=True):
        assert [f.kind for f in a.findings] == [f.kind for f in b.findings]
        np.testing.assert_allclose([f.score for f in a.findings], [f.score for f in b.findings], atol=1e-5)


def test_flip_maps_findings_back_mirrored(engine, make_breast):
    """A mirrored image gives mirrored findings in stored coordinates (canonical flip)."""
    img = make_breast(seed=5)
    a = engine.predict_displays([img], chest_walls=["right"])[0]
    b = engine.predict_displays([img[:, ::-1].copy()], chest_walls=["left"])[0]
    cols = img.shape[1]
    top_a = [f.box for f in a.findings[:5]]
    top_b = [(cols - x1, y0, cols - x0, y1) for (x0, y0, x1, y1) in (f.box for f in b.findings[:5])]
    np.testing.assert_allclose(top_a, top_b, atol=1e-3)
