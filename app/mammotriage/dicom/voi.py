"""Display transform as pure functions: modality LUT, VOI, inversion, 8-bit tables.

The chain follows the DICOM grayscale pipeline (PS3.4 N.2.1):
stored value -> Modality LUT (rescale or table) -> VOI (window or VOI LUT table)
-> Presentation LUT (inversion for MONOCHROME1 / INVERSE) -> display value.

For interactive use the whole chain is folded into one 8-bit lookup table indexed by
the *stored* value (:class:`DisplayLut`), so re-windowing costs one table build
(at most 65536 entries) and one ``np.take`` per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammotriage.dicom.image import MammoMetadata, ModalityLut, WindowPreset

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def apply_modality_lut(values: np.ndarray, modality_lut: ModalityLut) -> np.ndarray:
    """Map stored values to modality output values (PS3.3 C.11.1).

    Parameters
    ----------
    values
        Stored pixel values (any integer array).
    modality_lut
        A rescale (slope/intercept) or a table with its first mapped value.

    Returns
    -------
    numpy.ndarray
        float64 modality output values.
    """
    v = np.asarray(values)
    if modality_lut.table is not None:
        table = np.asarray(modality_lut.table, dtype=np.float64)
        idx = np.clip(v.astype(np.int64) - modality_lut.first_mapped, 0, len(table) - 1)
        return table[idx]
    return v.astype(np.float64) * modality_lut.slope + modality_lut.intercept


def apply_voi_window(
    values: np.ndarray,
    center: float,
    width: float,
    voi_lut_function: str = "LINEAR",
    output_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Apply a VOI window (PS3.3 C.11.2.1.2 and C.11.2.1.3).

    Parameters
    ----------
    values
        Modality output values.
    center, width
        Window Center (0028,1050) and Window Width (0028,1051).
    voi_lut_function
        ``"LINEAR"`` (the default), ``"LINEAR_EXACT"`` or ``"SIGMOID"``.
    output_range
        ``(ymin, ymax)`` of the output.

    Returns
    -------
    numpy.ndarray
        float64 values in ``output_range``.
    """
    fn = (voi_lut_function or "LINEAR").upper()
    if fn not in VOI_FUNCTIONS:
        raise ValueError(f"unknown VOI LUT Function {voi_lut_function!r}")
    ymin, ymax = output_range
    x = np.asarray(values, dtype=np.float64)
    c = float(center)
    w = float(width)
    if fn == "SIGMOID":
        if w <= 0:
            raise ValueError("Window Width must be > 0 for SIGMOID")
        return (ymax - ymin) / (1.0 + np.exp(-4.0 * (x - c) / w)) + ymin
    if fn == "LINEAR_EXACT":
        if w <= 0:
            raise ValueError("Window Width must be > 0 for LINEAR_EXACT")
        y = ((x - c) / w + 0.5) * (ymax - ymin) + ymin
        y = np.where(x <= c - w / 2.0, ymin, y)
        return np.where(x > c + w / 2.0, ymax, y)
    # LINEAR
    if w < 1:
        raise ValueError("Window Width must be >= 1 for LINEAR")
    if w == 1:
        return np.where(x <= c - 0.5, ymin, ymax).astype(np.float64)
    y = ((x - (c - 0.5)) / (w - 1.0) + 0.5) * (ymax - ymin) + ymin
    y = np.where(x <= c - 0.5 - (w - 1.0) / 2.0, ymin, y)
    return np.where(x > c - 0.5 + (w - 1.0) / 2.0, ymax, y)


def apply_voi_lut_table(values: np.ndarray, preset: WindowPreset) -> np.ndarray:
    """Apply a VOI LUT Sequence item; returns values normalised to [0, 1] (PS3.3 C.11.2.1.1)."""
    if preset.lut is None:
        raise ValueError("preset has no VOI LUT table")
    table = np.asarray(preset.lut, dtype=np.float64)
    idx = np.clip(np.asarray(values).astype(np.int64) - preset.first_mapped, 0, len(table) - 1)
    top = float(2 ** preset.lut_bits - 1) if preset.lut_bits else 0.0
    # Some writers declare more bits than they use, some fewer: normalise by the
    # declared range unless the data exceed it.
    top = max(top, float(table.max()) if table.size else 1.0, 1.0)
    return table[idx] / top


def needs_inversion(photometric: str, presentation_lut_shape: str | None) -> bool:
    """True if the display must invert the VOI output.

    MONOCHROME1 (minimum is white) and Presentation LUT Shape INVERSE describe the
    *same* single inversion in DX/MG objects (PS3.3 C.8.11.6.1.2): they are combined
    with OR, never applied twice.
    """
    return photometric.upper() == "MONOCHROME1" or (presentation_lut_shape or "").upper() == "INVERSE"


def stored_value_range(bits_stored: int, pixel_representation: int) -> tuple[int, int]:
    """Smallest and largest stored value representable."""
    bits = max(1, min(int(bits_stored), 16))
    if pixel_representation == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass(frozen=True)
class Window:
    """A concrete window chosen for display (a preset from the file or a user's choice)."""

    center: float
    width: float
    function: str = "LINEAR"
    explanation: str = ""


