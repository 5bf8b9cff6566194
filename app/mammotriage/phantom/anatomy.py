"""Pixel synthesis for the screening-mammography phantom.

Everything here works in a *canonical frame*: the chest wall is the left image edge
(column 0) and the nipple points to the right. For a CC view the top of the image is
lateral; for an MLO view the top is superior, with the pectoral muscle in the top
chest-wall corner. :mod:`mammotriage.phantom.writer` flips the canonical image into the
stored layout of each view.

Intensities are floats in ``[0, 1]`` that grow with attenuation (MONOCHROME2 sense,
log-exposure "for presentation" data): air is dark, fat is mid-grey, fibroglandular
tissue, the pectoral muscle, masses and calcifications are brighter.

The tissue model follows the usual synthetic-mammogram recipe:

* a breast outline (a half-ellipse against the chest wall with a few low-order
  harmonic ripples; the MLO outline carries an axillary tail and the pectoral muscle);
* a compressed-thickness fall-off toward the skin and a thin, slightly denser skin line;
* fibroglandular texture from power-law noise with a ``1/f**beta`` power spectrum,
  ``beta`` about 3 (Burgess et al., Med. Phys. 28:419, 2001), thresholded softly to the
  exam's breast density and masked by a glandular envelope that fades toward the skin
  and the nipple;
* lesions added on top: circumscribed and spiculated masses (a projected-sphere
  profile with a soft edge; spicules as thin tapering lines) and clusters of
  calcification specks.

Each lesion is described once per exam (size in millimetres, distance from the nipple)
and placed in both projections of its breast, so it appears in the CC and the MLO view
at the same distance from the nipple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.fft
from scipy import ndimage, special

from mammotriage.dicom.vocab import DetectedKind

ViewName = Literal["CC", "MLO"]
LesionKind = DetectedKind

#: Intensity levels of the model (fraction of the stored range, MONOCHROME2 sense).
AIR_LEVEL = 0.04
FAT_LEVEL = 0.30
GLAND_CONTRAST = 0.26
MUSCLE_LEVEL = 0.56
SKIN_CONTRAST = 0.07
#: Quantum-noise standard deviation (fraction of the stored range).
QUANTUM_NOISE = 0.004
#: A lesion's box holds every pixel where the lesion adds at least this fraction of
#: its peak contribution.
BOX_THRESHOLD = 0.1
#: Skin thickness in millimetres.
SKIN_MM = 1.5
#: Power-law exponent of the fibroglandular texture.
TEXTURE_BETA = 3.0


@dataclass(frozen=True)
class BreastShape:
    """Outline of one projection of a breast in the canonical frame (pixels).

    The outline is ``rho(x, y) = 1`` with ``rho`` an elliptical radius around
    ``(0, center_row)``: semi-axis ``depth`` along the columns and ``half_up`` /
    ``half_down`` above and below ``center_row``, divided by ``1 + ripple(theta)``.

    Attributes
    ----------
    depth
        Chest wall to nipple distance along ``center_row`` before the ripple (px).
    center_row
        Row of the nipple axis (px).
    half_up, half_down
        Vertical semi-axes above and below the nipple axis (px).
    ripple
        ``(k, amplitude, phase)`` harmonics of the outline.
    pectoral
        MLO only: ``(width at the top edge, height at the chest wall, exponent)`` of
        the pectoral muscle in pixels; ``None`` for CC.
    """

    depth: float
    center_row: float
    half_up: float
    half_down: float
    ripple: tuple[tuple[int, float, float], ...]
    pectoral: tuple[float, float, float] | None = None

    def rho(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radius: 0 at the chest-wall centre, 1 on the skin outline.

        Parameters
        ----------
        x, y
            Column and row coordinates (broadcastable arrays, canonical frame).
        """
        u = np.asarray(x, dtype=np.float32) / np.float32(self.depth)
        dy = np.asarray(y, dtype=np.float32) - np.float32(self.center_row)
        v = dy / np.where(dy < 0, np.float32(self.half_up), np.float32(self.half_down))
        theta = np.arctan2(v, u)
        scale = np.ones_like(theta)
        for k, amp, phase in self.ripple:
            scale += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase))
        return np.sqrt(u * u + v * v) / scale

    @property
    def apex(self) -> float:
        """Column of the outline on the nipple axis (the nipple position)."""
        return float(self.depth * (1.0 + sum(amp * np.cos(phase) for _, amp, phase in self.ripple)))

    def pectoral_fraction(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Pectoral coordinate: below 1 inside the muscle, above 1 outside.

        Parameters
        ----------
        x, y
            Column and row coordinates (broadcastable arrays, canonical frame).
        """
        if self.pectoral is None:
            return np.full(np.broadcast(x, y).shape, np.inf, dtype=np.float32)
        width, height, power = self.pectoral
        yy = np.clip(np.asarray(y, dtype=np.float32) / np.float32(height), 0, None)
        return np.asarray(x, dtype=np.float32) / np.float32(width) + yy ** np.float32(power)


@dataclass(frozen=True)
class LesionSpec:
    """One lesion of an exam, independent of the projection.

    Attributes
    ----------
    laterality
        ``"L"`` or ``"R"``.
    kind
        ``"mass"`` or ``"calcification"``.
    subtype
        ``"circumscribed"`` or ``"spiculated"`` for masses, ``"cluster"`` for
        calcifications.
    malignant
        Ground-truth pathology.
    nipple_distance
        Distance of the lesion centre from the nipple, as a fraction of the shorter
        nipple-to-chest-wall depth of the breast's two projections.
    cc_offset, mlo_offset
        Position across the breast in each projection, from -1 (top) to 1 (bottom) of
        the room available at that depth.
    size_mm
        Mass diameter, or the diameter of the region holding a calcification cluster.
    contrast
        Peak intensity added by the lesion (fraction of the stored range).
    seed
        Seed of the lesion's shape details (spicules, speck positions).
    """

    laterality: Literal["L", "R"]
    kind: LesionKind
    subtype: str
    malignant: bool
    nipple_distance: float
    cc_offset: float
    mlo_offset: float
    size_mm: float
    contrast: float
    seed: int

    def extent_mm(self) -> float:
        """Radius around the centre that the drawn lesion may reach (mm)."""
        if self.subtype == "spiculated":
            return self.size_mm * 0.5 * 2.3
        return self.size_mm * 0.5 + 0.5


@dataclass(frozen=True)
class BreastSpec:
    """Both projections of one breast, in fractions of the field of view.

    Attributes
    ----------
    cc, mlo
        Outline parameters, with lengths as fractions of the image width (columns) or
        height (rows): see :func:`shape_in_pixels`.
    """

    cc: BreastShape
    mlo: BreastShape


@dataclass(frozen=True)
class ExamSpec:
    """Everything random about one exam that does not depend on the image size.

    Attributes
    ----------
    density
        Fraction of the glandular envelope covered by fibroglandular tissue (0.1 fatty
        to 0.8 extremely dense).
    breasts
        Outline of each breast, keyed by laterality.
    lesions
        Lesions of the exam; empty for a normal exam.
    age
        Patient age in years.
    study_day
        Days after 2020-01-01 of the study date.
    study_seconds
        Seconds after midnight of the study time.
    """

    density: float
    breasts: dict[str, BreastSpec]
    lesions: tuple[LesionSpec, ...]
    age: int
    study_day: int
    study_seconds: int

    @property
    def normal(self) -> bool:
        """True when the exam holds no lesion."""
        return not self.lesions


@dataclass(frozen=True)
class DrawnLesion:
    """A lesion as drawn into one canonical image.

    Attributes
    ----------
    spec
        The lesion it draws.
    box
        ``(x0, y0, x1, y1)`` in canonical pixel coordinates, half-open: the box holds
        columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``.
    """

    spec: LesionSpec
    box: tuple[int, int, int, int]


def _shape(rng: np.random.Generator, view: ViewName) -> BreastShape:
    """Draw one outline in field-of-view fractions (x lengths: width, y: height)."""
    ripple = tuple(
        (k, float(rng.uniform(0.0, 0.035 / (k - 1))), float(rng.uniform(0, 2 * np.pi)))
        for k in range(2, 6)
    )
    if view == "CC":
        half = float(rng.uniform(0.30, 0.40))
        return BreastShape(
            depth=float(rng.uniform(0.48, 0.68)),
            center_row=float(rng.uniform(0.47, 0.53)),
            half_up=half * float(rng.uniform(0.95, 1.05)),
            half_down=half * float(rng.uniform(0.95, 1.05)),
            ripple=ripple,
        )
    center = float(rng.uniform(0.52, 0.60))
    top_width = float(rng.uniform(0.45, 0.6))  # outline width at the top edge / depth
    depth = float(rng.uniform(0.55, 0.74))
    return BreastShape(
        depth=depth,
        center_row=center,
        half_up=center / float(np.sqrt(1.0 - top_width**2)),
        half_down=float(rng.uniform(0.28, 0.36)),
        ripple=ripple,
        pectoral=(
            top_width * depth * float(rng.uniform(0.55, 0.8)),
            float(rng.uniform(0.35, 0.6)),
            float(rng.uniform(0.8, 1.3)),
        ),
    )


def _mirror_image_breast(shape: BreastShape, rng: np.random.Generator) -> BreastShape:
    """The other breast's outline: the same within a few per cent (breasts are nearly
    symmetric, and an asymmetry would itself be a finding)."""

    def jitter(value: float, spread: float = 0.03) -> float:
        return value * float(rng.uniform(1 - spread, 1 + spread))

    pectoral = None
    if shape.pectoral is not None:
        width, height, power = shape.pectoral
        pectoral = (jitter(width), jitter(height), power)
    return BreastShape(
        depth=jitter(shape.depth),
        center_row=jitter(shape.center_row, 0.01),
        half_up=jitter(shape.half_up),
        half_down=jitter(shape.half_down),
        ripple=tuple((k, jitter(amp, 0.3), phase) for k, amp, phase in shape.ripple),
        pectoral=pectoral,
    )


def sample_exam(rng: np.random.Generator, normal: bool | None = None) -> ExamSpec:
    """Draw the size-independent description of one exam.

    Parameters
    ----------
    rng
        Random generator; the result is a pure function of its state.
    normal
        ``True`` for an exam without lesions, ``False`` for one lesion (or, one time
        in four, two: one per breast), ``None`` to decide at random (one exam in
        three normal).

    Returns
    -------
    ExamSpec
        Outlines, density, lesions and study timing.
    """
    density = float(rng.uniform(0.12, 0.8))
    right = BreastSpec(cc=_shape(rng, "CC"), mlo=_shape(rng, "MLO"))
    left = BreastSpec(
        cc=_mirror_image_breast(right.cc, rng), mlo=_mirror_image_breast(right.mlo, rng)
    )
    breasts = {"R": right, "L": left}
    if normal is None:
        normal = bool(rng.random() < 1 / 3)
    lesions: list[LesionSpec] = []
    if not normal:
        lesions.append(_sample_lesion(rng, "R" if rng.random() < 0.5 else "L"))
        if rng.random() < 0.25:  # a second lesion, in the other breast so none overlap
            lesions.append(_sample_lesion(rng, "L" if lesions[0].laterality == "R" else "R"))
    return ExamSpec(
        density=density,
        breasts=breasts,
        lesions=tuple(lesions),
        age=int(rng.integers(40, 75)),
        study_day=int(rng.integers(0, 5 * 365)),
        study_seconds=int(rng.integers(8 * 3600, 18 * 3600)),
    )


def _sample_lesion(rng: np.random.Generator, laterality: Literal["L", "R"]) -> LesionSpec:
    """Draw one lesion of a breast: kind, pathology, size, contrast and position."""
    pick = rng.random()
    kind: LesionKind
    if pick < 0.35:
        kind, subtype, p_malignant = "mass", "circumscribed", 0.15
        size, contrast = rng.uniform(8, 22), rng.uniform(0.11, 0.17)
    elif pick < 0.65:
        kind, subtype, p_malignant = "mass", "spiculated", 0.9
        size, contrast = rng.uniform(7, 16), rng.uniform(0.12, 0.18)
    else:
        kind, subtype, p_malignant = "calcification", "cluster", 0.7
        size, contrast = rng.uniform(3, 10), rng.uniform(0.3, 0.4)
    return LesionSpec(
        laterality=laterality,
        kind=kind,
        subtype=subtype,
        malignant=bool(rng.random() < p_malignant),
        nipple_distance=float(rng.uniform(0.2, 0.75)),
        cc_offset=float(rng.uniform(-1, 1)),
        mlo_offset=float(rng.uniform(-1, 1)),
        size_mm=float(size),
        contrast=float(contrast),
        seed=int(rng.integers(0, 2**31)),
    )


def shape_in_pixels(shape: BreastShape, rows: int, columns: int) -> BreastShape:
    """Scale an outline drawn in field-of-view fractions to an image size.

    Parameters
    ----------
    shape
        Outline with x lengths as fractions of the width and y lengths of the height.
    rows, columns
        Image size.
    """
    pectoral = None
    if shape.pectoral is not None:
        width, height, power = shape.pectoral
        pectoral = (width * columns, height * rows, power)
    return BreastShape(
        depth=shape.depth * columns,
        center_row=shape.center_row * rows,
        half_up=shape.half_up * rows,
        half_down=shape.half_down * rows,
        ripple=shape.ripple,
        pectoral=pectoral,
    )


def power_law_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, stretch: float = 1.0
) -> np.ndarray:
    """Gaussian random field with a ``1/f**beta`` power spectrum.

    Parameters
    ----------
    shape
        ``(rows, columns)`` of the field.
    beta
        Spectral exponent of the power spectrum (about 3 for breast tissue).
    rng
        Random generator for the spectral coefficients.
    stretch
        Horizontal frequencies are multiplied by this factor before the power law
        is applied, so ``stretch > 1`` elongates structures horizontally (along the
        nipple axis in the canonical frame).

    Returns
    -------
    numpy.ndarray
        ``float32`` field of zero mean and unit standard deviation (both estimated
        on a sub-grid).
    """
    rows, cols = shape
    fy = np.fft.fftfreq(rows).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(cols).astype(np.float32)[None, :] * np.float32(stretch)
    f2 = fx * fx + fy * fy
    f2 = np.maximum(f2, np.float32(1.0 / max(rows, cols)) ** 2)
    amplitude = f2 ** np.float32(-beta / 4.0)
    amplitude[0, 0] = 0.0
    spectrum = np.empty((rows, cols // 2 + 1), dtype=np.complex64)
    spectrum.real = rng.standard_normal(spectrum.shape, dtype=np.float32) * amplitude
    spectrum.imag = rng.standard_normal(spectrum.shape, dtype=np.float32) * amplitude
    field = scipy.fft.irfft2(spectrum, s=shape, workers=-1)
    step = max(1, min(rows, cols) // 256)
    sample = field[::step, ::step]
    field -= np.float32(sample.mean(dtype=np.float64))
    field /= np.float32(sample.std(dtype=np.float64))
    return field


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Cubic Hermite step from 0 at ``edge0`` to 1 at ``edge1``."""
    t = np.clip((x - np.float32(edge0)) / np.float32(edge1 - edge0), 0, 1)
    return t * t * (3 - 2 * t)


