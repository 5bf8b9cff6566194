"""The workstation's corrections in site mode: the site store behind the viewer's log.

:class:`SiteLog` answers what :class:`~mammotriage.viewer.corrections.ExamCorrections`
asks of a correction log (``append``, ``events``), so the reading code writes through it
without knowing the backend. Standalone mode keeps the SQLite
:class:`~mammotriage.store.events.CorrectionLog`.

**No call of the UI thread touches the network.** Only the background thread (the
"sender") opens connections to the server; a server that is away, or a socket that
accepts and never answers, delays the sender, never the caller.

* ``append`` checks the event and keeps it in the local buffer file
  (:meth:`~mammotriage.store.pg.buffer.BufferedLog.keep`: durable when it returns) and
  returns it at once, unchained (``seq`` 0).
* ``events`` answers from this workstation's local copy: what the sender last read from
  the server for the same query, then what still waits in the buffer (by event uuid:
  never twice). Asking marks the query as open ("watched"); a query never read yet wakes
  the sender, which reads it and tells the listeners (:meth:`SiteLog.add_listener`,
  called on the sender's thread with the exam keys whose copy changed: the window then
  re-reads the open exam). Until then the copy holds what this workstation has (its
  own waiting events).
* The sender sends the buffer in batches (:meth:`BufferedLog.flush`) at once after each
  append and every ``retry_s`` while something waits, then keeps the watched copies
  fresh: every ``probe_s`` (or after a send) it reads the server's head and re-reads the
  watched queries when the chain moved, so another workstation's corrections appear and
  a lost server is noticed even by an idle workstation. Acknowledged events enter the
  copies before they leave the buffer, so a reader never finds an event on neither side.
* :meth:`SiteLog.status` says whether the server is reachable, since when it is not, how
  many corrections wait, and when the local copy last matched the server (``synced_at``);
  a sender stuck longer than ``stall_s`` on one attempt counts as away, and a watchdog
  thread cuts its connection (:meth:`~mammotriage.store.pg.events.PgConnected.cut`) so that
  it reconnects.
  :func:`site_status_text` is the status bar's line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mammotriage.store.assessment import ReadState, next_read_state
from mammotriage.store.events import Event, SessionReaders, event_from_row
from mammotriage.store.pg.accounts import SignIns
from mammotriage.store.pg.buffer import BufferedLog
from mammotriage.store.pg.events import SERVER_AWAY

__all__ = ["BUFFER_FILE", "SiteLog", "SiteStatus", "site_mode_problem", "site_status_text"]

LOG = logging.getLogger(__name__)

#: The buffer's file name in the workstation's data directory.
BUFFER_FILE = "site-buffer.sqlite3"
_COPIES = 32   # queries whose local copy of the server's events is kept
_WATCHED = 8   # of those, the most recently asked, kept fresh by the sender
_BATCHES_PER_ROUND = 5  # batches sent before the watched copies are refreshed again

Query = tuple[str | None, str | None]  # (exam key, SOP Instance UID); None: any


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
    #: When the local copy of the open exams last matched the server (UTC; None: never).
    synced_at: datetime | None = None


def site_mode_problem(home: str | Path) -> str:
    """Why this data directory cannot join a site yet ('' when it can).

    Nothing stops it today: double reading (``double_reading.json``) runs on the site
    store too (:mod:`mammotriage.store.pg.double_reading`), across the workstations.
    """
    return ""


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _hhmm(at: datetime | None) -> str:
    return at.astimezone().strftime("%H:%M") if at else "?"


def site_status_text(status: SiteStatus) -> str:
    """The status bar's line: '' while the server is reachable and nothing waits."""
    if not status.reachable:
        text = (f"site server unreachable since {_hhmm(status.since)} — "
                f"{_count(status.waiting, 'correction')} waiting — showing what this workstation has")
        if status.synced_at is not None:
            text += f" (as of {_hhmm(status.synced_at)})"
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


def _matches(query: Query, exam_key: str, sop_uid: str) -> bool:
    return query[0] in (None, exam_key) and query[1] in (None, sop_uid)


