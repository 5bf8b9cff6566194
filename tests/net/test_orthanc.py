"""net.orthanc: the site archive's configuration and process, with a real Orthanc on loopback."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pydicom
import pytest
import requests
from orthancsupport import new_server, require_orthanc

from mammotriage.net.orthanc import (
    OrthancError,
    OrthancNotFoundError,
    OrthancServer,
    OrthancStartError,
    find_dicomweb_plugin,
    find_orthanc,
    read_credentials,
)
from mammotriage.net.settings import NetworkConfigError


def test_write_config_is_complete_and_keeps_secrets_private(tmp_path: Path) -> None:
    server = new_server(tmp_path / "site", stable_age_s=7)
    config = json.loads(server.config_file.read_text())
    assert config["HttpPort"] == server.http_port and config["DicomPort"] == server.dicom_port
    assert config["DicomAet"] == "MT_ARCHIVE" and config["DicomCheckCalledAet"] is True
    assert config["StorageDirectory"] == str(server.storage_dir)
    assert config["IndexDirectory"] == str(server.index_dir)
    assert config["AuthenticationEnabled"] is True and config["RemoteAccessAllowed"] is False
    assert config["StableAge"] == 7
    assert config["DicomWeb"]["Enable"] is True and config["DicomWeb"]["Root"] == "/dicom-web/"
    assert Path(config["Plugins"][0]).name.startswith("libOrthancDicomWeb.so")
    assert "RegisteredUsers" not in config  # the password lives in its own file only
    assert stat.S_IMODE(server.credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.config_dir.stat().st_mode) == 0o700
    user, password = server.credentials()
    assert user and len(password) >= 24 and password not in server.config_file.read_text()

    # writing it again (new ports) keeps the generated account
    again = OrthancServer(server.folder, server.http_port + 1, server.dicom_port + 1)
    again.write_config()
    assert again.credentials() == (user, password)
    loaded = OrthancServer.load(server.folder)
    assert (loaded.http_port, loaded.dicom_port, loaded.aet) == (server.http_port + 1, server.dicom_port + 1,
                                                                 "MT_ARCHIVE")
    assert loaded.stable_age_s == 60 and loaded.remote_access is False


@pytest.mark.parametrize("edit", [
    lambda c: c.pop("HttpPort"),
    lambda c: c.update(DicomAlwaysAllowStore=False, DicomModalities=["not", "a", "mapping"]),
    lambda c: c.update(HttpPort="eighty"),
])
def test_load_refuses_a_damaged_configuration(tmp_path: Path, edit) -> None:
    server = new_server(tmp_path / "site")
    config = json.loads(server.config_file.read_text())
    edit(config)
    server.config_file.write_text(json.dumps(config))
    with pytest.raises(OrthancError, match=re.escape(str(server.config_file))):
        OrthancServer.load(server.folder)
    server.config_file.write_text("{broken")
    with pytest.raises(OrthancError, match="cannot read"):
        OrthancServer.load(server.folder)


def test_credentials_readable_by_others_are_refused(tmp_path: Path) -> None:
    server = new_server(tmp_path / "site")
    os.chmod(server.credentials_file, 0o644)
    with pytest.raises(OrthancError, match=r"readable by others.*chmod 600"):
        server.credentials()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    os.chmod(bad, 0o600)
    with pytest.raises(OrthancError, match=r"bad\.json"):
        read_credentials(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"http_port": 0}, "HTTP port"),
    ({"dicom_port": 70000}, "DICOM port"),
    ({"http_port": 5000, "dicom_port": 5000}, "must differ"),
    ({"aet": "A" * 17}, "longer than 16"),
    ({"stable_age_s": 0}, "stable age"),
])
def test_bad_settings_are_refused(tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(NetworkConfigError, match=message):
        OrthancServer(tmp_path, **kwargs)


def test_missing_binary_or_plugin_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(OrthancNotFoundError, match="does not exist"):
        find_orthanc(tmp_path / "no-orthanc")
    with pytest.raises(OrthancNotFoundError, match="does not exist"):
        find_dicomweb_plugin(tmp_path / "libnothing.so")
    server = OrthancServer(tmp_path / "site", binary=tmp_path / "no-orthanc")
    with pytest.raises(OrthancNotFoundError):
        server.write_config()
    with pytest.raises(OrthancError, match="site init"):
        OrthancServer.load(tmp_path / "site")
    with pytest.raises(OrthancError, match="site init"):
        server.start()


def test_start_status_stop_with_authentication(tmp_path: Path) -> None:
    server = new_server(tmp_path / "site")
    assert server.status().running is False and server.stop() is False
    try:
        status = server.start()
        assert status.running and status.answering and status.version
        assert int(server.pid_file.read_text()) == status.pid
        # another object for the same folder (as "site status" would be) sees it too
        other = OrthancServer.load(server.folder)
        seen = other.status()
        assert seen.running and seen.answering and seen.pid == status.pid
        assert other.start().pid == status.pid  # starting a running server only reports it
        # the REST API and DICOMweb refuse requests without the generated credentials
        assert requests.get(server.url + "/system", timeout=10).status_code == 401
        assert requests.get(server.dicomweb_url + "/studies", timeout=10).status_code == 401
        wrong = requests.get(server.url + "/system", auth=("mammotriage", "wrong"), timeout=10)
        assert wrong.status_code == 401
        ok = requests.get(server.dicomweb_url + "/studies", auth=server.credentials(), timeout=10)
        assert ok.status_code == 200 and ok.json() == []
        assert json.dumps(seen.to_json())
    finally:
        stopped = OrthancServer.load(server.folder).stop()
    assert stopped is True
    after = server.status()
    assert not after.running and not after.answering and after.detail == "stopped"
    assert not server.pid_file.exists()


def test_start_finds_orthanc_again_when_the_recorded_binary_is_gone(tmp_path: Path) -> None:
    server = new_server(tmp_path / "site")
    config = json.loads(server.config_file.read_text())
    config["MammoTriage"]["Binary"] = str(tmp_path / "moved" / "Orthanc")  # a restored folder
    server.config_file.write_text(json.dumps(config))
    try:
        assert OrthancServer.load(server.folder).start().answering
    finally:
        server.stop()
    assert not server.status().running


def test_allowed_senders_only_may_store(tmp_path: Path) -> None:
    require_orthanc()
    from netsupport import free_port, storescu

    from mtsupport import write_mg

    with pytest.raises(NetworkConfigError, match="host names are not accepted"):
        OrthancServer(tmp_path, allowed_senders={"PACS": ("pacs.example", 104)})
    server = OrthancServer(tmp_path / "site", free_port(), free_port(),
                           allowed_senders={"MODALITY": ("127.0.0.1", 104)})
    server.write_config()
    loaded = OrthancServer.load(server.folder)
    assert loaded.allowed_senders == {"MODALITY": ("127.0.0.1", 104)}
    intruder_image, image = write_mg(tmp_path / "intruder.dcm"), write_mg(tmp_path / "one.dcm")
    try:
        server.start()
        refused = storescu(server.dicom_port, [intruder_image], calling="INTRUDER", called=server.aet)
        assert refused.returncode != 0 and "Store Failed" in refused.stdout + refused.stderr
        stored = storescu(server.dicom_port, [image], calling="MODALITY", called=server.aet)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        wrong_aet = storescu(server.dicom_port, [image], calling="MODALITY", called="OTHER")
        assert "Association Rejected" in wrong_aet.stdout + wrong_aet.stderr
        ids = requests.get(server.url + "/instances", auth=server.credentials(), timeout=10).json()
        assert len(ids) == 1
        tags = requests.get(f"{server.url}/instances/{ids[0]}/simplified-tags", auth=server.credentials(),
                            timeout=10).json()
        assert tags["SOPInstanceUID"] == str(pydicom.dcmread(image).SOPInstanceUID)
    finally:
        server.stop()


def test_start_failure_names_the_log_file(tmp_path: Path) -> None:
    first = new_server(tmp_path / "one")
    try:
        first.start()
        clash = OrthancServer(tmp_path / "two", first.http_port, first.dicom_port + 1 if
                              first.dicom_port < 65535 else first.dicom_port - 1)
        clash.write_config()
        with pytest.raises(OrthancStartError) as caught:
            clash.start()
        assert str(clash.log_file) in str(caught.value)
        assert caught.value.log_file == clash.log_file
        assert not clash.status().running and not clash.pid_file.exists()
    finally:
        first.stop()


def test_stale_pid_file_is_not_taken_for_a_server(tmp_path: Path) -> None:
    require_orthanc()
    server = new_server(tmp_path / "site")
    server.pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not this Orthanc
    status = server.status()
    assert status.running is False and "stale" in status.detail
    assert server.stop() is False and not server.pid_file.exists()
