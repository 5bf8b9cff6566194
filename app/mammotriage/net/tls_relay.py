"""HTTPS in front of the site's Orthanc: a TLS-terminating TCP relay (Python's ``ssl``, OpenSSL).

Why: Debian 12's Orthanc 1.10 serves HTTPS through its packaged civetweb 1.15, which
looks up ``SSL_get_peer_certificate`` in OpenSSL 3 (where it is only a macro) and
crashes on the first HTTPS request. So :class:`mammotriage.net.orthanc.OrthancServer`
with TLS runs Orthanc's HTTP server on a private loopback port (remote access off:
Orthanc refuses any request that does not come from this host) and this relay on the
public port: TLS 1.2 or newer with the site's certificate, each connection piped byte
for byte to Orthanc (HTTP keep-alive, DICOMweb streaming and the Host header pass
unchanged). Nothing is parsed, cached or logged but connection errors.

Against idle and flooding clients: the TLS handshake must finish within
``HANDSHAKE_TIMEOUT_S``; a connection on which no byte moved either way for
``--idle-timeout`` seconds (default 300) is closed; beyond ``--max-connections`` (256)
a new connection is closed at once rather than queued (no socket is held waiting).

``python -m mammotriage.net.tls_relay --listen ADDRESS:PORT --target 127.0.0.1:PORT --pem FILE``
(``OrthancServer.start`` runs it, ``stop`` ends it with SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from typing import Any

__all__ = ["main", "server_context"]

CHUNK = 256 * 1024
MAX_CONNECTIONS = 256
HANDSHAKE_TIMEOUT_S = 15.0
IDLE_TIMEOUT_S = 300.0


def server_context(pem: str) -> ssl.SSLContext:
    """TLS 1.2+ server context with the key and certificate (chain) of ``pem``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pem)
    return context


class _Activity:
    """When a byte last moved on a connection (either way)."""

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity) -> None:
    try:
        while data := await reader.read(CHUNK):
            activity.touch()
            writer.write(data)
            await writer.drain()
            activity.touch()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


async def _until_idle(activity: _Activity, idle_s: float) -> None:
    """Returns once nothing moved for ``idle_s`` seconds."""
    loop = asyncio.get_running_loop()
    while (left := activity.last + idle_s - loop.time()) > 0:
        await asyncio.sleep(min(left, 5.0))


async def _serve(listen_host: str, listen_port: int, target_host: str, target_port: int, pem: str,
                 idle_s: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
    open_now = 0

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        nonlocal open_now
        if open_now >= max_connections:
            print(f"tls-relay: {max_connections} connections open: one more refused", file=sys.stderr, flush=True)
            client_w.close()
            return
        open_now += 1
        try:
            try:
                server_r, server_w = await asyncio.open_connection(target_host, target_port)
            except OSError as exc:
                print(f"tls-relay: cannot reach {target_host}:{target_port}: {exc}", file=sys.stderr, flush=True)
                client_w.close()
                return
            activity = _Activity()
            pipes: asyncio.Future[Any] = asyncio.gather(_pipe(client_r, server_w, activity),
                                                               _pipe(server_r, client_w, activity))
            idle: asyncio.Future[Any] = asyncio.ensure_future(_until_idle(activity, idle_s))
            try:
                await asyncio.wait([pipes, idle], return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                for w in (client_w, server_w):
                    w.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pipes, 5.0)
                for w in (client_w, server_w):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 5.0)
        finally:
            open_now -= 1

    server = await asyncio.start_server(relay, listen_host, listen_port, ssl=server_context(pem),
                                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"tls-relay: https on {listen_host}:{listen_port} -> http {target_host}:{target_port}", flush=True)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mammotriage.net.tls_relay", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="ADDRESS:PORT")
    parser.add_argument("--target", required=True, metavar="127.0.0.1:PORT")
    parser.add_argument("--pem", required=True, help="the server's private key and certificate (chain), PEM")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, metavar="SECONDS",
                        help="close a connection on which nothing moved for this long")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    args = parser.parse_args(argv)
    try:
        (lh, lp), (th, tp) = _address(args.listen), _address(args.target)
        asyncio.run(_serve(lh, lp, th, tp, args.pem, args.idle_timeout, args.max_connections))
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"tls-relay: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
