"""The DICOM node against Debian's dcmtk as the real peer (loopback only)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from netsupport import LOOPBACK, echo_ok, storescu, wait_until

from mammotriage.net.node import StorageNode
from mammotriage.net.receive import ReceiveResult
from mammotriage.net.settings import NetworkSettings
from mammotriage.store.archive import Archive
from mtsupport import require_shared, require_tool


@dataclass
class Running:
    node: StorageNode
    archive: Archive
    completed: list[str] = field(default_factory=list)
    results: list[ReceiveResult] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.node.address[1]

    def wait_complete(self, studies: set[str], timeout: float = 20.0) -> bool:
        return wait_until(lambda: studies <= set(self.completed), timeout=timeout)


@pytest.fixture
def run_node() -> Iterator:
    started: list[Running] = []

    def start(**overrides) -> Running:
        settings = NetworkSettings(port=0, quiet_period_s=0.5, **overrides)
        archive = Archive()
        running = Running(node=StorageNode(settings, archive), archive=archive)
        running.node.tracker.add_callback(running.completed.append)
        running.node.on_received = running.results.append
        running.node.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.node.stop()
        running.archive.close()


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _same_pixels_and_syntax(sent: Path, stored: str) -> None:
    a = pydicom.dcmread(sent)
    b = pydicom.dcmread(stored)
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID
    assert b.PixelData == a.PixelData  # stored as received: no transcoding


@pytest.mark.parametrize(
    ("kind", "propose", "syntax"),
    [
        ("jpeg2000", ("-xv",), "1.2.840.10008.1.2.4.90"),
        ("rle", ("-xr",), "1.2.840.10008.1.2.5"),
        ("explicit", (), "1.2.840.10008.1.2.1"),
    ],
)
def test_storescu_phantoms_arrive_indexed_as_sent_and_complete(
    run_node, phantom_exams, kind: str, propose: tuple[str, ...], syntax: str
) -> None:
    running = run_node()
    study, files = phantom_exams[kind]
    r = storescu(running.port, files, extra=propose)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Received Store Response (Success)") == 4, r.stderr
    assert running.wait_complete({study})
    assert running.completed == [study]  # once, after the quiet period
    images = running.archive.images_for_study(study)
    assert [i.label for i in images] == ["RCC", "LCC", "RMLO", "LMLO"]
    for image, sent in zip(images, sorted(files, key=lambda p: ["RCC", "LCC", "RMLO", "LMLO"].index(p.stem)), strict=True):
        assert image.transfer_syntax == syntax
        assert Path(image.path) == running.node.store.root / study / f"{image.sop_uid}.dcm"
        assert image.sop_uid == _sop(sent)
        _same_pixels_and_syntax(sent, image.path)
    assert running.node.stats.imported == 4 and running.node.stats.rejected == 0


def test_resending_a_study_is_not_an_error(run_node, phantom_exams) -> None:
    running = run_node()
    study, files = phantom_exams["explicit"]
    assert storescu(running.port, files).returncode == 0
    assert running.wait_complete({study})
    r = storescu(running.port, files)
    assert r.returncode == 0 and r.stderr.count("(Success)") == 4
    assert running.archive.count() == 4
    assert running.node.stats.duplicates == 4
    assert running.completed == [study]  # duplicates do not re-trigger triage


def test_echoscu_works_and_unknown_calling_ae_titles_are_refused(run_node) -> None:
    require_tool("echoscu")
    running = run_node(allowed_calling_ae_titles=("MODALITY1", "STORESCU"))
    assert echo_ok(running.port, calling="MODALITY1", called="MAMMOTRIAGE")
    import subprocess

    r = subprocess.run(["echoscu", "-aet", "UNKNOWN", "-aec", "MAMMOTRIAGE", LOOPBACK, str(running.port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "Association Rejected" in r.stderr
    assert "Calling AE Title Not Recognized" in r.stderr
    assert running.node.stats.rejected_associations == 1
    assert running.node.stats.echoes == 1


def test_hosts_off_the_allow_list_are_refused(run_node, phantom_exams) -> None:
    running = run_node(allowed_calling_ae_titles=("STORESCU",), allowed_hosts=("10.99.0.0/16",))
    _study, files = phantom_exams["explicit"]
    r = storescu(running.port, files[:1])
    assert r.returncode != 0
    assert running.archive.count() == 0
    # closed on accept, before any association slot or A-ASSOCIATE-RQ
    assert running.node.stats.refused_connections == 1
    assert running.node.stats.rejected_associations == 0 and running.node.stats.associations == 0


def test_unsupported_sop_class_is_refused_at_negotiation(run_node, tmp_path: Path) -> None:
    from netsupport import make_sr

    running = run_node()
    sr = make_sr(tmp_path / "sr.dcm")
    r = storescu(running.port, [sr])
    assert "No presentation context for: (SRc)" in r.stderr, r.stderr
    assert "Store Response" not in r.stderr
    assert running.archive.count() == 0


@pytest.mark.realdata
def test_real_cbis_ddsm_and_wg04_files(run_node) -> None:
    """CBIS-DDSM (RLE, one study per view), WG04 JPEG 2000 lossy; a chest CR in JPEG-LS is refused."""
    cbis = sorted(require_shared("dicom", "cbis-ddsm").rglob("*.dcm"))
    wg04 = require_shared("dicom", "wg04")
    mammo_j2k = wg04 / "MG1_J2KI.dcm"
    chest_jls = wg04 / "RG2_JLSL.dcm"
    running = run_node()
    r = storescu(running.port, [*cbis, mammo_j2k, chest_jls], extra=("-xr",), timeout=300)
    # storescu proposes one transfer syntax per option: RLE for the DDSM files; J2K and JPEG-LS
    # go in their own associations below.
    assert r.stderr.count("Received Store Response (Success)") == len(cbis), r.stderr
    r = storescu(running.port, [mammo_j2k], extra=("-xw",))
    assert r.returncode == 0 and "(Success)" in r.stderr, r.stderr
    r = storescu(running.port, [chest_jls], extra=("-xt",))
    assert "Received Store Response" in r.stderr and "(Success)" not in r.stderr, r.stderr
    assert "Received Store Response (Error: CannotUnderstand)" in r.stderr, r.stderr
    refused = [res for res in running.results if not res.ok]
    assert [(int(res.status), res.code) for res in refused] == [(0xC002, "not-a-mammogram")]

    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in [*cbis, mammo_j2k]}
    assert len(studies) == 9
    assert running.wait_complete(studies, timeout=30)
    assert running.archive.count() == 9
    j2k = running.archive.image(_sop(mammo_j2k))
    assert j2k is not None and j2k.transfer_syntax == "1.2.840.10008.1.2.4.91"
    _same_pixels_and_syntax(mammo_j2k, j2k.path)
    rejected = running.archive.rejections()
    assert [r.code for r in rejected] == ["not-a-mammogram"]
    assert Path(rejected[0].path).parent == running.node.store.rejected_dir
    assert Path(rejected[0].path).read_bytes()[132:] != b""
    # CBIS-DDSM: one study per view, grouped as two exams of four views.
    exams = running.archive.exams()
    assert sorted(len(e.images) for e in exams) == [1, 4, 4]


def test_deflated_transfer_from_storescu_is_accepted(run_node, phantom_exams, tmp_path: Path) -> None:
    """``dcmconv +td`` files sent with Deflated Explicit VR Little Endian are stored, not
    rejected as truncated (the inflated offsets were compared with the deflated size)."""
    import subprocess

    dcmconv = require_tool("dcmconv")
    running = run_node()
    study, files = phantom_exams["explicit"]
    deflated = []
    for f in files:
        out = tmp_path / f"{f.stem}-deflated.dcm"
        subprocess.run([dcmconv, "+td", str(f), str(out)], check=True, capture_output=True, timeout=60)
        assert out.stat().st_size < f.stat().st_size
        deflated.append(out)
    r = storescu(running.port, deflated, extra=("-xd",))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Received Store Response (Success)") == 4, r.stderr
    assert running.wait_complete({study})
    images = running.archive.images_for_study(study)
    assert len(images) == 4
    assert {i.transfer_syntax for i in images} == {"1.2.840.10008.1.2.1.99"}
    assert running.node.stats.rejected == 0


def test_corrupt_compressed_pixel_data_is_not_acknowledged(run_node, tmp_path: Path) -> None:
    """RLE with a bad segment header, RLE claiming 16000 x 7000 and a JPEG 2000 SIZ that
    disagrees with Rows/Columns get 0xC003 (not 0x0000): the frame structure is checked
    before the node answers."""
    from hostile import CASES, write_corpus

    wanted = {"rle-segment-count.dcm": "-xr", "rle-claims-16000x7000.dcm": "-xr",
              "rle-offset-past-end.dcm": "-xr", "j2k-siz-46000.dcm": "-xv"}
    cases = write_corpus(tmp_path / "hostile", tuple(c for c in CASES if c.name in wanted))
    running = run_node()
    for case in cases:
        r = storescu(running.port, [case.path], extra=(wanted[case.name],))
        assert "Received Store Response (Success)" not in r.stderr, (case.name, r.stderr)
    assert wait_until(lambda: len(running.results) == len(cases))
    assert [r.status for r in running.results] == [0xC003] * len(cases)
    assert running.archive.count() == 0
    for result in running.results:
        assert result.code == "corrupt-pixel-data"
        assert "before decoding" in result.reason or result.reason.startswith("RLE"), result.reason


def test_a_wrong_called_ae_title_is_refused_unless_configured(run_node) -> None:
    require_tool("echoscu")
    running = run_node()
    assert echo_ok(running.port, called="MAMMOTRIAGE")
    assert not echo_ok(running.port, called="SOMEONE-ELSE")
    lenient = run_node(require_called_ae_title=False)
    assert echo_ok(lenient.port, called="SOMEONE-ELSE")
