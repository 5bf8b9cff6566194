"""Hospital integration: the DICOM node, results back to PACS, offline self-check.

Modules
-------
settings
    ``network.json``: AE title, port, bind address, allow-lists, PACS peer.
security
    Secure-by-default bind policy and calling AE title / host allow-lists.
receive
    Received instances stored as received and imported into the archive.
completion
    :class:`StudyCompletionTracker`: "study complete" after a quiet period.
node
    :class:`StorageNode`: Storage + Verification SCP (pynetdicom).
outbox
    Persistent outbox and C-STORE sender with retries.
service
    :class:`NetworkService`: node + tracker + sender as one start/stop object.
guard
    :class:`NetworkGuard`: refuse every connection except to DICOM peers.
selfcheck
    ``mammotriage selfcheck``.
commands
    ``add_net_commands(subparsers)`` for the command line.
orthanc
    Site mode: :class:`~mammotriage.net.orthanc.OrthancServer`, the site's image
    archive (configuration, credentials, start/stop/status).
dicomweb
    Site mode: :class:`~mammotriage.net.dicomweb.DicomWebArchive` (QIDO-RS, WADO-RS into
    a byte-bounded cache, STOW-RS) and the stable-study watcher.

Importing this package is light: pynetdicom, requests and dicomweb-client are imported
by the modules that use them.
"""

from mammotriage.net.completion import StudyCompletionTracker
from mammotriage.net.settings import (
    NetworkConfigError,
    NetworkSettings,
    PeerSettings,
    load_settings,
)

__all__ = [
    "NetworkConfigError",
    "NetworkSettings",
    "PeerSettings",
    "StudyCompletionTracker",
    "load_settings",
]
