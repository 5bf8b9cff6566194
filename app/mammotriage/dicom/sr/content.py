"""Content items of the SR writers (highdicom's ``sr/content.py`` and the TID 1500 rows
they fill): the coded concepts, checks on sources, boxes and scores, the Image Library
view of a source, one finding's TID 1410 group, and the report around the groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from mammotriage.dicom.content import (
    BREAST,
    header_view,
    new_instance,
    patient_orientation,
)
from mammotriage.dicom.vocab import FindingKind

__all__ = [
    "FINDING_CATEGORY", "FINDING_CODES", "LATERALITY_CODES", "NO_FINDINGS", "PROCEDURE_REPORTED", "SCORE_CONCEPT",
    "SCORE_UNIT", "ReportGroup", "breast_site", "check_score", "check_sources", "comprehensive_sr", "device_observer",
    "finding_group", "finding_source", "laterality", "library_view", "region_of", "source_box",
]

#: Finding kind -> finding type code (TID 1410 row "Finding", (121071, DCM)).
#: All SNOMED CT. "Calcification Cluster" and "Architectural distortion of breast" are in
#: CID 6014 "Mammography Single Image Finding"; "Asymmetric breast tissue" in CID 6016
#: "Mammography Composite Feature" and CID 6054 "Breast Imaging Finding"; "Mass" (CID
#: 6014 has no mass entry) in CID 7151 "Segmentation Property Type" / CID 7159.
FINDING_CODES: dict[str, Code] = {
    FindingKind.MASS.value: codes.SCT.Mass,  # (4147007, SCT, "Mass")
    FindingKind.CALCIFICATION.value: codes.SCT.CalcificationCluster,  # (129769006, SCT, "Calcification Cluster")
    FindingKind.ARCHITECTURAL_DISTORTION.value: codes.SCT.ArchitecturalDistortionOfBreast,  # (129792006, SCT)
    FindingKind.ASYMMETRY.value: codes.SCT.AsymmetricBreastTissue,  # (129790003, SCT, "Asymmetric breast tissue")
}
#: Finding Category (TID 1410 row "Finding Category", CID 7150).
FINDING_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # (49755003, SCT)
#: Name of every score: (111047, DCM, "Probability of cancer"), the concept of the
#: Mammography CAD SR's likelihood (CID 6048 "CAD Operating Point Axis Label").
SCORE_CONCEPT = codes.DCM.ProbabilityOfCancer
#: Unit of every score: UCUM "1" ("no units", CID 7181): a probability in [0, 1].
SCORE_UNIT = codes.UCUM.NoUnits
#: Procedure Reported (TID 1500 row 3, (121058, DCM)): (71651007, SCT, "Mammography").
PROCEDURE_REPORTED = codes.SCT.Mammography
#: Finding of the exam-level group of a report without findings: TID 1501 row
#: "Finding" (121071, DCM) = (111286, DCM, "No abnormality").
NO_FINDINGS = codes.DCM.NoAbnormality
#: Laterality of a finding site (CID 244).
LATERALITY_CODES: dict[str, Code] = {
    "L": codes.SCT.Left,  # (7771000, SCT)
    "R": codes.SCT.Right,  # (24028007, SCT)
    "B": codes.SCT.Bilateral,  # (51440002, SCT, "Bilateral"), CID 244
}
_PROJECTION_MODALITIES = {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"}


def check_score(value: float, what: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}") from exc
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return score


def laterality(ds: Dataset) -> str | None:
    """Image Laterality (0020,0062), else series Laterality (0020,0060): "L"/"R"/"B"."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in LATERALITY_CODES:
            return value
    return None


def breast_site(laterality: str | None) -> hd.sr.FindingSite:
    code = LATERALITY_CODES.get(laterality or "")
    return hd.sr.FindingSite(anatomic_location=BREAST, laterality=code)


def source_box(ds: Dataset, box: Sequence[float], what: str) -> np.ndarray:
    """Closed POLYLINE (5 points, column/row) of a half-open box inside the image."""
    if len(box) != 4:
        raise ValueError(f"{what}: box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{what}: box has a non-finite coordinate: {box!r}")
    columns, rows = int(ds.Columns), int(ds.Rows)
    if not (0.0 <= x0 < x1 <= columns and 0.0 <= y0 < y1 <= rows):
        raise ValueError(
            f"{what}: box {box!r} is empty or outside the image "
            f"(need 0 <= x0 < x1 <= {columns} columns and 0 <= y0 < y1 <= {rows} rows)"
        )
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def library_view(ds: Dataset) -> Dataset:
    """What highdicom's Image Library (TID 1600) entry needs of one source.

    For projection images TID 1603 adds Patient Orientation and Imager Pixel Spacing
    descriptors; both are "MC, if present in the image", and highdicom requires them
    for MG/DX/CR. A source without a valid pair of each (e.g. a digitised-film
    Secondary Capture with Modality MG) gets the basic TID 1602 descriptors only
    (modality from the SOP class, rows, columns).
    """
    view = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "Modality",
                    "FrameOfReferenceUID", "ImagerPixelSpacing"):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    orientation = patient_orientation(ds)
    if orientation:
        view.PatientOrientation = orientation
    spacing = view.get("ImagerPixelSpacing")
    if str(view.get("Modality", "")) in _PROJECTION_MODALITIES and not (
        orientation and spacing is not None and len(spacing) == 2
    ):
        view.Modality = "OT"  # only selects highdicom's descriptor branch
    elif "Modality" not in view:
        view.Modality = "OT"
    return view


