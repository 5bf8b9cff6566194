"""The suspicion map a site result carries (triage.maps): round trip and hostile input."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from mammotriage.triage.maps import MAX_MAP_PIXELS, MapError, pack_map, unpack_map


def test_a_map_round_trips_within_one_grey_step() -> None:
    rng = np.random.default_rng(5)
    suspicion = rng.random((97, 61)).astype(np.float32)
    suspicion[:10] = 0.0
    packed = pack_map(suspicion)
    assert packed is not None and packed["shape"] == [97, 61]
    back = unpack_map(packed)
    assert back.shape == (97, 61) and back.dtype == np.float16
    assert float(np.abs(back.astype(np.float32) - suspicion).max()) <= 1 / 510 + 1e-3
    assert pack_map(None) is None
    # out-of-range and NaN values are clamped, not wrapped
    odd = unpack_map(pack_map(np.array([[np.nan, -1.0, 2.0, 0.5]])))
    assert odd.tolist() == [[0.0, 0.0, 1.0, pytest.approx(0.5, abs=0.003)]]


def test_a_mostly_empty_map_is_small() -> None:
    suspicion = np.zeros((512, 320), np.float32)
    suspicion[100:140, 80:120] = 0.8
    assert len(pack_map(suspicion)["data"]) < 4000  # 164 KB of pixels


def _packed(shape: list, pixels: bytes) -> dict:
    return {"encoding": "u8-zlib-b64", "shape": shape, "data": base64.b64encode(zlib.compress(pixels)).decode()}


@pytest.mark.parametrize("packed, reason", [
    ("not a dict", "not an object"),
    ({"encoding": "png", "shape": [1, 1], "data": ""}, "unknown map encoding"),
    ({"encoding": "u8-zlib-b64", "shape": [0, 4], "data": ""}, "two positive integers"),
    ({"encoding": "u8-zlib-b64", "shape": [True, 4], "data": ""}, "two positive integers"),
    ({"encoding": "u8-zlib-b64", "shape": [2], "data": ""}, "two positive integers"),
    ({"encoding": "u8-zlib-b64", "shape": [MAX_MAP_PIXELS, 2], "data": ""}, "over"),
    ({"encoding": "u8-zlib-b64", "shape": [2, 2], "data": 5}, "not text"),
    ({"encoding": "u8-zlib-b64", "shape": [2, 2], "data": "@@@@"}, "cannot be decoded"),
    ({"encoding": "u8-zlib-b64", "shape": [2, 2], "data": base64.b64encode(b"not zlib").decode()}, "cannot be decoded"),
    (_packed([2, 2], b"\x00" * 3), "does not hold 2x2"),
    (_packed([2, 2], b"\x00" * 5), "does not hold 2x2"),
])
def test_a_map_that_lies_is_refused_with_the_reason(packed, reason) -> None:
    with pytest.raises(MapError, match=reason):
        unpack_map(packed)


def test_a_decompression_bomb_is_refused_without_inflating_it() -> None:
    """100 MB of zeros in ~100 KB: only as many bytes as the shape says are ever inflated."""
    bomb = _packed([10, 10], bytes(100_000_000))
    with pytest.raises(MapError, match="does not hold 10x10"):
        unpack_map(bomb)


def test_a_map_that_cannot_be_packed_says_why() -> None:
    with pytest.raises(MapError, match="2-D"):
        pack_map(np.zeros((2, 2, 2)))
