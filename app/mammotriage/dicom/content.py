"""Building blocks shared by the AI result objects (the SR in :mod:`mammotriage.dicom.sr`,
the SEG in :mod:`mammotriage.dicom.seg`), as highdicom keeps its shared content in
``highdicom.content``: the algorithm's identity (IHE Radiology "AI Results"), the
Contributing Equipment item and research marking, the workstation as General
Equipment, the source header view and writing a Part 10 file.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from mammotriage import __version__

__all__ = [
    "ALGORITHM_FAMILY", "BREAST", "CONTRIBUTION_DESCRIPTION", "DEVICE_UID_NAMESPACE", "EQUIPMENT_MANUFACTURER",
    "EQUIPMENT_MODEL", "NOT_FOR_CLINICAL_USE", "PURPOSE_OF_REFERENCE", "AlgorithmInfo", "contributing_equipment",
    "finish", "header_view", "new_instance", "patient_orientation", "save_dataset",
]

#: Series Description (0008,103E) of every AI result object (LO, at most 64 characters).
NOT_FOR_CLINICAL_USE = "AI results - research demonstration, not for clinical use"
#: Contribution Description (0018,A003) of the algorithm's Contributing Equipment item.
CONTRIBUTION_DESCRIPTION = "AI detection, not for clinical use"
#: Namespace of the name-based UUIDs behind :attr:`AlgorithmInfo.device_uid`:
#: ``uuid5(NAMESPACE_URL, "urn:mammotriage:algorithm")``.
DEVICE_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mammotriage:algorithm")
#: Purpose of Reference of the algorithm's Contributing Equipment item (CID 7005):
#: (109102, DCM, "Processing Equipment") - equipment that processed existing
#: instances to create new ones. Not "Modifying Equipment" (109103, which changes an
#: existing instance) nor "Synthesizing Equipment" (109100, synthesised images).
PURPOSE_OF_REFERENCE = codes.DCM.ProcessingEquipment
#: Algorithm Family (CID 7162): (123110, DCM, "Artificial Intelligence").
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence
#: Anatomic region of every finding site and segment: (76752008, SCT, "Breast").
BREAST = codes.SCT.Breast
#: General Equipment (PS3.3 C.7.5.1) of the objects: this workstation, which writes
#: them (the algorithm is the Contributing Equipment).
EQUIPMENT_MANUFACTURER = "Mammo Triage"
EQUIPMENT_MODEL = "Mammo Triage workstation"


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


def new_instance(series_instance_uid: str | None, series_number: int, instance_number: int) -> dict[str, Any]:
    """highdicom's series, instance and General Equipment arguments (PS3.3 C.7.5.1) of a
    new result object written by this workstation (a new series UID when none is given)."""
    return {
        "series_instance_uid": series_instance_uid or hd.UID(),
        "series_number": series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": instance_number,
        "manufacturer": EQUIPMENT_MANUFACTURER,
        "manufacturer_model_name": EQUIPMENT_MODEL,
        "software_versions": f"mammotriage {__version__}",
    }


def contributing_equipment(algorithm: AlgorithmInfo) -> hd.ContributingEquipment:
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


def finish(ds: Dataset, algorithm: AlgorithmInfo) -> None:
    """Mark an object as AI research output and identify the algorithm (IHE AIR).

    highdicom adds its own Contributing Equipment items (itself, and for a SEG the
    source's acquisition equipment); they are replaced by the algorithm's single item
    so a reader looking for the AI finds exactly one Processing Equipment entry.
    """
    ds.SeriesDescription = NOT_FOR_CLINICAL_USE
    ds.ContributingEquipmentSequence = [contributing_equipment(algorithm)]


#: Type 2 Patient / General Study attributes (PS3.3 C.7.1.1, C.7.2.1) that highdicom
#: copies from the source and requires to exist (empty is allowed).
_TYPE2_HEADER = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                 "ReferringPhysicianName")


def header_view(ds: Dataset) -> Dataset:
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


def patient_orientation(source: Dataset) -> list[str] | str:
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
