"""A suspicion map in a result's JSON: how a site AI worker hands its maps to workstations.

The site's AI workers store every exam's result in ``triage_results`` (JSON). A
workstation that takes that result instead of analysing the exam again also wants the
suspicion maps the reader sees. The SEG in the site archive is the map's archival form;
the result carries a compact copy (:func:`pack_map`): the map in [0, 1] quantised to 8
bits (a step of 1/255, below what an 8-bit colour map can show), zlib-compressed (most
of a map is near 0) and base64-encoded, with its shape. :func:`unpack_map` checks what it
reads, since the JSON comes from another machine: shape and size bounded before anything
is decompressed, the decompressed length exactly the shape's.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import numpy as np

__all__ = ["MAX_MAP_PIXELS", "MapError", "pack_map", "unpack_map"]

#: the largest map a result may carry (a full-size view's map is ~0.2 M pixels)
MAX_MAP_PIXELS = 4_000_000
_ENCODING = "u8-zlib-b64"


class MapError(ValueError):
    """A packed map that cannot be read; the message says why."""


def pack_map(suspicion: Any) -> dict[str, Any] | None:
    """The JSON form of a 2-D map in [0, 1] (None for no map)."""
    if suspicion is None:
        return None
    arr = np.asarray(suspicion, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0 or arr.size > MAX_MAP_PIXELS:
        raise MapError(f"a suspicion map must be 2-D with 1..{MAX_MAP_PIXELS} pixels, got shape {arr.shape}")
    q = np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return {"encoding": _ENCODING, "shape": [int(arr.shape[0]), int(arr.shape[1])],
            "data": base64.b64encode(zlib.compress(q.tobytes(), 6)).decode("ascii")}


def unpack_map(packed: Any) -> np.ndarray:
    """The map of :func:`pack_map` as float16 in [0, 1]; :class:`MapError` says what is wrong."""
    if not isinstance(packed, dict):
        raise MapError("the packed map is not an object")
    if packed.get("encoding") != _ENCODING:
        raise MapError(f"unknown map encoding {packed.get('encoding')!r}")
    shape = packed.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise MapError(f"the map's shape {shape!r} is not two positive integers")
    rows, cols = shape
    if rows * cols > MAX_MAP_PIXELS:
        raise MapError(f"the map's shape {rows}x{cols} is over {MAX_MAP_PIXELS} pixels")
    data = packed.get("data")
    if not isinstance(data, str):
        raise MapError("the map's data is not text")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
        inflater = zlib.decompressobj()
        pixels = inflater.decompress(raw, rows * cols + 1)  # never more than the shape says
    except (binascii.Error, UnicodeEncodeError, zlib.error) as exc:
        raise MapError(f"the map's data cannot be decoded: {exc}") from exc
    if len(pixels) != rows * cols or inflater.unconsumed_tail or not inflater.eof:
        raise MapError(f"the map's data does not hold {rows}x{cols} pixels")
    return (np.frombuffer(pixels, dtype=np.uint8).reshape(rows, cols) / 255.0).astype(np.float16)
