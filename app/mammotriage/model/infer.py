"""Inference engine: device choice, fixed threads, batched views, suspicion maps, results in
stored-image (column, row) coordinates, deterministic on CPU; engines and detectors are
built here from verified packages (:meth:`Engine.from_package`, :func:`load_detector`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mammotriage.model.network import DEFAULT_CONFIG, NetworkConfig, build_detector, monai_to_xyxy
from mammotriage.model.package import WEIGHTS, ModelPackageError, default_model_dir, verify
from mammotriage.model.preprocess import (
    DEFAULT_PARAMS,
    Canvas,
    PreprocessParams,
    as_box,
    normalise,
    preprocess_display,
)

if TYPE_CHECKING:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    from mammotriage.dicom.image import MammoImage
    from mammotriage.model.twostage import SecondLook

DEFAULT_THREADS = 2


@dataclass
class Finding:
    """One detected lesion: box ``(x0, y0, x1, y1)`` in stored-image pixels."""

    box: tuple[float, float, float, float]
    kind: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box], "kind": self.kind,
                "score": round(float(self.score), 6)}


@dataclass
class ImageResult:
    """Model output for one view, all in stored-image coordinates."""

    findings: list[Finding]
    score: float  # image-level suspicion: the highest finding score (0 without findings)
    suspicion: np.ndarray = field(repr=False)  # (rows/f, cols/f) float32 in [0, 1]
    map_factor: float = 1.0  # stored pixels per map pixel
    model_version: str = ""


def pick_device(requested: str | None = None) -> torch.device:
    """``cuda`` when available, else ``cpu``; ``requested`` ("cpu", "cuda", "cuda:1") overrides."""
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA requested but not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_deterministic(threads: int = DEFAULT_THREADS) -> None:
    """Fixed thread count and deterministic kernels (same input -> identical output on CPU)."""
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def suspicion_maps(cls_logits: Sequence[torch.Tensor], num_anchors: int, num_classes: int,
                   size: tuple[int, int]) -> torch.Tensor:
    """Dense per-class map (B, C, H, W): per FPN level sigmoid(logits), max over anchors,
    bilinear upsampling to ``size``, max over levels."""
    out: torch.Tensor | None = None
    for logits in cls_logits:
        b, _, h, w = logits.shape
        p = torch.sigmoid(logits.float()).view(b, num_anchors, num_classes, h, w).amax(dim=1)
        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
        out = p if out is None else torch.maximum(out, p)
    if out is None:
        raise ValueError("suspicion_maps needs at least one FPN level")
    return out


class Engine:
    """A loaded detector ready for inference."""

    def __init__(self, detector: RetinaNetDetector, config: NetworkConfig, params: PreprocessParams,
                 device: str | None = None, threads: int = DEFAULT_THREADS, batch_size: int | None = None,
                 version: str = "", thresholds: dict[str, Any] | None = None,
                 second_look: SecondLook | None = None):
        set_deterministic(threads)
        self.device = pick_device(device)
        self.detector = detector
        self.detector.network.to(self.device)
        self.detector.eval()
        self.config = config
        self.params = params
        # Batching pays on a GPU; on CPU one view at a time was faster (measured: 4 views
        # 1.7 s one by one vs 2.3 s as one batch of 4, 2 threads).
        if batch_size is None:
            batch_size = 4 if self.device.type == "cuda" else 1
        self.batch_size = max(1, int(batch_size))
        self.version = version
        self.thresholds = thresholds or {}
        #: :class:`~mammotriage.model.twostage.SecondLook` of the package (None: stage one only)
        self.second_look = second_look

    @classmethod
    def from_package(cls, model_dir: str | Path | None = None, device: str | None = None,
                     threads: int = DEFAULT_THREADS, batch_size: int | None = None) -> Engine:
        """A ready engine for a verified package (default: :func:`~mammotriage.model.package.default_model_dir`)."""
        model_dir = Path(model_dir) if model_dir else default_model_dir()
        detector, config, pp, meta = load_detector(model_dir)
        return cls(detector, config, pp, device=device, threads=threads, batch_size=batch_size,
                   version=str(meta.get("version", "")), thresholds=meta.get("operating_points", {}),
                   second_look=load_second_look(model_dir, meta))

    @classmethod
    def untrained(cls, config: NetworkConfig = DEFAULT_CONFIG, params: PreprocessParams = DEFAULT_PARAMS,
                  seed: int = 0, **kw: Any) -> Engine:
        """Random weights (tests and benchmarks only)."""
        torch.manual_seed(seed)
        return cls(build_detector(config, train_components=False), config, params, **kw)

    # ----------------------------------------------------------- core
    @torch.no_grad()
    def predict_canvases(self, canvases: Sequence[Canvas]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Canvases -> per canvas (boxes xyxy in canvas pixels, labels, scores, map (C, H, W))."""
        results = []
        det = self.detector
        for start in range(0, len(canvases), self.batch_size):
            chunk = canvases[start:start + self.batch_size]
            x = torch.from_numpy(np.stack([normalise(c.image, self.params) for c in chunk])).to(self.device)
            head = det.network(x)
            cls_maps = head[det.cls_key]
            size = (int(x.shape[-2]), int(x.shape[-1]))
            maps = suspicion_maps(cls_maps, det.num_anchors_per_loc, det.num_classes, size)
            det.generate_anchors(x, head)
            if det.anchors is None:
                raise RuntimeError("the detector made no anchors")
            n_locs = [t.shape[2:].numel() for t in cls_maps]
            reshaped = {k: det._reshape_maps(head[k]) for k in (det.cls_key, det.box_reg_key)}
            dets = det.postprocess_detections(reshaped, det.anchors, [list(size)] * len(chunk), n_locs)
            for i, (c, d) in enumerate(zip(chunk, dets, strict=True)):
                boxes = monai_to_xyxy(d[det.target_box_key].float()).cpu().numpy()
                labels = d[det.target_label_key].cpu().numpy().astype(np.int64)
                scores = d[det.pred_score_key].float().cpu().numpy()
                m = maps[i].cpu().numpy()
                # Nothing outside the image content counts (padding of the canvas).
                ch, cw = c.transform.content
                m[:, ch:, :] = 0
                m[:, :, cw:] = 0
                cx = (boxes[:, 0] + boxes[:, 2]) / 2
                cy = (boxes[:, 1] + boxes[:, 3]) / 2
                keep = (cx < cw) & (cy < ch)
                results.append((boxes[keep], labels[keep], scores[keep], m))
        return results

    def predict_displays(self, displays: Sequence[np.ndarray], chest_walls: Sequence[str | None] | None = None,
                         max_map_side: int | None = 512, spacings: Sequence[float | None] | None = None,
                         partners: Sequence[int | None] | None = None) -> list[ImageResult]:
        """8-bit display images (tissue bright) -> results in their pixel coordinates.

        ``spacings`` (mm per stored pixel; None: 0.2 mm, the film grid) and ``partners``
        (index of the other breast's same view among ``displays``, or None) feed the
        second look when the package has one."""
        chest_walls = list(chest_walls) if chest_walls is not None else [None] * len(displays)
        canvases = [preprocess_display(d, self.params, cw) for d, cw in zip(displays, chest_walls, strict=True)]
        out = []
        for c, (boxes, labels, scores, m) in zip(canvases, self.predict_canvases(canvases), strict=True):
            out.append(self._to_stored(c, boxes, labels, scores, m, max_map_side))
        if self.second_look is not None:
            out = self._second_look(self.second_look, displays, canvases, out, spacings, partners)
        return out

    def _second_look(self, second_look: SecondLook, displays: Sequence[np.ndarray], canvases: Sequence[Canvas],
                     results: list[ImageResult], spacings: Sequence[float | None] | None,
                     partners: Sequence[int | None] | None) -> list[ImageResult]:
        from mammotriage.model.twostage import ViewCandidates, ViewGeometry

        n = len(displays)
        spacings = list(spacings) if spacings is not None else [None] * n
        partners = list(partners) if partners is not None else [None] * n
        # the breast and chest-wall side the preprocessing found, not segmented again
        geoms = [ViewGeometry.of(d, sp or 0.2, "right" if c.transform.flip else "left", c.breast)
                 for d, sp, c in zip(displays, spacings, canvases, strict=True)]
        cands = [ViewCandidates(np.array([f.box for f in r.findings]).reshape(-1, 4),
                                np.array([f.score for f in r.findings]), [f.kind for f in r.findings])
                 for r in results]
        out = []
        for i, r in enumerate(results):
            j = partners[i]
            found, score = second_look.view(cands[i], geoms[i], geoms[j] if j is not None else None,
                                                 cands[j] if j is not None else None)
            findings = [Finding(f.box, f.kind, f.score) for f in found]
            smap = r.suspicion.copy()
            for f in findings:  # calcification clusters join the map where they were found
                if f.kind != "calcification":
                    continue
                x0, y0, x1, y1 = (v / r.map_factor for v in f.box)
                sl = smap[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))]
                np.maximum(sl, f.score, out=sl)
            out.append(ImageResult(findings, score, smap, r.map_factor, r.model_version))
        return out

    def _to_stored(self, c: Canvas, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                   m: np.ndarray, max_map_side: int | None) -> ImageResult:
        sb = c.transform.canvas_to_stored_boxes(boxes) if len(boxes) else np.zeros((0, 4))
        findings = [Finding(as_box(b), self.config.classes[int(lab)], float(s))
                    for b, lab, s in zip(sb, labels, scores, strict=True)]
        findings.sort(key=lambda f: -f.score)
        smap, factor = c.transform.map_to_stored(m.max(axis=0), max_side=max_map_side)
        score = float(max((f.score for f in findings), default=0.0))
        return ImageResult(findings, score, smap, factor, self.version)

    def predict_images(self, images: Sequence[MammoImage], max_map_side: int | None = 512) -> list[ImageResult]:
        """``MammoImage`` objects (stored pixels + metadata) -> results in stored coordinates.

        The images of one exam go together: each view's partner for the second look is
        the other breast's view of the same projection."""
        from mammotriage.model.preprocess import display_from_mammo
        from mammotriage.model.scoring import projection

        displays = [display_from_mammo(im.meta, im.pixels) for im in images]
        spacings = [im.meta.spacing.row_mm if im.meta.spacing is not None else None for im in images]
        keys = [(_value(im.meta.laterality), projection(_value(im.meta.view))) for im in images]
        partners: list[int | None] = []
        for lat, proj in keys:
            other = {"L": "R", "R": "L"}.get(lat or "")
            match = [j for j, (la, pr) in enumerate(keys) if la == other and pr == proj]
            partners.append(match[0] if other and len(match) == 1 else None)
        return self.predict_displays(displays, max_map_side=max_map_side, spacings=spacings, partners=partners)


