"""The site chain's events as a site workstation's worklist reads them: a local copy.

A worklist page is one SQLite query over the workstation's archive index (order,
filters such as "unread", the Read column). In site mode the reader corrections live in
the site's chain, not in the workstation's own log, so the page would call every exam
"unread". :class:`SiteEventMirror` copies the fields a read state needs (seq, exam,
reader, action, time, payload, and the event's chain hash) from the site's
``correction_events`` into the archive's ``site_events`` (schema version 13), in
``seq`` order, only what is new each time, and ``triage.pages`` reads that table in
site mode. The copy is the server's word, as the worklist shows it; the chain and its
checks stay on the server (``audit verify --site``).

The copy is of one chain: ``site_events_source`` names the site (``site_identity``),
and each pull checks that the server still holds the copy's last event under the same
hash. Another site (the workstation joined elsewhere), or a chain that is not the one
copied (a server restored from an older backup, shorter or grown again since), empties
the copy and takes it again, in one transaction: a worklist read meanwhile sees the old
copy, never an empty one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from mammotriage.store import db
from mammotriage.store.pg.events import PgConnected

__all__ = ["STATE_ACTIONS", "SiteEventMirror"]

#: the actions that change an exam's read state once it has events
STATE_ACTIONS = ("sign", "amend", "arbitrate")


class SiteEventMirror(PgConnected):
    """Copies the site chain's new events into ``archive_file``'s ``site_events``."""

    def __init__(self, dsn: str, archive_file: str | Path, batch: int = 5000) -> None:
        super().__init__(dsn)
        self.archive_file = Path(archive_file)
        self.batch = int(batch)
        #: the last pull found the copy to be of another chain and took it again
        self.reset = False
        #: the last pull changed a read state (a sign, amend or arbitration, or an exam's
        #: first event): the worklist redraws only then, not for every note or mark
        self.states_moved = False
        self._local: sqlite3.Connection | None = None

    @property
    def local(self) -> sqlite3.Connection:
        if self._local is None:
            self._local = db.connect(self.archive_file)
        return self._local

    def close(self) -> None:
        super().close()
        if self._local is not None:
            self._local.close()
            self._local = None

    def _same_chain(self, site: str) -> bool:
        local = self.local
        source = local.execute("SELECT archive_id FROM site_events_source WHERE id = 1").fetchone()
        last = local.execute("SELECT seq, hash FROM site_events ORDER BY seq DESC LIMIT 1").fetchone()
        if last is None:
            return source is None or source[0] == site
        if source is None or source[0] != site:
            return False
        row = self.conn.execute("SELECT hash FROM correction_events WHERE seq = %s", (last[0],)).fetchone()
        return row is not None and row["hash"] == last[1]

    def pull(self, stop: Callable[[], bool] = lambda: False) -> int:
        """Copy what the site chain has beyond the copy; the number of events copied
        (``stop`` is asked between batches: a pull of a long chain ends when it says so).

        Raises psycopg's ``OperationalError`` when the server is away (the copy stays).
        """
        identity = self.conn.execute("SELECT archive_id FROM site_identity").fetchone()
        site = str(identity["archive_id"]) if identity else "unknown-site"
        head = self.conn.execute("SELECT last_seq FROM audit_head WHERE id = 1").fetchone()
        server_last = int(head["last_seq"]) if head is not None else 0
        self.reset = not self._same_chain(site)
        self.states_moved = False
        local = self.local
        if self.reset:
            # the new copy goes to a temporary table of this connection (no lock on the
            # archive while it comes over the network), then replaces the old one in one
            # short transaction: a worklist read meanwhile sees the old copy
            local.execute("DROP TABLE IF EXISTS temp.site_events_next")
            local.execute("CREATE TEMP TABLE site_events_next AS SELECT * FROM site_events WHERE 0")
            try:
                copied, whole = self._copy(0, server_last, stop, "temp.site_events_next", commit_each=False)
                if not whole:
                    return 0  # stopped: the old copy stays, the next pull takes it again
                with db.transaction(local):
                    local.execute("DELETE FROM site_events")
                    local.execute("INSERT INTO site_events SELECT * FROM temp.site_events_next")
                    local.execute("INSERT OR REPLACE INTO site_events_source (id, archive_id) VALUES (1, ?)",
                                  (site,))
                self.states_moved = True
            finally:
                local.execute("DROP TABLE IF EXISTS temp.site_events_next")
            return copied
        with db.transaction(local):
            local.execute("INSERT OR IGNORE INTO site_events_source (id, archive_id) VALUES (1, ?)", (site,))
        last = int(local.execute("SELECT COALESCE(MAX(seq), 0) FROM site_events").fetchone()[0])
        return self._copy(last, server_last, stop, "site_events", commit_each=True)[0]

    def _copy(self, last: int, server_last: int, stop: Callable[[], bool], table: str,
              commit_each: bool) -> tuple[int, bool]:
        """Events after ``last`` up to ``server_last`` into ``table``: (copied, whether all came)."""
        copied = 0
        sql = (f"INSERT OR IGNORE INTO {table} (seq, exam_key, reader, action, at, payload, hash) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)")
        while last < server_last:
            if stop():
                return copied, False
            rows = self.conn.execute(
                "SELECT seq, exam_key, reader, action, at, payload, hash FROM correction_events "
                "WHERE seq > %s ORDER BY seq LIMIT %s", (last, self.batch)).fetchall()
            if not rows:
                break
            values = [(r["seq"], r["exam_key"], r["reader"], r["action"], r["at"], r["payload"] or "", r["hash"])
                      for r in rows]
            if commit_each and not self.states_moved:
                self.states_moved = self._moves_states(rows)
            if commit_each:
                with db.transaction(self.local):
                    self.local.executemany(sql, values)
            else:
                self.local.executemany(sql, values)
            copied += len(rows)
            last = int(rows[-1]["seq"])
        return copied, True

    def _moves_states(self, rows: list[dict[str, object]]) -> bool:
        """Whether these new events change a read state: a sign, amend or arbitration, or
        the first event of an exam ("started")."""
        if any(r["action"] in STATE_ACTIONS for r in rows):
            return True
        keys = sorted({str(r["exam_key"]) for r in rows})
        known: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            known |= {k for (k,) in self.local.execute(
                f"SELECT DISTINCT exam_key FROM site_events WHERE exam_key IN ({','.join('?' * len(chunk))})",
                chunk)}
        return len(known) < len(keys)
