"""TLS of the site server: real PostgreSQL and Orthanc on 127.0.0.1, real certificates from openssl."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from netsupport import free_ports, require_postgres
from orthancsupport import require_orthanc
from psycopg.conninfo import make_conninfo

from mammotriage.cli import main
from mammotriage.net import site
from mammotriage.net.dicomweb import DicomWebArchive, DicomWebError, InstanceCache
from mammotriage.net.site_profile import load_profile
from mammotriage.net.tls import SiteTls, TlsError, name_matches


def _private_parent(prefix: str) -> Path:
    # tempfile, not tmp_path: run as root, the cluster is handed to the postgres account
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    parent.chmod(0o755)
    return parent


@pytest.fixture(scope="module")
def running_site() -> Iterator[Path]:
    """One site (generated TLS material), started for the module."""
    require_orthanc()
    require_postgres()
    parent = _private_parent("mt-tls-")
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    site.init_site(folder, pg_port=pg_port, http_port=http_port, dicom_port=dicom_port,
                   hosts=["archive.site.example"])
    site.start_site(folder)
    try:
        yield folder
    finally:
        site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def _profile(folder: Path, out: Path):
    assert main(["site", "profile", str(folder), "--role", "workstation", "--out", str(out)]) == 0
    return load_profile(out)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_0600_and_the_ca_key_stays_out_of_profiles(running_site: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tls = running_site / "tls"
    assert _mode(tls) == 0o700
    for name in ("ca.key", "server.key", "server.pem"):
        assert _mode(tls / name) == 0o600, name
    assert _mode(running_site / "postgres" / "data" / "server.key") == 0o600
    profile = _profile(running_site, tmp_path / "ws.json")
    capsys.readouterr()
    text = (tmp_path / "ws.json").read_text()
    assert "PRIVATE KEY" not in text and (tls / "ca.crt").read_text() in json.loads(text)["tls"]["ca"]
    assert profile.ca_file is not None and _mode(profile.ca_file) == 0o600 and profile.encrypted
    assert profile.warning() is None


def test_status_json_shows_the_certificates_expiry(running_site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "status", str(running_site), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is True  # existing keys stay
    tls = status["tls"]
    assert tls["encrypted"] is True and tls["source"] == "generated" and tls["warning"] is None
    cert = tls["server_certificate"]
    assert 800 <= cert["days_left"] <= 826 and cert["not_after"].endswith("Z")
    assert {"archive.site.example", "127.0.0.1", "localhost"} <= set(cert["names"])
    assert tls["ca_certificate"]["days_left"] > 3000
    assert main(["site", "status", str(running_site)]) == 0
    assert "TLS: server certificate valid until" in capsys.readouterr().out


def test_postgres_verify_full_with_the_site_ca_and_nothing_else(running_site: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    profile = _profile(running_site, tmp_path / "ws.json")
    capsys.readouterr()
    with psycopg.connect(profile.dsn()) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    base = dict(host="127.0.0.1", port=profile.pg_port, dbname=profile.database, user=profile.user,
                password=profile.password, connect_timeout=10)
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection.*no encryption"):
        psycopg.connect(make_conninfo(**base, sslmode="disable"))
    foreign = SiteTls(tmp_path / "foreign")
    foreign.generate()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(make_conninfo(**base, sslmode="verify-full", sslrootcert=str(foreign.ca_cert)))
    # the superuser's password does not help from the network side: it is refused unless TLS and loopback
    cluster, _, _ = site.load_site(running_site)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(make_conninfo(**dict(base, user="postgres", password=cluster.password("postgres")),
                                      sslmode="disable"))


def test_orthanc_https_with_the_site_ca_and_a_foreign_ca_is_refused(running_site: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    profile = _profile(running_site, tmp_path / "ws.json")
    capsys.readouterr()
    assert profile.dicomweb_url.startswith("https://")
    with profile.archive(tmp_path / "cache", 10 * 1024 * 1024) as archive:
        assert archive.find_studies() == []
    foreign = SiteTls(tmp_path / "foreign")
    foreign.generate()
    base = profile.dicomweb_url.removesuffix("/dicom-web")
    with DicomWebArchive(base, (profile.dicomweb_user, profile.dicomweb_password),
                         InstanceCache(tmp_path / "c2", 1024 * 1024), ca=foreign.ca_cert, timeout_s=10) as other, \
            pytest.raises(DicomWebError) as err:
        other.find_studies()
    assert err.value.code == "tls"
    # plain HTTP on the archive's port gets no answer: basic authentication is never sent in clear there
    with pytest.raises(requests.RequestException):
        requests.get(base.replace("https://", "http://") + "/system", timeout=10,
                     auth=(profile.dicomweb_user, profile.dicomweb_password))
    # the server presents the site's certificate
    port = int(base.rsplit(":", 1)[1])
    presented = ssl.get_server_certificate(("127.0.0.1", port))
    assert ssl.PEM_cert_to_DER_cert(presented) == ssl.PEM_cert_to_DER_cert(
        (running_site / "tls" / "server.crt").read_text())


def test_renewal_keeps_the_ca_and_the_profiles(running_site: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    profile = _profile(running_site, tmp_path / "ws.json")
    capsys.readouterr()
    before = site.site_status(running_site)["tls"]
    assert main(["site", "tls", str(running_site), "--days", "20", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    cert = after["tls"]["server_certificate"]
    assert 18 <= cert["days_left"] <= 20 and "renew" in after["tls"]["warning"]
    assert cert["sha256"] != before["server_certificate"]["sha256"]
    assert cert["names"] == before["server_certificate"]["names"]  # the same names unless --host
    assert after["tls"]["ca_certificate"]["sha256"] == before["ca_certificate"]["sha256"]
    assert after["running"] is True  # PostgreSQL reloaded, Orthanc restarted
    with psycopg.connect(profile.dsn()) as conn:  # the profile from before the renewal still verifies
        assert conn.pgconn.ssl_in_use
    with profile.archive(tmp_path / "cache", 10 * 1024 * 1024) as archive:
        assert archive.find_studies() == []
    port = int(profile.dicomweb_url.rsplit(":", 1)[1].split("/")[0])
    presented = ssl.get_server_certificate(("127.0.0.1", port))
    assert ssl.PEM_cert_to_DER_cert(presented) == ssl.PEM_cert_to_DER_cert(
        (running_site / "tls" / "server.crt").read_text())
    assert main(["site", "tls", str(running_site), "--json"]) == 0  # back to the default validity
    assert json.loads(capsys.readouterr().out)["tls"]["warning"] is None


def _hospital_pki(folder: Path) -> SiteTls:
    """A CA and server certificate made elsewhere (here: with the same openssl steps, another CA)."""
    pki = SiteTls(folder)
    pki.generate(["127.0.0.1"])
    return pki


def test_the_sites_own_certificate_is_used_verbatim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_orthanc()
    require_postgres()
    pki = _hospital_pki(tmp_path / "hospital")
    parent = _private_parent("mt-tls-own-")
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    try:
        assert main(["site", "init", str(folder), "--pg-port", str(pg_port), "--http-port", str(http_port),
                     "--dicom-port", str(dicom_port), "--tls-cert", str(pki.server_cert), "--tls-key",
                     str(pki.server_key), "--tls-ca", str(pki.ca_cert), "--json"]) == 0
        made = json.loads(capsys.readouterr().out)
        assert made["tls"]["source"] == "site"
        tls = folder / "tls"
        assert (tls / "server.crt").read_bytes() == pki.server_cert.read_bytes()
        assert (tls / "server.key").read_bytes() == pki.server_key.read_bytes()
        assert (tls / "ca.crt").read_bytes() == pki.ca_cert.read_bytes()
        assert not (tls / "ca.key").exists()  # no CA of ours: the site's CA signs
        assert (folder / "postgres" / "data" / "server.crt").read_bytes() == pki.server_cert.read_bytes()
        assert main(["site", "start", str(folder)]) == 0
        capsys.readouterr()
        presented = ssl.get_server_certificate(("127.0.0.1", http_port))
        assert ssl.PEM_cert_to_DER_cert(presented) == ssl.PEM_cert_to_DER_cert(pki.server_cert.read_text())
        profile = _profile(folder, tmp_path / "ws.json")
        assert profile.ca_file is not None and profile.ca_file.read_bytes() == pki.ca_cert.read_bytes()
        with psycopg.connect(profile.dsn()) as conn:
            assert conn.pgconn.ssl_in_use
        # a generated renewal needs our CA key, which a site with its own certificate has not
        assert main(["site", "tls", str(folder)]) == 2
        assert "--tls-cert" in capsys.readouterr().err
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_a_bad_own_certificate_is_refused_and_leaves_nothing(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    require_orthanc()
    require_postgres()
    pki = _hospital_pki(tmp_path / "hospital")
    other = _hospital_pki(tmp_path / "other")
    folder = tmp_path / "site"
    ports = [str(p) for p in free_ports(3)]
    common = ["site", "init", str(folder), "--pg-port", ports[0], "--http-port", ports[1], "--dicom-port", ports[2]]
    assert main([*common, "--tls-cert", str(pki.server_cert), "--tls-key", str(other.server_key)]) == 2
    err = capsys.readouterr().err
    assert "is not the key of" in err and str(other.server_key) in err
    assert not folder.exists()
    assert main([*common, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                 "--tls-ca", str(other.ca_cert)]) == 2
    err = capsys.readouterr().err
    assert "checking it against the CA" in err and "failed" in err
    assert main([*common, "--tls-cert", str(pki.server_cert)]) == 2
    assert "go together" in capsys.readouterr().err
    assert main([*common, "--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(pki.server_key)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not folder.exists()


def test_names_and_a_bad_host() -> None:
    assert name_matches("127.0.0.1", ["127.0.0.1"]) and name_matches("LOCALHOST", ["localhost"])
    assert name_matches("a.site.example", ["*.site.example"]) and not name_matches("a.b.site.example",
                                                                                   ["*.site.example"])
    assert not name_matches("10.0.0.1", ["10.0.0.2"])
    assert SiteTls.names_for(["Archive.Example.", "::1"]) == ["archive.example", "::1", "127.0.0.1", "localhost"]
    with pytest.raises(TlsError, match="neither an IP address nor a DNS name"):
        SiteTls.names_for(["bad host/x"])


def test_a_profile_from_before_tls_still_loads_and_warns(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({
        "format": "mammotriage-site-profile/1", "role": "workstation",
        "postgres": {"host": "127.0.0.1", "port": 5432, "database": "mammotriage", "user": "mt_workstation",
                     "password": "pw"},
        "dicomweb": {"url": "http://127.0.0.1:8042/dicom-web", "user": "mammotriage", "password": "pw2"}}))
    path.chmod(0o600)
    profile = load_profile(path)
    assert not profile.encrypted and profile.ca_file is None
    assert "sslmode" not in profile.dsn()  # as before: libpq's default
    assert "not encrypted" in (profile.warning() or "") and str(path) in (profile.warning() or "")
    assert "(not encrypted)" in profile.where()


def test_the_relay_refuses_a_client_that_speaks_no_tls(running_site: Path) -> None:
    _, orthanc, _ = site.load_site(running_site)
    with socket.create_connection(("127.0.0.1", orthanc.http_port), timeout=10) as sock:
        sock.sendall(b"GET /system HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eDp5\r\n\r\n")
        sock.settimeout(20)
        try:
            answer = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"HTTP/1.1 200" not in answer and b"Orthanc" not in answer


def _site_from_before_tls(folder: Path, ports: list[int]) -> None:
    """What 'site init' made before TLS: the same servers, plain, and a site.json without 'tls'."""
    from mammotriage.net.orthanc import OrthancServer
    from mammotriage.store.pg.cluster import PgCluster

    folder.mkdir()
    orthanc = OrthancServer(folder / "orthanc", ports[1], ports[2])
    orthanc.write_config()
    PgCluster(folder / "postgres", ports[0]).init()
    (folder / site.SITE_FILE).write_text(json.dumps(
        {"format": "mammotriage-site/1", "postgres": {"folder": "postgres", "port": ports[0]},
         "orthanc": {"folder": "orthanc", "http_port": ports[1], "dicom_port": ports[2], "aet": "MT_ARCHIVE",
                     "remote_access": False}}))


def test_a_site_from_before_tls_warns_then_site_tls_switches_it_on(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    require_orthanc()
    require_postgres()
    parent = _private_parent("mt-tls-old-")
    folder = parent / "server"
    ports = free_ports(3)
    try:
        _site_from_before_tls(folder, ports)
        assert main(["site", "start", str(folder), "--json"]) == 0
        old = json.loads(capsys.readouterr().out)
        assert old["running"] is True and old["tls"]["encrypted"] is False and "not encrypted" in old["tls"]["warning"]
        assert main(["site", "profile", str(folder), "--role", "workstation", "--out", str(tmp_path / "old.json")]) == 0
        assert "not encrypted" in capsys.readouterr().err
        plain = load_profile(tmp_path / "old.json")
        assert plain.dicomweb_url.startswith("http://") and not plain.encrypted
        with psycopg.connect(plain.dsn()) as conn:  # keeps working as before
            assert conn.execute("SELECT 1").fetchone() == (1,)

        assert main(["site", "tls", str(folder), "--json"]) == 0  # while both run
        now = json.loads(capsys.readouterr().out)
        assert now["running"] is True and now["tls"]["encrypted"] is True and now["tls"]["warning"] is None
        new = _profile(folder, tmp_path / "new.json")
        capsys.readouterr()
        with psycopg.connect(new.dsn()) as conn:
            assert conn.pgconn.ssl_in_use
        with new.archive(tmp_path / "cache", 1 << 20) as archive:
            assert archive.find_studies() == []
        with pytest.raises(psycopg.OperationalError, match="no encryption"):  # the old profile's plain TCP
            psycopg.connect(make_conninfo(plain.dsn(), sslmode="disable"))
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_a_killed_tls_relay_is_said_and_site_start_brings_it_back(running_site: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    import time

    _, orthanc, _ = site.load_site(running_site)
    relay_pid = int(orthanc.relay_pid_file.read_text())
    os.kill(relay_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while orthanc.status().answering and time.monotonic() < deadline:
        time.sleep(0.1)
    down = site.site_status(running_site)
    assert down["orthanc"]["running"] is True and down["orthanc"]["answering"] is False
    assert main(["site", "start", str(running_site), "--json"]) == 0
    up = json.loads(capsys.readouterr().out)
    assert up["running"] is True and int(orthanc.relay_pid_file.read_text()) != relay_pid


def _conf(folder: Path) -> tuple[str, str]:
    data = folder / "postgres" / "data"
    return (data / "postgresql.conf").read_text(), (data / "pg_hba.conf").read_text()


def test_listen_addresses_and_pg_hba(running_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf, hba = _conf(running_site)  # the default: this host only
    assert conf.rstrip().count("listen_addresses = '127.0.0.1'") == 1 and "ssl = on" in conf
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert {r[0] for r in rules} == {"hostssl", "hostnossl"}
    assert all(r[-1] == "scram-sha-256" for r in rules if r[0] == "hostssl")
    assert all(r[-1] == "reject" for r in rules if r[0] == "hostnossl")
    assert ["hostssl", "all", "postgres,mt_admin", "127.0.0.1/32", "scram-sha-256"] in rules
    assert ["hostssl", "all", "mt_workstation,mt_worker,+mt_reader", "127.0.0.1/32", "scram-sha-256"] in rules

    require_postgres()
    parent = _private_parent("mt-tls-listen-")
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    try:  # 127.0.0.2 is a loopback address of its own on Linux: "another interface" for the test
        assert main(["site", "init", str(folder), "--pg-port", str(pg_port), "--http-port", str(http_port),
                     "--dicom-port", str(dicom_port), "--listen", "127.0.0.2", "--json"]) == 0
        made = json.loads(capsys.readouterr().out)
        assert "127.0.0.2" in made["tls"]["server_certificate"]["names"]  # the listen address is named
        conf, hba = _conf(folder)
        assert "listen_addresses = '127.0.0.1,127.0.0.2'" in conf
        assert "hostssl all mt_workstation,mt_worker,+mt_reader 0.0.0.0/0 scram-sha-256" in hba
        assert "hostssl all postgres,mt_admin 127.0.0.1/32 scram-sha-256" in hba  # never from elsewhere
        cluster, _, _ = site.load_site(folder)
        cluster.start()
        profile = _profile(folder, tmp_path / "ws.json")
        capsys.readouterr()
        assert main(["site", "profile", str(folder), "--role", "workstation", "--out", str(tmp_path / "b.json"),
                     "--host", "127.0.0.2"]) == 0
        capsys.readouterr()
        other = load_profile(tmp_path / "b.json")
        for p in (profile, other):
            with psycopg.connect(p.dsn()) as conn:
                assert conn.pgconn.ssl_in_use
        assert main(["site", "init", str(parent / "bad"), "--listen", "not an/address"]) == 2
        assert "--listen" in capsys.readouterr().err and not (parent / "bad").exists()
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_dicom_tls_on_the_archive_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--dicom-tls``: DCMTK's echoscu/storescu with TLS and the site CA get in; plain DICOM and a foreign CA do not."""
    require_orthanc()
    require_postgres()
    import subprocess

    if shutil.which("storescu") is None or shutil.which("echoscu") is None:
        pytest.skip("dcmtk (storescu, echoscu) is not installed")
    from mammotriage.phantom import generate_exam

    parent = _private_parent("mt-tls-dicom-")
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    try:
        assert main(["site", "init", str(folder), "--pg-port", str(pg_port), "--http-port", str(http_port),
                     "--dicom-port", str(dicom_port), "--dicom-tls"]) == 0
        capsys.readouterr()
        assert main(["site", "start", str(folder), "--json"]) == 0
        up = json.loads(capsys.readouterr().out)
        assert up["orthanc"]["dicom_tls"] is True and up["orthanc"]["https"] is True
        ca = str(folder / "tls" / "ca.crt")
        foreign = SiteTls(tmp_path / "foreign")
        foreign.generate()

        def echo(*tls: str) -> int:
            return subprocess.run(["echoscu", "-aec", "MT_ARCHIVE", *tls, "127.0.0.1", str(dicom_port)],
                                  capture_output=True, timeout=60).returncode

        assert echo("+tla", "+cf", ca) == 0
        assert echo() != 0  # plain DICOM is refused
        assert echo("+tla", "+cf", str(foreign.ca_cert)) != 0  # the client does not trust another CA's server
        view = generate_exam(3, rows=256, columns=208).save(tmp_path / "exam")["LCC"]
        sent = subprocess.run(["storescu", "-aec", "MT_ARCHIVE", "+tla", "+cf", ca, "127.0.0.1", str(dicom_port),
                               str(view)], capture_output=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        profile = _profile(folder, tmp_path / "ws.json")
        capsys.readouterr()
        with profile.archive(tmp_path / "cache", 1 << 24) as archive:
            assert len(archive.find_studies()) == 1
        assert main(["site", "tls", str(folder)]) == 0  # renewal keeps DICOM TLS, with the new certificate
        capsys.readouterr()
        assert echo("+tla", "+cf", ca) == 0 and echo() != 0
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_tls_errors_name_the_file_and_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from mammotriage.net.tls import cert_info, openssl

    pki = _hospital_pki(tmp_path / "hospital")
    target = SiteTls(tmp_path / "site")
    # a certificate whose chain does not end in a root needs --tls-ca
    with pytest.raises(TlsError, match="does not end in a root certificate; give the CA"):
        target.install(pki.server_cert, pki.server_key)
    # a key with a passphrase cannot start a server unattended
    locked = tmp_path / "locked.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:secret",
                    "-out", str(locked)], check=True, capture_output=True)
    with pytest.raises(TlsError, match="passphrase"):
        target.install(pki.server_cert, locked, pki.ca_cert)
    # not a certificate: openssl's own words, with the file and the step
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsError) as err:
        cert_info(junk)
    assert str(junk) in str(err.value) and "openssl x509 failed" in str(err.value)
    with pytest.raises(TlsError, match="not a PEM certificate"):
        target.install(junk, pki.server_key, pki.ca_cert)
    assert not target.server_cert.exists()  # nothing was taken
    with pytest.raises(TlsError, match="validity must be"):
        SiteTls(tmp_path / "days").generate(days=0)
    assert not (tmp_path / "days").exists()  # checked before anything is made
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TlsError, match="openssl command is not installed"):
        openssl(["version"], "checking")


