"""A window joined to a site shows and opens the exams the site archive receives (real
Orthanc and PostgreSQL on loopback, the exam sent with dcmtk's storescu): before, a site
workstation read only the files imported on it, never the site's archive."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "net"))

from netsupport import storescu  # noqa: E402
from orthancsupport import running_server  # noqa: E402

from mammotriage.net.orthanc import OrthancServer  # noqa: E402
from mammotriage.store.pg.cluster import PgCluster  # noqa: E402
from store.pg.pgsupport import running_cluster  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PgCluster, OrthancServer]]:
    with running_cluster() as cluster, running_server(tmp_path_factory.mktemp("orthanc"), stable_age_s=1) as archive:
        yield cluster, archive


def test_a_site_window_shows_and_opens_an_exam_the_site_archive_received(
        qtbot, site: tuple[PgCluster, OrthancServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtCore import QSettings

    from mammotriage.phantom import write_demo_set
    from mammotriage.store import Archive
    from mammotriage.triage import OperatingPoints
    from mammotriage.ui.main_window import MainWindow
    from mtsupport import FIXTURE_MODEL

    cluster, orthanc = site
    user, password = orthanc.credentials()
    profile = tmp_path / "ws.json"
    profile.write_text(json.dumps({
        "format": "mammotriage-site-profile/1", "role": "workstation",
        "postgres": {"host": cluster.host, "port": cluster.port, "database": "mammotriage",
                     "user": "mt_workstation", "password": cluster.password("mt_workstation")},
        "dicomweb": {"url": f"{orthanc.url}/dicom-web", "user": user, "password": password}}))
    profile.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    settings = QSettings(str(home / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("site/profile", str(profile))
    settings.sync()
    archive = Archive(tmp_path / "archive.sqlite")  # nothing on this workstation
    win = MainWindow(archive=archive, start_triage=False)
    try:
        win.pin_model(FIXTURE_MODEL, points=OperatingPoints(0.5, 0.1, "test fixture"))
        qtbot.addWidget(win)
        win.resize(1400, 1000)
        win.show()
        assert win.site_images is not None and win.worklist.rowCount() == 0
        assert "its studies come in over DICOMweb" in win.log.toPlainText()

        exam_dir = tmp_path / "exam"
        write_demo_set(exam_dir, 1, seed=2313, rows=256, columns=208)
        files = sorted(exam_dir.rglob("*.dcm"))
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        result = storescu(orthanc.dicom_port, files, calling="MODALITY", called=orthanc.aet)
        assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]

        qtbot.waitUntil(lambda: f"study {study} from the site archive (4 images)" in win.log.toPlainText(),
                        timeout=60_000)
        assert win.worklist.rowCount() == 1
        job = win.queue.conn.execute("SELECT status FROM triage_jobs WHERE exam_key = ? AND model_version = ?",
                                     (study, win.model_version)).fetchone()
        assert job is not None and job["status"] == "pending"  # queued for triage with the model shown
        win.open_row(0)
        qtbot.waitUntil(lambda: all(p.view is not None for p in win.hanging.panes.values()), timeout=60_000)
        shown = {p.view.meta.sop_instance_uid for p in win.hanging.panes.values() if p.view is not None}
        assert shown == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert all(Path(p.view.path).parent == home / "site-cache"
                   for p in win.hanging.panes.values() if p.view is not None)
    finally:
        win.close()
        archive.close()
    assert win.site_images is not None and win.site_images._stop.is_set()  # stopped on closing
    win.site_images._thread.join(30)
    assert not win.site_images._thread.is_alive()
