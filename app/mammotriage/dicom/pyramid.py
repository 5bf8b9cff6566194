"""Display-resolution pyramids of stored pixels (pure numpy, runs in worker processes).

Window/level on a 4096 x 3328 view must feel instant, so the viewer windows a level
of a pyramid close to the screen resolution instead of the full image. Levels keep
*stored* values (uint16), so every VOI preset and the 8-bit table apply unchanged.
"""

from __future__ import annotations

import numpy as np


def downsample2(image: np.ndarray) -> np.ndarray:
    """Halve both dimensions by averaging 2 x 2 blocks (odd edges are dropped)."""
    rows, cols = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    if rows == 0 or cols == 0:
        return image.copy()
    block = image[:rows, :cols].astype(np.uint32)
    out = (block[0::2, 0::2] + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2] + 2) >> 2
    return out.astype(image.dtype)


def build_pyramid(image: np.ndarray, min_size: int = 256) -> list[np.ndarray]:
    """Level 0 is ``image`` itself; each next level halves it until ``min_size``."""
    levels = [image]
    while max(levels[-1].shape) // 2 >= min_size:
        levels.append(downsample2(levels[-1]))
    return levels


def choose_level(levels: list[np.ndarray], needed_rows: float) -> int:
    """Index of the smallest level that still has at least ``needed_rows`` rows."""
    best = 0
    for i, level in enumerate(levels):
        if level.shape[0] >= needed_rows:
            best = i
    return best
