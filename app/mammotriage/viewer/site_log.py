"""The workstation's corrections in site mode: the site store behind the viewer's log.

:class:`SiteLog` answers what :class:`~mammotriage.viewer.corrections.ExamCorrections`
asks of a correction log (``append``, ``events``), so the reading code writes through it
without knowing the backend. Standalone mode keeps the SQLite
:class:`~mammotriage.store.events.CorrectionLog`.

* ``append`` checks the event and keeps it in the local buffer file
  (:meth:`~mammotriage.store.pg.buffer.BufferedLog.keep`: durable when it returns) and
  returns it at once, unchained (``seq`` 0). It never talks to the server, so the UI
  thread never waits for the network.
* A background thread sends the buffer oldest first (:meth:`BufferedLog.flush`), at
  once after each append and every ``retry_s`` while something waits; the server chains
  each event when it arrives. While nothing waits it asks the server for its head every
  ``probe_s``, so a lost server is noticed even by an idle workstation.
* ``events`` is what the server holds plus what still waits in the buffer (by event
  uuid: never twice), so the folded labels include the events made while the server
  was away. While the server is away (or the read fails) the server's part is the last
  one read for the same exam.
* :meth:`SiteLog.status` says whether the server is reachable, since when it is not,
  and how many corrections wait; :func:`site_status_text` is the status bar's line.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mammotriage.store.events import CorrectionError, Event, event_from_row
from mammotriage.store.pg.buffer import BufferedLog
from mammotriage.store.pg.events import SERVER_AWAY, SiteCorrectionLog

__all__ = ["BUFFER_FILE", "SiteLog", "SiteStatus", "site_mode_problem", "site_status_text"]

LOG = logging.getLogger(__name__)

#: The buffer's file name in the workstation's data directory.
BUFFER_FILE = "site-buffer.sqlite3"
_CACHED_READS = 32  # exams whose last server read is kept for when the server is away


@dataclass(frozen=True)
class SiteStatus:
    reachable: bool
    #: When the server was found away (UTC; None while it is reachable).
    since: datetime | None
    #: Corrections kept locally, not yet acknowledged by the server.
    waiting: int
    #: Why the server could not be reached ('' while it can).
    reason: str = ""
    #: Corrections the server refused for their content (kept aside in the buffer file).
    refused: int = 0


def site_mode_problem(home: str | Path) -> str:
    """Why this data directory cannot join a site yet ('' when it can).

    Nothing stops it today: double reading (``double_reading.json``) runs on the site
    store too (:mod:`mammotriage.store.pg.double_reading`), across the workstations.
    """
    return ""


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def site_status_text(status: SiteStatus) -> str:
    """The status bar's line: '' while the server is reachable and nothing waits."""
    if not status.reachable:
        since = status.since.astimezone().strftime("%H:%M") if status.since else "?"
        text = f"site server unreachable since {since} — {_count(status.waiting, 'correction')} waiting"
    elif status.waiting:
        text = f"sending {_count(status.waiting, 'correction')} to the site server"
    else:
        text = ""
    if status.refused:
        text += (" · " if text else "") + f"{_count(status.refused, 'correction')} refused by the site server"
    return text


def _unchained(fields: dict[str, str]) -> Event:
    """An event kept in the buffer, as the fold reads it (not chained yet: seq 0, no hash)."""
    return event_from_row(dict(fields, seq=0, prev_hash="", hash="", mac=""))


