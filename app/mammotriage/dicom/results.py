"""AI results as DICOM objects: a TID 1500 measurement report and a fractional SEG.

Two writers, both built with highdicom, both marked as research output:

* :func:`write_findings_sr` - a Comprehensive SR (PS3.3 A.35.3) whose content is a
  TID 1500 "Measurement Report" (PS3.16 TID 1500) with one TID 1410 "Planar ROI
  Measurements and Qualitative Evaluations" group per finding: a closed POLYLINE
  rectangle in the source image's pixel coordinates, the finding's kind and its score.
  highdicom cannot write the Mammography CAD SR (PS3.16 TID 4000), so TID 1500 is the
  interoperable choice (and the measurement template IHE AI Results builds on).
* :func:`write_suspicion_seg` - a FRACTIONAL / PROBABILITY Segmentation (PS3.3
  A.51, C.8.20.2) of one source image, on the source's pixel grid.

Both identify the algorithm as IHE Radiology "AI Results" (AIR) asks: algorithm name,
version and a Device UID that changes with every model version (:class:`AlgorithmInfo`),
recorded in the Contributing Equipment Sequence (0018,A001) of the SOP Common module
(PS3.3 C.12.1), in the SR's device observer context (TID 1002/1004) and algorithm
identification (TID 4019), and in the SEG's Segment Sequence (PS3.3 C.8.20.2). Their
Series Description says "not for clinical use".

Coordinates
-----------
Boxes are ``(x0, y0, x1, y1)`` in stored-image pixels, x = column, y = row, half-open
(the box covers columns ``x0 .. x1 - 1``). DICOM 2D SCOORD pixel coordinates (PS3.3
C.18.6, Spatial Coordinates Macro) are ``column\\row`` with sub-pixel resolution where
the top-left corner of the top-left pixel is ``0.0\\0.0``, the centre of that pixel
``0.5\\0.5`` and the bottom-right corner of the bottom-right pixel ``Columns\\Rows``.
The half-open box ``[x0, x1) x [y0, y1)`` is therefore exactly the rectangle with
corners ``(x0, y0)`` and ``(x1, y1)`` in SCOORD: no half-pixel shift in either direction.

Codes
-----
See :data:`FINDING_CODES` and the module constants; every code is taken from
pydicom's DICOM dictionaries (``pydicom.sr.codedict.codes``).
"""

from __future__ import annotations

import datetime as _dt
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from mammotriage import __version__

__all__ = [
    "FINDING_CODES",
    "NOT_FOR_CLINICAL_USE",
    "AlgorithmInfo",
    "FindingRecord",
    "ReaderFindingRecord",
    "save_dataset",
    "write_findings_sr",
    "write_reader_findings_sr",
    "write_suspicion_seg",
]

#: Series Description (0008,103E) of every AI result object (LO, at most 64 characters).
NOT_FOR_CLINICAL_USE = "AI results - research demonstration, not for clinical use"
#: Contribution Description (0018,A003) of the algorithm's Contributing Equipment item.
CONTRIBUTION_DESCRIPTION = "AI detection, not for clinical use"
#: Namespace of the name-based UUIDs behind :attr:`AlgorithmInfo.device_uid`:
#: ``uuid5(NAMESPACE_URL, "urn:mammotriage:algorithm")``.
DEVICE_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mammotriage:algorithm")