class SiteLog(SessionReaders):
    """Corrections through the local buffer to the site store, sent and read in the background.

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
        Seconds between sending attempts while events wait / between refreshes of the
        watched copies (and checks of an idle server).
    stall_s
        One attempt of the sender making no progress for longer than this (a server that
        accepts and never answers) makes :meth:`status` say the server is away, and the
        watchdog cut the sender's connection (it reconnects).
    """

    def __init__(self, dsn: str, buffer_path: str | Path, workstation: str | None = None, *,
                 retry_s: float = 2.0, probe_s: float = 5.0, stall_s: float = 15.0):
        self.buffered = BufferedLog(dsn, buffer_path, workstation)
        self.buffered.on_sent = self._remember
        self.retry_s = retry_s
        self.probe_s = probe_s
        self.stall_s = stall_s
        self._state = threading.Lock()
        self._reachable = True
        self._since: datetime | None = None
        self._reason = ""
        self._synced_at: datetime | None = None
        self._busy_since: float | None = None   # monotonic: the sender's attempt in progress began (or last progressed)
        self._busy_wall: datetime | None = None
        # the local copy: per query, the server's events as the sender last read them
        self._copies: OrderedDict[Query, list[Event]] = OrderedDict()
        self._watched: OrderedDict[Query, None] = OrderedDict()  # most recently asked last
        self._head_seq: int | None = None  # the chain's last seq when the watched copies were read
        self._listeners: list[Callable[[list[str | None]], None]] = []
        self._readers: set[str] = set()
        #: reader -> site sign-in token (store.pg.accounts.sign_in): sent with their events
        self.sign_ins = SignIns()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._wake.set()  # what an earlier session left in the buffer goes first
        #: Connections the watchdog cut because the server stopped answering mid-call.
        self.cuts = 0
        self._thread = threading.Thread(target=self._run, name="site-log-sender", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch_sender, name="site-log-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def workstation(self) -> str:
        return self.buffered.workstation

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
        made = self.buffered.keep(reader=reader, exam_key=exam_key, action=action,
                                  session_token=self.sign_ins.token_for(reader), study_uid=study_uid,
                                  series_uid=series_uid, sop_uid=sop_uid, pixel_sha256=pixel_sha256,
                                  model_version=model_version, target=target, kind=kind, geometry=geometry,
                                  payload=payload)
        self._wake.set()
        return _unchained(made)

    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]:
        """The local copy of the server's events (chain order), then those still waiting
        here (made order). Never touches the network: the query is watched from now on,
        and read from the server by the sender (at once when it was never read)."""
        # the buffer first: an event sent in between is in the copy by then, never on neither side
        waiting = [f for f in self.buffered.buffer.waiting(exam_key) if sop_uid is None or f["sop_uid"] == sop_uid]
        query = (exam_key, sop_uid)
        with self._state:
            stored = list(self._copies.get(query, []))
            fresh = query in self._watched and query in self._copies
            self._watch(query)
        if not fresh:
            self._wake.set()
        seen = {e.event_id for e in stored}
        return stored + [_unchained(f) for f in waiting if f["event_id"] not in seen]

    def waiting_reads(self, states: Mapping[str, ReadState]) -> dict[str, ReadState]:
        """These exams' read states with this workstation's events not sent yet on top (a
        signature made while the server is away shows as signed here at once); only the
        exams that have such events. Never touches the network."""
        out: dict[str, ReadState] = {}
        for fields in self.buffered.buffer.waiting():  # oldest first
            key = fields["exam_key"]
            if key in states:
                out[key] = next_read_state(out.get(key, states[key]), fields["reader"], fields["action"],
                                           fields["at"], fields.get("payload", ""))
        return out

    def watch(self, exam_keys: Iterable[str]) -> None:
        """Keep the local copies of these exams fresh too (the exams read next: opened
        without waiting for the server)."""
        with self._state:
            for key in exam_keys:
                self._watch((key, None))
        self._wake.set()

    def synced(self, exam_key: str | None = None, sop_uid: str | None = None) -> bool:
        """Whether the local copy of this query was read from the server (since it was watched)."""
        with self._state:
            return (exam_key, sop_uid) in self._copies

    def _watch(self, query: Query) -> None:
        """Under ``_state``: mark a query watched (most recent last; the oldest is dropped)."""
        self._watched[query] = None
        self._watched.move_to_end(query)
        while len(self._watched) > _WATCHED:
            self._watched.popitem(last=False)

    def add_listener(self, listener: Callable[[list[str | None]], None]) -> None:
        """Call ``listener(exam_keys)`` (on the sender's thread) when the local copy of
        these exams changed (None: a query over every exam)."""
        with self._state:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[str | None]], None]) -> None:
        with self._state:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # ----------------------------------------------------------------- state
    def status(self) -> SiteStatus:
        """The server's state as the sender last found it (no network: a flag, two local counts)."""
        with self._state:
            reachable, since, reason, synced = self._reachable, self._since, self._reason, self._synced_at
            busy, busy_wall = self._busy_since, self._busy_wall
        if reachable and busy is not None and time.monotonic() - busy > self.stall_s:
            reachable, since = False, busy_wall
            reason = f"no answer from the site server for {time.monotonic() - busy:.0f} s"
        return SiteStatus(reachable, since, self.buffered.pending(), reason, len(self.buffered.buffer.refused()),
                          synced)

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
        """One round of the sender in the calling thread: send (some batches of) the
        buffer, then refresh the watched copies. Never call it on the UI thread."""
        with self._state:
            self._busy_since, self._busy_wall = time.monotonic(), datetime.now(UTC)
        try:
            self.buffered.flush(max_batches=_BATCHES_PER_ROUND)
            if self.buffered.pending() and self.buffered.away_reason:
                self._away(self.buffered.away_reason)
                return
            self._refresh()
        except SERVER_AWAY as exc:
            self._away(exc)
            return
        finally:
            with self._state:
                self._busy_since = self._busy_wall = None
        self._back()
        if self.buffered.pending():
            self._wake.set()  # more batches wait: go on at once

    def _refresh(self) -> None:
        """Read the server's head; re-read the watched queries when the chain moved (or
        never read); tell the listeners which exams changed."""
        head = self.buffered.log.head()
        with self._state:
            watched = list(self._watched)
            moved = head.last_seq != self._head_seq
            todo = [q for q in watched if moved or q not in self._copies]
        changed: list[str | None] = []
        for query in todo:
            fetched = self.buffered.log.events(*query)
            with self._state:
                before = self._copies.get(query)
                self._copies[query] = fetched
                self._copies.move_to_end(query)
                while len(self._copies) > _COPIES:
                    self._copies.popitem(last=False)
            if before is None or [e.event_id for e in before] != [e.event_id for e in fetched]:
                changed.append(query[0])
        with self._state:
            self._head_seq = head.last_seq  # a query watched meanwhile has no copy: read next round
            self._synced_at = datetime.now(UTC)
            listeners = list(self._listeners)
        if changed:
            keys = list(dict.fromkeys(changed))
            for listener in listeners:
                try:
                    listener(keys)
                except Exception:  # a listener's failure never stops the sender
                    LOG.exception("a site log listener failed")

    def _remember(self, sent: list[Event]) -> None:
        """Add acknowledged events to the copies they belong to (called before they leave
        the buffer, so an exam read in between finds them on one side at least)."""
        with self._state:
            if self._busy_since is not None:  # progress: the server answers
                self._busy_since = time.monotonic()
            for query, copy in self._copies.items():
                have = {e.event_id for e in copy}
                copy.extend(e for e in sent if e.event_id not in have and _matches(query, e.exam_key, e.sop_uid))

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

    def _watch_sender(self) -> None:
        """Cut the sender's connection when one attempt made no progress for ``stall_s``
        (an established connection to a server that stopped answering would otherwise
        hold the sender forever: libpq has no timeout for a query's answer)."""
        while not self._stop.wait(min(1.0, self.stall_s / 2)):
            with self._state:
                busy = self._busy_since
            if busy is None or time.monotonic() - busy <= self.stall_s:
                continue
            if self.buffered.log.cut():
                self.cuts += 1
                LOG.warning("the site server gave no answer for %.0f s: connection cut, the sender reconnects",
                            time.monotonic() - busy)
                with self._state:
                    if self._busy_since == busy:
                        self._busy_since = time.monotonic()  # one cut per stall: give it time to notice

    def close(self, wait_s: float = 5.0) -> None:
        """Stop the sender (what waits stays in the buffer file for the next session).

        Waits at most ``wait_s`` for the sender's attempt in progress; a sender stuck on
        the network is left behind (a daemon thread, with its connections and the buffer
        file: what it has not acknowledged stays in the file).
        """
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=wait_s)
        self._watchdog.join(timeout=2)
        if self._thread.is_alive():
            LOG.warning("the site sender did not stop; %d corrections stay in %s", self.buffered.pending(),
                        self.buffered.buffer.path)
            return
        self.buffered.close()

    def __enter__(self) -> SiteLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
