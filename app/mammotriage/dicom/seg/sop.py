"""The SEG object: the model's suspicion map as a FRACTIONAL / PROBABILITY Segmentation
(PS3.3 A.51, C.8.20.2) of one source image, on the source's pixel grid (highdicom's
``seg/sop.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from mammotriage.dicom.content import (
    ALGORITHM_FAMILY,
    BREAST,
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    finish,
    header_view,
    new_instance,
    patient_orientation,
)

__all__ = ["SEGMENT_CATEGORY", "SEGMENT_TYPE", "write_suspicion_seg"]

#: Segment of the suspicion map: category (49755003, SCT, "Morphologically abnormal
#: structure", CID 7150), type (52988006, SCT, "Lesion", CID 7151 / CID 7159), in the
#: anatomic region (76752008, SCT, "Breast").
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SEGMENT_TYPE = codes.SCT.Lesion


def _resample(
    suspicion: np.ndarray, rows: int, columns: int, map_factor: float,
    interpolation: Literal["nearest", "bilinear"],
) -> np.ndarray:
    """Map pixels onto the stored grid: map pixel (i, j) covers stored rows
    ``[i f, (i + 1) f)`` and columns ``[j f, (j + 1) f)``; returns (K, rows, columns)."""
    k, h, w = suspicion.shape
    for name, stored, mapped in (("rows", rows, h), ("columns", columns, w)):
        if abs(mapped * map_factor - stored) >= max(map_factor, 1.0):
            raise ValueError(
                f"suspicion map has {mapped} {name}; times map_factor {map_factor:g} that is "
                f"{mapped * map_factor:g}, which does not match the image's {stored} {name} "
                "(crop any padding first)"
            )
    # map coordinate of each stored pixel centre
    ry = (np.arange(rows) + 0.5) / map_factor
    rx = (np.arange(columns) + 0.5) / map_factor
    if interpolation == "nearest":
        iy = np.clip(np.floor(ry).astype(np.intp), 0, h - 1)
        ix = np.clip(np.floor(rx).astype(np.intp), 0, w - 1)
        return suspicion[:, iy[:, None], ix[None, :]]
    if interpolation == "bilinear":
        fy = np.clip(ry - 0.5, 0, h - 1)
        fx = np.clip(rx - 0.5, 0, w - 1)
        y0 = np.floor(fy).astype(np.intp)
        x0 = np.floor(fx).astype(np.intp)
        y1 = np.minimum(y0 + 1, h - 1)
        x1 = np.minimum(x0 + 1, w - 1)
        wy = (fy - y0)[:, None].astype(np.float32)
        wx = (fx - x0)[None, :].astype(np.float32)
        out = np.empty((k, rows, columns), dtype=np.float32)
        for c in range(k):
            m = suspicion[c]
            top = m[y0[:, None], x0[None, :]] * (1 - wx) + m[y0[:, None], x1[None, :]] * wx
            bottom = m[y1[:, None], x0[None, :]] * (1 - wx) + m[y1[:, None], x1[None, :]] * wx
            out[c] = top * (1 - wy) + bottom * wy
        return out
    raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")


def write_suspicion_seg(
    source: Dataset,
    suspicion: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    map_factor: float = 1.0,
    labels: Sequence[str] = ("suspicion",),
    series_number: int = 901,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    interpolation: Literal["nearest", "bilinear"] = "nearest",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Write a suspicion map as a fractional Segmentation of one source image.

    Parameters
    ----------
    source
        The image the map was computed on (pixel data not needed).
    suspicion
        Values in [0, 1]: ``(h, w)`` for one segment, or ``(K, h, w)`` for one segment
        per label. Map pixel ``(i, j)`` covers stored rows ``[i f, (i+1) f)`` and
        columns ``[j f, (j+1) f)`` with ``f = map_factor``; ``h * f`` and ``w * f``
        must equal the image's Rows and Columns within one map pixel.
    algorithm
        The model; see :class:`AlgorithmInfo`.
    map_factor
        Stored pixels per map pixel (> 0; 1 = the map is on the stored grid).
    labels
        Segment Label (0062,0005) per segment.
    series_number, instance_number
        Series Number (0020,0011) and Instance Number (0020,0013).
    series_instance_uid
        Series Instance UID; a new one by default (pass one to group an exam's maps).
    interpolation
        ``"nearest"`` (each map pixel becomes an ``f x f`` block, default) or
        ``"bilinear"`` (map pixel centres at ``((j + 0.5) f, (i + 0.5) f)``).

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.seg.Segmentation`` (SOP Class 1.2.840.10008.5.1.4.1.1.66.4),
        Segmentation Type FRACTIONAL, Segmentation Fractional Type PROBABILITY,
        Maximum Fractional Value 255 (PS3.3 C.8.20.2), one frame per segment with
        the source's Rows x Columns; no frame is omitted even when all zero.

    Raises
    ------
    ValueError
        For a map of the wrong rank or size, values outside [0, 1] or not finite,
        ``map_factor <= 0``, or labels that do not match the segments.

    Notes
    -----
    Segments: category (49755003, SCT, "Morphologically abnormal structure"), type
    (52988006, SCT, "Lesion"), anatomic region (76752008, SCT, "Breast"), algorithm
    type AUTOMATIC with Algorithm Identification (0062,0007): name, version, family
    (123110, DCM, "Artificial Intelligence"), source = manufacturer, parameter
    ``weights_sha256``. The source is a projection image without a frame of reference
    (MG, DX or Secondary Capture), so the SEG carries no plane position or orientation
    (highdicom derives each frame from the single source frame, Spatial Locations
    Preserved YES); Patient Orientation is copied from the source when valid, else
    left empty (Type 2C, PS3.3 C.7.6.1).
    """
    for keyword in ("SOPInstanceUID", "SOPClassUID", "Rows", "Columns"):
        if keyword not in source:
            raise ValueError(f"source image lacks {keyword}")
    if not (isinstance(map_factor, (int, float)) and math.isfinite(map_factor) and map_factor > 0):
        raise ValueError(f"map_factor must be a positive number, got {map_factor!r}")
    data = np.asarray(suspicion)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1] == 0 or data.shape[2] == 0:
        raise ValueError(f"suspicion must be (h, w) or (K, h, w), got shape {np.shape(suspicion)}")
    if data.dtype == bool or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"suspicion must hold numbers in [0, 1], got dtype {data.dtype}")
    data = data.astype(np.float32, copy=False)
    if not np.all(np.isfinite(data)) or data.min() < 0.0 or data.max() > 1.0:
        raise ValueError("suspicion values must be finite and in [0, 1]")
    labels = list(labels)
    if len(labels) != data.shape[0]:
        raise ValueError(f"{len(labels)} labels for {data.shape[0]} segment(s)")
    if any(not str(label).strip() or len(str(label)) > 64 for label in labels):
        raise ValueError("segment labels must be 1 to 64 characters")

    source = header_view(source)
    rows, columns = int(source.Rows), int(source.Columns)
    frames = _resample(data, rows, columns, float(map_factor), interpolation)

    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=ALGORITHM_FAMILY,
        version=algorithm.version,
        source=algorithm.manufacturer,
        parameters={"weights_sha256": algorithm.weights_sha256.lower()},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label),
            segmented_property_category=SEGMENT_CATEGORY,
            segmented_property_type=SEGMENT_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            anatomic_regions=[BREAST],
        )
        for number, label in enumerate(labels, 1)
    ]
    # highdicom: (frames, rows, columns, segments) for several segments of one frame
    pixel_array = frames[0] if len(labels) == 1 else np.moveaxis(frames, 0, -1)[None]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=descriptions,
        device_serial_number="0",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="SUSPICION",
        content_description="AI suspicion map, not for clinical use",
        omit_empty_frames=False,
        series_description=NOT_FOR_CLINICAL_USE,
        transfer_syntax_uid=transfer_syntax_uid,
        **new_instance(series_instance_uid, series_number, instance_number),
    )
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = patient_orientation(source)
    finish(seg, algorithm)
    return seg