def test_an_own_certificate_without_the_loopback_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hospital certificate naming only the server's DNS name: local tools verify the chain (verify-ca),
    workstations verify-full against that name; a profile for 127.0.0.1 is refused."""
    require_orthanc()
    require_postgres()
    from mammotriage.net.tls import openssl

    pki = _hospital_pki(tmp_path / "hospital")  # its CA signs a certificate for one DNS name only
    key, csr, crt, ext = (tmp_path / n for n in ("only.key", "only.csr", "only.crt", "only.ext"))
    openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)], "key")
    openssl(["req", "-new", "-key", str(key), "-subj", "/CN=archive.hospital.example", "-out", str(csr)], "csr")
    ext.write_text("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
                   "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:archive.hospital.example\n")
    openssl(["x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key), "-days", "30",
             "-set_serial", "0x1234", "-extfile", str(ext), "-out", str(crt)], "sign")
    parent = _private_parent("mt-tls-name-")
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    try:
        assert main(["site", "init", str(folder), "--pg-port", str(pg_port), "--http-port", str(http_port),
                     "--dicom-port", str(dicom_port), "--tls-cert", str(crt), "--tls-key", str(key),
                     "--tls-ca", str(pki.ca_cert)]) == 0
        assert main(["site", "start", str(folder), "--json"]) == 0
        capsys.readouterr()
        assert site.site_status(folder)["orthanc"]["answering"] is True  # the chain checked, not the name
        cluster, _, _ = site.load_site(folder)
        assert "sslmode=verify-ca" in cluster.dsn("mt_admin")
        with psycopg.connect(cluster.dsn("mt_admin")) as conn:
            assert conn.pgconn.ssl_in_use
        # a workstation must use a name of the certificate: 127.0.0.1 is refused
        assert main(["site", "profile", str(folder), "--role", "workstation", "--out",
                     str(tmp_path / "ws.json")]) == 2
        assert "archive.hospital.example" in capsys.readouterr().err
        assert main(["site", "profile", str(folder), "--role", "workstation", "--out", str(tmp_path / "ws.json"),
                     "--host", "archive.hospital.example"]) == 0
        assert load_profile(tmp_path / "ws.json").sslmode == "verify-full"
    finally:
        if (folder / site.SITE_FILE).exists():
            site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_remote_access_opens_both_servers_beyond_the_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Configuration only (nothing is started: the test binds nothing beyond 127.0.0.1)."""
    require_orthanc()
    require_postgres()
    parent = _private_parent("mt-tls-remote-")
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    try:
        assert main(["site", "init", str(folder), "--pg-port", str(pg_port), "--http-port", str(http_port),
                     "--dicom-port", str(dicom_port), "--remote-access", "--host", "10.20.30.40"]) == 0
        capsys.readouterr()
        conf, hba = _conf(folder)
        assert "listen_addresses = '*'" in conf
        assert "hostssl all mt_workstation,mt_worker,+mt_reader 0.0.0.0/0 scram-sha-256" in hba
        assert "hostssl all mt_workstation,mt_worker,+mt_reader ::/0 scram-sha-256" in hba
        assert "hostssl all postgres,mt_admin 127.0.0.1/32 scram-sha-256" in hba
        config = json.loads((folder / "orthanc" / "config" / "orthanc.json").read_text())
        # Orthanc itself answers only this host (the relay); the relay is what listens everywhere
        assert config["RemoteAccessAllowed"] is False and config["SslEnabled"] is False
        assert config["MammoTriage"]["Tls"]["RemoteAccess"] is True
        _, orthanc, _ = site.load_site(folder)
        assert orthanc.remote_access is True and orthanc.http_port == http_port and orthanc.url.startswith("https")
        assert main(["site", "profile", str(folder), "--role", "worker", "--out", str(tmp_path / "w.json"),
                     "--host", "10.20.30.40"]) == 0
    finally:
        shutil.rmtree(parent, ignore_errors=True)
