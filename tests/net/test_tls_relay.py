"""The HTTPS relay in front of the site's Orthanc against idle and flooding clients: a real
relay process, a real TLS client, a plain TCP echo server as its target."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from netsupport import free_ports

from mammotriage.net.tls import SiteTls

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return

            def echo(c: socket.socket = conn) -> None:
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)
            threading.Thread(target=echo, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    tls = SiteTls(tmp_path_factory.mktemp("relay-tls") / "tls")
    tls.generate()
    srv, target = _echo_server()
    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "mammotriage.net.tls_relay", "--listen", f"127.0.0.1:{port}",
                             "--target", f"127.0.0.1:{target}", "--pem", str(tls.server_pem),
                             "--idle-timeout", "1.5", "--max-connections", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    assert "tls-relay: https on" in proc.stdout.readline()
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        yield port, context
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        srv.close()


def _connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def _closed_by_peer(s: ssl.SSLSocket) -> bool:
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True


def test_bytes_pass_both_ways(relay: tuple[int, ssl.SSLContext]) -> None:
    port, context = relay
    with _connect(port, context) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(100) == b"GET / HTTP/1.1\r\n\r\n"


def test_an_idle_connection_is_closed(relay: tuple[int, ssl.SSLContext]) -> None:
    """A client that completes the handshake and then sends nothing held its socket
    forever (a few hundred of them took every slot of the archive's HTTPS port)."""
    port, context = relay
    with _connect(port, context) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        s.settimeout(20)  # far above the relay's 1.5 s idle limit
        assert _closed_by_peer(s)


def test_beyond_the_cap_a_connection_is_refused_not_queued(relay: tuple[int, ssl.SSLContext]) -> None:
    port, context = relay
    held = [_connect(port, context) for _ in range(2)]
    try:
        for s in held:  # both relayed
            s.sendall(b"a")
            assert s.recv(1) == b"a"
        with _connect(port, context) as third:
            # closed, never relayed: a queued connection would be relayed (and echo)
            # once the two held ones go idle and are closed
            third.settimeout(20)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                third.sendall(b"c")
            assert _closed_by_peer(third)
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 20
    while True:  # the slots come back once the held connections are gone
        with _connect(port, context) as s:
            s.sendall(b"b")
            try:
                if s.recv(1) == b"b":
                    break
            except (ConnectionResetError, ssl.SSLError, TimeoutError):
                pass
        assert time.monotonic() < deadline
        time.sleep(0.2)