#: Finding kind -> finding type code (TID 1410 row "Finding", (121071, DCM)).
#: All SNOMED CT. "Calcification Cluster" and "Architectural distortion of breast" are in
#: CID 6014 "Mammography Single Image Finding"; "Asymmetric breast tissue" in CID 6016
#: "Mammography Composite Feature" and CID 6054 "Breast Imaging Finding"; "Mass" (CID
#: 6014 has no mass entry) in CID 7151 "Segmentation Property Type" / CID 7159.
FINDING_CODES: dict[str, Code] = {
    "mass": codes.SCT.Mass,  # (4147007, SCT, "Mass")
    "calcification": codes.SCT.CalcificationCluster,  # (129769006, SCT, "Calcification Cluster")
    "architectural distortion": codes.SCT.ArchitecturalDistortionOfBreast,  # (129792006, SCT)
    "asymmetry": codes.SCT.AsymmetricBreastTissue,  # (129790003, SCT, "Asymmetric breast tissue")
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
#: Purpose of Reference of the algorithm's Contributing Equipment item (CID 7005):
#: (109102, DCM, "Processing Equipment") - equipment that processed existing
#: instances to create new ones. Not "Modifying Equipment" (109103, which changes an
#: existing instance) nor "Synthesizing Equipment" (109100, synthesised images).
PURPOSE_OF_REFERENCE = codes.DCM.ProcessingEquipment
#: Algorithm Family (CID 7162): (123110, DCM, "Artificial Intelligence").
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
#: Finding of the exam-level group of a report without findings: TID 1501 row
#: "Finding" (121071, DCM) = (111286, DCM, "No abnormality").
NO_FINDINGS = codes.DCM.NoAbnormality
#: Segment of the suspicion map: category (49755003, SCT, "Morphologically abnormal
#: structure", CID 7150), type (52988006, SCT, "Lesion", CID 7151 / CID 7159), in the
#: anatomic region (76752008, SCT, "Breast").
SEGMENT_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SEGMENT_TYPE = codes.SCT.Lesion
BREAST = codes.SCT.Breast
_LATERALITY_CODES: dict[str, Code] = {
    "L": codes.SCT.Left,  # (7771000, SCT)
    "R": codes.SCT.Right,  # (24028007, SCT)
    "B": codes.SCT.Bilateral,  # (51440002, SCT, "Bilateral"), CID 244
}
_PROJECTION_MODALITIES = {"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"}
#: General Equipment (PS3.3 C.7.5.1) of the objects: this workstation, which writes
#: them (the algorithm is the Contributing Equipment).
EQUIPMENT_MANUFACTURER = "Mammo Triage"
EQUIPMENT_MODEL = "Mammo Triage workstation"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identity of the AI model that produced a result.

    Attributes
    ----------
    name
        Algorithm (model) name; Manufacturer's Model Name (0008,1090) of its
        Contributing Equipment item and Algorithm Name (0066,0036).
    version
        Model version; Software Versions (0018,1020) and Algorithm Version (0066,0031).
    weights_sha256
        Hex SHA-256 of the weights file. Part of :attr:`device_uid`, so retrained
        weights under an unchanged version string still get a new Device UID.
    manufacturer
        Manufacturer (0008,0070) of the algorithm.
    """

    name: str
    version: str
    weights_sha256: str
    manufacturer: str = "Mammo Triage"

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.version.strip():
            raise ValueError("algorithm name and version must not be empty")
        for label, text in (("name", self.name), ("version", self.version),
                            ("manufacturer", self.manufacturer)):
            if len(text) > 64 or "\\" in text:
                raise ValueError(f"algorithm {label} {text!r} does not fit a DICOM LO "
                                 "(at most 64 characters, no backslash)")
        digest = self.weights_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"weights_sha256 must be 64 hex digits, got {self.weights_sha256!r}")

    @property
    def device_uid(self) -> str:
        """Device UID (0018,1002) of this model version.

        A ``2.25`` UID (PS3.5 B.2) from the name-based UUID (ISO/IEC 9834-8, version 5)
        of name, version and weights hash: deterministic, and different whenever any
        of the three changes (IHE AIR: a new Device UID per algorithm version).
        """
        key = "\x1f".join([self.name, self.version, self.weights_sha256.lower()])
        return f"2.25.{uuid.uuid5(DEVICE_UID_NAMESPACE, key).int}"


@dataclass(frozen=True)
class FindingRecord:
    """One finding of the model on one image.

    Attributes
    ----------
    sop_uid
        SOP Instance UID of the image the box refers to.
    box
        ``(x0, y0, x1, y1)`` in stored-image pixels (x = column, y = row), half-open.
    kind
        ``"mass"``, ``"calcification"``, ``"architectural distortion"`` or
        ``"asymmetry"`` (keys of :data:`FINDING_CODES`).
    score
        Model score in ``[0, 1]``, written as "Probability of cancer".
    """

    sop_uid: str
    box: tuple[float, float, float, float]
    kind: str
    score: float


# --------------------------------------------------------------------------- helpers


def _check_score(value: float, what: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}") from exc
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return score


def _laterality(ds: Dataset) -> str | None:
    """Image Laterality (0020,0062), else series Laterality (0020,0060): "L"/"R"/"B"."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in _LATERALITY_CODES:
            return value
    return None


def _breast_site(laterality: str | None) -> hd.sr.FindingSite:
    code = _LATERALITY_CODES.get(laterality or "")
    return hd.sr.FindingSite(anatomic_location=BREAST, laterality=code)


def _contributing_equipment(algorithm: AlgorithmInfo) -> hd.ContributingEquipment:
    """The algorithm's item of the Contributing Equipment Sequence (PS3.3 C.12.1.1.5)."""
    item = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PURPOSE_OF_REFERENCE,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_datetime=_dt.datetime.now().replace(microsecond=0),
        contribution_description=CONTRIBUTION_DESCRIPTION,
    )
    item.DeviceUID = algorithm.device_uid
    return item


