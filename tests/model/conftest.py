"""Shared fixtures for the model tests: tiny canvases and networks only."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_pp():
    from mammotriage.model.preprocess import PreprocessParams

    return PreprocessParams(canvas_rows=256, canvas_columns=192)


@pytest.fixture(scope="session")
def tiny_config():
    from mammotriage.model.network import NetworkConfig

    return NetworkConfig(base_anchor_sizes=(8, 16), detections_per_img=20)


@pytest.fixture(scope="session")
def phantom_exam():
    from mammotriage.phantom import generate_exam

    return generate_exam(11, rows=320, columns=260, normal=False)


def synthetic_breast(rows=300, cols=240, chest_wall="right", label=True, seed=0):
    """A bright half-ellipse 'breast' against the chest wall, a film label far from it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    cx = cols - 1 if chest_wall == "right" else 0
    inside = ((xx - cx) / (0.6 * cols)) ** 2 + ((yy - rows / 2) / (0.42 * rows)) ** 2 <= 1
    img = np.where(inside, 120 + rng.integers(0, 60, size=(rows, cols)), 0).astype(np.uint8)
    if label:
        lx = 5 if chest_wall == "right" else cols - 25
        img[10:30, lx:lx + 18] = 250
    return img


@pytest.fixture(scope="session")
def make_breast():
    return synthetic_breast