@dataclass
class DisplayLut:
    """A stored-value -> uint8 lookup table for one window, one inversion state.

    ``offset`` is the stored value that maps to index 0.
    """

    table: np.ndarray  # uint8
    offset: int

    def apply(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Map stored pixels to 8-bit display values (a single table lookup)."""
        if self.offset == 0 and pixels.dtype.kind == "u":
            idx = pixels
        else:
            idx = pixels.astype(np.int32) - self.offset
        # np.take with mode="clip" handles values outside the declared bit depth
        return np.take(self.table, idx, mode="clip", out=out)


def build_display_lut(
    meta: MammoMetadata,
    window: Window | WindowPreset | None,
    invert: bool = False,
    value_range: tuple[int, int] | None = None,
) -> DisplayLut:
    """Fold modality LUT, VOI and inversion into one 8-bit table indexed by stored value.

    Parameters
    ----------
    meta
        The image's metadata (bit depth, modality LUT, photometric interpretation).
    window
        A :class:`Window`, a :class:`WindowPreset` from the file (window or VOI LUT
        table), or ``None`` for the full stored range.
    invert
        The reader's invert toggle, applied *after* the photometric inversion.
    value_range
        Override the stored value range (defaults to the one ``BitsStored`` allows).
    """
    lo, hi = value_range or stored_value_range(meta.bits_stored, meta.pixel_representation)
    stored = np.arange(lo, hi + 1, dtype=np.int64)
    modality = apply_modality_lut(stored, meta.modality_lut)
    if isinstance(window, WindowPreset) and window.is_lut:
        y = apply_voi_lut_table(modality, window)
    elif window is not None and window.center is not None and window.width is not None:
        y = apply_voi_window(modality, window.center, window.width, window.function)
    else:
        mn, mx = float(modality.min()), float(modality.max())
        y = (modality - mn) / max(mx - mn, 1e-9)
    if needs_inversion(meta.photometric, meta.presentation_lut_shape) != bool(invert):
        y = 1.0 - y
    table = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return DisplayLut(table=table, offset=lo)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(hist * centers)
    w0, w1 = weight[:-1], total - weight[:-1]
    valid = (w0 > 0) & (w1 > 0)
    m0 = np.where(valid, mean[:-1] / np.maximum(w0, 1), 0)
    m1 = np.where(valid, (mean[-1] - mean[:-1]) / np.maximum(w1, 1), 0)
    between = np.where(valid, w0 * w1 * (m0 - m1) ** 2, -1)
    return float(centers[int(np.argmax(between))])


def breast_mask(values: np.ndarray, tissue_bright: bool = True) -> np.ndarray:
    """Largest connected region on the tissue side of an Otsu threshold.

    Film borders and burned-in labels are separate, smaller regions and drop out.
    """
    from scipy import ndimage

    threshold = _otsu(values)
    mask = values > threshold if tissue_bright else values < threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest: np.ndarray = labels == int(np.argmax(sizes))
    return largest


def auto_window(meta: MammoMetadata, pixels: np.ndarray, max_side: int = 512) -> Window:
    """A window from the image's own statistics, for files that carry no preset.

    The 1st-99.5th percentile of modality values inside the breast (the largest
    region brighter than the Otsu threshold; labels and film edges are excluded).
    """
    step = max(1, int(np.ceil(max(pixels.shape) / max_side)))
    values = apply_modality_lut(pixels[::step, ::step], meta.modality_lut)
    finite = np.isfinite(values)
    if not finite.all():  # a table or rescale that is not a number: judge what is left
        values = np.where(finite, values, float(np.min(values[finite])) if finite.any() else 0.0)
    if values.size == 0 or float(values.max()) == float(values.min()):
        c = float(values.max()) if values.size else 0.5
        return Window(center=c, width=1.0, explanation="AUTO")
    bright = meta.photometric.upper() != "MONOCHROME1"
    mask = breast_mask(values, tissue_bright=bright)
    if mask.sum() >= 100 and (~mask).sum() >= 100:
        tissue, background = values[mask], float(np.median(values[~mask]))
        edge = float(tissue.min() if bright else tissue.max())
        # keep the thin periphery near the skin (just inside the Otsu cut) visible
        p_lo, p_hi = np.percentile(tissue, [0.5, 99.5])
        if bright:
            p_lo = min(p_lo, (background + edge) / 2)
        else:
            p_hi = max(p_hi, (background + edge) / 2)
    else:
        p_lo, p_hi = np.percentile(values, [1.0, 99.5])
    width = max(float(p_hi - p_lo), 2.0)
    return Window(center=float(p_lo + p_hi) / 2.0, width=width, function="LINEAR", explanation="AUTO")


def default_window(meta: MammoMetadata, pixels: np.ndarray | None = None) -> Window | WindowPreset | None:
    """The window the viewer opens with: the file's first preset, else an automatic one."""
    if meta.presets:
        return meta.presets[0]
    if pixels is not None:
        return auto_window(meta, pixels)
    return None


def render_8bit(meta: MammoMetadata, pixels: np.ndarray, window: Window | WindowPreset | None = None,
                invert: bool = False) -> np.ndarray:
    """Convenience: stored pixels -> uint8 display image with the default (or given) window."""
    if window is None:
        window = default_window(meta, pixels)
    return build_display_lut(meta, window, invert=invert).apply(pixels)


def image_statistics(display: np.ndarray) -> dict[str, float]:
    """Intensity statistics of the breast region of an 8-bit display image (tissue bright)."""
    step = max(1, max(display.shape) // 512)
    small = np.asarray(display[::step, ::step], dtype=np.float32)
    mask = breast_mask(small)
    values = small[mask] if mask.sum() >= 50 else small.ravel()
    return {"mean": float(values.mean()), "std": float(values.std()),
            "p05": float(np.percentile(values, 5)), "p95": float(np.percentile(values, 95)),
            "breast_frac": float(mask.mean())}
