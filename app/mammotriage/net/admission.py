"""Admission of TCP connections to the DICOM node, before any association slot is taken.

pynetdicom counts every open connection as an association, also one that never sends
an A-ASSOCIATE-RQ, so a handful of idle or garbage connections used to fill the
node's slots and lock the PACS out.  :class:`AdmissionServer` (a
``ThreadedAssociationServer``) decides at ``accept()`` time, before a thread or a
slot exists:

* a peer address that is not on the host allow-list is closed at once;
* at most ``max_connections_per_host`` open connections per peer address;
* at most ``max_connections_per_host`` + :data:`PENDING_LIMIT_FACTOR` *
  ``max_associations`` connections that have not yet sent A-ASSOCIATE-RQ (so one host
  cannot fill that pool either); the short ARTIM timeout (``artim_timeout_s``, the
  node's ACSE timeout) closes them.

Association *slots* (``max_associations``) are then counted among connections that
did send an acceptable A-ASSOCIATE-RQ (:meth:`Admission.associate`), so an idle
connection never holds one.  A request beyond the limit gets A-ASSOCIATE-RJ
transient, "local limit exceeded", as the standard asks (PS3.8 9.3.4).

The bookkeeping (:class:`Admission`) is independent of the socket server, so a
shared front-end could apply the same rules later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from mammotriage.net.security import AccessPolicy

__all__ = ["PENDING_LIMIT_FACTOR", "Admission", "AdmissionServer"]

LOG = logging.getLogger(__name__)

#: Connections still waiting for their A-ASSOCIATE-RQ: this many per slot, plus one
#: host's worth.
PENDING_LIMIT_FACTOR = 2
#: A refused host is logged at most once per this many seconds (with a count).
LOG_INTERVAL_S = 60.0


@dataclass
class Admission:
    """Thread-safe counts of open connections, by peer and by state.

    Parameters
    ----------
    policy
        Host allow-list, checked on accept.
    max_associations
        Associations (connections that sent an acceptable A-ASSOCIATE-RQ) at once.
    max_connections_per_host
        Open TCP connections per peer address, whatever their state.
    on_refused
        Called (without the lock) for every connection closed on accept.
    """

    policy: AccessPolicy
    max_associations: int
    max_connections_per_host: int
    on_refused: Callable[[], None] | None = None
    refused: int = 0
    _per_host: Counter[str] = field(default_factory=Counter)
    _pending: set[tuple[str, int]] = field(default_factory=set)
    _associated: set[tuple[str, int]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_log: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def max_pending(self) -> int:
        """Connections allowed to wait for their A-ASSOCIATE-RQ at once."""
        return self.max_connections_per_host + PENDING_LIMIT_FACTOR * self.max_associations

    def admit_connection(self, host: str, port: int) -> str | None:
        """Register a new connection; ``None`` when admitted, else why it is closed."""
        with self._lock:
            if not self.policy.host_allowed(host):
                reason = "host is not on the allow-list"
            elif self._per_host[host] >= self.max_connections_per_host:
                reason = f"host already has {self._per_host[host]} open connections (the limit)"
            elif len(self._pending) >= self.max_pending:
                reason = f"{len(self._pending)} connections are waiting to associate (the limit)"
            else:
                self._per_host[host] += 1
                self._pending.add((host, port))
                return None
            self.refused += 1
        self._log_refusal(host, reason)
        if self.on_refused is not None:
            self.on_refused()
        return reason

    def requested(self, host: str, port: int) -> None:
        """The connection sent an A-ASSOCIATE-RQ that is rejected: no slot, not waiting."""
        with self._lock:
            self._pending.discard((host, port))

    def associate(self, host: str, port: int) -> bool:
        """The connection sent an acceptable A-ASSOCIATE-RQ: take a slot if one is free."""
        with self._lock:
            self._pending.discard((host, port))
            if len(self._associated) >= self.max_associations:
                return False
            self._associated.add((host, port))
            return True

    def release(self, host: str, port: int) -> None:
        """The connection is closed."""
        with self._lock:
            self._pending.discard((host, port))
            self._associated.discard((host, port))
            if self._per_host[host] > 1:
                self._per_host[host] -= 1
            else:
                self._per_host.pop(host, None)

    def counts(self) -> dict[str, int]:
        """Open connections now: ``pending``, ``associated``, ``hosts``."""
        with self._lock:
            return {"pending": len(self._pending), "associated": len(self._associated),
                    "hosts": len(self._per_host)}

    def _log_refusal(self, host: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last_log.get(host, (-LOG_INTERVAL_S, 0))
            if now - last < LOG_INTERVAL_S:
                self._last_log[host] = (last, skipped + 1)
                return
            self._last_log[host] = (now, 0)
        more = f" ({skipped} more refused since the last message)" if skipped else ""
        LOG.warning("connection from %s closed: %s%s", host, reason, more)


class _AdmittedRequestHandler(RequestHandler):
    """Runs one association and then gives its connection back to :class:`Admission`.

    pynetdicom's handler starts the association thread and returns; this one waits for
    it (in the server's per-connection thread) so the release is never missed.
    """

    def handle(self) -> None:
        host, port = str(self.client_address[0]), int(self.client_address[1])
        try:
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            self.server.admission.release(host, port)  # type: ignore[attr-defined]


class AdmissionServer(ThreadedAssociationServer):
    """A ``ThreadedAssociationServer`` that asks :class:`Admission` on ``accept()``."""

    # Connection threads never keep the process or server.shutdown() waiting: the node
    # joins its associations itself, with a timeout.
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, admission: Admission, artim_timeout_s: float, **kwargs: Any) -> None:
        self.admission = admission
        self.artim_timeout_s = artim_timeout_s
        kwargs["request_handler"] = _AdmittedRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[Any, Any]:
        """Accept, with a read timeout of ``artim_timeout_s`` until the association is
        accepted: a peer that sends part of a PDU and stops cannot block its thread
        (accepted sockets are blocking otherwise)."""
        sock, address = super().get_request()
        sock.settimeout(self.artim_timeout_s)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Called by socketserver before a thread is made; False closes the socket."""
        return self.admission.admit_connection(str(client_address[0]), int(client_address[1])) is None