def render_tissue(
    shape: BreastShape,
    rows: int,
    columns: int,
    spacing_mm: float,
    density: float,
    rng: np.random.Generator,
    nipple: bool = True,
) -> np.ndarray:
    """Draw the normal breast of one projection in the canonical frame.

    Parameters
    ----------
    shape
        Outline in pixels (see :func:`shape_in_pixels`).
    rows, columns
        Image size.
    spacing_mm
        Pixel size, used for the skin thickness and the nipple size.
    density
        Fraction of the glandular envelope covered by fibroglandular tissue.
    rng
        Random generator for the texture and the quantum noise.
    nipple
        Draw the nipple as a small bump on the outline.

    Returns
    -------
    numpy.ndarray
        ``float32`` image, values in about ``[0, 1]``.
    """
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(columns, dtype=np.float32)[None, :]
    rho = shape.rho(x, y)
    grad_y, grad_x = np.gradient(rho)
    grad = np.sqrt(grad_x * grad_x + grad_y * grad_y) + np.float32(1e-6)
    inside = (1 - rho) / grad  # approximate distance to the skin outline (px)
    del grad_x, grad_y, grad
    alpha = np.clip(inside + 0.5, 0, 1)

    skin_px = max(SKIN_MM / spacing_mm, 1.5)
    skin = np.exp(-(((inside - 0.5 * skin_px) / (0.6 * skin_px)) ** 2))
    thickness = 0.7 + 0.3 * _smoothstep(1.0, 0.82, rho)
    envelope = _smoothstep(1.0, 0.45, rho) * (0.55 + 0.45 * _smoothstep(0.0, 0.35, x / shape.depth))

    muscle = np.zeros_like(rho)
    if shape.pectoral is not None:
        edge_px = max(2.0 / spacing_mm, 1.0)
        pec = shape.pectoral_fraction(x, y)
        muscle = np.clip((1 - pec) * shape.pectoral[0] / edge_px + 0.5, 0, 1)
        muscle *= 0.9 + 0.1 * np.clip(1 - pec, 0, 1)
        envelope = envelope * (1 - muscle)

    gland_field = power_law_noise((rows, columns), TEXTURE_BETA, rng, stretch=1.6)
    threshold = float(special.ndtri(1.0 - density))
    gland = special.expit((gland_field - np.float32(threshold)) * np.float32(3.0))
    del gland_field
    fine = power_law_noise((rows, columns), 2.2, rng)

    tissue = np.float32(FAT_LEVEL) + np.float32(GLAND_CONTRAST) * envelope * gland
    tissue += np.float32(0.018) * fine
    tissue = tissue * (1 - muscle) + np.float32(MUSCLE_LEVEL) * muscle * (
        1 + np.float32(0.03) * fine
    )
    tissue = np.float32(AIR_LEVEL) + (tissue - np.float32(AIR_LEVEL)) * thickness
    tissue += np.float32(SKIN_CONTRAST) * skin
    image = np.float32(AIR_LEVEL) + (tissue - np.float32(AIR_LEVEL)) * alpha

    if nipple:
        # a half-ellipse 3 mm proud of the outline and 10 mm across, at the edge level
        length, half = 3.0 / spacing_mm, 5.0 / spacing_mm
        u = (x - np.float32(shape.apex)) / np.float32(length)
        v = (y - np.float32(shape.center_row)) / np.float32(half)
        bump = np.clip((1 - np.sqrt(u * u + v * v)) * np.float32(min(length, half)) + 0.5, 0, 1)
        level = np.float32(AIR_LEVEL + (FAT_LEVEL - AIR_LEVEL) * 0.7 + SKIN_CONTRAST)
        image = np.maximum(image, np.float32(AIR_LEVEL) + (level - np.float32(AIR_LEVEL)) * bump)

    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(QUANTUM_NOISE)
    return image.astype(np.float32, copy=False)


