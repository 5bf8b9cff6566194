"""Label files of an export: a MONAI detection datalist and COCO.

Both describe the same final labels (the snapshot's consensus) of the same exported
images, with boxes in stored-image pixel coordinates, x = column, y = row, continuous
pixel-edge coordinates (the box ``[x0, y0, x1, y1]`` covers columns ``x0 .. x1 - 1``
and rows ``y0 .. y1 - 1`` when the values are integers).

MONAI (``datalist.json``)
    A Decathlon-style datalist as MONAI's detection workflows read it with
    ``monai.data.load_decathlon_datalist(path, is_segmentation=False,
    data_list_key=KEY)``: ``{KEY: [{"image": rel_path, "box": [[x0, y0, x1, y1], ...],
    "label": [class, ...], ...}]}`` where KEY is ``"training"`` or ``"validation"`` (the
    snapshot's role) and ``class`` indexes ``metadata["labels"]``. Box mode: MONAI
    ``"xyxy"`` (``StandardMode``: ``[xmin, ymin, xmax, ymax]``) where the first spatial
    axis is the image *column*: that is the layout MONAI's own DICOM readers
    (``PydicomReader`` with its default ``swap_ij=True``, ``ITKReader``) return, an
    array of shape ``(Columns, Rows)`` (``(1, Columns, Rows)`` after
    ``EnsureChannelFirst``). If you load pixels with pydicom's
    ``pixel_array`` (``(Rows, Columns)``, first axis = row) use
    ``[y0, x0, y1, x1]`` instead, or transpose.
COCO (``coco.json``)
    ``images`` (``id``, ``file_name``, ``width`` = Columns, ``height`` = Rows),
    ``annotations`` (``bbox`` = ``[x, y, width, height]`` with x = column, y = row,
    ``area``, ``iscrowd`` 0, ``segmentation``: the outline as one polygon) and
    ``categories`` (ids 1..4). ``file_name`` is relative to the export folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mammotriage.dicom.vocab import FINDING_KINDS as KINDS

__all__ = ["ExportItem", "clip_geometry", "coco", "monai_datalist", "outline"]

#: MONAI class index (0-based) and COCO category id (1-based) of each kind.
CLASS_INDEX = {kind: i for i, kind in enumerate(KINDS)}


@dataclass
class ExportItem:
    """One exported image and its labels (pseudonymous identifiers only)."""

    image: str  # path relative to the export root
    rows: int
    columns: int
    laterality: str
    view: str
    patient: str  # pseudonymous Patient ID
    study_uid: str  # pseudonymous
    sop_uid: str  # pseudonymous
    reviewed: bool
    sr: str | None = None
    final: list[dict[str, Any]] = field(default_factory=list)  # {label_id, kind, geometry, box}
    ai: list[dict[str, Any]] = field(default_factory=list)  # {label_id, kind, box, score, model_version}


def clip_geometry(geometry: Mapping[str, Any], columns: int, rows: int) -> dict[str, Any] | None:
    """The geometry clipped to the image (``None`` when nothing is left inside)."""
    if geometry.get("type") == "polygon":
        pts = [[min(max(float(x), 0.0), columns), min(max(float(y), 0.0), rows)]
               for x, y in geometry["points"]]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0:
            return None
        return {"type": "polygon", "points": pts}
    x0, y0, x1, y1 = (float(v) for v in geometry["box"])
    x0, x1 = min(max(x0, 0.0), columns), min(max(x1, 0.0), columns)
    y0, y1 = min(max(y0, 0.0), rows), min(max(y1, 0.0), rows)
    if x1 <= x0 or y1 <= y0:
        return None
    return {"type": geometry.get("type", "box"), "box": [x0, y0, x1, y1]}


def outline(geometry: Mapping[str, Any], points: int = 24) -> list[float]:
    """Flat ``[x, y, x, y, ...]`` outline: the polygon, the box corners, or ``points``
    points on an ellipse inscribed in its box."""
    if geometry.get("type") == "polygon":
        return [round(float(v), 3) for p in geometry["points"] for v in p]
    x0, y0, x1, y1 = (float(v) for v in geometry["box"])
    if geometry.get("type") == "ellipse":
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        return [round(v, 3) for k in range(points)
                for v in (cx + rx * math.cos(2 * math.pi * k / points),
                          cy + ry * math.sin(2 * math.pi * k / points))]
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def monai_datalist(items: Sequence[ExportItem], *, key: str, name: str, description: str,
                   reference: str) -> dict[str, Any]:
    """The MONAI detection datalist (see the module docstring)."""
    reviewed = [i for i in items if i.reviewed]
    unreviewed = [i for i in items if not i.reviewed]

    def entry(item: ExportItem) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": item.image,
            "box": [[round(v, 3) for v in lab["box"]] for lab in item.final],
            "label": [CLASS_INDEX[lab["kind"]] for lab in item.final],
            "patient": item.patient, "study": item.study_uid, "sop": item.sop_uid,
            "laterality": item.laterality, "view": item.view,
            "rows": item.rows, "columns": item.columns,
        }
        if item.sr:
            out["sr"] = item.sr
        return out

    data: dict[str, Any] = {
        "name": name or "mammotriage export",
        "description": description,
        "reference": f"mammotriage dataset snapshot {reference}",
        "tensorImageSize": "2D",
        "modality": {"0": "MG"},
        "labels": {str(i): kind for i, kind in enumerate(KINDS)},
        "box_mode": "xyxy",
        "spatial_axes": "first spatial axis = column (x), second = row (y): the layout of MONAI's "
                        "PydicomReader (swap_ij=True) and ITKReader, (Columns, Rows)",
        "num" + key.capitalize(): len(reviewed),
        key: [entry(i) for i in reviewed],
    }
    if unreviewed:
        data["unreviewed"] = [{
            "image": i.image, "patient": i.patient, "study": i.study_uid, "sop": i.sop_uid,
            "laterality": i.laterality, "view": i.view, "rows": i.rows, "columns": i.columns,
            "ai_box": [[round(v, 3) for v in m["box"]] for m in i.ai],
            "ai_label": [CLASS_INDEX.get(m["kind"], -1) for m in i.ai],
            "ai_score": [m["score"] for m in i.ai],
        } for i in unreviewed]
    return data


def coco(items: Sequence[ExportItem], *, name: str, description: str, reference: str,
         created: str) -> dict[str, Any]:
    """COCO object detection JSON of the reviewed images (see the module docstring)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for item in (i for i in items if i.reviewed):
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": item.image, "width": item.columns,
                       "height": item.rows, "patient": item.patient, "study": item.study_uid,
                       "sop": item.sop_uid, "laterality": item.laterality, "view": item.view})
        for lab in item.final:
            x0, y0, x1, y1 = lab["box"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CLASS_INDEX[lab["kind"]] + 1,
                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                "area": round((x1 - x0) * (y1 - y0), 3), "iscrowd": 0,
                "segmentation": [outline(lab["geometry"])],
                "label_id": lab["label_id"],
            })
    return {
        "info": {"description": description or name or "mammotriage export",
                 "version": reference[:12], "year": int(created[:4]), "date_created": created,
                 "contributor": "Mammo Triage", "url": ""},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": kind, "supercategory": "breast lesion"}
                       for i, kind in enumerate(KINDS)],
    }
