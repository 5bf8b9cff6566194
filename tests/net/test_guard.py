"""NetworkGuard: refuses connections before any packet leaves, except to DICOM peers."""

from __future__ import annotations

import socket

import pytest

from mammotriage.net.guard import NetworkBlockedError, NetworkGuard, dicom_peers
from mammotriage.net.settings import NetworkSettings, PeerSettings


@pytest.fixture
def listener():
    """A loopback TCP listener; its accept queue shows whether anything connected."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    yield srv
    srv.close()


def _nothing_connected(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def test_unlisted_peer_is_refused_before_connecting(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with NetworkGuard() as guard:
        with pytest.raises(NetworkBlockedError, match=f"127.0.0.1:{port} is not a configured DICOM peer"):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        with socket.socket() as s, pytest.raises(NetworkBlockedError):
            s.connect_ex(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, pytest.raises(NetworkBlockedError):
            u.sendto(b"x", ("127.0.0.1", port))
    assert guard.blocked == [("127.0.0.1", port)] * 3
    assert _nothing_connected(listener)


def test_listed_peer_passes_and_patch_is_undone(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    original = socket.socket.connect
    with NetworkGuard([("localhost", port)]) as guard, socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert guard.allowed_connections == [("127.0.0.1", port)]
    assert guard.blocked == []
    assert not _nothing_connected(listener)
    assert socket.socket.connect is original
    assert "connect" not in vars(socket.socket)


def test_name_lookups_are_refused_without_reaching_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def fake_getaddrinfo(host, *args, **kwargs):
        calls.append(host)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with NetworkGuard() as guard:
        with pytest.raises(NetworkBlockedError, match="name lookup"):
            socket.getaddrinfo("models.example.invalid", 443)
        socket.getaddrinfo("127.0.0.1", 104)  # a literal needs no DNS
    assert calls == ["127.0.0.1"]
    assert guard.blocked == [("models.example.invalid", 443)]


def test_unix_sockets_are_not_network(tmp_path) -> None:
    path = str(tmp_path / "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    try:
        with NetworkGuard() as guard, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
        assert guard.blocked == []
    finally:
        srv.close()


def test_guards_do_not_nest_and_peers_come_from_settings() -> None:
    with NetworkGuard(), pytest.raises(RuntimeError, match="already active"):
        NetworkGuard().__enter__()
    s = NetworkSettings(pacs=PeerSettings("PACS", "10.0.0.9", 104))
    assert dicom_peers(s, node_port=11112) == [("10.0.0.9", 104), ("127.0.0.1", 11112)]
    guard = NetworkGuard(dicom_peers(s))
    assert guard.is_allowed("10.0.0.9", 104) and guard.is_allowed("::ffff:10.0.0.9", 104)
    assert not guard.is_allowed("10.0.0.9", 105)
    with pytest.raises(ValueError, match="IP address"):
        guard.allow("pacs.local", 104)