def _finish(ds: Dataset, algorithm: AlgorithmInfo) -> None:
    """Mark an object as AI research output and identify the algorithm (IHE AIR).

    highdicom adds its own Contributing Equipment items (itself, and for a SEG the
    source's acquisition equipment); they are replaced by the algorithm's single item
    so a reader looking for the AI finds exactly one Processing Equipment entry.
    """
    ds.SeriesDescription = NOT_FOR_CLINICAL_USE
    ds.ContributingEquipmentSequence = [_contributing_equipment(algorithm)]


def _source_box(ds: Dataset, box: Sequence[float], what: str) -> np.ndarray:
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


def _library_view(ds: Dataset) -> Dataset:
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
    orientation = _patient_orientation(ds)
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


#: Type 2 Patient / General Study attributes (PS3.3 C.7.1.1, C.7.2.1) that highdicom
#: copies from the source and requires to exist (empty is allowed).
_TYPE2_HEADER = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                 "ReferringPhysicianName")


def _header_view(ds: Dataset) -> Dataset:
    """The source with absent Type 2 patient/study attributes added empty.

    A new dataset sharing the source's elements: the caller's dataset is not changed.
    """
    missing = [keyword for keyword in _TYPE2_HEADER if keyword not in ds]
    if not missing:
        return ds
    view = Dataset()
    for element in ds:
        view.add(element)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    for keyword in missing:
        setattr(view, keyword, "")
    return view


def _check_sources(sources: Sequence[Dataset]) -> dict[str, Dataset]:
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
        by_uid[uid] = _header_view(ds)
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ValueError(f"source images belong to {len(studies)} studies; an SR reports one")
    return by_uid


# --------------------------------------------------------------------------- SR