def _mass_patch(
    radius: float, spiculated: bool, spacing_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Square patch (peak 1) of a mass centred in it."""
    extent = radius * (2.3 if spiculated else 1.0) + 3
    half = int(np.ceil(extent))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.75, 1.0)
    cos_a, sin_a = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = xx * cos_a + yy * sin_a
    v = (-xx * sin_a + yy * cos_a) / np.float32(aspect)
    theta = np.arctan2(v, u)
    lobes = np.ones_like(theta)
    lobe_amp = 0.12 if spiculated else 0.05
    for k in (2, 3, 5):
        lobes += np.float32(rng.uniform(0, lobe_amp / k * 2)) * np.cos(
            k * theta + np.float32(rng.uniform(0, 2 * np.pi))
        )
    s = np.sqrt(u * u + v * v) / (np.float32(radius) * lobes)
    patch = np.sqrt(np.clip(1 - s * s, 0, 1))
    edge_sigma = max(0.6, (0.04 if spiculated else 0.08) * radius)
    patch = ndimage.gaussian_filter(patch, edge_sigma, truncate=3.0)
    if spiculated:
        width = max(0.35 / spacing_mm, 0.7)
        count = int(rng.integers(10, 25))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        spicules = np.zeros_like(patch)
        for phi in angles:
            length = radius * rng.uniform(0.9, 1.3)
            direction = np.array([np.cos(phi), np.sin(phi)], dtype=np.float32)
            start = 0.6 * radius
            t = xx * direction[0] + yy * direction[1]
            across = -xx * direction[1] + yy * direction[0]
            along = np.clip((t - start) / np.float32(length + 0.4 * radius), 0, 1)
            strength = np.float32(rng.uniform(0.45, 0.7)) * (1 - along) ** np.float32(0.8)
            strength = np.where(t < start, np.float32(0.0), strength)
            line = strength * np.exp(-((across / np.float32(width)) ** 2))
            np.maximum(spicules, line, out=spicules)
        patch = np.maximum(patch, spicules)
    return (patch / patch.max()).astype(np.float32)


def _calcification_patch(
    offsets: np.ndarray, diameters: np.ndarray
) -> tuple[np.ndarray, tuple[int, int]]:
    """Patch (peak 1) of specks at ``offsets`` (px, ``(n, 2)`` as x, y) from its origin.

    Returns the patch and the ``(x, y)`` of the cluster centre inside the patch.
    """
    half = int(np.ceil(np.abs(offsets).max() + diameters.max())) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    patch = np.zeros(xx.shape, dtype=np.float32)
    for (ox, oy), d in zip(offsets, diameters, strict=True):
        dist = np.sqrt((xx - np.float32(ox)) ** 2 + (yy - np.float32(oy)) ** 2)
        np.maximum(patch, np.clip(np.float32(d / 2 + 0.5) - dist, 0, 1), out=patch)
    return patch, (half, half)


def _calcification_specks(spec: LesionSpec, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """3-D speck positions (mm; along the nipple axis, CC-across, MLO-across) and sizes.

    Sizes are speck diameters in pixels, 2 to 6; coarse pixels get small specks (at
    most 0.6 mm) so that the specks of a cluster stay apart.
    """
    rng = np.random.default_rng(spec.seed)
    count = int(rng.integers(5, 21))
    direction = rng.standard_normal((count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = spec.size_mm / 2 * rng.uniform(0, 1, count) ** (1 / 3)
    largest = float(np.clip(0.6 / spacing_mm, 2.5, 6.0))
    return direction * radius[:, None], rng.uniform(2, largest, count)


def _room(
    shape: BreastShape, rows: int, column: float, margin: float
) -> tuple[float, float] | None:
    """Rows at ``column`` where a disk of radius ``margin`` fits in the breast.

    The disk must stay inside the outline (minus the skin) and clear of the pectoral
    muscle. Returns ``(first_row, last_row)`` for the centre, or ``None``.
    """
    ys = np.arange(rows, dtype=np.float32)
    xs = np.full_like(ys, column)
    ok = np.ones(rows, dtype=bool)
    for dx in (-margin, 0.0, margin):
        for dy in (-margin, 0.0, margin):
            scale = 1.0 if dx == 0 or dy == 0 else 0.7071
            px, py = xs + np.float32(dx * scale), ys + np.float32(dy * scale)
            ok &= shape.rho(px, py) < 0.93
            ok &= shape.pectoral_fraction(px, py) > 1.12
            ok &= (py >= 1) & (py <= rows - 2) & (px >= 1)
    near = np.flatnonzero(ok)
    if near.size == 0:
        return None
    # keep the run of rows that contains the row closest to the nipple axis
    start = near[np.argmin(np.abs(near - shape.center_row))]
    lo = hi = start
    while lo - 1 >= 0 and ok[lo - 1]:
        lo -= 1
    while hi + 1 < rows and ok[hi + 1]:
        hi += 1
    return float(lo), float(hi)


def lesion_centres(
    spec: LesionSpec,
    shapes: dict[str, BreastShape],
    rows: int,
    spacing_mm: float,
) -> dict[str, tuple[float, float]]:
    """Place a lesion in the CC and MLO projections of its breast.

    Parameters
    ----------
    spec
        The lesion.
    shapes
        ``{"CC": ..., "MLO": ...}`` outlines of the lesion's breast, in pixels.
    rows
        Image height.
    spacing_mm
        Pixel size.

    Returns
    -------
    dict
        ``{"CC": (x, y), "MLO": (x, y)}`` centres in canonical pixel coordinates. The
        distance from the nipple is the same in both views; when the breast is too
        small at that depth, the lesion moves toward the chest wall until it fits.
    """
    margin = spec.extent_mm() / spacing_mm + SKIN_MM / spacing_mm + 2
    depth = min(s.apex for s in shapes.values())
    distance = spec.nipple_distance * depth
    lowest = margin + 2 / spacing_mm
    highest = depth - margin - 1
    distance = float(np.clip(distance, min(lowest, highest), highest))
    offsets = {"CC": spec.cc_offset, "MLO": spec.mlo_offset}
    for step in np.linspace(0, 1, 21):
        d = distance + step * (highest - distance)
        centres = {}
        for view, shape in shapes.items():
            column = shape.apex - d
            room = _room(shape, rows, column, margin)
            if room is None:
                break
            lo, hi = room
            centres[view] = (column, lo + (offsets[view] + 1) / 2 * (hi - lo))
        else:
            return centres
    raise ValueError("lesion does not fit in the breast")


def draw_lesion(
    image: np.ndarray,
    spec: LesionSpec,
    view: ViewName,
    centre: tuple[float, float],
    spacing_mm: float,
) -> DrawnLesion:
    """Add a lesion to a canonical image in place and return its bounding box.

    Parameters
    ----------
    image
        Canonical ``float32`` image to draw into.
    spec
        The lesion.
    view
        Projection of ``image``; selects the calcification speck projection and the
        random shape details, which differ between views.
    centre
        ``(x, y)`` lesion centre in pixels.
    spacing_mm
        Pixel size.

    Returns
    -------
    DrawnLesion
        The lesion with its tight box: every pixel where the lesion adds at least
        :data:`BOX_THRESHOLD` of its peak contribution lies inside it.
    """
    rng = np.random.default_rng([spec.seed, 0 if view == "CC" else 1])
    cx, cy = centre
    if spec.kind == "mass":
        patch = _mass_patch(
            spec.size_mm / 2 / spacing_mm, spec.subtype == "spiculated", spacing_mm, rng
        )
        origin = (patch.shape[1] // 2, patch.shape[0] // 2)
    else:
        positions, diameters = _calcification_specks(spec, spacing_mm)
        across = positions[:, 1] if view == "CC" else positions[:, 2]
        offsets = np.stack([-positions[:, 0], across], axis=1) / spacing_mm
        patch, origin = _calcification_patch(offsets, diameters)
    x0 = int(round(cx)) - origin[0]
    y0 = int(round(cy)) - origin[1]
    h, w = patch.shape
    # clip the patch to the image (a lesion never reaches the edge, but stay safe)
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = min(w, image.shape[1] - x0), min(h, image.shape[0] - y0)
    patch = patch[sy0:sy1, sx0:sx1]
    x0, y0 = x0 + sx0, y0 + sy0
    image[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] += np.float32(spec.contrast) * patch
    ys, xs = np.nonzero(patch >= np.float32(BOX_THRESHOLD) * patch.max())
    box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
    return DrawnLesion(spec=spec, box=box)