def check_sources(sources: Sequence[Dataset]) -> dict[str, Dataset]:
    if not sources:
        raise ValueError("at least one source image is required")
    by_uid: dict[str, Dataset] = {}
    for ds in sources:
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "Rows", "Columns"):
            if keyword not in ds:
                raise ValueError(f"source image lacks {keyword}")
        uid = str(ds.SOPInstanceUID)
        if uid in by_uid:
            raise ValueError(f"source image {uid} given twice")
        by_uid[uid] = header_view(ds)
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ValueError(f"source images belong to {len(studies)} studies; an SR reports one")
    return by_uid


def region_of(ds: Dataset, geometry: Mapping[str, object], what: str) -> hd.sr.ImageRegion:
    """SCOORD of a reader geometry (PS3.3 C.18.6): box -> closed POLYLINE rectangle,
    ellipse -> ELLIPSE (major axis end points, then minor axis end points),
    polygon -> closed POLYLINE."""
    source_image = hd.sr.SourceImageForRegion.from_source_image(ds)
    kind = geometry.get("type")
    if kind in ("box", "ellipse"):
        box = [float(v) for v in cast("Sequence[float]", geometry.get("box", []))]
        rect = source_box(ds, box, what)
        if kind == "box":
            return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                     graphic_data=rect, source_image=source_image)
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        horizontal = [[x0, cy], [x1, cy]]
        vertical = [[cx, y0], [cx, y1]]
        points = horizontal + vertical if (x1 - x0) >= (y1 - y0) else vertical + horizontal
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
                                 graphic_data=np.array(points, dtype=np.float32),
                                 source_image=source_image)
    if kind == "polygon":
        points = [[float(x), float(y)] for x, y in cast("Sequence[Sequence[float]]", geometry.get("points", []))]
        columns, rows = int(ds.Columns), int(ds.Rows)
        if len(points) < 3 or not all(
            math.isfinite(x) and math.isfinite(y) and 0 <= x <= columns and 0 <= y <= rows
            for x, y in points
        ):
            raise ValueError(f"{what}: polygon needs at least 3 points inside the "
                             f"{columns} x {rows} image")
        if points[0] != points[-1]:
            points.append(points[0])
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                 graphic_data=np.array(points, dtype=np.float32),
                                 source_image=source_image)
    raise ValueError(f"{what}: unknown geometry type {kind!r}")


#: One group of a TID 1500 report: a finding (TID 1410) or an image / breast / exam (TID 1501).
ReportGroup = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def finding_source(by_uid: Mapping[str, Dataset], sop_uid: str, kind: str, what: str) -> tuple[Dataset, Code]:
    """The source image and the Finding code (:data:`FINDING_CODES`) of one finding."""
    source = by_uid.get(str(sop_uid))
    if source is None:
        raise ValueError(f"{what} refers to image {sop_uid}, which is not a source")
    code = FINDING_CODES.get(kind)
    if code is None:
        raise ValueError(f"{what}: unknown kind {kind!r}; "
                         f"expected one of {sorted(FINDING_CODES)}")
    return source, code


def finding_group(
    source: Dataset,
    code: Code,
    region: hd.sr.ImageRegion,
    identifier: str,
    *,
    algorithm_id: hd.sr.AlgorithmIdentification | None = None,
    measurements: Sequence[hd.sr.Measurement] | None = None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One finding's TID 1410 group: Tracking Identifier and UID, Finding, Finding
    Category, the Image Region, Finding Site Breast with the image's laterality, and
    (for the AI) Algorithm Identification and the score."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
        referenced_region=region,
        finding_type=code,
        finding_category=FINDING_CATEGORY,
        algorithm_id=algorithm_id,
        finding_sites=[breast_site(laterality(source))],
        measurements=measurements,
    )


def device_observer(uid: str, name: str, manufacturer: str, model_name: str) -> hd.sr.ObserverContext:
    """Observer context of a device (TID 1002 / TID 1004)."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid, name=name, manufacturer_name=manufacturer, model_name=model_name,
        ),
    )


def comprehensive_sr(
    sources: Sequence[Dataset],
    groups: Sequence[ReportGroup],
    observer: hd.sr.ObserverContext,
    *,
    series_instance_uid: str | None,
    series_number: int,
    instance_number: int,
    series_description: str,
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 Measurement Report of ``groups`` (Procedure Reported "Mammography",
    every source in the Image Library) as a complete, preliminary, unverified
    Comprehensive SR written by this workstation."""
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=[library_view(ds) for ds in sources],
    )
    return hd.sr.ComprehensiveSR(
        evidence=sources,
        content=report[0],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        **new_instance(series_instance_uid, series_number, instance_number),
    )
