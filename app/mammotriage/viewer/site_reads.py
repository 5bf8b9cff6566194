"""A site workstation's worklist read states: the site chain's events copied off the UI thread.

:class:`SiteReadsFeed` runs :class:`~mammotriage.store.pg.mirror.SiteEventMirror` on a
daemon thread with its own connection, every ``every_s`` seconds and at once after
:meth:`poke` (this workstation signed, or its sender stored events); the window redraws
the worklist when :attr:`generation` moves. While the server is away the copy stays as
last read (the site status label already says the server is away) and the thread tries
again on its next turn.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from mammotriage.store.pg.mirror import SiteEventMirror
from mammotriage.viewer.double_feed import close_feed

__all__ = ["SiteReadsFeed"]

log = logging.getLogger(__name__)


class SiteReadsFeed:
    """The copy of the site's chain for the worklist, refreshed on a thread (see the module text)."""

    def __init__(self, dsn: str, archive_file: str | Path, *, every_s: float = 2.0,
                 say: Callable[[str], None] | None = None) -> None:
        self.every_s = float(every_s)
        self.say = say or (lambda _text: None)
        self._mirror = SiteEventMirror(dsn, archive_file)
        #: moves each time the copy took events that change a read state
        self.generation = 0
        #: why the last pull failed (None: it reached the server)
        self.away: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="site-reads-feed", daemon=True)

    def start(self) -> SiteReadsFeed:
        self._thread.start()
        return self

    def poke(self) -> None:
        """Pull now (from any thread)."""
        self._wake.set()

    def pull_once(self) -> int:
        try:
            copied = self._mirror.pull(stop=self._stop.is_set)
        except Exception as exc:  # noqa: BLE001 - the server away, or a refused answer: the copy stays
            self.away = f"{type(exc).__name__}: {exc}"
            if self._mirror.states_moved:  # a batch that moved a state came before the failure
                self.generation += 1
            log.debug("site read states not refreshed: %s", self.away)
            return 0
        self.away = None
        if self._mirror.reset:
            self.say("the site's chain is shorter than this workstation's copy of it (the server was "
                     "restored from a backup?): the worklist's read states were read again from the server")
        if self._mirror.states_moved:  # not for every note or mark made at the site
            self.generation += 1
        return copied

    def _run(self) -> None:
        while not self._stop.is_set():
            self.pull_once()
            self._wake.wait(self.every_s)
            self._wake.clear()

    def close(self, timeout: float = 2.0) -> None:
        close_feed(self._thread, self._stop, self._wake, self._mirror, timeout)