def _value(v: object) -> str | None:
    return None if v is None else str(getattr(v, "value", v))


# ----------------------------------------------------------------- loading a package

def load_detector(model_dir: str | Path
                  ) -> tuple[RetinaNetDetector, NetworkConfig, PreprocessParams, dict[str, Any]]:
    """(detector in eval mode, NetworkConfig, PreprocessParams, metadata) of a verified package."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = verify(model_dir)
    try:
        config = NetworkConfig.from_json(meta["network"])
        pp = PreprocessParams.from_json(meta["preprocessing"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelPackageError(f"{model_dir}: metadata does not describe a network "
                                f"({type(exc).__name__}: {exc})") from exc
    detector = build_detector(config, train_components=False)
    try:
        # A matching sha256 only says the file is the one the metadata names, not that it
        # is a well-formed safetensors file.
        loaded = load_file(str(model_dir / meta.get("weights_file", str(WEIGHTS))))
    except Exception as exc:
        raise ModelPackageError(f"{model_dir}: weights are not a readable safetensors file "
                                f"({type(exc).__name__}: {exc})") from exc
    state = {k: (v.float() if v.is_floating_point() else v)
             for k, v in loaded.items() if not k.startswith("second_look.")}
    own = detector.network.state_dict()
    for k, v in own.items():  # counters we do not ship
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        raise ModelPackageError(f"{model_dir}: weights do not fit the network "
                                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    detector.network.load_state_dict(state, strict=True)
    detector.eval()
    return detector, config, pp, meta


def load_second_look(model_dir: str | Path, meta: dict[str, Any]) -> SecondLook | None:
    """The package's :class:`~mammotriage.model.twostage.SecondLook`, or None (stage one
    only).  ``meta`` is the metadata of the verified package."""
    if "second_look" not in meta:
        return None
    from safetensors.numpy import load_file

    from mammotriage.model.twostage import SecondLook

    try:
        arrays = {k: v for k, v in load_file(str(Path(model_dir) / meta.get("weights_file", str(WEIGHTS)))).items()
                  if k.startswith("second_look.")}
        return SecondLook.from_package(arrays, meta["second_look"])
    except Exception as exc:
        raise ModelPackageError(f"second look of model {meta.get('version')}: {exc}") from exc
