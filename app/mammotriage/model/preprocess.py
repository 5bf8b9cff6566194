"""Preprocessing shared by training and inference (numpy + PIL + scipy, no torch).

One path for every image the model sees::

    stored pixels --VOI (foundation window)--> 8-bit display image
      --breast segmentation--> crop to the breast (background outside the breast zeroed)
      --flip--> chest wall on the LEFT of the canvas (canonical side)
      --resize (keep aspect)--> top-left of a fixed (rows, columns) canvas, zero padding

:class:`CanvasTransform` records every step so that model outputs (boxes, maps) go back
to stored-image pixel coordinates exactly.  Coordinates are continuous pixel-edge
coordinates: pixel ``(c, r)`` covers ``[c, c+1) x [r, r+1)``; boxes are
``(x0, y0, x1, y1)`` = (column, row, column, row) everywhere outside the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from mammotriage.dicom.hanging import chest_wall_from_pixels

if TYPE_CHECKING:
    from mammotriage.dicom.image import MammoMetadata

#: Defaults of the shipped model; the package metadata carries the values actually used.
DEFAULT_CANVAS = (1024, 640)  # rows, columns


#: Intensity normalisations :class:`PreprocessParams` knows (see its ``intensity``).
INTENSITY_MODES = ("display", "breast_percentiles")


@dataclass(frozen=True)
class PreprocessParams:
    """Parameters of :func:`preprocess_display`; stored in the model package."""

    canvas_rows: int = DEFAULT_CANVAS[0]
    canvas_columns: int = DEFAULT_CANVAS[1]
    margin: int = 8  # pixels of stored image kept around the breast mask
    norm_mean: float = 0.5  # applied to [0, 1] intensities before the network
    norm_std: float = 0.25
    #: "display": the 8-bit display image as the file's VOI made it (packages up to
    #: v0.3.0); "breast_percentiles": after the VOI, the breast's own ``breast_low_pct``
    #: and ``breast_high_pct`` percentiles are mapped to fixed levels, so that film,
    #: digitised film and FFDM reach the network on one intensity scale.
    intensity: str = "display"
    breast_low_pct: float = 2.0
    breast_high_pct: float = 98.0
    breast_low_level: float = 0.15  # where the low percentile lands, fraction of full scale
    breast_high_level: float = 0.90

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"unknown intensity normalisation {self.intensity!r} "
                             f"(this program knows {', '.join(INTENSITY_MODES)})")
        if not (0 <= self.breast_low_pct < self.breast_high_pct <= 100
                and 0 <= self.breast_low_level < self.breast_high_level <= 1):
            raise ValueError("breast percentiles and levels must be increasing, within [0, 100] and [0, 1]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreprocessParams:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class CanvasTransform:
    """Where the canvas came from: crop box in the stored image, flip, scale.

    ``crop`` is ``(r0, c0, r1, c1)`` (half-open, stored pixels); ``flip`` is True when
    the crop was mirrored left-right to put the chest wall on the left; ``scale_x`` and
    ``scale_y`` are canvas pixels per stored pixel (``out / in`` of the resize);
    ``content`` is ``(rows, columns)`` of the canvas area holding image data.
    """

    stored_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    flip: bool
    scale_x: float
    scale_y: float
    content: tuple[int, int]
    canvas: tuple[int, int]

    # ---- points
    def stored_to_canvas_xy(self, x: np.ndarray | float, y: np.ndarray | float
                            ) -> tuple[np.ndarray, np.ndarray]:
        r0, c0, _r1, c1 = self.crop
        xc = np.asarray(x, dtype=np.float64) - c0
        if self.flip:
            xc = (c1 - c0) - xc
        yc = np.asarray(y, dtype=np.float64) - r0
        return xc * self.scale_x, yc * self.scale_y

    def canvas_to_stored_xy(self, x: np.ndarray | float, y: np.ndarray | float
                            ) -> tuple[np.ndarray, np.ndarray]:
        r0, c0, _r1, c1 = self.crop
        xc = np.asarray(x, dtype=np.float64) / self.scale_x
        if self.flip:
            xc = (c1 - c0) - xc
        yc = np.asarray(y, dtype=np.float64) / self.scale_y
        return xc + c0, yc + r0

    # ---- boxes (N, 4) x0 y0 x1 y1
    def stored_to_canvas_boxes(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xa, ya = self.stored_to_canvas_xy(b[:, 0], b[:, 1])
        xb, yb = self.stored_to_canvas_xy(b[:, 2], b[:, 3])
        return np.stack([np.minimum(xa, xb), np.minimum(ya, yb),
                         np.maximum(xa, xb), np.maximum(ya, yb)], axis=1)

    def canvas_to_stored_boxes(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xa, ya = self.canvas_to_stored_xy(b[:, 0], b[:, 1])
        xb, yb = self.canvas_to_stored_xy(b[:, 2], b[:, 3])
        out = np.stack([np.minimum(xa, xb), np.minimum(ya, yb),
                        np.maximum(xa, xb), np.maximum(ya, yb)], axis=1)
        rows, cols = self.stored_shape
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, cols)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, rows)
        return out

    def map_to_stored(self, canvas_map: np.ndarray, max_side: int | None = 512) -> tuple[np.ndarray, float]:
        """Resample a canvas-sized map onto the stored image grid.

        Returns ``(map, factor)``: ``map[i, j]`` is the value at stored pixel
        ``(column, row) = ((j + 0.5) * factor, (i + 0.5) * factor)``; ``factor`` >= 1 keeps the
        long side at most ``max_side`` (``None``: full stored resolution, factor 1).
        Outside the crop the map is 0.
        """
        rows, cols = self.stored_shape
        factor = 1.0 if max_side is None else max(1.0, max(rows, cols) / max_side)
        out_r, out_c = int(np.ceil(rows / factor)), int(np.ceil(cols / factor))
        ys = (np.arange(out_r) + 0.5) * factor
        xs = (np.arange(out_c) + 0.5) * factor
        cx, _ = self.stored_to_canvas_xy(xs, np.zeros_like(xs))
        _, cy = self.stored_to_canvas_xy(np.zeros_like(ys), ys)
        r0, c0, r1, c1 = self.crop
        inside_x = (xs >= c0) & (xs < c1)
        inside_y = (ys >= r0) & (ys < r1)
        m = np.asarray(canvas_map, dtype=np.float32)
        ci = np.clip(np.floor(cx).astype(np.int64), 0, m.shape[1] - 1)
        ri = np.clip(np.floor(cy).astype(np.int64), 0, m.shape[0] - 1)
        out = m[ri[:, None], ci[None, :]]
        out = out * (inside_y[:, None] & inside_x[None, :])
        return out.astype(np.float32), float(factor)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _otsu(values: np.ndarray) -> float:
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma_b = (mu_t * omega - mu) ** 2 / (omega * (1 - omega))
    sigma_b = np.nan_to_num(sigma_b)
    return float(np.argmax(sigma_b))


def breast_mask(display: np.ndarray) -> np.ndarray:
    """Boolean mask of the breast in an 8-bit display image (tissue bright).

    Threshold (the lower of Otsu and a fixed low level, so faint skin-line tissue stays
    in), open to cut thin bridges to film borders and labels, keep the largest
    component, fill holes, and dilate a little.  Works on a copy reduced to <= 512 px.
    """
    img = np.asarray(display)
    if img.dtype != np.uint8:
        raise ValueError("breast_mask expects an 8-bit display image")
    step = max(1, int(np.ceil(max(img.shape) / 512)))
    small = img[::step, ::step]
    thr = min(_otsu(small), 40.0)
    thr = max(thr, 8.0)
    fg = small > thr
    fg = ndimage.binary_opening(fg, structure=np.ones((5, 5), bool))
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones(img.shape, dtype=bool)
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    keep = labels == (1 + int(np.argmax(sizes)))
    keep = ndimage.binary_fill_holes(keep)
    keep = ndimage.binary_dilation(keep, structure=np.ones((3, 3), bool), iterations=2)
    full = np.repeat(np.repeat(keep, step, axis=0), step, axis=1)[: img.shape[0], : img.shape[1]]
    return full


DEFAULT_PARAMS = PreprocessParams()


@dataclass
class Canvas:
    """A preprocessed image: uint8 canvas, its transform, and the breast mask on the canvas."""

    image: np.ndarray  # (rows, columns) uint8, chest wall on the left
    transform: CanvasTransform
    breast: np.ndarray | None = None  # the breast mask on the *stored* grid (as segmented)


def preprocess_display(display: np.ndarray, params: PreprocessParams = DEFAULT_PARAMS,
                       chest_wall: str | None = None) -> Canvas:
    """8-bit display image (tissue bright) -> model canvas + transform.

    ``chest_wall`` (``"left"``/``"right"``) overrides the side found from the pixels.
    """
    img = np.asarray(display)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError("preprocess_display expects a 2-D uint8 image")
    rows, cols = img.shape
    mask = breast_mask(img)
    rr = np.flatnonzero(mask.any(axis=1))
    cc = np.flatnonzero(mask.any(axis=0))
    m = params.margin
    r0, r1 = max(0, int(rr[0]) - m), min(rows, int(rr[-1]) + 1 + m)
    c0, c1 = max(0, int(cc[0]) - m), min(cols, int(cc[-1]) + 1 + m)
    crop = np.where(mask, img, 0)[r0:r1, c0:c1]
    if params.intensity == "breast_percentiles":
        crop = normalise_breast(crop, mask[r0:r1, c0:c1], params)
    # Judge the chest-wall side on the masked crop: mini-MIAS films are centred on a wide
    # black canvas, so the image edges say nothing there.
    side = chest_wall or chest_wall_from_pixels(crop)
    flip = side == "right"
    if flip:
        crop = crop[:, ::-1]
    H, W = params.canvas_rows, params.canvas_columns
    h, w = crop.shape
    s = min(H / h, W / w)
    out_h = max(1, min(H, int(round(h * s))))
    out_w = max(1, min(W, int(round(w * s))))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
        (out_w, out_h), resample=Image.Resampling.BILINEAR, reducing_gap=None))
    canvas = np.zeros((H, W), dtype=np.uint8)
    canvas[:out_h, :out_w] = resized
    tf = CanvasTransform(stored_shape=(rows, cols), crop=(r0, c0, r1, c1), flip=flip,
                         scale_x=out_w / w, scale_y=out_h / h, content=(out_h, out_w), canvas=(H, W))
    return Canvas(image=canvas, transform=tf, breast=mask)


def as_box(values: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` as four floats (from a row of an (N, 4) array or a list)."""
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def normalise_breast(img: np.ndarray, mask: np.ndarray, params: PreprocessParams = DEFAULT_PARAMS
                     ) -> np.ndarray:
    """uint8 image -> uint8 with the breast's percentiles at fixed levels.

    The breast's ``breast_low_pct`` and ``breast_high_pct`` percentiles (from a histogram
    of the pixels inside ``mask``) go to ``breast_low_level`` and ``breast_high_level`` of
    full scale, linearly, clipped to [1, 255] inside the breast (0 stays background) and 0
    outside. A breast of one grey value is left as it is.
    """
    img = np.asarray(img)
    mask = np.asarray(mask, bool)
    hist = np.bincount(img[mask].ravel(), minlength=256).astype(np.float64)
    if hist.sum() == 0:
        return np.where(mask, img, 0).astype(np.uint8)
    cdf = np.cumsum(hist) / hist.sum()
    lo = float(np.searchsorted(cdf, params.breast_low_pct / 100.0))
    hi = float(np.searchsorted(cdf, params.breast_high_pct / 100.0))
    if hi <= lo:
        return np.where(mask, img, 0).astype(np.uint8)
    a = 255.0 * (params.breast_high_level - params.breast_low_level) / (hi - lo)
    b = 255.0 * params.breast_low_level - a * lo
    lut = np.clip(np.rint(a * np.arange(256) + b), 1, 255).astype(np.uint8)
    return np.where(mask, lut[img], 0).astype(np.uint8)


def display_from_mammo(meta: MammoMetadata, pixels: np.ndarray) -> np.ndarray:
    """Stored pixels -> 8-bit display image with the foundation VOI (file's default window)."""
    from mammotriage.dicom.voi import render_8bit

    return render_8bit(meta, pixels)


def chest_wall_for(meta: MammoMetadata, display: np.ndarray) -> str:
    """Chest-wall side of a stored image: from the pixels (robust to odd headers)."""
    return chest_wall_from_pixels(display)


def normalise(canvas: np.ndarray, params: PreprocessParams = DEFAULT_PARAMS) -> np.ndarray:
    """uint8 canvas -> float32 network input (1, rows, columns)."""
    x = canvas.astype(np.float32) / 255.0
    return ((x - params.norm_mean) / params.norm_std)[None]
