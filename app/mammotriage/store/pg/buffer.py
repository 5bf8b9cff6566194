"""A workstation's local buffer: events made while the site server is away.

Every event goes into a small SQLite file first (WAL, ``synchronous=FULL``: it survives
a crash once :meth:`BufferedLog.append` returns), then is sent. :meth:`BufferedLog.flush`
sends the buffered events oldest first in batches (``batch_size``, default 200), one
transaction per batch (:meth:`SiteCorrectionLog.send_batch`: the server chains the rows
in order, and the batch commits whole or not at all), and removes a batch only after the
server has acknowledged it; it stops at the first batch the server cannot take (down,
restarting), so the order is kept. Sending is idempotent by uuid, so a batch whose
acknowledgement was lost (or that died mid-way with the server) is sent again whole
without any event being stored twice: nothing is lost or duplicated.

An event the server refuses for its content (the same uuid stored with other content,
a constraint) fails its whole batch; that batch is then sent one event per transaction,
the refused event is moved to the ``refused`` table with the server's reason and logged,
and it does not block the events behind it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from mammotriage.clock import utc_now
from mammotriage.store import db
from mammotriage.store.events import Event, event_fields
from mammotriage.store.pg.events import SERVER_AWAY, TOKEN, SiteCorrectionLog

__all__ = ["AppendOutcome", "BufferedLog", "EventBuffer"]

LOG = logging.getLogger(__name__)

_MIGRATIONS = [db.Migration(
    name="buffer: events not yet acknowledged by the site server; events it refused",
    steps=(
        """
        CREATE TABLE pending (
            n        INTEGER PRIMARY KEY AUTOINCREMENT,   -- the order they were made in
            event_id TEXT NOT NULL UNIQUE,
            fields   TEXT NOT NULL,                       -- JSON: the event's own fields
            made_at  TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE refused (
            n         INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id  TEXT NOT NULL,
            fields    TEXT NOT NULL,
            reason    TEXT NOT NULL,
            refused_at TEXT NOT NULL
        )
        """,
    ),
)]


def _reason(exc: BaseException) -> str:
    """The first line of why the server could not be reached."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EventBuffer(db.Connected):
    """The durable, ordered queue of events the server has not acknowledged yet."""

    closed_name = "event buffer"

    def __init__(self, path: str | Path):  # not super().__init__: the buffer has its own schema
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = db.connect(self.path, migrations=_MIGRATIONS)

    def put(self, fields: dict[str, str]) -> None:
        """Keep one event (durable when this returns); a uuid already kept is left as it is."""
        with self._lock, db.transaction(self.conn):
            self.conn.execute("INSERT OR IGNORE INTO pending (event_id, fields, made_at) VALUES (?, ?, ?)",
                              (fields["event_id"], json.dumps(fields, sort_keys=True), utc_now("microseconds")))

    def oldest(self, limit: int = 100) -> list[dict[str, str]]:
        with self._lock:
            rows = self.conn.execute("SELECT fields FROM pending ORDER BY n LIMIT ?", (limit,)).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def drop(self, event_id: str) -> None:
        self.drop_many([event_id])

    def drop_many(self, event_ids: list[str]) -> None:
        """Forget acknowledged events (one local transaction for all)."""
        with self._lock, db.transaction(self.conn):
            self.conn.executemany("DELETE FROM pending WHERE event_id = ?", [(i,) for i in event_ids])

    def refuse(self, fields: dict[str, str], reason: str) -> None:
        kept = {k: v for k, v in fields.items() if k != "session_token"}  # a refused event keeps no sign-in
        with self._lock, db.transaction(self.conn):
            self.conn.execute("INSERT INTO refused (event_id, fields, reason, refused_at) VALUES (?, ?, ?, ?)",
                              (fields["event_id"], json.dumps(kept, sort_keys=True), reason[:2000],
                               utc_now("microseconds")))
            self.conn.execute("DELETE FROM pending WHERE event_id = ?", (fields["event_id"],))

    def waiting(self, exam_key: str | None = None) -> list[dict[str, str]]:
        """Every event not yet acknowledged (of one exam, or all), oldest first."""
        with self._lock:
            rows = self.conn.execute("SELECT fields FROM pending ORDER BY n").fetchall()
        kept = [dict(json.loads(r[0])) for r in rows]
        return [f for f in kept if exam_key is None or f["exam_key"] == exam_key]

    def count(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0])

    def refused(self) -> list[tuple[str, str]]:
        """(event uuid, the server's reason) of every refused event."""
        with self._lock:
            return [(str(r[0]), str(r[1])) for r in
                    self.conn.execute("SELECT event_id, reason FROM refused ORDER BY n")]


@dataclass(frozen=True)
class AppendOutcome:
    event_id: str
    #: The event as the server chained it, or None while it waits in the buffer.
    event: Event | None
    #: Events still waiting in the buffer (this one included when it was not sent).
    pending: int


