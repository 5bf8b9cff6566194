"""``mammotriage site init|start|stop|status``: both real servers (PostgreSQL and Orthanc) in one folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from netsupport import free_ports as _ports
from netsupport import require_postgres as _pg_or_skip
from orthancsupport import require_orthanc

from mammotriage.cli import main
from mammotriage.net import orthanc, site


def test_defaults_are_the_archive_module_defaults() -> None:
    assert (site.DEFAULT_HTTP_PORT, site.DEFAULT_DICOM_PORT, site.DEFAULT_AE_TITLE) == (
        orthanc.DEFAULT_HTTP_PORT, orthanc.DEFAULT_DICOM_PORT, orthanc.DEFAULT_AE_TITLE)


def test_init_start_status_stop(capsys: pytest.CaptureFixture[str]) -> None:
    require_orthanc()
    _pg_or_skip()
    # tempfile, not tmp_path: run as root, the cluster is handed to the postgres account
    folder = Path(tempfile.mkdtemp(prefix="mt-site-")) / "server"
    folder.parent.chmod(0o755)
    pg_port, http_port, dicom_port = _ports(3)
    try:
        assert main(["site", "init", str(folder), "--pg-port", str(pg_port), "--http-port", str(http_port),
                     "--dicom-port", str(dicom_port), "--json"]) == 0
        made = json.loads(capsys.readouterr().out)
        assert made["running"] is False and made["postgres"]["initialised"] is True
        assert made["orthanc"]["http_port"] == http_port and made["orthanc"]["dicom_port"] == dicom_port
        profile = json.loads((folder / site.SITE_FILE).read_text())
        assert "password" not in json.dumps(profile).lower()  # secrets stay in the servers' 0600 files

        assert main(["site", "init", str(folder)]) == 2  # never over an existing site
        assert "already holds a site server" in capsys.readouterr().err

        assert main(["site", "start", str(folder), "--json"]) == 0
        up = json.loads(capsys.readouterr().out)
        assert up["running"] is True and up["postgres"]["running"] and up["orthanc"]["answering"]
        # the store answers on its port, with the workstation role, and holds the site schema
        import psycopg

        cluster, _, _ = site.load_site(folder)
        with psycopg.connect(cluster.dsn("mt_workstation")) as conn:
            assert conn.execute("SELECT count(*) FROM correction_events").fetchone() == (0,)

        assert main(["site", "status", str(folder)]) == 0
        text = capsys.readouterr().out
        assert "PostgreSQL: running" in text and f"REST on https://127.0.0.1:{http_port}" in text

        assert main(["site", "stop", str(folder), "--json"]) == 0
        down = json.loads(capsys.readouterr().out)
        assert not down["postgres"]["running"] and not down["orthanc"]["running"]
        assert main(["site", "stop", str(folder)]) == 0  # stopping a stopped site is fine
        capsys.readouterr()
    finally:
        site.stop_site(folder) if (folder / site.SITE_FILE).exists() else None
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_not_a_site_folder_and_a_damaged_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "status", str(tmp_path)]) == 2
    assert "not a site server folder" in capsys.readouterr().err
    (tmp_path / site.SITE_FILE).write_text("{ not json")
    assert main(["site", "start", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert site.SITE_FILE in err and "cannot be read" in err


def test_a_failed_init_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_orthanc()
    _pg_or_skip()
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root: the failure provoked is the server account's access to a private folder")
    private = tmp_path / "private"  # pytest's tmp_path is 0700: the postgres account cannot enter it
    private.mkdir(mode=0o700)
    assert main(["site", "init", str(private / "site")]) == 2
    assert "cannot enter" in capsys.readouterr().err
    assert not (private / "site").exists()


def test_ports_must_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "init", str(tmp_path / "s"), "--pg-port", "8042"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