def write_findings_sr(
    sources: Sequence[Dataset],
    findings: Sequence[FindingRecord],
    algorithm: AlgorithmInfo,
    *,
    breast_scores: Mapping[str, float] | None = None,
    exam_score: float | None = None,
    series_number: int = 900,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
) -> Dataset:
    """Write the model's findings as a Comprehensive SR with a TID 1500 report.

    Parameters
    ----------
    sources
        The exam's images (pydicom datasets, pixel data not needed), all of one study.
        All are referenced: in the report's Image Library (TID 1600) and hence in the
        Current Requested Procedure Evidence Sequence (PS3.3 C.17.2).
    findings
        One TID 1410 group per finding, in order. May be empty: the report then says
        "Finding: No abnormality" (DCM 121071 = DCM 111286) in its exam-level
        TID 1501 group.
    algorithm
        The model; see :class:`AlgorithmInfo`.
    breast_scores
        Optional per-breast score, keys ``"L"``/``"R"``: one TID 1501 group each with
        Finding Site "Breast" + laterality and "Probability of cancer".
    exam_score
        Optional exam score: a TID 1501 group with Finding Site "Breast", laterality
        "Bilateral" (51440002, SCT), and "Probability of cancer".
    series_number, instance_number
        Series Number (0020,0011) and Instance Number (0020,0013).
    series_instance_uid
        Series Instance UID; a new one by default.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.ComprehensiveSR`` (SOP Class 1.2.840.10008.5.1.4.1.1.88.33):
        complete, preliminary, unverified.

    Raises
    ------
    ValueError
        For no sources, sources of several studies or duplicate images, a finding on an
        image not in ``sources``, a box that is empty or outside its image (half-open,
        within ``0..Columns`` x ``0..Rows``), an unknown kind, a score outside [0, 1],
        or a breast key other than ``"L"``/``"R"``.

    Notes
    -----
    Content (PS3.16 TID 1500): observer context = device (TID 1004: Device Observer UID
    = :attr:`AlgorithmInfo.device_uid`, Name = algorithm name, Manufacturer, Model Name
    = version); Procedure Reported = (71651007, SCT, "Mammography"). Each finding group
    (TID 1410) holds a Tracking Identifier and Tracking Unique Identifier (TID 4108),
    Finding (:data:`FINDING_CODES`), Finding Category "Morphologically abnormal
    structure", Algorithm Identification (TID 4019: name, version, family "Artificial
    Intelligence", manufacturer, parameter ``weights_sha256=<hex>``), Finding Site
    Breast with the image's laterality, an Image Region SCOORD POLYLINE (closed
    rectangle, PS3.3 C.18.6; see the module docstring for the coordinate
    convention) whose Source Image For Region is the image, and the score as NUM
    (111047, DCM, "Probability of cancer") in UCUM "1".
    """
    by_uid = _check_sources(sources)
    sources = list(by_uid.values())  # with empty Type 2 patient/study attributes added
    algo_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"weights_sha256={algorithm.weights_sha256.lower()}"],
        family=ALGORITHM_FAMILY,
        manufacturer=algorithm.manufacturer,
    )

    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for index, finding in enumerate(findings, 1):
        what = f"finding {index}"
        source = by_uid.get(str(finding.sop_uid))
        if source is None:
            raise ValueError(f"{what} refers to image {finding.sop_uid}, which is not a source")
        code = FINDING_CODES.get(finding.kind)
        if code is None:
            raise ValueError(f"{what}: unknown kind {finding.kind!r}; "
                             f"expected one of {sorted(FINDING_CODES)}")
        score = _check_score(finding.score, f"{what} score")
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_source_box(source, finding.box, what),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"Finding {index}"
                ),
                referenced_region=region,
                finding_type=code,
                finding_category=FINDING_CATEGORY,
                algorithm_id=algo_id,
                finding_sites=[_breast_site(_laterality(source))],
                measurements=[hd.sr.Measurement(name=SCORE_CONCEPT, value=score, unit=SCORE_UNIT)],
            )
        )

    for side, value in sorted((breast_scores or {}).items()):
        key = str(getattr(side, "value", side)).upper()
        if key not in ("L", "R"):
            raise ValueError(f"breast_scores keys must be 'L' or 'R', got {side!r}")
        score = _check_score(value, f"breast score {key}")
        images = [
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
            for ds in sources if _laterality(ds) == key
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{'Left' if key == 'L' else 'Right'} breast"
                ),
                algorithm_id=algo_id,
                finding_sites=[_breast_site(key)],
                measurements=[hd.sr.Measurement(name=SCORE_CONCEPT, value=score, unit=SCORE_UNIT)],
                source_images=images or None,
            )
        )

    if exam_score is not None or not findings:
        measurements = None
        if exam_score is not None:
            measurements = [hd.sr.Measurement(
                name=SCORE_CONCEPT, value=_check_score(exam_score, "exam score"), unit=SCORE_UNIT
            )]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Exam"),
                finding_type=None if findings else NO_FINDINGS,
                algorithm_id=algo_id,
                finding_sites=[_breast_site("B")],
                measurements=measurements,
            )
        )

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_uid,
            name=algorithm.name,
            manufacturer_name=algorithm.manufacturer,
            model_name=algorithm.version,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=[_library_view(ds) for ds in sources],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=sources,
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=EQUIPMENT_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        manufacturer_model_name=EQUIPMENT_MODEL,
        software_versions=f"mammotriage {__version__}",
        series_description=NOT_FOR_CLINICAL_USE,
    )
    _finish(sr, algorithm)
    return sr


