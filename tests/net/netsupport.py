"""Helpers for the network tests: dcmtk peers on loopback, bounded waits, SR files.

Every peer listens on 127.0.0.1 only, on a port chosen free by the kernel; every wait
is bounded.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mtsupport import require_tool

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` different TCP ports that were free on 127.0.0.1 a moment ago."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def require_postgres() -> None:
    """Skip without the PostgreSQL server binaries (fail under CI=true, which installs them)."""
    import os

    import pytest

    from mammotriage.store.pg.cluster import PgMissingError, find_bindir

    try:
        find_bindir()
    except PgMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI must install the Debian package postgresql)")
        pytest.skip(str(exc))


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


def echo_ok(port: int, calling: str = "PROBE", called: str = "ANY-SCP") -> bool:
    """True when ``echoscu`` gets a C-ECHO answer from 127.0.0.1:port."""
    r = subprocess.run(
        ["echoscu", "-to", "2", "-ta", "2", "-aet", calling, "-aec", called, LOOPBACK, str(port)],
        capture_output=True, text=True, timeout=20,
    )
    return r.returncode == 0


def storescu(port: int, files: list[Path], *, calling: str = "STORESCU", called: str = "MAMMOTRIAGE",
             extra: tuple[str, ...] = (), timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's ``storescu`` against 127.0.0.1:port (verbose, no halt on a failed store)."""
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, "-v", "-nh", "-aet", calling, "-aec", called, *extra, LOOPBACK, str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=timeout,
    )


@dataclass
class Storescp:
    """A running dcmtk ``storescp`` acting as the PACS."""

    port: int
    folder: Path
    ae_title: str
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def start(self) -> None:
        exe = require_tool("storescp")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "+xa", "-aet", self.ae_title, "-od", str(self.folder), *self.extra, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_until(lambda: self.proc.poll() is not None or echo_ok(self.port, called=self.ae_title),
                          timeout=15, interval=0.2) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"storescp did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def received_sop_uids(self) -> set[str]:
        """SOP Instance UIDs of the files storescp wrote (its names are MODALITY.SOPUID)."""
        import pydicom

        uids = set()
        for path in self.folder.iterdir():
            if path.is_file():
                uids.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        return uids



def make_sr(path: Path, study_uid: str | None = None, sop_uid: str | None = None) -> Path:
    """A minimal Comprehensive SR file (stands in for the AI result objects)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "PHANTOM"
    ds.PatientName = "PHANTOM^SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
