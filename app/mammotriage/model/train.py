"""Training loop: seeded, deterministic, resumable checkpoints, patch sampling + augmentation.

Every random draw of iteration ``i`` comes from ``numpy.random.default_rng([seed, i])`` and
``torch.manual_seed(seed * 1_000_003 + i)``, so a run resumed from a checkpoint continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from mammotriage.model.data import Sample
from mammotriage.model.network import (
    DEFAULT_CONFIG,
    NetworkConfig,
    backbone,
    build_detector,
    load_pretrained_backbone,
    xyxy_to_monai,
)
from mammotriage.model.preprocess import (
    DEFAULT_PARAMS,
    PreprocessParams,
    normalise,
    normalise_breast,
    preprocess_display,
)

if TYPE_CHECKING:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector


@dataclass
class TrainParams:
    """Hyper-parameters (stored in the model package)."""

    epochs: float = 12.0
    batch_size: int = 2
    lr: float = 4e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 30
    patch_rows: int = 512  # training patches: full canvas width x patch_rows (tiles of the canvas)
    positive_fraction: float = 0.6  # share of patches centred on a lesion
    abnormal_repeat: int = 2  # abnormal images appear this many times per epoch
    freeze: tuple[str, ...] = ("conv_stem", "bn1", "blocks.0", "blocks.1")
    pretrained: bool = True
    seed: int = 20260101
    threads: int = 2
    checkpoint_every: int = 50
    max_minutes: float | None = None  # stop (with a checkpoint) after this wall time
    device: str | None = None  # None: CUDA when available, else CPU (same recipe, same batches)
    aug_scale: tuple[float, float] = (0.85, 1.15)
    aug_gamma: tuple[float, float] = (0.75, 1.35)
    aug_vflip: bool = True
    #: share of patches whose canvas is first given another "look" (:func:`simulated_look`:
    #: film characteristic curve, contrast and gamma of other scanners and digitisers,
    #: peripheral equalisation of processed FFDM), then normalised again as inference would
    aug_looks: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["freeze"] = list(self.freeze)
        d["aug_scale"] = list(self.aug_scale)
        d["aug_gamma"] = list(self.aug_gamma)
        return d


@dataclass
class Prepared:
    """A sample on the model canvas: uint8 image, boxes (canvas xyxy), class indices."""

    key: str
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    content: tuple[int, int]


def prepare(samples: list[Sample], params: PreprocessParams, progress: bool = False) -> list[Prepared]:
    out = []
    for i, s in enumerate(samples):
        c = preprocess_display(s.load(), params, s.chest_wall)
        boxes = c.transform.stored_to_canvas_boxes(s.boxes) if len(s.boxes) else np.zeros((0, 4))
        out.append(Prepared(s.key, c.image, boxes.astype(np.float32), s.labels, c.transform.content))
        if progress and (i + 1) % 50 == 0:
            print(f"prepared {i + 1}/{len(samples)}", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------ augmentation / patches

def simulated_look(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The uint8 canvas as another acquisition might have rendered it (background stays 0).

    One of three monotone changes of the breast's grey levels, as film, digitised film
    and processed FFDM differ: a film characteristic curve (a sigmoid of random slope and
    centre), a change of contrast and gamma, or peripheral equalisation (the thin breast
    edge made brighter or darker over a random width, as FFDM processing and film
    exposure do). The caller normalises the result again.
    """
    mask = img > 0
    x = img.astype(np.float64) / 255.0
    kind = int(rng.integers(3))
    if kind == 0:
        k, c = float(rng.uniform(4.0, 10.0)), float(rng.uniform(0.35, 0.65))
        lo, hi = 1 / (1 + np.exp(k * c)), 1 / (1 + np.exp(-k * (1 - c)))
        x = (1 / (1 + np.exp(-k * (x - c))) - lo) / (hi - lo)
    elif kind == 1:
        m = float(np.mean(x[mask])) if mask.any() else 0.5
        x = np.clip(m + (x - m) * float(rng.uniform(0.5, 1.3)), 0, 1) ** float(rng.uniform(0.6, 1.7))
    else:
        width = float(rng.uniform(0.02, 0.08)) * img.shape[1]
        depth = ndimage.distance_transform_edt(mask)
        x = np.clip(x + float(rng.uniform(-0.2, 0.3)) * np.exp(-depth / width), 0, 1)
    return np.where(mask, np.clip(np.rint(x * 255), 1, 255), 0).astype(np.uint8)


