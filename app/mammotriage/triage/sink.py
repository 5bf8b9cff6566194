"""Where the triage side hands the DICOM results it writes (AI SR and SEG, the readers'
findings SR): a :class:`ResultSink`, injected by whoever starts the work.

The triage package knows nothing of the network: the composition root (``cli``, the
app's window) passes the DICOM node's outbox sink
(:class:`mammotriage.net.outbox.OutboxSink`), which reads the site's network settings
once, when it is made, and queues each object for the PACS when the site sends results.
A sink must survive pickling when the triage worker process is spawned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ResultSink", "result_kind"]


@runtime_checkable
class ResultSink(Protocol):
    def queue(self, path: Path, kind: str) -> bool:
        """Hand on one written object; ``kind`` is ``"ai-sr"``, ``"ai-seg"`` or
        ``"reader-findings"``. True if it was queued."""
        ...


def result_kind(path: Path) -> str:
    """The kind of an AI result file the worker wrote (``sr-*`` or ``seg-*``)."""
    return "ai-sr" if path.name.startswith("sr-") else "ai-seg"
