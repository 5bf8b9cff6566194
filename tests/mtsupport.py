"""Helpers shared by tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import hashlib
import json
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
    from pydicom.uid import (
        DigitalMammographyXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    sop_class = DigitalMammographyXRayImageStorageForPresentation
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


def _monitor_exam(folder, patient, uid, manufacturer, model):
    for lat in "RL":
        ds = make_mg_dataset(laterality=lat, view="CC", study_uid=uid, patient_id=patient)
        ds.Manufacturer, ds.ManufacturerModelName = manufacturer, model
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{patient}{lat}.dcm", enforce_file_format=True)


def monitor_archive(tmp_path):
    """A real archive with two scanners' exams triaged by "v1" and reader feedback on the
    Hologic exam, whose images are much brighter than the training reference."""
    from mammotriage.store import Archive
    from mammotriage.store.events import CorrectionLog
    from mammotriage.triage import TriageQueue

    _monitor_exam(tmp_path / "a", "P1", "1.2.1", "Mammo Triage phantom", "synthetic")
    _monitor_exam(tmp_path / "b", "P2", "1.2.2", "HOLOGIC, Inc.", "Selenia Dimensions")
    archive = Archive(tmp_path / "archive.sqlite")
    archive.import_paths([tmp_path / "a", tmp_path / "b"])
    queue = TriageQueue(archive.path)
    queue.sync("v1")
    brightness = {"1.2.1": 120.0, "1.2.2": 200.0}  # the new scanner's images are much brighter
    while (job := queue.claim_next("v1")) is not None:
        exam = archive.exam(job.exam_key)
        images = [{"sop_uid": i.sop_uid, "laterality": i.laterality.value, "score": 0.7 if job.exam_key == "1.2.2" else 0.1,
                   "findings": [{"box": [1, 1, 5, 5], "kind": "mass", "score": 0.7}],
                   "stats": {"mean": brightness[job.exam_key], "std": 20.0, "p05": 80.0, "p95": 230.0,
                             "breast_frac": 0.4}} for i in exam.images]
        queue.complete(job, "aa" * 32, images)
    sop = archive.exam("1.2.2").images[0].sop_uid
    with CorrectionLog(archive.path) as log:
        for action in ("reject", "accept"):
            log.append(reader="dr", exam_key="1.2.2", action=action, sop_uid=sop, pixel_sha256="bb" * 32,
                       model_version="v1", target="ai:v1:x:0")
        log.append(reader="dr", exam_key="1.2.2", action="add", sop_uid=sop, pixel_sha256="bb" * 32,
                   model_version="v1", kind="mass", geometry={"type": "box", "box": [1, 1, 9, 9]})
    return archive


def mouse(widget, kind, pos, button, buttons) -> None:
    """Send one real mouse event to a Qt widget (``kind`` a QEvent.Type)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    event = QMouseEvent(kind, pos, widget.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def mouse_drag(widget, a, b) -> None:
    """Left-button drag from ``a`` to ``b`` (QPointF, widget coordinates)."""
    from PySide6.QtCore import QEvent, Qt

    left = Qt.MouseButton.LeftButton
    mouse(widget, QEvent.Type.MouseButtonPress, a, left, left)
    mouse(widget, QEvent.Type.MouseMove, (a + b) / 2, Qt.MouseButton.NoButton, left)
    mouse(widget, QEvent.Type.MouseMove, b, Qt.MouseButton.NoButton, left)
    mouse(widget, QEvent.Type.MouseButtonRelease, b, left, Qt.MouseButton.NoButton)


class EventLoopGaps:
    """Context manager: a 5 ms Qt timer recording the gaps between its ticks (how long
    the event loop was blocked); ``max_ms`` after the block."""

    def __enter__(self) -> EventLoopGaps:
        import time

        from PySide6.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = time.perf_counter()

        def tick() -> None:
            now = time.perf_counter()
            self.gaps.append(now - self._last)
            self._last = now

        self._timer = QTimer()
        self._timer.setInterval(5)
        self._timer.timeout.connect(tick)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.stop()

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.gaps, default=0.0)


def minimal_package(root: Path, version: str, weights: bytes, parent: str | None = None) -> Path:
    """A minimal verified package layout (metadata + weights with their sha256)."""

    folder = root / version
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "model.safetensors").write_bytes(weights)
    meta = {"version": version, "weights_sha256": hashlib.sha256(weights).hexdigest(), "parent_version": parent}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    return folder


def tiny_exam_archive(folder: Path, n: int, version: str = "v-1") -> Path:
    """An archive of ``n`` one-view 8 x 8 exams (every fifth patient has an earlier exam),
    two thirds of them analysed by ``version`` (scores at random): its file."""
    import datetime as _dt
    import random

    from mammotriage.store import Archive
    from mammotriage.triage import TriageQueue

    ds = make_mg_dataset(rows=8, columns=8, laterality="R", orientation=("P", "L"))
    rng = random.Random(7)
    (folder / "in").mkdir(parents=True)
    for n_exam in range(n):
        patient = n_exam if n_exam % 5 else n_exam // 5
        ds.PatientID, ds.PatientName = f"P{patient:05d}", f"PAGE^{patient:05d}"
        ds.AccessionNumber = f"A{n_exam:06d}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.998.{n_exam}"
        ds.SeriesInstanceUID = ds.StudyInstanceUID + ".1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.StudyInstanceUID + ".1.1"
        ds.StudyDate = (_dt.date(2018, 1, 1) + _dt.timedelta(days=rng.randrange(2000))).strftime("%Y%m%d")
        ds.save_as(folder / "in" / f"{n_exam:05d}.dcm", enforce_file_format=True)
    archive_file = folder / "archive.sqlite"
    with Archive(archive_file) as archive:
        report = archive.import_paths([folder / "in"])
        assert not report.rejected, report.rejected[:3]
        exams = {e.exam_key: e for e in archive.exams()}
    with TriageQueue(archive_file) as queue:
        queue.sync(version)
        for _ in range(n * 2 // 3):
            job = queue.claim_next(version)
            image = exams[job.exam_key].images[0]
            queue.complete(job, "ab" * 32, [{"sop_uid": image.sop_uid, "laterality": "R",
                                             "score": rng.random() ** 2, "findings": []}])
    return archive_file


#: The UI fixtures' own model: results written for it have no package.
FIXTURE_MODEL = "v-test"


def reading_window(qtbot, archive, *, reader: str | None = None, candidate_point: float | None = None):
    """A main window on ``archive`` (results of :data:`FIXTURE_MODEL` in its queue), shown
    at 1400x1000 with the first exam's panes loaded; overlays are the caller's to load.

    The window is pinned to the fixture's model with its own worklist thresholds (not the
    shipped model's), so the registry's active model never replaces it, however long a
    test takes."""
    from mammotriage.triage import OperatingPoints
    from mammotriage.ui.main_window import MainWindow

    win = MainWindow(archive=archive, start_triage=False)
    win.pin_model(FIXTURE_MODEL, points=OperatingPoints(0.5, 0.1, "test fixture"))
    win.hanging.state.mark_threshold = 0.5
    if candidate_point is not None:
        win.hanging.state.candidate_point = candidate_point
    qtbot.addWidget(win)
    win.resize(1400, 1000)
    win.show()
    if reader is not None:
        win.sign_in(reader)
    win.refresh_worklist()
    qtbot.waitUntil(lambda: all(p.view is not None for p in win.hanging.panes.values()), timeout=60_000)
    return win
