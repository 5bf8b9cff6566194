"""Prove that a piece of code makes no network connection but to its DICOM peers.

:class:`NetworkGuard` replaces :meth:`socket.socket.connect` (and ``connect_ex``,
``sendto``, :func:`socket.getaddrinfo` for names) for the duration of a ``with``
block.  A connection to an address that is not an allowed DICOM peer raises
:class:`NetworkBlockedError` *before* any packet is sent, and is recorded in
:attr:`NetworkGuard.blocked`.  Unix-domain sockets (local inter-process
communication, e.g. :mod:`multiprocessing`) are not network traffic and pass.

Used by the tests ("the app makes no network connection except the configured
DICOM peers") and by ``mammotriage selfcheck``, which loads the model inside a guard
so that a library trying to reach a model hub fails the check instead of silently
phoning out.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from mammotriage.net.settings import NetworkSettings

__all__ = ["NetworkBlockedError", "NetworkGuard", "dicom_peers"]


class NetworkBlockedError(ConnectionRefusedError):
    """An outgoing connection refused by :class:`NetworkGuard` (nothing was sent)."""


def _canonical(host: str) -> str | None:
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def dicom_peers(settings: NetworkSettings, *, node_port: int | None = None) -> list[tuple[str, int]]:
    """The (host, port) pairs the program may connect to under ``settings``.

    The configured PACS, plus our own node on loopback (``echoscu``-style self tests)
    when ``node_port`` is given.
    """
    peers: list[tuple[str, int]] = []
    if settings.pacs is not None:
        peers.append((settings.pacs.host, settings.pacs.port))
    if node_port is not None:
        host = settings.bind if settings.bind not in ("0.0.0.0", "::") else "127.0.0.1"
        peers.append((host, node_port))
    return peers


class NetworkGuard:
    """Context manager refusing every outgoing connection but to allowed peers.

    Parameters
    ----------
    allowed
        ``(host, port)`` pairs that may be connected to (IP literals or
        ``localhost``).

    Attributes
    ----------
    blocked
        ``(host, port)`` of every refused attempt, in order.
    allowed_connections
        ``(host, port)`` of every connection let through.

    Notes
    -----
    The patch is process-wide (all threads) while active; guards do not nest.
    Only Python-level sockets are seen: a C extension opening its own sockets would
    pass unnoticed (none of the project's dependencies does for its normal work).
    """

    _active: NetworkGuard | None = None
    _active_lock = threading.Lock()

    def __init__(self, allowed: Iterable[tuple[str, int]] = ()) -> None:
        self._allowed: set[tuple[str, int]] = set()
        for host, port in allowed:
            self.allow(host, port)
        self.blocked: list[tuple[str, int]] = []
        self.allowed_connections: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._saved: dict[str, Any] = {}
        self._own_attrs: set[str] = set()

    def allow(self, host: str, port: int) -> None:
        """Allow one more peer (also while the guard is active)."""
        canon = _canonical(host)
        if canon is None:
            raise ValueError(f"allowed peer {host!r} must be an IP address or localhost")
        self._allowed.add((canon, int(port)))

    def is_allowed(self, host: str, port: int) -> bool:
        """Whether a connection to ``(host, port)`` would be let through."""
        canon = _canonical(str(host))
        return canon is not None and (canon, int(port)) in self._allowed

    # -- patching ------------------------------------------------------------------

    def _check(self, sock: socket.socket, address: Any) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        if not isinstance(address, tuple) or len(address) < 2:
            with self._lock:
                self.blocked.append((repr(address), -1))
            raise NetworkBlockedError(f"network access blocked: unsupported address {address!r}")
        host, port = str(address[0]), int(address[1])
        if not self.is_allowed(host, port):
            with self._lock:
                self.blocked.append((host, port))
            raise NetworkBlockedError(
                f"network access blocked: {host}:{port} is not a configured DICOM peer"
            )
        with self._lock:
            self.allowed_connections.append((host, port))

    def __enter__(self) -> NetworkGuard:
        with NetworkGuard._active_lock:
            if NetworkGuard._active is not None:
                raise RuntimeError("a NetworkGuard is already active")
            NetworkGuard._active = self
        guard = self
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        real_sendto = socket.socket.sendto
        real_getaddrinfo = socket.getaddrinfo
        self._own_attrs = {n for n in ("connect", "connect_ex", "sendto") if n in vars(socket.socket)}
        self._saved = {
            "connect": real_connect,
            "connect_ex": real_connect_ex,
            "sendto": real_sendto,
            "getaddrinfo": real_getaddrinfo,
        }

        def connect(sock: socket.socket, address: Any) -> None:
            guard._check(sock, address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            guard._check(sock, address)
            return real_connect_ex(sock, address)

        def sendto(sock: socket.socket, data: Any, *args: Any) -> int:
            address = args[-1]
            guard._check(sock, address)
            return real_sendto(sock, data, *args)

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            # A name lookup is itself network traffic (DNS): only literals pass.
            if host is not None and _canonical(str(host if not isinstance(host, bytes)
                                                    else host.decode())) is None:
                with guard._lock:
                    guard.blocked.append((str(host), int(port) if str(port).isdigit() else -1))
                raise NetworkBlockedError(
                    f"network access blocked: name lookup of {host!r} (DNS) is not allowed"
                )
            return real_getaddrinfo(host, port, *args, **kwargs)

        socket.socket.connect = connect  # type: ignore[method-assign, assignment]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]
        socket.socket.sendto = sendto  # type: ignore[method-assign, assignment]
        socket.getaddrinfo = getaddrinfo
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name in ("connect", "connect_ex", "sendto"):
            if name in self._own_attrs:
                setattr(socket.socket, name, self._saved[name])
            else:  # inherited from _socket.socket: remove our override
                delattr(socket.socket, name)
        socket.getaddrinfo = self._saved["getaddrinfo"]
        with NetworkGuard._active_lock:
            NetworkGuard._active = None