def _patch(p: Prepared, rng: np.random.Generator, hp: TrainParams, positive: bool,
           pp: PreprocessParams | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled, cropped, flipped and intensity-jittered patch (rows = hp.patch_rows)."""
    img, boxes, labels = p.image, p.boxes.copy(), p.labels.copy()
    # (no random draw when looks are off: the batches of older recipes stay bit-identical)
    if hp.aug_looks > 0 and rng.random() < hp.aug_looks:
        img = simulated_look(img, rng)
        if pp is not None and pp.intensity == "breast_percentiles":
            img = normalise_breast(img, img > 0, pp)
    H, W = img.shape
    s = float(rng.uniform(*hp.aug_scale))
    if abs(s - 1.0) > 1e-3:
        nh, nw = int(round(H * s)), int(round(W * s))
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
        boxes = boxes * np.array([nw / W, nh / H, nw / W, nh / H], dtype=np.float32)
        # back to the canvas width: crop or pad columns (chest wall stays on the left)
        img = img[:, :W] if nw >= W else np.pad(img, ((0, 0), (0, W - nw)))
    ph = min(hp.patch_rows, img.shape[0])
    content_rows = max(ph, min(img.shape[0], int(round(p.content[0] * s))))
    if positive and len(boxes):
        b = boxes[rng.integers(len(boxes))]
        cy = (b[1] + b[3]) / 2 + rng.uniform(-0.3, 0.3) * ph
        r0 = int(np.clip(round(cy - ph / 2), 0, img.shape[0] - ph))
    else:
        r0 = int(rng.integers(0, max(1, content_rows - ph + 1)))
    patch = img[r0:r0 + ph]
    if patch.shape[0] < hp.patch_rows:
        patch = np.pad(patch, ((0, hp.patch_rows - patch.shape[0]), (0, 0)))
    boxes = boxes - np.array([0, r0, 0, r0], dtype=np.float32)
    if len(boxes):
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, W)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, hp.patch_rows)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        carea = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = carea >= 0.4 * np.maximum(area, 1e-6)
        boxes, labels = clipped[keep], labels[keep]
    if hp.aug_vflip and rng.random() < 0.5:
        patch = patch[::-1]
        if len(boxes):
            boxes = np.stack([boxes[:, 0], hp.patch_rows - boxes[:, 3], boxes[:, 2], hp.patch_rows - boxes[:, 1]], 1)
    x = patch.astype(np.float32) / 255.0
    gamma = float(rng.uniform(*hp.aug_gamma))
    x = np.power(x, gamma)
    x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.04, 0.04))
    x = np.clip(x, 0, 1) * (patch > 0)  # background stays black
    return (x * 255.0).astype(np.float32), boxes.astype(np.float32), labels


def _epoch_list(prepared: list[Prepared], hp: TrainParams) -> list[int]:
    idx = []
    for i, p in enumerate(prepared):
        idx.extend([i] * (hp.abnormal_repeat if len(p.boxes) else 1))
    return idx


def make_batch(prepared: list[Prepared], it: int, hp: TrainParams, pp: PreprocessParams
               ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The batch of iteration ``it`` (a pure function of seed and iteration)."""
    order_list = _epoch_list(prepared, hp)
    per_epoch = max(1, len(order_list) // hp.batch_size)
    epoch, pos = divmod(it, per_epoch)
    perm = np.random.default_rng([hp.seed, 7, epoch]).permutation(len(order_list))
    rng = np.random.default_rng([hp.seed, it])
    xs, targets = [], []
    for j in range(hp.batch_size):
        p = prepared[order_list[perm[(pos * hp.batch_size + j) % len(order_list)]]]
        positive = len(p.boxes) > 0 and rng.random() < hp.positive_fraction
        x, boxes, labels = _patch(p, rng, hp, positive, pp)
        xs.append(((x / 255.0 - pp.norm_mean) / pp.norm_std)[None])
        targets.append({"boxes": xyxy_to_monai(torch.from_numpy(boxes.reshape(-1, 4))),
                        "labels": torch.from_numpy(labels.astype(np.int64))})
    return torch.from_numpy(np.stack(xs).astype(np.float32)), targets


# ------------------------------------------------------------------ model setup

def set_frozen(detector: RetinaNetDetector, hp: TrainParams) -> None:
    """Freeze the early backbone stages; all backbone BatchNorms use their stored statistics."""
    for name, p in backbone(detector).named_parameters():
        if name.startswith(tuple(hp.freeze)):
            p.requires_grad_(False)


def backbone_bn_eval(detector: RetinaNetDetector) -> None:
    for m in backbone(detector).modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def cosine_lr(it: int, total: int, lr: float, warmup_iters: int, floor: float) -> float:
    """Linear warm-up, then cosine decay to ``floor`` x ``lr`` at ``total``."""
    if it < warmup_iters:
        return lr * (it + 1) / max(1, warmup_iters)
    t = (it - warmup_iters) / max(1, total - warmup_iters)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _lr_at(it: int, total: int, hp: TrainParams) -> float:
    return cosine_lr(it, total, hp.lr, hp.warmup_iters, floor=0.02)


def train_step(detector: RetinaNetDetector, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
               prepared: list[Prepared], it: int, hp: TrainParams,
               pp: PreprocessParams, lr: float, seed: int) -> tuple[float, float, float]:
    """One optimiser step on the batch of iteration ``it`` (seeded by ``seed`` and ``it``);
    returns the (total, classification, box) losses."""
    torch.manual_seed(seed * 1_000_003 + it)
    x, targets = make_batch(prepared, it, hp, pp)
    dev = next(detector.network.parameters()).device
    if dev.type != "cpu":  # the same batch, computed where the network lives
        x = x.to(dev)
        targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
    for g in opt.param_groups:
        g["lr"] = lr
    losses = detector(x, targets)
    loss = losses[detector.cls_key] + losses[detector.box_reg_key]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    return (float(loss.detach()), float(losses[detector.cls_key].detach()),
            float(losses[detector.box_reg_key].detach()))


@dataclass
class TrainResult:
    detector: RetinaNetDetector
    config: NetworkConfig
    params: PreprocessParams
    hp: TrainParams
    iterations: int
    total_iterations: int
    seconds: float
    images_per_second: float
    final_loss: float
    finished: bool


def train(samples: list[Sample], out_dir: str | Path, hp: TrainParams | None = None,
          config: NetworkConfig = DEFAULT_CONFIG, pp: PreprocessParams = DEFAULT_PARAMS,
          resume: bool = True, progress: bool = True, prepared: list[Prepared] | None = None,
          log_every: int = 20, stop_at: int | None = None) -> TrainResult:
    """Train a detector on ``samples``; checkpoints go to ``out_dir/checkpoint.pt``.

    With ``resume`` and an existing checkpoint of the same configuration, training
    continues from it.  ``stop_at`` interrupts after that iteration (as a crash or
    ``max_minutes`` would), leaving a checkpoint.  Returns the detector (in eval mode).
    """
    from mammotriage.progress import CliProgress

    hp = hp or TrainParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(hp.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(hp.seed)
    detector = build_detector(config, train_components=True)
    if hp.pretrained:
        load_pretrained_backbone(detector, config)
    set_frozen(detector, hp)
    from mammotriage.model.infer import pick_device

    device = pick_device(hp.device)
    detector.network.to(device)
    params = [p for p in detector.network.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if prepared is None:
        prepared = prepare(samples, pp, progress=progress)
    per_epoch = max(1, len(_epoch_list(prepared, hp)) // hp.batch_size)
    total = max(1, int(round(hp.epochs * per_epoch)))
    # What decides the weights (not wall-time caps, thread counts or checkpoint spacing).
    hp_sig = {k: v for k, v in hp.to_json().items()
              if k not in ("max_minutes", "threads", "checkpoint_every", "device")}
    signature = json.dumps({"hp": hp_sig, "config": config.to_json(), "pp": pp.to_json(),
                            "keys": [p.key for p in prepared]}, sort_keys=True)
    ckpt = out_dir / "checkpoint.pt"
    start_it = 0
    before_s = 0.0  # training time of earlier (interrupted) runs, from the checkpoint
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state.get("signature") == signature:
            detector.network.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_it = int(state["iteration"])
            before_s = float(state.get("seconds", 0.0))
            print(f"resuming from iteration {start_it}/{total}", file=sys.stderr, flush=True)
        else:
            print("checkpoint is from a different run; starting afresh", file=sys.stderr, flush=True)

    def save(it: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": detector.network.state_dict(), "optimizer": opt.state_dict(),
                    "iteration": it, "signature": signature,
                    "seconds": before_s + time.monotonic() - t0}, tmp)
        tmp.replace(ckpt)

    bar = CliProgress(total, label="train") if progress else None
    t0 = time.monotonic()
    detector.train()
    backbone_bn_eval(detector)
    it = start_it
    loss_ema = float("nan")
    finished = True
    while it < total:
        if (hp.max_minutes is not None and time.monotonic() - t0 > hp.max_minutes * 60) or \
                (stop_at is not None and it >= stop_at):
            finished = False
            break
        lv, cls_loss, box_loss = train_step(detector, opt, params, prepared, it, hp, pp,
                                            _lr_at(it, total, hp), hp.seed)
        loss_ema = lv if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * lv
        it += 1
        if bar is not None:
            bar.update(it, f"loss {loss_ema:.3f}")
        if log_every and it % log_every == 0:
            el = time.monotonic() - t0
            print(f"iter {it}/{total} loss {loss_ema:.4f} cls {cls_loss:.4f} box {box_loss:.4f} {el:.0f}s "
                  f"{(it - start_it) * hp.batch_size / max(el, 1e-9):.2f} img/s",
                  file=sys.stderr, flush=True)
        if it % hp.checkpoint_every == 0 or it == total:
            save(it)
    if bar is not None:
        bar.close()
    if it != start_it:
        save(it)
    seconds = time.monotonic() - t0
    detector.network.to("cpu")  # packages and inference start from CPU tensors
    detector.eval()
    # seconds: all runs of this training together (resumes included); the rate: this run's
    return TrainResult(detector, config, pp, hp, it, total, before_s + seconds,
                       (it - start_it) * hp.batch_size / max(seconds, 1e-9), loss_ema, finished)


def fp32_canvas_input(canvas: np.ndarray, pp: PreprocessParams) -> torch.Tensor:
    return torch.from_numpy(normalise(canvas, pp))[None]
