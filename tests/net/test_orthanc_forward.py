"""The site archive forwards the AI results to the PACS, once each (a real Orthanc with
its Lua hooks and dcmtk's storescp as the PACS): before, nothing sent the site workers'
results to the PACS, and a result stored twice would have been forwarded twice."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from netsupport import free_ports
from orthancsupport import require_orthanc

from mammotriage.net.dicomweb import DicomWebArchive
from mammotriage.net.orthanc import OrthancServer


def _results(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Four phantom images and the AI's SR of them (stable UIDs, as a site worker writes)."""
    from mammotriage.dicom.content import AlgorithmInfo
    from mammotriage.phantom import write_demo_set
    from mammotriage.triage.dicom_results import write_result_files

    write_demo_set(tmp_path / "d", 1, seed=7, rows=128, columns=96)
    images = sorted((tmp_path / "d").rglob("*.dcm"))
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in images}
    items = [{"sop_uid": s, "findings": [{"box": [10, 10, 30, 30], "kind": "mass", "score": 0.5}], "suspicion": None}
             for s in sources]
    return images, write_result_files("E1", items, sources, AlgorithmInfo("m", "1", "ab" * 32), tmp_path / "res",
                                      stable_uids=True)


def _received(folder: Path, want: int, timeout: float = 30.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sorted(folder.iterdir())
        if len(got) >= want:
            time.sleep(1.0)   # anything more that would come (a second copy)
            return sorted(folder.iterdir())
        time.sleep(0.1)
    return sorted(folder.iterdir())


def test_ai_results_reach_the_pacs_once_also_after_the_pacs_was_away(tmp_path: Path) -> None:
    require_orthanc()
    http_port, dicom_port, pacs_port = free_ports(3)
    server = OrthancServer(tmp_path / "orthanc", http_port, dicom_port, stable_age_s=2,
                           forward_results=("PACS", "127.0.0.1", pacs_port))
    server.write_config()
    assert OrthancServer.load(server.folder).forward_results == ("PACS", "127.0.0.1", pacs_port)
    images, results = _results(tmp_path)
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    server.start()
    pacs = None
    try:
        with DicomWebArchive.for_server(server, tmp_path / "cache", 1 << 26) as archive:
            assert archive.store([pydicom.dcmread(f) for f in images]).failed == []
            # the PACS is away: the forward fails, and its mark is cleared
            assert archive.store([pydicom.dcmread(p) for p in results]).failed == []
            time.sleep(3)
            # +uf: a file per copy received (a second copy would be a second file, not an overwrite)
            pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(pacs_dir), "+uf", "+xa",
                                     str(pacs_port)])
            time.sleep(0.5)
            # the same result stored again (a worker's retry): now it goes, once
            assert archive.store([pydicom.dcmread(p) for p in results]).failed == []
            got = _received(pacs_dir, len(results))
            assert len(got) == len(results)
            assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in got} == \
                {str(pydicom.dcmread(p).SOPInstanceUID) for p in results}
            # stored a third time (a job done twice by two workers): not sent again
            assert archive.store([pydicom.dcmread(p) for p in results]).failed == []
            assert len(_received(pacs_dir, len(results) + 1, timeout=4)) == len(results)
            deadline = time.monotonic() + 20
            while server.forward_pending()["sent"] != len(results) and time.monotonic() < deadline:
                time.sleep(0.2)
            # `site forward`: nothing left to send
            assert server.forward_pending() == {"results": len(results), "sent": len(results), "queued": 0}
            assert len(_received(pacs_dir, len(results) + 1, timeout=3)) == len(results)
            # the images themselves are not forwarded (they came from the PACS)
            assert all(pydicom.dcmread(p).Modality == "SR" for p in got)
    finally:
        server.stop()
        if pacs is not None:
            pacs.terminate()
            pacs.wait(timeout=10)


def test_a_site_with_pacs_forwarding_tells_its_workstations(tmp_path: Path) -> None:
    """`site init --pacs` writes the forwarding into Orthanc's configuration and the site's
    profiles say so (the workstations' outboxes then send no AI results)."""
    require_orthanc()
    import shutil
    import tempfile

    from mammotriage.cli import main
    from mammotriage.net import site
    from mammotriage.net.site_profile import write_profile

    pg_port, http_port, dicom_port = free_ports(3)
    top = Path(tempfile.mkdtemp(prefix="mt-site-fwd-"))   # the postgres account must reach the cluster
    top.chmod(0o755)
    root = top / "server"
    with pytest.raises(site.SiteError, match="expected AET@HOST:PORT"):
        site.parse_pacs("PACS:104")
    assert main(["site", "init", str(root), "--pg-port", str(pg_port), "--http-port", str(http_port),
                 "--dicom-port", str(dicom_port), "--pacs", "PACS@127.0.0.1:11112", "--json"]) == 0
    record = json.loads((root / site.SITE_FILE).read_text())
    assert record["orthanc"]["forward_results"] == "PACS@127.0.0.1:11112"
    _, orthanc, _ = site.load_site(root)
    assert orthanc.forward_results == ("PACS", "127.0.0.1", 11112) and orthanc.forward_script.is_file()
    try:
        assert write_profile(root, "workstation", tmp_path / "ws.json").archive_forwards_results is True
    finally:
        shutil.rmtree(top, ignore_errors=True)
