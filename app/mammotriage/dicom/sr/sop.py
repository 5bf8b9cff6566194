"""The SR objects: the model's findings and the reader's findings, each a Comprehensive
SR with a TID 1500 "Measurement Report" (highdicom's ``sr/sop.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from mammotriage.dicom.content import (
    ALGORITHM_FAMILY,
    EQUIPMENT_MANUFACTURER,
    EQUIPMENT_MODEL,
    NOT_FOR_CLINICAL_USE,
    AlgorithmInfo,
    finish,
)
from mammotriage.dicom.sr.content import (
    NO_FINDINGS,
    SCORE_CONCEPT,
    SCORE_UNIT,
    ReportGroup,
    breast_site,
    check_score,
    check_sources,
    comprehensive_sr,
    device_observer,
    finding_group,
    finding_source,
    laterality,
    region_of,
    source_box,
)

__all__ = [
    "READER_FINDINGS_DESCRIPTION", "FindingRecord", "ReaderFindingRecord", "write_findings_sr",
    "write_reader_findings_sr",
]

#: Series Description (0008,103E) of a reader findings SR written for a research dataset.
READER_FINDINGS_DESCRIPTION = "Reader findings - research dataset, not for clinical use"
#: Namespace of the Device Observer UID of reader findings reports (TID 1004).
_READER_DEVICE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mammotriage:reader-findings")


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
        A :class:`~mammotriage.dicom.vocab.FindingKind` value (a key of
        :data:`~mammotriage.dicom.sr.content.FINDING_CODES`).
    score
        Model score in ``[0, 1]``, written as "Probability of cancer".
    """

    sop_uid: str
    box: tuple[float, float, float, float]
    kind: str
    score: float


@dataclass(frozen=True)
class ReaderFindingRecord:
    """One reader (or consensus) finding on one image, for :func:`write_reader_findings_sr`.

    ``sop_uid`` and ``kind`` are those of :class:`FindingRecord` (the image the
    geometry refers to; a finding kind). Then:

    Attributes
    ----------
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
    by_uid = check_sources(sources)
    sources = list(by_uid.values())  # with empty Type 2 patient/study attributes added
    algo_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"weights_sha256={algorithm.weights_sha256.lower()}"],
        family=ALGORITHM_FAMILY,
        manufacturer=algorithm.manufacturer,
    )

    groups: list[ReportGroup] = []
    for index, finding in enumerate(findings, 1):
        what = f"finding {index}"
        source, code = finding_source(by_uid, finding.sop_uid, finding.kind, what)
        score = check_score(finding.score, f"{what} score")
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=source_box(source, finding.box, what),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(finding_group(
            source, code, region, f"Finding {index}", algorithm_id=algo_id,
            measurements=[hd.sr.Measurement(name=SCORE_CONCEPT, value=score, unit=SCORE_UNIT)],
        ))

    for side, value in sorted((breast_scores or {}).items()):
        key = str(getattr(side, "value", side)).upper()
        if key not in ("L", "R"):
            raise ValueError(f"breast_scores keys must be 'L' or 'R', got {side!r}")
        score = check_score(value, f"breast score {key}")
        images = [
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
            for ds in sources if laterality(ds) == key
        ]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{'Left' if key == 'L' else 'Right'} breast"
                ),
                algorithm_id=algo_id,
                finding_sites=[breast_site(key)],
                measurements=[hd.sr.Measurement(name=SCORE_CONCEPT, value=score, unit=SCORE_UNIT)],
                source_images=images or None,
            )
        )

    if exam_score is not None or not findings:
        measurements = None
        if exam_score is not None:
            measurements = [hd.sr.Measurement(
                name=SCORE_CONCEPT, value=check_score(exam_score, "exam score"), unit=SCORE_UNIT
            )]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Exam"),
                finding_type=None if findings else NO_FINDINGS,
                algorithm_id=algo_id,
                finding_sites=[breast_site("B")],
                measurements=measurements,
            )
        )

    observer = device_observer(algorithm.device_uid, algorithm.name, algorithm.manufacturer, algorithm.version)
    sr = comprehensive_sr(sources, groups, observer, series_instance_uid=series_instance_uid,
                          series_number=series_number, instance_number=instance_number,
                          series_description=NOT_FOR_CLINICAL_USE)
    finish(sr, algorithm)
    return sr


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
    by_uid = check_sources(sources)
    sources = list(by_uid.values())
    groups: list[ReportGroup] = []
    for index, finding in enumerate(findings, 1):
        what = f"finding {index}"
        source, code = finding_source(by_uid, finding.sop_uid, finding.kind, what)
        identifier = (finding.identifier or f"Finding {index}")[:64]
        groups.append(finding_group(source, code, region_of(source, finding.geometry, what), identifier))
    for side, pairs in sorted((evaluations or {}).items()):
        if side not in ("R", "L", "B"):
            raise ValueError(f"evaluations keys must be 'R', 'L' or 'B', got {side!r}")
        images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                  for ds in sources if side == "B" or laterality(ds) == side]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier={"R": "Right breast", "L": "Left breast"}.get(side, "Exam")),
                finding_sites=[breast_site(side)],
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
                    finding_sites=[breast_site(laterality(ds))],
                    source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
                )
            )
    device_uid = f"2.25.{uuid.uuid5(_READER_DEVICE_NAMESPACE, observer_name).int}"
    observer = device_observer(device_uid, observer_name[:64], EQUIPMENT_MANUFACTURER, EQUIPMENT_MODEL)
    return comprehensive_sr(sources, groups, observer, series_instance_uid=series_instance_uid,
                            series_number=series_number, instance_number=instance_number,
                            series_description=series_description)
