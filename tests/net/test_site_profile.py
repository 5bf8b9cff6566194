"""``mammotriage site profile`` and ``net.site_profile``: a workstation's way into a site (real servers' folders)."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from netsupport import free_ports, require_postgres
from orthancsupport import require_orthanc

from mammotriage.cli import main
from mammotriage.net import site
from mammotriage.net.site_profile import FORMAT, SiteProfileError, load_profile


@pytest.fixture(scope="module")
def site_folder() -> Iterator[Path]:
    """One site server folder (``site init``, both servers stopped) for the module."""
    require_orthanc()
    require_postgres()
    # tempfile, not tmp_path: run as root, the cluster is handed to the postgres account
    parent = Path(tempfile.mkdtemp(prefix="mt-profile-"))
    parent.chmod(0o755)
    folder = parent / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    site.init_site(folder, pg_port=pg_port, http_port=http_port, dicom_port=dicom_port, hosts=["10.1.2.3"])
    try:
        yield folder
    finally:
        site.stop_site(folder)
        shutil.rmtree(parent, ignore_errors=True)


def test_profile_is_private_and_joins_the_store(site_folder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ws.json"
    assert main(["site", "profile", str(site_folder), "--role", "workstation", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "mode 0600" in said and str(out) in said
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = json.loads(out.read_text())
    cluster, orthanc, _ = site.load_site(site_folder)
    assert data["format"] == FORMAT and data["role"] == "workstation"
    assert data["postgres"] == {"host": "127.0.0.1", "port": cluster.port, "database": "mammotriage",
                                "user": "mt_workstation", "password": cluster.password("mt_workstation"),
                                "sslmode": "verify-full"}
    user, password = orthanc.credentials()
    assert data["dicomweb"] == {"url": f"https://127.0.0.1:{orthanc.http_port}/dicom-web", "user": user,
                                "password": password}
    # the site CA's certificate, never a key
    assert data["tls"]["ca"] == (site_folder / "tls" / "ca.crt").read_text() and "PRIVATE" not in out.read_text()
    assert password not in said and data["postgres"]["password"] not in said  # secrets stay in the file

    # the profile's connection string reaches the store as the workstation role
    from mammotriage.store.pg.events import SiteCorrectionLog

    profile = load_profile(out)
    cluster.start()
    try:
        with SiteCorrectionLog(profile.dsn(), "ws-1") as log:
            event = log.append(reader="ana", exam_key="E1", action="note", payload={"text": "joined"})
            assert event.seq >= 1 and log.events(exam_key="E1")[-1].event_id == event.event_id
    finally:
        cluster.stop()


def test_worker_profile_and_site_host(site_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "worker.json"
    assert main(["site", "profile", str(site_folder), "--role", "worker", "--out", str(out),
                 "--host", "10.1.2.3"]) == 0
    profile = load_profile(out)
    assert (profile.role, profile.user, profile.pg_host) == ("worker", "mt_worker", "10.1.2.3")
    assert profile.dicomweb_url.startswith("https://10.1.2.3:") and profile.dicomweb_url.endswith("/dicom-web")
    assert "host=10.1.2.3" in profile.dsn() and "sslmode=verify-full" in profile.dsn()
    # a host the server certificate does not name: clients could not verify it
    assert main(["site", "profile", str(site_folder), "--role", "worker", "--out", str(tmp_path / "w2.json"),
                 "--host", "10.9.9.9"]) == 2
    assert not (tmp_path / "w2.json").exists()


def test_profile_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "profile", str(tmp_path), "--role", "workstation", "--out", str(tmp_path / "p.json")]) == 2
    assert "not a site server folder" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
    with pytest.raises(SystemExit):
        main(["site", "profile", str(tmp_path), "--role", "admin", "--out", str(tmp_path / "p.json")])


def _good() -> dict:
    return {"format": FORMAT, "role": "workstation",
            "postgres": {"host": "127.0.0.1", "port": 5432, "database": "mammotriage", "user": "mt_workstation",
                         "password": "pw"},
            "dicomweb": {"url": "http://127.0.0.1:8042/dicom-web", "user": "mammotriage", "password": "pw2"}}


def _write(path: Path, data: object, mode: int = 0o600) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


def test_a_good_profile_loads(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path / "p.json", _good()))
    assert (profile.pg_port, profile.user, profile.dicomweb_user) == (5432, "mt_workstation", "mammotriage")
    assert "pw" not in profile.where()


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640])
def test_a_profile_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "p.json", _good(), mode)
    with pytest.raises(SiteProfileError, match=r"readable by others.*chmod 600"):
        load_profile(path)


def _without(section: str, name: str) -> dict:
    data = _good()
    (data[section] if section else data).pop(name)
    return data


def _with(section: str, name: str, value: object) -> dict:
    data = _good()
    (data[section] if section else data)[name] = value
    return data


@pytest.mark.parametrize(("data", "field"), [
    (_without("postgres", "password"), "'postgres.password' is missing"),
    (_without("dicomweb", "url"), "'dicomweb.url' is missing"),
    (_without("", "role"), "'role' is missing"),
    (_with("postgres", "port", "5432"), "'postgres.port' must be a port"),
    (_with("postgres", "port", 70000), "'postgres.port' must be a port"),
    (_with("postgres", "port", True), "'postgres.port' must be a port"),
    (_with("postgres", "host", ""), "'postgres.host' must be non-empty"),
    (_with("dicomweb", "user", 7), "'dicomweb.user' must be non-empty"),
    (_with("dicomweb", "url", "ftp://x/"), "'dicomweb.url' must be an http"),
    (_with("", "role", "admin"), "'role' must be one of workstation, worker"),
    (_with("", "format", "mammotriage-site/1"), "'format' must be"),
    (_with("", "postgres", []), "'postgres' must be an object"),
    ("[1, 2]", "a JSON object"),
    ("{ not json", "not JSON"),
])
def test_every_bad_field_is_named(tmp_path: Path, data: object, field: str) -> None:
    path = _write(tmp_path / "p.json", data)
    with pytest.raises(SiteProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_missing_and_unreadable_profiles(tmp_path: Path) -> None:
    with pytest.raises(SiteProfileError, match="no such site profile"):
        load_profile(tmp_path / "nope.json")
    (tmp_path / "dir.json").mkdir(mode=0o700)
    with pytest.raises(SiteProfileError, match=r"dir\.json"):
        load_profile(tmp_path / "dir.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    binary.chmod(0o600)
    with pytest.raises(SiteProfileError, match="cannot read"):
        load_profile(binary)


def test_app_site_refuses_a_bad_profile_before_any_window(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    path = _write(tmp_path / "p.json", _good(), 0o644)
    assert main(["app", "--site", str(path), "--no-demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("app --site: ") and str(path) in err and "readable by others" in err


def test_connections_notice_a_vanished_server_within_a_minute(site_folder: Path, tmp_path: Path) -> None:
    """Keepalives and a TCP user timeout on the socket itself (the system default would
    leave an idle connection to a powered-off server open for about two hours)."""
    import socket

    import psycopg

    out = tmp_path / "ws.json"
    assert main(["site", "profile", str(site_folder), "--role", "workstation", "--out", str(out)]) == 0
    cluster, _, _ = site.load_site(site_folder)
    cluster.start()
    try:
        for dsn in (load_profile(out).dsn(), cluster.dsn("mt_worker")):
            with psycopg.connect(dsn) as conn:
                s = socket.socket(fileno=socket.dup(conn.pgconn.socket))
                try:
                    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                    idle = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                    interval = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
                    count = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
                    assert idle + interval * count <= 60, (idle, interval, count)
                    assert 0 < s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) <= 30000
                finally:
                    s.close()
    finally:
        cluster.stop()


def test_audit_verify_reads_the_site_store(site_folder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``audit verify`` read only the workstation's SQLite archive: in site mode the
    corrections are in the site store. ``--site PROFILE`` checks hashes and links as the
    workstation role; ``--site-folder DIR`` on the server checks the MACs too, starting a
    stopped server and stopping it again."""
    from mammotriage.store.pg.events import SiteCorrectionLog, connect

    out = tmp_path / "ws.json"
    assert main(["site", "profile", str(site_folder), "--role", "workstation", "--out", str(out)]) == 0
    capsys.readouterr()
    cluster, _, _ = site.load_site(site_folder)
    cluster.start()
    try:
        with SiteCorrectionLog(load_profile(out).dsn(), "ws-audit") as log:
            made = [log.append(reader="ana", exam_key="E-audit", action="note", payload={"text": str(i)})
                    for i in range(3)]
        assert main(["audit", "verify", "--site", str(out), "--json"]) == 0
        ws = json.loads(capsys.readouterr().out)
        assert ws["ok"] and ws["events"] >= 3 and ws["macs_checked"] is False and str(out) in ws["store"]
        assert main(["audit", "verify", "--site", str(out)]) == 0
        assert "the keyed MACs need the site's key" in capsys.readouterr().out
    finally:
        cluster.stop()
    assert main(["audit", "verify", "--site-folder", str(site_folder), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["ok"] and full["macs_checked"] is True and full["events"] == ws["events"]
    assert not cluster.status().running  # stopped again
    cluster.start()
    try:  # the documented admin path, used to change a reader's note
        with connect(cluster.dsn("mt_admin")) as conn, conn.transaction():
            conn.execute("ALTER TABLE correction_events DISABLE TRIGGER USER")
            conn.execute("UPDATE correction_events SET payload = '{\"text\": \"edited\"}' WHERE seq = %s",
                         (made[1].seq,))
            conn.execute("ALTER TABLE correction_events ENABLE TRIGGER USER")
        assert main(["audit", "verify", "--site-folder", str(site_folder)]) == 1
        said = capsys.readouterr().out
        assert "TAMPERED" in said and f"event {made[1].seq} " in said
        assert cluster.status().running  # it was running: left running
    finally:
        cluster.stop()
    assert main(["audit", "verify", "--site", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
