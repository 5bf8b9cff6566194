"""A workstation's local buffer: events made while the site server is away.

Every event goes into a small SQLite file first (WAL, ``synchronous=FULL``: it survives
a crash once :meth:`BufferedLog.append` returns), then is sent. :meth:`BufferedLog.flush`
sends the buffered events oldest first and removes each only after the server has
acknowledged it; it stops at the first one the server cannot take (down, restarting),
so the order is kept. The server chains each event when it arrives, and sending is
idempotent by uuid (:meth:`SiteCorrectionLog.send`), so an event whose acknowledgement
was lost is sent again without being stored twice: nothing is lost or duplicated.

An event the server refuses for its content (the same uuid stored with other content,
a constraint) is moved to the ``refused`` table with the server's reason and logged;
it does not block the events behind it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from mammotriage.clock import utc_now
from mammotriage.store import db
from mammotriage.store.events import Event, event_fields
from mammotriage.store.pg.events import SERVER_AWAY, SiteCorrectionLog

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
        with self._lock, db.transaction(self.conn):
            self.conn.execute("DELETE FROM pending WHERE event_id = ?", (event_id,))

    def refuse(self, fields: dict[str, str], reason: str) -> None:
        with self._lock, db.transaction(self.conn):
            self.conn.execute("INSERT INTO refused (event_id, fields, reason, refused_at) VALUES (?, ?, ?, ?)",
                              (fields["event_id"], json.dumps(fields, sort_keys=True), reason[:2000],
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
    """

    def __init__(self, dsn: str, buffer_path: str | Path, workstation: str | None = None):
        self.log = SiteCorrectionLog(dsn, workstation)
        self.buffer = EventBuffer(buffer_path)
        self._send_lock = threading.Lock()
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

    def keep(self, *, reader: str, exam_key: str, action: str, **fields: Any) -> dict[str, str]:
        """Check one event and keep it in the buffer only (durable when this returns);
        :meth:`flush` sends it later. Returns the event's own fields.

        Raises
        ------
        CorrectionError
            The event is invalid (nothing is kept).
        """
        made = event_fields(self.workstation, reader=reader, exam_key=exam_key, action=action, **fields)
        self.buffer.put(made)
        return made

    def flush(self) -> int:
        """Send what is buffered, oldest first; returns how many the server acknowledged."""
        return len(self._flush())

    def flush_events(self) -> list[Event]:
        """:meth:`flush`, returning the acknowledged events as the server chained them, in order."""
        return list(self._flush().values())

    def _flush(self) -> dict[str, Event]:
        sent: dict[str, Event] = {}
        with self._send_lock:
            while batch := self.buffer.oldest():
                for fields in batch:
                    try:
                        sent[fields["event_id"]] = self.log.send(fields)
                    except SERVER_AWAY as exc:
                        self.away_reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        return sent
                    except (psycopg.IntegrityError, psycopg.DataError) as exc:
                        reason = str(exc).strip().splitlines()[0]
                        LOG.error("the site server refused event %s from %s: %s", fields["event_id"],
                                  self.buffer.path, reason)
                        self.buffer.refuse(fields, reason)
                        continue
                    self.buffer.drop(fields["event_id"])
                self.away_reason = ""
        return sent

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