# --------------------------------------------------------------------------- reader SR

#: Series Description (0008,103E) of a reader findings SR written for a research dataset.
READER_FINDINGS_DESCRIPTION = "Reader findings - research dataset, not for clinical use"
#: Namespace of the Device Observer UID of reader findings reports (TID 1004).
_READER_DEVICE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mammotriage:reader-findings")


@dataclass(frozen=True)
class ReaderFindingRecord:
    """One reader (or consensus) finding on one image, for :func:`write_reader_findings_sr`.

    Attributes
    ----------
    sop_uid
        SOP Instance UID of the image the geometry refers to.
    kind
        A key of :data:`FINDING_CODES`.
    geometry
        Stored-image pixel coordinates (x = column, y = row), as correction events
        store them: ``{"type": "box" | "ellipse", "box": [x0, y0, x1, y1]}`` (half-open
        box; an ellipse is inscribed in its box) or ``{"type": "polygon",
        "points": [[x, y], ...]}``.
    identifier
        Tracking Identifier (LO) of the finding, e.g. its label id; ``Finding n`` when
        empty.
    """

    sop_uid: str
    kind: str
    geometry: Mapping[str, object]
    identifier: str = ""


def _region_of(ds: Dataset, geometry: Mapping[str, Any], what: str) -> hd.sr.ImageRegion:
    """SCOORD of a reader geometry (PS3.3 C.18.6): box -> closed POLYLINE rectangle,
    ellipse -> ELLIPSE (major axis end points, then minor axis end points),
    polygon -> closed POLYLINE."""
    source_image = hd.sr.SourceImageForRegion.from_source_image(ds)
    kind = geometry.get("type")
    if kind in ("box", "ellipse"):
        box = [float(v) for v in geometry.get("box", [])]
        rect = _source_box(ds, box, what)
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
        points = [[float(x), float(y)] for x, y in geometry.get("points", [])]
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


