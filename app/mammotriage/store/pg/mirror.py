"""The site chain's events as a site workstation's worklist reads them: a local copy.

A worklist page is one SQLite query over the workstation's archive index (order,
filters such as "unread", the Read column). In site mode the reader corrections live in
the site's chain, not in the workstation's own log, so the page would call every exam
"unread". :class:`SiteEventMirror` copies the fields a read state needs (seq, exam,
reader, action, time, payload) from the site's ``correction_events`` into the archive's
``site_events`` (schema version 13), in ``seq`` order, only what is new each time (the
primary key on the server's side), and ``triage.pages`` reads that table in site mode.
The copy is the server's word, as the worklist shows it; the chain and its checks stay
on the server (``audit verify --site``). A site chain shorter than the copy (the server
was restored from an older backup) empties the copy and takes it again.
"""

from __future__ import annotations

from pathlib import Path

from mammotriage.store import db
from mammotriage.store.pg.events import PgConnected

__all__ = ["SiteEventMirror"]


class SiteEventMirror(PgConnected):
    """Copies the site chain's new events into ``archive_file``'s ``site_events``."""

    def __init__(self, dsn: str, archive_file: str | Path, batch: int = 5000) -> None:
        super().__init__(dsn)
        self.archive_file = Path(archive_file)
        self.batch = int(batch)
        #: the server's chain was shorter than the copy at the last pull (restored)
        self.reset = False

    def pull(self) -> int:
        """Copy what the site chain has beyond the copy; the number of events copied.

        Raises psycopg's ``OperationalError`` when the server is away (the copy stays).
        """
        local = db.connect(self.archive_file)
        try:
            last = int(local.execute("SELECT COALESCE(MAX(seq), 0) FROM site_events").fetchone()[0])
            head = self.conn.execute("SELECT last_seq FROM audit_head WHERE id = 1").fetchone()
            server_last = int(head["last_seq"]) if head is not None else 0
            self.reset = server_last < last
            if self.reset:
                with db.transaction(local):
                    local.execute("DELETE FROM site_events")
                last = 0
            copied = 0
            while last < server_last:
                rows = self.conn.execute(
                    "SELECT seq, exam_key, reader, action, at, payload FROM correction_events "
                    "WHERE seq > %s ORDER BY seq LIMIT %s", (last, self.batch)).fetchall()
                if not rows:
                    break
                with db.transaction(local):
                    local.executemany(
                        "INSERT OR IGNORE INTO site_events (seq, exam_key, reader, action, at, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [(r["seq"], r["exam_key"], r["reader"], r["action"], r["at"], r["payload"] or "")
                         for r in rows])
                copied += len(rows)
                last = int(rows[-1]["seq"])
            return copied
        finally:
            local.close()
