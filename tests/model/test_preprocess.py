import numpy as np
import pytest

from mammotriage.model.preprocess import (
    CanvasTransform,
    PreprocessParams,
    breast_mask,
    normalise,
    preprocess_display,
)


@pytest.mark.parametrize("side", ["left", "right"])
def test_canvas_has_chest_wall_left_and_label_removed(side, tiny_pp, make_breast):
    img = make_breast(chest_wall=side)
    c = preprocess_display(img, tiny_pp)
    assert c.image.shape == (tiny_pp.canvas_rows, tiny_pp.canvas_columns)
    assert c.transform.flip == (side == "right")
    h, w = c.transform.content
    left = c.image[:h, :4].astype(float).mean()
    right = c.image[:h, w - 4:w].astype(float).mean()
    assert left > right  # chest wall (tissue along the edge) now on the left
    # the burned-in label is outside the breast: gone from the canvas
    assert c.image.max() < 250
    # padding is black
    assert (c.image[:, w:] == 0).all() and (c.image[h:, :] == 0).all()


def test_breast_mask_keeps_breast_drops_label(make_breast):
    img = make_breast(chest_wall="right")
    m = breast_mask(img)
    assert m[150, 230] and not m[20, 10]


@pytest.mark.parametrize("flip", [False, True])
def test_box_and_point_round_trip(flip):
    tf = CanvasTransform(stored_shape=(1000, 800), crop=(30, 120, 950, 700), flip=flip,
                         scale_x=0.61, scale_y=0.6, content=(552, 354), canvas=(640, 384))
    boxes = np.array([[130.5, 40.0, 200.0, 90.25], [600.0, 500.0, 699.0, 940.0]])
    back = tf.canvas_to_stored_boxes(tf.stored_to_canvas_boxes(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-9)
    x, y = tf.canvas_to_stored_xy(*tf.stored_to_canvas_xy(321.0, 654.0))
    assert x == pytest.approx(321.0) and y == pytest.approx(654.0)


def test_round_trip_through_real_preprocessing(tiny_pp, make_breast):
    img = make_breast(rows=333, cols=251, chest_wall="right")
    c = preprocess_display(img, tiny_pp)
    tf = c.transform
    # A lesion box in stored pixels lands on the mirrored canvas position and comes back.
    box = np.array([[200.0, 150.0, 230.0, 170.0]])
    cb = tf.stored_to_canvas_boxes(box)[0]
    r0, _c0, _r1, c1 = tf.crop
    assert cb[0] == pytest.approx((c1 - 230.0) * tf.scale_x)  # flipped: right edge -> left
    assert cb[1] == pytest.approx((150.0 - r0) * tf.scale_y)
    np.testing.assert_allclose(tf.canvas_to_stored_boxes(cb[None]), box, atol=1e-9)
    # Pixel content follows the transform: a bright dot in stored space shows up there.
    dot = img.copy()
    dot[158:162, 213:217] = 255
    cd = preprocess_display(dot, tiny_pp, chest_wall="right")
    yy, xx = np.unravel_index(np.argmax(cd.image), cd.image.shape)
    sx, sy = cd.transform.canvas_to_stored_xy(xx + 0.5, yy + 0.5)
    assert abs(sx - 215) <= 3 and abs(sy - 160) <= 3


def test_map_to_stored_places_values():
    tf = CanvasTransform(stored_shape=(100, 80), crop=(0, 40, 100, 80), flip=True,
                         scale_x=1.0, scale_y=1.0, content=(100, 40), canvas=(128, 64))
    m = np.zeros((128, 64), np.float32)
    m[10:20, 0:5] = 1.0  # canvas left = chest wall = stored right edge (flip)
    s, f = tf.map_to_stored(m, max_side=None)
    assert f == 1.0 and s.shape == (100, 80)
    assert s[15, 78] == 1.0 and s[15, 42] == 0.0 and s[15, 10] == 0.0


def test_normalise_shape():
    x = normalise(np.full((64, 64), 255, np.uint8), PreprocessParams())
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert x.max() == pytest.approx(2.0)


def _breast_levels(canvas):
    inside = canvas[canvas > 0]
    return np.percentile(inside, 2), np.percentile(inside, 98)


def test_breast_percentiles_put_two_looks_of_one_breast_on_one_scale(make_breast):
    """The same breast under two display looks (a low-contrast 16-bit-film-like window
    and a bright, high-contrast one) reaches the network on one scale after the
    breast-percentile normalisation, and stays apart without it."""
    from dataclasses import replace

    from mammotriage.model.preprocess import PreprocessParams, preprocess_display

    base = make_breast(rows=400, cols=320, label=False, seed=3).astype(np.float64)
    inside = base > 0
    dull = np.where(inside, np.clip(60 + 0.35 * base, 1, 255), 0).astype(np.uint8)
    bright = np.where(inside, np.clip(255 * (base / 255) ** 0.6, 1, 255), 0).astype(np.uint8)
    display = PreprocessParams(canvas_rows=256, canvas_columns=192)
    norm = replace(display, intensity="breast_percentiles")
    raw = [preprocess_display(im, display, "left").image for im in (dull, bright)]
    out = [preprocess_display(im, norm, "left").image for im in (dull, bright)]
    lo_raw = [_breast_levels(c)[0] for c in raw]
    assert abs(lo_raw[0] - lo_raw[1]) > 40  # the looks differ by far more than rounding
    for c in out:
        lo, hi = _breast_levels(c)
        # the breast's 2nd/98th percentiles land near 15 % / 90 % of full scale (the
        # canvas resize smooths this pixel noise a little, so not exactly)
        assert abs(lo - 0.15 * 255) < 12 and abs(hi - 0.90 * 255) < 12
    both = (out[0] > 0) & (out[1] > 0)
    assert np.abs(out[0][both].astype(float) - out[1][both]).mean() < 0.25 * np.abs(
        raw[0][both].astype(float) - raw[1][both]).mean()
    # the default stays what packages up to v0.3.0 were trained with: no normalisation
    assert PreprocessParams().intensity == "display"


def test_preprocess_params_refuse_an_unknown_intensity_mode():
    from mammotriage.model.preprocess import PreprocessParams

    p = PreprocessParams(intensity="breast_percentiles")
    assert PreprocessParams.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="unknown intensity normalisation"):
        PreprocessParams.from_json({**p.to_json(), "intensity": "histogram-equalise"})
    with pytest.raises(ValueError, match="increasing"):
        PreprocessParams(breast_low_pct=90, breast_high_pct=10)
