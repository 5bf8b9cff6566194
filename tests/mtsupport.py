"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
DICOM_DATA = SHARED_DATA / "dicom"
MIAS_DATA = SHARED_DATA / "mias"


def require_shared(*parts: str) -> Path:
    """Path under ../shared/data, or skip (fail in CI, where it must be present)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"real data {path} missing in CI")
        pytest.skip(f"real data {path} not present on this machine")
    return path


def require_tool(name: str) -> str:
    """Absolute path of an external tool, or skip (fail in CI, where .ci/run installs it)."""
    exe = shutil.which(name)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} not installed (apt-get install dicom3tools dcmtk)")
    return exe


def make_mg_dataset(
    rows: int = 64,
    columns: int = 48,
    laterality: str = "L",
    view: str = "CC",
    photometric: str = "MONOCHROME2",
    orientation: tuple[str, str] | None = ("A", "R"),
    pixels=None,
    study_uid: str | None = None,
    patient_id: str = "TEST001",
    windows: list[tuple[float, float, str]] | None = None,
):
    """A small, valid Digital Mammography For Presentation dataset for unit tests."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.2"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "TEST^PATIENT"
    ds.StudyDate = "20260101"
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    if orientation is not None:
        ds.PatientOrientation = list(orientation)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.1, 0.1]
    if windows:
        ds.WindowCenter = [w[0] for w in windows]
        ds.WindowWidth = [w[1] for w in windows]
        ds.WindowCenterWidthExplanation = [w[2] for w in windows]
    if pixels is None:
        pixels = (np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) % 4096)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def write_mg(path: Path, **kwargs) -> Path:
    """Write :func:`make_mg_dataset` to ``path`` and return it."""
    ds = make_mg_dataset(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