class SiteLog:
    """Corrections through the local buffer to the site store, sent in the background.

    Parameters
    ----------
    dsn
        The workstation role's connection string (``SiteProfile.dsn()``).
    buffer_path
        The local buffer file (in the data directory: :data:`BUFFER_FILE`); events left
        in it by an earlier session are sent first.
    workstation
        Recorded in every event (default: the host name).
    retry_s, probe_s
        Seconds between sending attempts while events wait / between checks of an idle server.
    """

    def __init__(self, dsn: str, buffer_path: str | Path, workstation: str | None = None, *,
                 retry_s: float = 2.0, probe_s: float = 5.0):
        self.buffered = BufferedLog(dsn, buffer_path, workstation)
        self.reads = SiteCorrectionLog(dsn, self.buffered.workstation)  # the calling thread's connection
        self.retry_s = retry_s
        self.probe_s = probe_s
        self._state = threading.Lock()
        self._reachable = True
        self._since: datetime | None = None
        self._reason = ""
        self._cache: OrderedDict[tuple[str | None, str | None], list[Event]] = OrderedDict()
        self._readers: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._wake.set()  # what an earlier session left in the buffer goes first
        self._thread = threading.Thread(target=self._run, name="site-log-sender", daemon=True)
        self._thread.start()

    @property
    def workstation(self) -> str:
        return self.buffered.workstation

    # ----------------------------------------------------------------- readers
    def add_reader(self, name: str, full_name: str = "") -> None:
        name = name.strip()
        if not name or len(name) > 64:
            raise CorrectionError("a reader name must be 1-64 characters")
        self._readers.add(name)

    def readers(self) -> list[str]:
        return sorted(self._readers)

    # ----------------------------------------------------------------- append / read
    def append(self, *, reader: str, exam_key: str, action: str, study_uid: str = "", series_uid: str = "",
               sop_uid: str = "", pixel_sha256: str = "", model_version: str = "", target: str = "",
               kind: str = "", geometry: dict[str, Any] | None = None,
               payload: dict[str, Any] | None = None) -> Event:
        """Keep one event locally (durable when this returns); it is sent in the background.

        Raises
        ------
        CorrectionError
            The event is invalid (nothing is kept).
        """
        made = self.buffered.keep(reader=reader, exam_key=exam_key, action=action, study_uid=study_uid,
                                  series_uid=series_uid, sop_uid=sop_uid, pixel_sha256=pixel_sha256,
                                  model_version=model_version, target=target, kind=kind, geometry=geometry,
                                  payload=payload)
        self._wake.set()
        return _unchained(made)

    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]:
        """The server's events (chain order), then those still waiting here (made order)."""
        # the buffer first: an event sent in between is then on the server's side too, never on neither
        waiting = [f for f in self.buffered.buffer.waiting(exam_key) if sop_uid is None or f["sop_uid"] == sop_uid]
        key = (exam_key, sop_uid)
        with self._state:
            stored = list(self._cache.get(key, []))
        if self.status().reachable:
            try:
                stored = self.reads.events(exam_key, sop_uid)
            except SERVER_AWAY as exc:
                self._away(exc)
            else:
                with self._state:
                    self._cache[key] = list(stored)
                    self._cache.move_to_end(key)
                    while len(self._cache) > _CACHED_READS:
                        self._cache.popitem(last=False)
        seen = {e.event_id for e in stored}
        return stored + [_unchained(f) for f in waiting if f["event_id"] not in seen]

    # ----------------------------------------------------------------- state
    def status(self) -> SiteStatus:
        with self._state:
            reachable, since, reason = self._reachable, self._since, self._reason
        return SiteStatus(reachable, since, self.buffered.pending(), reason, len(self.buffered.buffer.refused()))

    def _away(self, exc: BaseException | str) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self._state:
            self._reason = reason
            if self._reachable:
                self._reachable, self._since = False, datetime.now(UTC)
                LOG.warning("site server unreachable (%s); corrections wait in %s", reason,
                            self.buffered.buffer.path)

    def _back(self) -> None:
        with self._state:
            if not self._reachable:
                LOG.info("site server reachable again (away since %s)", self._since)
            self._reachable, self._since, self._reason = True, None, ""

    # ----------------------------------------------------------------- the sender
    def send_now(self) -> None:
        """One sending attempt in the calling thread (what the background thread does each time)."""
        try:
            sent = self.buffered.flush_events()
            self._remember(sent)
            if self.buffered.pending() and self.buffered.away_reason:
                self._away(self.buffered.away_reason)
                return
            if not sent:
                self.buffered.log.head()  # an idle workstation notices a lost server too
        except SERVER_AWAY as exc:
            self._away(exc)
            return
        self._back()

    def _remember(self, sent: list[Event]) -> None:
        """Add acknowledged events to the cached server reads they belong to (so an exam
        read before they were sent shows them while the server is away later)."""
        with self._state:
            for key, cached in self._cache.items():
                have = {e.event_id for e in cached}
                cached.extend(e for e in sent if e.event_id not in have
                              and key[0] in (None, e.exam_key) and key[1] in (None, e.sop_uid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.retry_s if self.buffered.pending() else self.probe_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.send_now()
            except Exception as exc:  # never let the sender die: the buffer keeps everything
                LOG.exception("sending corrections to the site server failed")
                self._away(exc)

    def close(self) -> None:
        """Stop the sender (what waits stays in the buffer file for the next session)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():  # stuck on the network: leave it the connections, it is a daemon
            LOG.warning("the site sender did not stop; %d corrections stay in %s", self.buffered.pending(),
                        self.buffered.buffer.path)
            return
        self.reads.close()
        self.buffered.close()

    def __enter__(self) -> SiteLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
