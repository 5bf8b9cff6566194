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
from collections.abc import Callable
from pathlib import Path

from mammotriage.store.pg.mirror import SiteEventMirror
from mammotriage.viewer.double_feed import PolledFeed

__all__ = ["SiteReadsFeed"]

log = logging.getLogger(__name__)


class SiteReadsFeed(PolledFeed):
    """The copy of the site's chain for the worklist, refreshed on a thread (see the module text)."""

    def __init__(self, dsn: str, archive_file: str | Path, *, every_s: float = 2.0,
                 say: Callable[[str], None] | None = None) -> None:
        super().__init__("site-reads-feed", every_s)
        self.say = say or (lambda _text: None)
        self._mirror = self._client = SiteEventMirror(dsn, archive_file)
        #: moves each time the copy took events that change a read state
        self.generation = 0
        #: why the last pull failed (None: it reached the server)
        self.away: str | None = None

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
