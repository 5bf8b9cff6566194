"""Screen-resolution rasters for window/level (numpy only, no Qt).

A window/level drag changes only the 8-bit table, never the geometry.  So a pane keeps
the *stored values* of what it shows already resampled to its screen pixels (the
pyramid level just above the screen resolution, bilinear below 2x zoom, nearest above,
as Qt's smooth and plain scaling do), and each frame of a drag is one table lookup
over those screen pixels plus an unscaled blit: no per-frame resampling and no
full-level pass.  The tables themselves are shared by panes showing the same window
on images with the same pixel semantics (:func:`shared_lut`), so four linked panes
build one table per frame, not four.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from mammotriage.dicom.image import MammoMetadata, WindowPreset
from mammotriage.dicom.voi import DisplayLut, Window, build_display_lut

__all__ = ["Raster", "resample", "screen_raster", "shared_lut"]

_LUTS: OrderedDict[tuple[object, ...], tuple[DisplayLut, DisplayLut, tuple[object, ...]]] = OrderedDict()
_LUT_SLOTS = 16


def _lut_key(meta: MammoMetadata, voi: Window | WindowPreset | None, invert: bool) -> tuple[object, ...]:
    m = meta.modality_lut
    table = getattr(voi, "lut", None)
    return (meta.bits_stored, meta.pixel_representation, meta.photometric, meta.presentation_lut_shape,
            m.slope, m.intercept, m.first_mapped, id(m.table) if m.table is not None else None,
            type(voi).__name__, getattr(voi, "center", None), getattr(voi, "width", None),
            getattr(voi, "function", None), getattr(voi, "first_mapped", None),
            id(table) if table is not None else None, bool(invert))


def shared_lut(meta: MammoMetadata, voi: Window | WindowPreset | None, invert: bool) -> tuple[DisplayLut, DisplayLut]:
    """:func:`build_display_lut`, built once for every pane that needs the same table.

    Returns the 8-bit table and the same table as opaque 32-bit grey pixels
    (``0xFFgggggg``, Qt's RGB32): a frame looked up through it is blitted as it is,
    with no per-pixel format conversion in the paint.  Tables (modality LUT, VOI LUT)
    are matched by identity and kept referenced by the cache, so a freed table's id can
    never be mistaken for a new one.
    """
    key = _lut_key(meta, voi, invert)
    hit = _LUTS.get(key)
    if hit is not None:
        _LUTS.move_to_end(key)
        return hit[0], hit[1]
    lut = build_display_lut(meta, voi, invert=invert)
    grey = lut.table.astype(np.uint32)
    rgb32 = DisplayLut(table=np.uint32(0xFF000000) | (grey << 16) | (grey << 8) | grey, offset=lut.offset)
    _LUTS[key] = (lut, rgb32, (meta.modality_lut.table, getattr(voi, "lut", None)))
    while len(_LUTS) > _LUT_SLOTS:
        _LUTS.popitem(last=False)
    return lut, rgb32


def _axis(n_out: int, origin: float, start: float, extent: float, n_src: int, smooth: bool
          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Source coordinates of ``n_out`` screen pixels from ``origin`` (screen) for an image
    spanning ``start .. start + extent`` on screen with ``n_src`` source pixels."""
    scale = n_src / extent
    src = (origin + np.arange(n_out, dtype=np.float64) + 0.5 - start) * scale - 0.5
    if not smooth:
        return np.clip(np.rint(src), 0, n_src - 1).astype(np.intp), None, None
    lo = np.floor(src)
    weight = (src - lo).astype(np.float32)
    lo = lo.astype(np.intp)
    hi = np.clip(lo + 1, 0, n_src - 1)
    lo = np.clip(lo, 0, n_src - 1)
    return lo, hi, weight


def resample(level: np.ndarray, image_rect: tuple[float, float, float, float],
             visible: tuple[int, int, int, int], smooth: bool) -> np.ndarray:
    """Stored values of ``level`` at the screen pixels ``visible`` (x, y, w, h).

    ``image_rect`` (x, y, w, h) is where the whole level lands on screen.  Bilinear
    (``smooth``) or nearest; the result keeps ``level``'s dtype.
    """
    x, y, w, h = image_rect
    vx, vy, vw, vh = visible
    rows, cols = level.shape
    if not smooth:
        ri, _, _ = _axis(vh, vy, y, h, rows, False)
        ci, _, _ = _axis(vw, vx, x, w, cols, False)
        picked: np.ndarray = level[ri[:, None], ci[None, :]]
        return picked
    r0, r1, wr = _axis(vh, vy, y, h, rows, True)
    c0, c1, wc = _axis(vw, vx, x, w, cols, True)
    assert r1 is not None and wr is not None and c1 is not None and wc is not None  # smooth: all four
    cmin, cmax = int(c0.min()), int(c1.max()) + 1
    band = level[:, cmin:cmax]
    top = band[r0].astype(np.float32)
    top += (band[r1] - top) * wr[:, None]
    left = top[:, c0 - cmin]
    left += (top[:, c1 - cmin] - left) * wc[None, :]
    np.rint(left, out=left)
    resampled: np.ndarray = left.astype(level.dtype)
    return resampled


class Raster:
    """A pane's stored values at screen resolution (device pixels), and where they go.

    ``origin`` is in device pixels; ``ratio`` is the device pixel ratio they were made
    for (a HiDPI screen's 2 is two device pixels per logical one), so the raster lands
    at ``origin / ratio`` in the widget's logical coordinates.
    """

    def __init__(self, key: tuple[object, ...], origin: tuple[int, int], values: np.ndarray, ratio: float = 1.0):
        self.key = key
        self.origin = origin
        self.values = values
        self.ratio = ratio
        self._frame: np.ndarray | None = None

    @property
    def logical_origin(self) -> tuple[float, float]:
        return self.origin[0] / self.ratio, self.origin[1] / self.ratio

    def render(self, lut: DisplayLut, out: np.ndarray | None = None) -> np.ndarray:
        """One table lookup (an RGB32 table of :func:`shared_lut`) over the screen
        pixels, into ``out`` (the pane's image memory, shape ``values.shape``) or a
        frame buffer allocated once per raster: nothing is allocated per frame."""
        if out is None:
            if self._frame is None:
                self._frame = np.empty(self.values.shape, dtype=np.uint32)
            out = self._frame
        return lut.apply(self.values, out=out)


def screen_raster(previous: Raster | None, view_key: object, level_index: int, level: np.ndarray,
                  image_rect: tuple[float, float, float, float], widget: tuple[int, int],
                  smooth: bool, ratio: float = 1.0) -> Raster | None:
    """The raster for this geometry: ``previous`` when nothing moved, else a new one
    (None when no part of the image is inside the widget).

    ``image_rect`` and ``widget`` are logical (widget) coordinates; the raster is made
    at ``ratio`` device pixels per logical pixel (``QWidget.devicePixelRatioF``), so a
    HiDPI screen shows every device pixel it has, not a 2x enlargement.
    """
    x, y, w, h = (v * ratio for v in image_rect)
    if w <= 0 or h <= 0:
        return None
    dev_w, dev_h = math.ceil(widget[0] * ratio - 1e-6), math.ceil(widget[1] * ratio - 1e-6)
    vx0, vy0 = max(0, math.floor(x)), max(0, math.floor(y))
    vx1, vy1 = min(dev_w, math.ceil(x + w)), min(dev_h, math.ceil(y + h))
    if vx1 <= vx0 or vy1 <= vy0:
        return None
    visible = (vx0, vy0, vx1 - vx0, vy1 - vy0)
    key = (view_key, level_index, tuple(round(v, 3) for v in image_rect), widget, smooth, ratio)
    if previous is not None and previous.key == key:
        return previous
    return Raster(key, (vx0, vy0), resample(level, (x, y, w, h), visible, smooth), ratio)
