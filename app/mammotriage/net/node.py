"""The DICOM node: a Storage SCP (C-STORE) and Verification SCP (C-ECHO).

:class:`StorageNode` accepts the mammography storage SOP classes (and the generic
image classes that screening archives use, such as Secondary Capture for digitised
film) in the common transfer syntaxes, JPEG 2000 and JPEG-LS included.  Instances
are stored as received and imported by :class:`~mammotriage.net.receive.ReceivedStore`;
every newly imported instance restarts its study's quiet period in a
:class:`~mammotriage.net.completion.StudyCompletionTracker`.

Access control (see :mod:`mammotriage.net.security`): loopback by default, and
association requests from calling AE titles or hosts that are not on the allow-lists
are rejected with A-ASSOCIATE-RJ (permanent, service user, "calling AE title not
recognised" or "no reason given").  Before that, on ``accept()``,
:mod:`mammotriage.net.admission` closes connections from hosts off the allow-list, and
beyond the per-host and "waiting to associate" limits; a connection that sends no
A-ASSOCIATE-RQ within ``artim_timeout_s`` is closed, and only associated connections
hold one of the ``max_associations`` slots.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time
from pynetdicom.utils import make_target

from mammotriage.config import data_dir
from mammotriage.dicom.codes import GENERIC_IMAGE_SOP_CLASSES, MAMMO_SOP_CLASSES
from mammotriage.net.admission import Admission, AdmissionServer
from mammotriage.net.completion import StudyCompletionTracker
from mammotriage.net.receive import ReceivedStore, ReceiveOutcome, ReceiveResult, Status
from mammotriage.net.security import AccessPolicy, check_bind_policy
from mammotriage.net.settings import NetworkSettings
from mammotriage.store.archive import Archive

__all__ = [
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "NodeStartError",
    "NodeStats",
    "StorageNode",
]

LOG = logging.getLogger(__name__)

#: Storage SOP classes accepted, by UID (PS3.4 Annex B.5).  Multi-frame breast
#: tomosynthesis and projection objects are not accepted: the reader handles
#: single-frame 2D mammograms (configure PACS routing to send the 2D views).
STORAGE_SOP_CLASSES: dict[UID, str] = {**MAMMO_SOP_CLASSES, **GENERIC_IMAGE_SOP_CLASSES}

VERIFICATION_SOP_CLASS = Verification

#: Transfer syntaxes accepted; instances are stored in the one negotiated, unchanged.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
)

#: Receive PDUs of up to 256 KiB (pynetdicom's default is 16 KiB): fewer round trips.
MAX_PDU_SIZE = 262_144


class NodeStartError(RuntimeError):
    """The node could not start listening (port in use, no permission ...)."""


@dataclass
class NodeStats:
    """Counters since the node started."""

    associations: int = 0
    rejected_associations: int = 0
    refused_connections: int = 0
    echoes: int = 0
    received: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0


#: ``on_received(result)``: called after every C-STORE, on the association's thread.
ReceivedCallback = Callable[[ReceiveResult], None]


class StorageNode:
    """Storage SCP + Verification SCP feeding the archive.

    Parameters
    ----------
    settings
        AE title, bind address, port, allow-lists, maximum associations.
    archive
        Archive the received instances are imported into (thread-safe, shared).
    received_dir
        Folder for received files; default ``<data dir>/received``.
    tracker
        Study completion tracker to notify of every newly imported instance.  When
        ``None`` the node creates one with ``settings.quiet_period_s`` (closed by
        :meth:`stop`).
    on_received
        Optional ``callback(result)`` after each C-STORE (UI activity display, tests).

    Examples
    --------
    >>> with Archive() as archive, StorageNode(NetworkSettings(port=0), archive) as node:  # doctest: +SKIP
    ...     node.tracker.add_callback(print)          # prints each completed study UID
    ...     host, port = node.address
    """

    def __init__(
        self,
        settings: NetworkSettings,
        archive: Archive,
        *,
        received_dir: str | Path | None = None,
        tracker: StudyCompletionTracker | None = None,
        on_received: ReceivedCallback | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.policy = AccessPolicy.from_settings(settings)
        self.store = ReceivedStore(
            Path(received_dir) if received_dir is not None else data_dir() / "received", archive
        )
        self._own_tracker = tracker is None
        self.tracker = tracker or StudyCompletionTracker(settings.quiet_period_s)
        self.on_received = on_received
        self.stats = NodeStats()
        self._stats_lock = threading.Lock()
        self.admission = Admission(self.policy, settings.max_associations,
                                   settings.max_connections_per_host,
                                   on_refused=lambda: self._count(refused_connections=1))
        self._server: AdmissionServer | None = None
        self._ae = self._build_ae()

    # -- set-up ------------------------------------------------------------------

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        # Slots are counted by self.admission among associated connections; pynetdicom's
        # own count (every open connection) must never refuse before it does.
        ae.maximum_associations = (self.settings.max_associations + self.admission.max_pending
                                   + self.settings.max_associations)
        ae.maximum_pdu_size = MAX_PDU_SIZE
        # ARTIM: a connection that has not sent A-ASSOCIATE-RQ by then is closed.
        ae.acse_timeout = self.settings.artim_timeout_s
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        # Defence in depth: pynetdicom's own check of the calling AE title.
        ae.require_calling_aet = list(self.settings.allowed_calling_ae_titles)
        # A sender must address this node by its title (network.json: require_called_ae_title).
        ae.require_called_aet = self.settings.require_called_ae_title
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(
            VERIFICATION_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        return ae

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the node listens on (the real port when 0 was asked for)."""
        if self._server is None:
            raise RuntimeError("the node is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def start(self) -> None:
        """Start listening in background threads.

        Raises
        ------
        InsecureBindError
            A non-loopback address without both allow-lists.
        NodeStartError
            The address cannot be bound (port in use, privileged port, no such address).
        """
        if self._server is not None:
            return
        check_bind_policy(self.settings)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        where = f"{self.settings.bind}:{self.settings.port}"
        try:
            server = self._ae.make_server(
                (self.settings.bind, self.settings.port), evt_handlers=handlers,
                server_class=AdmissionServer, admission=self.admission,
                artim_timeout_s=self.settings.artim_timeout_s,
            )
        except PermissionError as exc:
            raise NodeStartError(
                f"cannot listen on {where}: permission denied"
                + (" (ports below 1024 need root; use 11112)" if self.settings.port < 1024 else "")
            ) from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NodeStartError(
                    f"cannot listen on {where}: the port is in use (is another DICOM node running?)"
                ) from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise NodeStartError(
                    f"cannot listen on {where}: this machine has no such address"
                ) from exc
            raise NodeStartError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        if not isinstance(server, AdmissionServer):  # make_server is typed for the base class
            raise NodeStartError(f"cannot listen on {where}: {type(server).__name__} is not an AdmissionServer")
        # What AE.start_server(block=False) does, with our server class.
        self._ae._servers.append(server)
        threading.Thread(target=make_target(server.serve_forever), daemon=True,
                         name=f"AcceptorServer@{self.settings.port}").start()
        self._server = server
        host, port = self.address
        LOG.info(
            "DICOM node %s listening on %s:%d (calling AE titles: %s; hosts: %s)",
            self.settings.ae_title,
            host,
            port,
            ", ".join(self.settings.allowed_calling_ae_titles) or "any",
            ", ".join(self.settings.allowed_hosts) or "any",
        )

    def stop(self) -> None:
        """Stop listening, wait for open associations, close an own tracker."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            for assoc in list(self._ae.active_associations):
                assoc.join(timeout=10)
        self._ae.shutdown()
        if self._own_tracker:
            self.tracker.close()

    def __enter__(self) -> StorageNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- event handlers ----------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title or "").strip()
        host = str(assoc.requestor.address)
        reason = self.policy.check(calling, host)
        if reason is None:
            if self.admission.associate(host, int(assoc.requestor.port)):
                return
            self._count(rejected_associations=1)
            LOG.warning("association from %s (%s) rejected: all %d association slots are in use",
                        calling, host, self.settings.max_associations)
            # Transient, service provider (presentation), "local limit exceeded".
            assoc.acse.send_reject(0x02, 0x03, 0x02)
            assoc.kill()
            return
        self.admission.requested(host, int(assoc.requestor.port))  # no longer waiting; no slot
        self._count(rejected_associations=1)
        LOG.warning("association from %s (%s) rejected: %s", calling, host, reason)
        # Permanent rejection by the service user: "calling AE title not recognised"
        # for an unknown title, "no reason given" for an unknown host (PS3.8 9.3.4).
        diagnostic = 0x03 if not self.policy.ae_title_allowed(calling) else 0x01
        assoc.acse.send_reject(0x01, 0x01, diagnostic)
        assoc.kill()

    def _on_accepted(self, event: Any) -> None:
        self._count(associations=1)
        sock = event.assoc.dul.socket
        if sock is not None and sock.socket is not None:
            # Associated: reads may now wait as long as the network timeout.
            sock.socket.settimeout(self._ae.network_timeout)
        LOG.info(
            "association accepted from %s (%s)",
            str(event.assoc.requestor.ae_title).strip(),
            event.assoc.requestor.address,
        )

    def _on_echo(self, event: Any) -> int:
        self._count(echoes=1)
        return 0x0000

    def _on_store(self, event: Any) -> Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - malformed file meta from the peer
            result = ReceiveResult(
                ReceiveOutcome.REJECTED,
                Status.CANNOT_UNDERSTAND,
                f"cannot encode file meta information: {exc}",
                "not-dicom",
                sop_uid=sop_uid,
                calling_ae_title=calling,
            )
        else:
            result = self.store.receive(data, sop_instance_uid=sop_uid, calling_ae_title=calling)
        self._count(
            received=1,
            imported=result.outcome is ReceiveOutcome.IMPORTED,
            duplicates=result.outcome is ReceiveOutcome.DUPLICATE,
            rejected=result.outcome is ReceiveOutcome.REJECTED,
            failed=result.outcome is ReceiveOutcome.FAILED,
        )
        if result.outcome is ReceiveOutcome.IMPORTED and result.study_uid:
            self.tracker.touch(result.study_uid)
        if self.on_received is not None:
            try:
                self.on_received(result)
            except Exception:  # a listener must not fail the C-STORE
                LOG.exception("on_received callback failed")
        rsp = Dataset()
        rsp.Status = int(result.status)
        if not result.ok and result.reason:
            # Error Comment (0000,0902) is LO: at most 64 characters.
            rsp.ErrorComment = result.reason[:64]
        return rsp