class BufferedLog:
    """Appends through the local buffer to the site's chain; rides out server restarts.

    Parameters
    ----------
    dsn
        The workstation role's connection string.
    buffer_path
        The local SQLite buffer file (created when missing; kept across restarts).
    workstation
        Recorded in every event (default: the host name).
    batch_size
        Events sent per transaction.
    """

    def __init__(self, dsn: str, buffer_path: str | Path, workstation: str | None = None, *,
                 batch_size: int = 200):
        self.log = SiteCorrectionLog(dsn, workstation)
        self.buffer = EventBuffer(buffer_path)
        self._send_lock = threading.Lock()
        #: Events sent per transaction (the buffer's oldest first).
        self.batch_size = batch_size
        #: Called with every acknowledged batch (as chained), before it leaves the buffer.
        self.on_sent: Callable[[list[Event]], None] | None = None
        #: The last reason the server could not be reached ('' while it is).
        self.away_reason = ""

    @property
    def workstation(self) -> str:
        return self.log.workstation

    def close(self) -> None:
        self.log.close()
        self.buffer.close()

    def __enter__(self) -> BufferedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, *, reader: str, exam_key: str, action: str, **fields: Any) -> AppendOutcome:
        """Check one event, keep it locally, then send everything buffered, oldest first.

        Raises
        ------
        CorrectionError
            The event is invalid (nothing is kept).
        """
        made = self.keep(reader=reader, exam_key=exam_key, action=action, **fields)
        sent = self._flush()
        event = sent.get(made["event_id"])
        return AppendOutcome(made["event_id"], event, self.buffer.count())

    def keep(self, *, reader: str, exam_key: str, action: str, session_token: str | None = None,
             **fields: Any) -> dict[str, str]:
        """Check one event and keep it in the buffer only (durable when this returns);
        :meth:`flush` sends it later. Returns the event's own fields. ``session_token``:
        the reader's site sign-in (:mod:`.accounts`), kept with the event until it is sent.

        Raises
        ------
        CorrectionError
            The event is invalid (nothing is kept).
        """
        made = event_fields(self.workstation, reader=reader, exam_key=exam_key, action=action, **fields)
        self.buffer.put({**made, TOKEN: session_token} if session_token else made)
        return made

    def flush(self, max_batches: int | None = None) -> int:
        """Send what is buffered (at most ``max_batches`` batches), oldest first; returns
        how many events the server acknowledged."""
        return len(self._flush(max_batches))

    def flush_events(self, max_batches: int | None = None) -> list[Event]:
        """:meth:`flush`, returning the acknowledged events as the server chained them, in order."""
        return list(self._flush(max_batches).values())

    def _flush(self, max_batches: int | None = None) -> dict[str, Event]:
        sent: dict[str, Event] = {}
        rounds = 0
        with self._send_lock:
            while (max_batches is None or rounds < max_batches) and (batch := self.buffer.oldest(self.batch_size)):
                rounds += 1
                try:
                    events = self.log.send_batch(batch)
                except SERVER_AWAY as exc:
                    self.away_reason = _reason(exc)
                    return sent
                except (psycopg.IntegrityError, psycopg.DataError):
                    # one of them is refused (nothing of the batch was stored): one by one finds it
                    if not self._send_singly(batch, sent):
                        return sent
                    continue
                self._acknowledged(events, sent)
            self.away_reason = ""
        return sent

    def _acknowledged(self, events: list[Event], sent: dict[str, Event]) -> None:
        """The server has these: tell :attr:`on_sent` first, then drop them from the buffer
        (so a reader of both never finds an event on neither side)."""
        if self.on_sent is not None:
            self.on_sent(events)
        self.buffer.drop_many([e.event_id for e in events])
        sent.update((e.event_id, e) for e in events)

    def _send_singly(self, batch: list[dict[str, str]], sent: dict[str, Event]) -> bool:
        """Send a batch one event per transaction, moving the refused ones aside; False:
        the server went away (the rest waits)."""
        for fields in batch:
            try:
                event = self.log.send(fields)
            except SERVER_AWAY as exc:
                self.away_reason = _reason(exc)
                return False
            except (psycopg.IntegrityError, psycopg.DataError) as exc:
                reason = str(exc).strip().splitlines()[0]
                LOG.error("the site server refused event %s from %s: %s", fields["event_id"],
                          self.buffer.path, reason)
                self.buffer.refuse(fields, reason)
                continue
            self._acknowledged([event], sent)
        return True

    def pending(self) -> int:
        return self.buffer.count()

    def drain(self, timeout_s: float, interval_s: float = 0.2) -> bool:
        """Flush until the buffer is empty or ``timeout_s`` passed; True when empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.flush()
            if self.buffer.count() == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval_s)
