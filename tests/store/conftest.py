"""Fixtures for the archive tests: tiny synthetic DICOM files written with pydicom."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

MG_FOR_PRESENTATION = DigitalMammographyXRayImageStorageForPresentation
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

# CID 4014 view codes (SNOMED CT).
_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
    "LM": ("399352003", "latero-medial"),
}
# (row direction, column direction) for the stored image, per PS3.3 C.8.11.7 conventions.
_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "F"],
    ("R", "MLO"): ["P", "F"],
    ("L", "ML"): ["A", "F"],
    ("R", "ML"): ["P", "F"],
    ("L", "LM"): ["A", "F"],
    ("R", "LM"): ["P", "F"],
}


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _common(
    ds: Dataset,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    study_date: str,
    accession: str,
) -> None:
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "TestVendor"
    ds.ManufacturerModelName = "Synthetic"


def write_mg(
    path: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    laterality: str = "L",
    view: str = "CC",
    patient_id: str = "PAT001",
    study_date: str = "20240115",
    accession: str = "ACC001",
    rows: int = 64,
    columns: int = 48,
    seed: int = 0,
) -> Path:
    """Write a tiny 16-bit MONOCHROME2 Digital Mammography For Presentation file.

    ``seed`` changes the pixel values (same UIDs, different content).
    Returns ``path`` (parents created).
    """
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(MG_FOR_PRESENTATION, sop_uid)
    ds.SOPClassUID = MG_FOR_PRESENTATION
    _common(
        ds,
        patient_id=patient_id,
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        sop_uid=sop_uid,
        study_date=study_date,
        accession=accession,
    )
    ds.Modality = "MG"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    code, meaning = _VIEW_CODES[view]
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    item.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [item]
    ds.PatientOrientation = _ORIENTATION[(laterality, view)]
    ds.ContentDate = study_date
    ds.ContentTime = "101500"
    ds.AcquisitionDate = study_date
    ds.SeriesDescription = f"{laterality}{view}"
    ds.StudyDescription = "Screening mammography"
    ds.BreastImplantPresent = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.VOILUTFunction = "LINEAR"
    ds.PresentationLUTShape = "IDENTITY"
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_chest_cr(path: Path) -> Path:
    """Write a small chest CR image (a valid image, but not of the breast)."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(CR_IMAGE, sop_uid)
    ds.SOPClassUID = CR_IMAGE
    _common(
        ds,
        patient_id="CHEST01",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_uid=sop_uid,
        study_date="20240115",
        accession="ACC-CXR",
    )
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 32
    ds.Columns = 32
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelData = np.full((32, 32), 1000, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_sr(path: Path) -> Path:
    """Write a Basic Text SR (a valid DICOM object holding no image)."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(BASIC_TEXT_SR, sop_uid)
    ds.SOPClassUID = BASIC_TEXT_SR
    _common(
        ds,
        patient_id="PAT001",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_uid=sop_uid,
        study_date="20240115",
        accession="ACC001",
    )
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = [concept]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicomdir(path: Path) -> Path:
    """Write a minimal file named DICOMDIR (Media Storage Directory Storage)."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta("1.2.840.10008.1.3.10", sop_uid)
    ds.FileSetID = "TEST"
    ds.DirectoryRecordSequence = []
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_exam(
    folder: Path,
    *,
    patient_id: str = "PAT001",
    study_date: str = "20240115",
    accession: str = "ACC001",
    seed: int = 0,
) -> dict[str, Path]:
    """Write a four-view screening exam (one study, one series) into ``folder``.

    Returns ``{"RCC": path, "LCC": path, "RMLO": path, "LMLO": path}``.
    """
    study_uid, series_uid = generate_uid(), generate_uid()
    out: dict[str, Path] = {}
    for i, (lat, view) in enumerate([("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]):
        out[f"{lat}{view}"] = write_mg(
            folder / f"{lat}{view}.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            laterality=lat,
            view=view,
            patient_id=patient_id,
            study_date=study_date,
            accession=accession,
            seed=seed + i,
        )
    return out


class DicomFactory:
    """Writers for synthetic test files, handed to tests by the ``dicom`` fixture.

    (Test modules cannot reliably ``import conftest``; a fixture avoids that.)
    """

    mg = staticmethod(write_mg)
    exam = staticmethod(write_exam)
    chest_cr = staticmethod(write_chest_cr)
    sr = staticmethod(write_sr)
    dicomdir = staticmethod(write_dicomdir)


@pytest.fixture
def dicom() -> DicomFactory:
    """Factory writing synthetic DICOM files (see :class:`DicomFactory`)."""
    return DicomFactory()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point MAMMOTRIAGE_HOME at a temporary folder so no test touches the real archive."""
    home = tmp_path / "mt-home"
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    yield home


@pytest.fixture
def archive_file(tmp_path: Path) -> Path:
    """Path of a fresh archive database in the test's temporary folder."""
    return tmp_path / "db" / "archive.sqlite"
