"""Training/evaluation data: samples, the mini-MIAS folder importer, the phantom importer,
dataset manifests, and patient-level folds (no torch)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

from mammotriage.model.network_constants import CLASSES

#: mini-MIAS abnormality classes -> model classes (calcification clusters vs the rest).
#: mini-MIAS pixel size (the films were digitised at 50 um and reduced to 200 um).
MIAS_SPACING_MM = 0.2

MIAS_KIND = {"CALC": "calcification", "CIRC": "mass", "SPIC": "mass", "MISC": "mass",
             "ARCH": "mass", "ASYM": "mass"}


@dataclass
class Sample:
    """One image with ground truth in stored-image (column, row) pixel coordinates."""

    key: str
    group: str  # patient: the unit of every split
    source: str  # "mias" | "phantom"
    abnormal: bool  # image-level label (includes findings without coordinates)
    boxes: np.ndarray  # (N, 4) x0 y0 x1 y1
    kinds: list[str]
    load: Callable[[], np.ndarray] = field(repr=False)  # -> 8-bit display image
    circles: np.ndarray | None = None  # (N, 3) x, y, r (mini-MIAS)
    chest_wall: str | None = None
    spacing_mm: float | None = None  # stored pixel size (mini-MIAS: 0.2 mm)

    @property
    def labels(self) -> np.ndarray:
        return np.array([CLASSES.index(k) for k in self.kinds], dtype=np.int64)


def _png_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    return load


def read_mias(folder: str | Path) -> list[Sample]:
    """Samples of a folder in the mini-MIAS format (``mdbNNN.png`` + ``labels.csv``).

    ``labels.csv`` columns: image, patient, background, cls, severity, x, y_top_left,
    radius (y from the top row).  Rows without coordinates make the image abnormal but
    add no box.  Images without any row are skipped.
    """
    folder = Path(folder)
    rows: dict[str, list[dict[str, Any]]] = {}
    with open(folder / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(row["image"].strip(), []).append(row)
    samples = []
    for image, items in sorted(rows.items()):
        path = folder / f"{image}.png"
        if not path.exists():
            continue
        boxes, kinds, circles, abnormal = [], [], [], False
        for r in items:
            cls = r["cls"].strip().upper()
            if cls == "NORM":
                continue
            abnormal = True
            if r.get("x", "").strip() and r.get("y_top_left", "").strip() and r.get("radius", "").strip():
                x, y, rad = float(r["x"]), float(r["y_top_left"]), float(r["radius"])
                circles.append((x, y, rad))
                boxes.append((x - rad, y - rad, x + rad, y + rad))
                kinds.append(MIAS_KIND.get(cls, "mass"))
        patient = items[0].get("patient", "").strip() or image
        samples.append(Sample(
            key=f"mias:{image}", group=f"mias:{patient}", source="mias", abnormal=abnormal,
            boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4), kinds=kinds,
            load=_png_loader(path), circles=np.array(circles, dtype=np.float64).reshape(-1, 3),
            spacing_mm=MIAS_SPACING_MM))
    return samples


def phantom_samples(n_exams: int, seed: int = 1000, rows: int = 1024, columns: int = 832) -> list[Sample]:
    """Samples of ``n_exams`` synthetic four-view exams (generated lazily, deterministic)."""
    from mammotriage.phantom import generate_exam

    samples = []
    for number in range(1, n_exams + 1):
        # Exam-level lesion layout is cheap to know only by generating; generate once per exam.
        exam = generate_exam(seed, exam_number=number, rows=rows, columns=columns)
        for img in exam.images:
            les = [lesion for lesion in exam.lesions if lesion.sop_uid == img.sop_uid]
            pixels = img.pixels
            ds = img.dataset

            def load(ds: Dataset = ds, pixels: np.ndarray = pixels) -> np.ndarray:
                from mammotriage.dicom.read import parse_metadata
                from mammotriage.model.preprocess import display_from_mammo

                return display_from_mammo(parse_metadata(ds), pixels)

            samples.append(Sample(
                key=f"phantom:{seed}:{number}:{img.label}", group=f"phantom:{seed}:{number}",
                source="phantom", abnormal=bool(les),
                boxes=np.array([lesion.box for lesion in les], dtype=np.float64).reshape(-1, 4),
                kinds=[lesion.kind for lesion in les], load=load, spacing_mm=_row_spacing(ds)))
    return samples


def _row_spacing(ds: Dataset) -> float | None:
    from mammotriage.dicom.read import parse_metadata

    sp = parse_metadata(ds).spacing
    return float(sp.row_mm) if sp is not None else None


# ------------------------------------------------------------------ manifests

def load_manifest(path: str | Path) -> tuple[list[Sample], dict[str, Any]]:
    """Samples named by a dataset manifest (JSON) and a description with its hash.

    Manifest: ``{"sources": [{"type": "mias", "path": "../shared/data/mias/dev"},
    {"type": "phantom", "n_exams": 40, "seed": 1000, "rows": 1024, "columns": 832}]}``;
    relative paths are relative to the manifest's folder.
    """
    path = Path(path)
    spec = json.loads(path.read_text())
    return samples_from_spec(spec, base=path.parent)


def samples_from_spec(spec: dict[str, Any], base: Path | None = None) -> tuple[list[Sample], dict[str, Any]]:
    samples: list[Sample] = []
    described = []
    for src in spec.get("sources", []):
        if src["type"] == "mias":
            folder = Path(src["path"])
            if base is not None and not folder.is_absolute():
                folder = (base / folder).resolve()
            got = read_mias(folder)
            described.append({"type": "mias", "path": str(src["path"]), "images": len(got),
                              "sha256": hash_mias_folder(folder)})
        elif src["type"] == "phantom":
            kw = {k: src[k] for k in ("seed", "rows", "columns") if k in src}
            got = phantom_samples(int(src["n_exams"]), **kw)
            described.append({"type": "phantom", "n_exams": int(src["n_exams"]), **kw,
                              "images": len(got)})
        else:
            raise ValueError(f"unknown manifest source type {src['type']!r}")
        samples.extend(got)
    # The hash names the content, not where it was found: paths are left out.
    content = [{k: v for k, v in d.items() if k != "path"} for d in described]
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return samples, {"sources": described, "sha256": digest,
                     "n_images": len(samples), "n_boxes": int(sum(len(s.kinds) for s in samples))}


def hash_mias_folder(folder: str | Path) -> str:
    """sha256 over labels.csv and every image referenced (names and bytes)."""
    folder = Path(folder)
    h = hashlib.sha256()
    h.update((folder / "labels.csv").read_bytes())
    for p in sorted(folder.glob("*.png")):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def patient_folds(samples: list[Sample], k: int, seed: int = 0) -> list[int]:
    """Fold number (0..k-1) of every sample; all images of a patient share a fold.

    Patients are shuffled with ``seed`` and dealt to folds, abnormal patients first, so
    every fold holds a similar share of lesions.
    """
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    rng.shuffle(names)
    n_boxes = {g: sum(len(samples[i].kinds) + samples[i].abnormal for i in groups[g]) for g in names}
    names.sort(key=lambda g: -n_boxes[g])  # stable: ties keep the shuffled order
    load = [0] * k
    count = [0] * k
    fold_of = {}
    for g in names:
        if n_boxes[g]:
            f = min(range(k), key=lambda j: (load[j], count[j], j))
        else:
            f = min(range(k), key=lambda j: (count[j], j))
        fold_of[g] = f
        load[f] += n_boxes[g]
        count[f] += 1
    return [fold_of[s.group] for s in samples]


# ------------------------------------------------------------------ monitoring reference

#: How each training source appears as a scanner ("manufacturer / model") in monitoring.
SOURCE_SCANNERS = {"mias": "mini-MIAS (digitised film)", "phantom": "Mammo Triage phantom"}


def input_reference(samples: list[Sample]) -> dict[str, Any]:
    """The training images' breast-intensity statistics, the baseline of the drift monitor.

    Same statistic as the triage worker stores per image
    (:func:`mammotriage.dicom.voi.image_statistics` of the 8-bit display image):
    ``{"mean", "mean_sd", "p95", "n_images", "statistic"}``.
    """
    from mammotriage.dicom.voi import image_statistics

    stats = [image_statistics(s.load()) for s in samples]
    if not stats:
        return {}
    means = np.array([st["mean"] for st in stats])
    return {"mean": round(float(means.mean()), 3), "mean_sd": round(float(means.std(ddof=1) if len(means) > 1 else 0.0), 3),
            "p95": round(float(np.mean([st["p95"] for st in stats])), 3), "n_images": len(stats),
            "statistic": "breast-region mean of the 8-bit display image"}


def training_scanners(samples: list[Sample]) -> list[str]:
    """Scanner names (as the monitor spells them) of the training sources."""
    return sorted({SOURCE_SCANNERS.get(s.source, s.source) for s in samples})
