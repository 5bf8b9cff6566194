"""Calcification-cluster path (numpy + scipy, no torch): specks from a white top-hat,
clusters from the specks' geometry, a learned cluster classifier.

Every view is resampled to one working grid, :data:`CALC_SPACING_MM` (0.2 mm: the grid
of the digitised-film training images; finer images are area-averaged to it, so the
classifier always sees the scale it was trained at)::

    8-bit display image --area-average to 0.2 mm--> working image
      --white top-hat (disk, r = 0.6 mm) / local noise--> speck SNR
      --SNR >= min_snr, 1 .. max_speck_area_mm2 connected pixels--> specks (top max_specks)
      --single linkage within link_mm--> clusters of >= min_specks specks (top max_clusters)
      --cluster features--> classifier probability (finding kind "calcification")

The speck and cluster caps bound the work per view, whatever the image holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from sklearn.ensemble import GradientBoostingClassifier

#: Working grid of the calcification path (mm per pixel).
CALC_SPACING_MM = 0.2

FEATURES = (
    "log_specks", "extent_mm", "log_density_per_cm2", "snr_max", "snr_mean", "snr_top3",
    "area_mean_mm2", "area_max_mm2", "contrast_mean", "contrast_rel", "background_mean",
    "background_std", "linearity", "nn_mean_mm", "edge_distance_mm", "bright_fraction",
    "snr_std", "local_speck_excess", "scale_snr", "scale_link",
)


@dataclass(frozen=True)
class CalcParams:
    """Parameters of the speck detector and the clustering (stored in the model package)."""

    spacing_mm: float = CALC_SPACING_MM
    tophat_radius_mm: float = 0.6
    noise_window_mm: float = 6.0
    min_snr: float = 3.0
    max_speck_area_mm2: float = 1.0
    skin_margin_mm: float = 2.0
    link_mm: float = 4.0
    min_specks: int = 3
    max_specks: int = 3000
    max_clusters: int = 64
    box_pad_mm: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CalcParams:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


DEFAULT_CALC = CalcParams()


@dataclass
class Specks:
    """Specks in working-grid pixels: centre (x, y), area (pixels), peak SNR, peak top-hat."""

    x: np.ndarray
    y: np.ndarray
    area: np.ndarray
    snr: np.ndarray
    contrast: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: np.ndarray) -> Specks:
        return Specks(self.x[idx], self.y[idx], self.area[idx], self.snr[idx], self.contrast[idx])


@dataclass
class Cluster:
    """A candidate cluster: box (x0, y0, x1, y1) in *stored* pixels and its features."""

    box: tuple[float, float, float, float]
    features: np.ndarray
    n_specks: int


def working_image(display: np.ndarray, spacing_mm: float, params: CalcParams = CalcParams()
                  ) -> tuple[np.ndarray, float]:
    """8-bit display image -> float32 image on the working grid, and the stored pixels per
    working pixel (>= 1; images coarser than the grid are used as they are)."""
    img = np.asarray(display, dtype=np.float32)
    factor = max(1.0, params.spacing_mm / max(float(spacing_mm), 1e-6))
    if factor <= 1.0001:
        return img, 1.0
    k = int(np.floor(factor))
    if abs(factor - k) < 0.05:  # integer factor: exact area average
        h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
        out = img[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
        return out.astype(np.float32), float(k)
    smooth = ndimage.uniform_filter(img, size=max(1, int(round(factor))))
    out = ndimage.zoom(smooth, 1.0 / factor, order=1)
    return out.astype(np.float32), float(factor)


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk: np.ndarray = (xx * xx + yy * yy) <= r * r + 0.5
    return disk


def detect_specks(img: np.ndarray, mask: np.ndarray, params: CalcParams = CalcParams()
                  ) -> tuple[Specks, np.ndarray]:
    """Bright specks smaller than the top-hat disk; returns the specks and the SNR image."""
    px = params.spacing_mm
    th = ndimage.white_tophat(img, footprint=_disk(params.tophat_radius_mm / px))
    inner = ndimage.binary_erosion(mask, iterations=max(1, int(round(params.skin_margin_mm / px))))
    if not inner.any():
        return Specks(*(np.zeros(0) for _ in range(5))), np.zeros_like(img)
    # local noise: RMS of the top-hat response around each pixel, floored by the breast's
    # robust global level (a flat, fatty area must not make every grain a speck)
    win = max(3, int(round(params.noise_window_mm / px)) | 1)
    thm = np.where(inner, th, 0.0)
    cnt = ndimage.uniform_filter(inner.astype(np.float32), win)
    local = np.sqrt(ndimage.uniform_filter(thm * thm, win) / np.maximum(cnt, 1e-3))
    vals = th[inner]
    med = float(np.median(vals))
    glob = 1.4826 * float(np.median(np.abs(vals - med))) + 1e-3
    sigma = np.maximum(local, glob)
    snr = np.where(inner, (th - med) / sigma, 0.0).astype(np.float32)
    cand = snr >= params.min_snr
    lab, n = ndimage.label(cand, structure=np.ones((3, 3), bool))
    if n == 0:
        return Specks(*(np.zeros(0) for _ in range(5))), snr
    # per-label statistics over the candidate pixels only (fast whatever the image size)
    lv = lab[cand]
    yy, xx = np.nonzero(cand)
    area = np.bincount(lv, minlength=n + 1)[1:].astype(np.float64)
    cx = np.bincount(lv, weights=xx, minlength=n + 1)[1:] / area
    cy = np.bincount(lv, weights=yy, minlength=n + 1)[1:] / area
    peak = np.zeros(n + 1)
    np.maximum.at(peak, lv, snr[cand])
    cpeak = np.zeros(n + 1)
    np.maximum.at(cpeak, lv, th[cand])
    peak, cpeak = peak[1:], cpeak[1:]
    max_area = max(1.0, params.max_speck_area_mm2 / (px * px))
    keep = area <= max_area
    order = np.flatnonzero(keep)
    order = order[np.argsort(-peak[order], kind="stable")][: params.max_specks]
    return Specks(cx[order], cy[order], area[order], peak[order], cpeak[order]), snr


def group_clusters(specks: Specks, params: CalcParams = CalcParams()) -> list[np.ndarray]:
    """Index arrays of the specks of each cluster (single linkage within ``link_mm``)."""
    n = len(specks)
    if n < params.min_specks:
        return []
    pts = np.stack([specks.x, specks.y], 1) * params.spacing_mm
    pairs = cKDTree(pts).query_pairs(params.link_mm, output_type="ndarray")
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    groups = [np.flatnonzero(roots == r) for r in np.unique(roots)]
    groups = [g for g in groups if len(g) >= params.min_specks]
    groups.sort(key=lambda g: -float(specks.snr[g].sum()))
    return groups[: params.max_clusters]


def cluster_features(img: np.ndarray, mask: np.ndarray, edge_dist_px: np.ndarray, specks: Specks,
                     idx: np.ndarray, params: CalcParams, all_specks_tree: cKDTree | None = None
                     ) -> np.ndarray:
    px = params.spacing_mm
    s = specks.take(idx)
    x0, x1 = float(s.x.min()), float(s.x.max())
    y0, y1 = float(s.y.min()), float(s.y.max())
    ext = max(x1 - x0, y1 - y0) * px
    area_cm2 = max((x1 - x0 + 1) * (y1 - y0 + 1) * px * px / 100.0, 0.01)
    pad = int(round(2.0 / px))
    r0, r1 = max(0, int(y0) - pad), min(img.shape[0], int(y1) + pad + 1)
    c0, c1 = max(0, int(x0) - pad), min(img.shape[1], int(x1) + pad + 1)
    region = img[r0:r1, c0:c1]
    rmask = mask[r0:r1, c0:c1]
    bg = region[rmask] if rmask.any() else region.ravel()
    bg_mean = float(np.median(bg))
    bg_std = float(bg.std())
    pts = np.stack([s.x, s.y], 1) * px
    if len(pts) >= 2:
        cov = np.cov(pts.T)
        ev = np.sort(np.linalg.eigvalsh(cov))
        lin = float(ev[0] / max(ev[1], 1e-6))
        d, _ = cKDTree(pts).query(pts, k=2)
        nn = float(d[:, 1].mean())
    else:
        lin, nn = 1.0, 0.0
    cxm, cym = int(round(s.x.mean())), int(round(s.y.mean()))
    edge = float(edge_dist_px[min(cym, edge_dist_px.shape[0] - 1), min(cxm, edge_dist_px.shape[1] - 1)]) * px
    top3 = float(np.sort(s.snr)[::-1][:3].sum())
    # specks in a 2 cm neighbourhood beyond the cluster's own: a cluster stands out from
    # its surroundings, grain and fibrous texture do not
    excess = 0.0
    if all_specks_tree is not None:
        near = all_specks_tree.query_ball_point([s.x.mean() * px, s.y.mean() * px], r=10.0)
        excess = float(len(idx)) / (len(near) + 1.0)
    return np.array([
        np.log(len(idx)), ext, np.log(len(idx) / area_cm2), float(s.snr.max()), float(s.snr.mean()),
        top3, float(s.area.mean()) * px * px, float(s.area.max()) * px * px, float(s.contrast.mean()),
        float(s.contrast.mean()) / max(bg_mean, 1.0), bg_mean, bg_std, lin, nn, edge,
        float((s.snr >= 2 * params.min_snr).mean()), float(s.snr.std()), excess,
    ], dtype=np.float32)


def find_clusters(display: np.ndarray, spacing_mm: float, mask: np.ndarray | None = None,
                  params: CalcParams = CalcParams()) -> list[Cluster]:
    """Candidate clusters of one view, boxes in stored pixels (``display``'s grid)."""
    from mammotriage.model.preprocess import breast_mask

    display = np.asarray(display)
    if mask is None:
        mask = breast_mask(display)
    img, factor = working_image(display, spacing_mm, params)
    if factor > 1.0:
        m = ndimage.zoom(mask.astype(np.uint8), (img.shape[0] / mask.shape[0], img.shape[1] / mask.shape[1]),
                         order=0).astype(bool)
    else:
        m = mask
    m = m[: img.shape[0], : img.shape[1]]
    specks, _ = detect_specks(img, m, params)
    if len(specks) < params.min_specks:
        return []
    edge = ndimage.distance_transform_edt(m)
    tree = cKDTree(np.stack([specks.x, specks.y], 1) * params.spacing_mm)
    pad = params.box_pad_mm / params.spacing_mm
    rows, cols = display.shape
    out, seen = [], set()
    # Clusters at several speck thresholds and linking distances: faint dense clusters
    # link at short range, sparse bright ones at longer range; containment-aware
    # suppression later keeps one mark per lesion.
    for snr_factor, link_factor in CLUSTER_SCALES:
        sel = np.flatnonzero(specks.snr >= params.min_snr * snr_factor)
        sub = specks.take(sel)
        scale = CalcParams(**{**params.to_json(), "link_mm": params.link_mm * link_factor})
        for g in group_clusters(sub, scale):
            key = tuple(sel[g].tolist())
            if key in seen:
                continue
            seen.add(key)
            f = cluster_features(img, m, edge, sub, g, scale, tree)
            s = sub.take(g)
            box = ((float(s.x.min()) - pad + 0.5) * factor, (float(s.y.min()) - pad + 0.5) * factor,
                   (float(s.x.max()) + pad + 0.5) * factor, (float(s.y.max()) + pad + 0.5) * factor)
            box = (max(0.0, box[0]), max(0.0, box[1]), min(float(cols), box[2]), min(float(rows), box[3]))
            out.append(Cluster(box, np.concatenate([f, [snr_factor, link_factor]]).astype(np.float32), len(g)))
    return out


#: (speck threshold, linking distance) multipliers of the cluster scales.
CLUSTER_SCALES = ((1.0, 0.6), (1.33, 1.0), (1.67, 1.5))


# ------------------------------------------------------------------ synthetic clusters

def insert_cluster(display: np.ndarray, spacing_mm: float, centre_xy: tuple[float, float],
                   rng: np.random.Generator, contrast_per_mm: float | None = None,
                   ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Insert a simulated microcalcification cluster into an 8-bit display image.

    Following the projection method of Shaheen et al. (Med Phys 2011;38:6659-71): each
    calcification is a 3-D object (here an ellipsoid with random axes, 0.1-0.35 mm
    semi-axes) placed in a 3-D cluster volume; its projected path length t(x, y) is
    computed analytically on a 4x finer grid, blurred by the system's point spread
    (Gaussian, sigma 0.08 mm), area-averaged to the image grid (partial volume), and
    applied as attenuation.  In a film (log-exposure) image the multiplicative
    transmission exp(-mu t) of the linear domain becomes an additive density change,
    so the inserted signal is ``contrast_per_mm * t`` grey levels, saturating at 255.

    Returns the new image and the cluster's circle ``(x, y, r)`` in pixels.
    """
    img = np.asarray(display, dtype=np.float32).copy()
    n = int(rng.integers(5, 26))
    extent = float(rng.uniform(3.0, 12.0))  # cluster volume diameter, mm
    k = contrast_per_mm if contrast_per_mm is not None else float(rng.uniform(60.0, 180.0))
    sup = 4
    fine = spacing_mm / sup
    half = extent / 2 + 1.0
    npx = int(np.ceil(2 * half / spacing_mm))
    grid = np.zeros((npx * sup, npx * sup), np.float32)
    yy, xx = np.mgrid[0:npx * sup, 0:npx * sup].astype(np.float32)
    xx = (xx + 0.5) * fine - half
    yy = (yy + 0.5) * fine - half
    # positions: uniform in an ellipsoidal volume (projected onto the image plane)
    pos: list[np.ndarray] = []
    while len(pos) < n:
        p = rng.uniform(-1, 1, size=3)
        if (p * p).sum() <= 1:
            pos.append(p * extent / 2 * np.array([1.0, rng.uniform(0.5, 1.0), 1.0]))
    for px_, py_, _ in pos:
        a, b, c = rng.uniform(0.1, 0.35, size=3)
        th = rng.uniform(0, np.pi)
        dx, dy = xx - px_, yy - py_
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        q = 1.0 - u * u - v * v
        grid = np.maximum(grid, np.where(q > 0, 2 * c * np.sqrt(np.clip(q, 0, None)), 0.0))
    grid = ndimage.gaussian_filter(grid, sigma=0.08 / fine)
    t = grid.reshape(npx, sup, npx, sup).mean(axis=(1, 3))
    cx, cy = centre_xy
    x0 = int(round(cx - npx / 2))
    y0 = int(round(cy - npx / 2))
    r0, c0 = max(0, y0), max(0, x0)
    r1, c1 = min(img.shape[0], y0 + npx), min(img.shape[1], x0 + npx)
    if r1 > r0 and c1 > c0:
        img[r0:r1, c0:c1] += k * t[r0 - y0:r1 - y0, c0 - x0:c1 - x0]
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out, (float(cx), float(cy), float(extent / 2 / spacing_mm + 1.0))


# ------------------------------------------------------------------ classifier (trees as arrays)

class TreeEnsemble:
    """Gradient-boosted regression trees evaluated with numpy: what the package stores
    (arrays, never pickled objects).  ``predict_proba(X)`` = sigmoid(init + lr * sum of leaves)."""

    def __init__(self, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, right: np.ndarray,
                 value: np.ndarray, roots: np.ndarray, init: float, learning_rate: float):
        self.feature = np.asarray(feature, np.int64)
        self.threshold = np.asarray(threshold, np.float64)
        self.left = np.asarray(left, np.int64)
        self.right = np.asarray(right, np.int64)
        self.value = np.asarray(value, np.float64)
        self.roots = np.asarray(roots, np.int64)
        self.init = float(init)
        self.learning_rate = float(learning_rate)

    @classmethod
    def from_sklearn(cls, clf: GradientBoostingClassifier) -> TreeEnsemble:
        """From a fitted binary ``sklearn.ensemble.GradientBoostingClassifier``."""
        feats, thrs, lefts, rights, vals, roots = [], [], [], [], [], []
        offset = 0
        for est in clf.estimators_[:, 0]:
            t = est.tree_
            roots.append(offset)
            feats.append(t.feature)
            thrs.append(t.threshold)
            lefts.append(np.where(t.children_left >= 0, t.children_left + offset, -1))
            rights.append(np.where(t.children_right >= 0, t.children_right + offset, -1))
            vals.append(t.value[:, 0, 0])
            offset += t.node_count
        prior = float(np.clip(clf.init_.class_prior_[1], 1e-6, 1 - 1e-6))
        return cls(np.concatenate(feats), np.concatenate(thrs), np.concatenate(lefts),
                   np.concatenate(rights), np.concatenate(vals), np.array(roots),
                   np.log(prior / (1 - prior)), clf.learning_rate)

    def decision(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64).reshape(len(X), -1)
        out = np.full(len(X), self.init)
        for root in self.roots:
            node = np.full(len(X), root)
            while True:
                f = self.feature[node]
                leaf = self.left[node] < 0
                if leaf.all():
                    break
                go_left = X[np.arange(len(X)), np.where(leaf, 0, f)] <= self.threshold[node]
                node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
            out += self.learning_rate * self.value[node]
        return out

    def predict_proba(self, X: np.ndarray, offset: float = 0.0) -> np.ndarray:
        """Probability of the positive class; ``offset`` is added to the log-odds (a prior
        shift, see :func:`prior_shift`)."""
        if len(X) == 0:
            return np.zeros(0)
        proba: np.ndarray = 1.0 / (1.0 + np.exp(-(self.decision(X) + offset)))
        return proba

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.feature": self.feature, f"{prefix}.threshold": self.threshold,
                f"{prefix}.left": self.left, f"{prefix}.right": self.right,
                f"{prefix}.value": self.value, f"{prefix}.roots": self.roots,
                f"{prefix}.init_lr": np.array([self.init, self.learning_rate])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> TreeEnsemble:
        init, lr = arrays[f"{prefix}.init_lr"].tolist()
        return cls(arrays[f"{prefix}.feature"], arrays[f"{prefix}.threshold"], arrays[f"{prefix}.left"],
                   arrays[f"{prefix}.right"], arrays[f"{prefix}.value"], arrays[f"{prefix}.roots"], init, lr)


def prior_shift(train_prevalence: float, target_prevalence: float) -> float:
    """Log-odds offset that moves a classifier trained at ``train_prevalence`` to a
    population with ``target_prevalence`` (Saerens, Latinne and Decaestecker, Neural
    Computation 2002, eq. 2.4: the posterior odds scale with the ratio of prior odds).

    The cluster trees learn from far more positives than real images hold (simulated
    clusters in every normal training image, phantom clusters); without the shift their
    probabilities are not comparable with stage two's, which learns at the real rate.
    """
    t = float(np.clip(train_prevalence, 1e-6, 1 - 1e-6))
    q = float(np.clip(target_prevalence, 1e-6, 1 - 1e-6))
    return float(np.log(q / (1 - q)) - np.log(t / (1 - t)))


def fit_trees(X: np.ndarray, y: np.ndarray, seed: int = 0, n_estimators: int = 150, max_depth: int = 3,
              learning_rate: float = 0.05, sample_weight: np.ndarray | None = None) -> TreeEnsemble:
    """Fit gradient-boosted trees (scikit-learn, training only) and export them as arrays."""
    from sklearn.ensemble import GradientBoostingClassifier

    y = np.asarray(y, int)
    if len(np.unique(y)) < 2:  # nothing to learn: the (clipped) prior for every input
        prior = float(np.clip(y.mean() if len(y) else 0.0, 1e-3, 1 - 1e-3))
        none = np.zeros(0)
        return TreeEnsemble(none, none, none, none, none, none, np.log(prior / (1 - prior)), learning_rate)
    clf = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                     learning_rate=learning_rate, subsample=0.8, min_samples_leaf=5,
                                     random_state=seed)
    clf.fit(np.asarray(X, np.float64), np.asarray(y, int), sample_weight=sample_weight)
    ens = TreeEnsemble.from_sklearn(clf)
    ref = clf.predict_proba(np.asarray(X, np.float64))[:, 1]
    if not np.allclose(ens.predict_proba(X), ref, atol=1e-6):
        raise RuntimeError("exported trees disagree with scikit-learn")
    return ens
