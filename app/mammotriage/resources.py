"""Locate files under ``resources/`` (colour maps, stylesheets, default settings).

In a source checkout (editable install) they are read from the repository's
``resources/`` folder; an installed wheel carries them under
``<prefix>/share/mammotriage/resources`` (pyproject ``data-files``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def resources_dir() -> Path:
    """The resources folder (``$MAMMOTRIAGE_RESOURCES`` overrides)."""
    env = os.environ.get("MAMMOTRIAGE_RESOURCES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "resources",
                   Path(sys.prefix) / "share" / "mammotriage" / "resources"]
    for path in candidates:
        if (path / "colormaps").is_dir():
            return path
    raise FileNotFoundError("Mammo Triage resources not found (looked in: "
                            + ", ".join(str(c) for c in candidates) + ")")


def colormap(name: str) -> np.ndarray:
    """A 256 x 4 uint8 RGBA colour map from ``resources/colormaps/<name>.csv``."""
    path = resources_dir() / "colormaps" / f"{name}.csv"
    table = np.loadtxt(path, delimiter=",", comments="#", dtype=np.int64)
    if table.shape != (256, 4) or table.min() < 0 or table.max() > 255:
        raise ValueError(f"{path}: expected 256 rows of R,G,B,A in 0..255, got shape {table.shape}")
    return table.astype(np.uint8)
