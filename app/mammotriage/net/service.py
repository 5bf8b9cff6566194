"""The network side of the workstation as one start/stop object.

:class:`NetworkService` owns the DICOM node, the study completion tracker and the
outbox sender, so that ``mammotriage serve`` and the reading workstation (which runs
it in the background, without Qt knowing any of it) start and stop the same thing.

Connecting triage::

    service = NetworkService()
    service.on_study_complete(lambda study_uid: queue_triage_for(study_uid))
    service.start()
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mammotriage.config import archive_path
from mammotriage.net.completion import StudyCallback, StudyCompletionTracker
from mammotriage.net.node import ReceivedCallback, StorageNode
from mammotriage.net.outbox import Outbox, OutboxSender
from mammotriage.net.settings import NetworkSettings, load_settings
from mammotriage.store.archive import Archive

__all__ = ["NetworkService"]

LOG = logging.getLogger(__name__)


class NetworkService:
    """DICOM node + completion tracker + outbox sender.

    Parameters
    ----------
    settings
        Settings to use; default: ``network.json`` (:func:`load_settings`).
    archive
        Archive to import into; default: a new one on :func:`archive_path` (closed
        by :meth:`stop`).
    settings_loader
        ``() -> NetworkSettings`` re-read by the sender before each pass, so that a
        changed PACS address takes effect without a restart; default: reload
        ``network.json`` when ``settings`` was not given, else keep ``settings``.
    received_dir
        Folder for received files (default ``<data dir>/received``).
    send
        Run the outbox sender (default ``True``).
    """

    def __init__(
        self,
        settings: NetworkSettings | None = None,
        *,
        archive: Archive | None = None,
        settings_loader: Callable[[], NetworkSettings] | None = None,
        received_dir: str | Path | None = None,
        send: bool = True,
    ) -> None:
        if settings is None:
            settings = load_settings()
            settings_loader = settings_loader or load_settings
        self.settings = settings
        self._own_archive = archive is None
        self.archive = archive if archive is not None else Archive(archive_path())
        self.tracker = StudyCompletionTracker(settings.quiet_period_s)
        self.node = StorageNode(
            settings, self.archive, received_dir=received_dir, tracker=self.tracker
        )
        self.outbox = Outbox(self.archive.path)
        self.sender: OutboxSender | None = (
            OutboxSender(self.outbox, settings, settings_loader=settings_loader) if send else None
        )
        self._started = False

    def on_study_complete(self, callback: StudyCallback) -> None:
        """Call ``callback(study_uid)`` when a received study's quiet period ends."""
        self.tracker.add_callback(callback)

    def on_received(self, callback: ReceivedCallback) -> None:
        """Call ``callback(result)`` after every C-STORE (activity display)."""
        self.node.on_received = callback

    @property
    def address(self) -> tuple[str, int]:
        """Where the node listens."""
        return self.node.address

    def start(self) -> None:
        """Start listening and sending.

        Raises
        ------
        InsecureBindError, NodeStartError
            See :meth:`StorageNode.start`; nothing is left running.
        """
        if self._started:
            return
        self.node.start()
        if self.sender is not None:
            self.sender.start()
        self._started = True

    def stop(self) -> None:
        """Stop everything and close what the service opened."""
        if self.sender is not None:
            self.sender.stop()
        self.node.stop()
        self.tracker.close()
        self.outbox.close()
        if self._own_archive:
            self.archive.close()
        self._started = False

    def status(self) -> dict[str, Any]:
        """Listening address, counters, studies waiting, outbox counts (JSON-ready)."""
        stats = self.node.stats
        return {
            "ae_title": self.settings.ae_title,
            "listening": "{}:{}".format(*self.node.address) if self.node.running else None,
            "received": stats.received,
            "imported": stats.imported,
            "duplicates": stats.duplicates,
            "rejected": stats.rejected,
            "failed": stats.failed,
            "associations": stats.associations,
            "rejected_associations": stats.rejected_associations,
            "refused_connections": stats.refused_connections,
            "studies_waiting": len(self.tracker.pending()),
            "outbox": self.outbox.counts(),
            "pacs": str(self.settings.pacs) if self.settings.pacs else None,
        }

    def __enter__(self) -> NetworkService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