def write_reader_findings_sr(
    sources: Sequence[Dataset],
    findings: Sequence[ReaderFindingRecord],
    *,
    observer_name: str = "Mammo Triage dataset export",
    series_description: str = READER_FINDINGS_DESCRIPTION,
    series_number: int = 910,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    evaluations: Mapping[str, Sequence[tuple[Code, Code]]] | None = None,
) -> Dataset:
    """Write reader (or consensus) findings as a Comprehensive SR with a TID 1500 report.

    The human counterpart of :func:`write_findings_sr`: no algorithm identification and
    no score. Used for the "final" labels of a research dataset export.

    Parameters
    ----------
    sources
        The images the findings refer to (pydicom datasets, pixel data not needed), all
        of one study; all are referenced in the Image Library (TID 1600).
    findings
        One TID 1410 group per finding, in order. Empty: one TID 1501 group per
        source image with "Finding: No abnormality" (DCM 121071 = DCM 111286).
    observer_name
        Device Observer Name (TID 1004) of the system that recorded the findings; the
        Device Observer UID is derived from it.
    series_description
        Series Description (0008,103E), at most 64 characters.
    series_number, instance_number, series_instance_uid
        As for :func:`write_findings_sr`.
    evaluations
        Qualitative evaluations (concept name, coded value) per breast (``"R"``,
        ``"L"``) or for both (``"B"``), e.g. the signed BI-RADS assessment category and
        breast composition: one TID 1501 group per key with the breast as finding site
        and that breast's images as source images.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.sr.ComprehensiveSR``: complete, preliminary, unverified.

    Raises
    ------
    ValueError
        Like :func:`write_findings_sr`, and for an unknown geometry type, or a polygon
        with fewer than 3 points or points outside its image.

    Notes
    -----
    Each finding group (TID 1410) holds a Tracking Identifier and Tracking Unique
    Identifier, Finding (:data:`FINDING_CODES`), Finding Category "Morphologically
    abnormal structure", Finding Site Breast with the image's laterality and the Image
    Region: a closed POLYLINE rectangle for a box (see the module docstring for the
    coordinate convention), an ELLIPSE (PS3.3 C.18.6.1.2: first the two end points of
    the major axis, then those of the minor axis) for an ellipse inscribed in its box,
    and a closed POLYLINE for a polygon.
    """
    if len(series_description) > 64:
        raise ValueError("series_description must be at most 64 characters (LO)")
    by_uid = _check_sources(sources)
    sources = list(by_uid.values())
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for index, finding in enumerate(findings, 1):
        what = f"finding {index}"
        source = by_uid.get(str(finding.sop_uid))
        if source is None:
            raise ValueError(f"{what} refers to image {finding.sop_uid}, which is not a source")
        code = FINDING_CODES.get(finding.kind)
        if code is None:
            raise ValueError(f"{what}: unknown kind {finding.kind!r}; "
                             f"expected one of {sorted(FINDING_CODES)}")
        identifier = (finding.identifier or f"Finding {index}")[:64]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
                referenced_region=_region_of(source, finding.geometry, what),
                finding_type=code,
                finding_category=FINDING_CATEGORY,
                finding_sites=[_breast_site(_laterality(source))],
            )
        )
    for side, pairs in sorted((evaluations or {}).items()):
        if side not in ("R", "L", "B"):
            raise ValueError(f"evaluations keys must be 'R', 'L' or 'B', got {side!r}")
        images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                  for ds in sources if side == "B" or _laterality(ds) == side]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier={"R": "Right breast", "L": "Left breast"}.get(side, "Exam")),
                finding_sites=[_breast_site(side)],
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=name, value=value)
                                         for name, value in pairs],
                source_images=images or None,
            )
        )
    if not findings:
        for number, ds in enumerate(sources, 1):
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                                 identifier=f"Image {number}"),
                    finding_type=NO_FINDINGS,
                    finding_sites=[_breast_site(_laterality(ds))],
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
                )
            )
    device_uid = f"2.25.{uuid.uuid5(_READER_DEVICE_NAMESPACE, observer_name).int}"
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=observer_name[:64], manufacturer_name=EQUIPMENT_MANUFACTURER,
            model_name=EQUIPMENT_MODEL,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=[_library_view(ds) for ds in sources],
    )
    return hd.sr.ComprehensiveSR(
        evidence=sources,
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=EQUIPMENT_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        manufacturer_model_name=EQUIPMENT_MODEL,
        software_versions=f"mammotriage {__version__}",
        series_description=series_description,
    )


# --------------------------------------------------------------------------- SEG


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


def _patient_orientation(source: Dataset) -> list[str] | str:
    """Patient Orientation (0020,0020) of the source when valid (PS3.3 C.7.6.1.1.1),
    else empty (Type 2C, required for a SEG without plane orientation)."""
    value = source.get("PatientOrientation")
    if value is None or value == "":
        values: list[str] = []
    elif isinstance(value, str):
        values = [value]
    else:
        values = [str(v) for v in value]
    if len(values) == 2 and all(v and set(str(v)) <= set("APRLHF") for v in values):
        return [str(v) for v in values]
    return ""


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
    transfer_syntax_uid: str = "1.2.840.10008.1.2.1",
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

    source = _header_view(source)
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
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=EQUIPMENT_MANUFACTURER,
        manufacturer_model_name=EQUIPMENT_MODEL,
        software_versions=f"mammotriage {__version__}",
        device_serial_number="0",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="SUSPICION",
        content_description="AI suspicion map, not for clinical use",
        omit_empty_frames=False,
        series_description=NOT_FOR_CLINICAL_USE,
        transfer_syntax_uid=transfer_syntax_uid,
    )
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = _patient_orientation(source)
    _finish(seg, algorithm)
    return seg


# --------------------------------------------------------------------------- files


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (PS3.10 7.1: preamble, ``DICM``, file meta).

    Parameters
    ----------
    ds
        A dataset with ``file_meta`` or at least SOP Class/Instance UIDs (highdicom
        objects have both).
    path
        Destination; parent folders are created.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path

