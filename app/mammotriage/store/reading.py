"""Initial assessments a reader records before AI marks are shown ("AI after my read")."""

from __future__ import annotations

import getpass

from mammotriage.clock import utc_now
from mammotriage.store import db


def current_reader() -> str:
    """The operating-system login name: who the command-line tools record, and the reading
    room's reader until someone signs in under another name (Read > Sign in as another reader)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


class InitialReads(db.Connected):
    """Append-only log of initial BI-RADS assessments per exam and reader."""

    def record(self, exam_key: str, reader: str, birads: int) -> None:
        if not 0 <= int(birads) <= 6:
            raise ValueError(f"BI-RADS must be 0..6, not {birads}")
        with db.transaction(self.conn):
            self.conn.execute(
                "INSERT INTO initial_reads (exam_key, reader, birads, at) VALUES (?, ?, ?, ?)",
                (exam_key, reader, int(birads), utc_now()))

    def latest(self, exam_key: str, reader: str) -> int | None:
        row = self.conn.execute(
            "SELECT birads FROM initial_reads WHERE exam_key = ? AND reader = ? ORDER BY id DESC LIMIT 1",
            (exam_key, reader)).fetchone()
        return None if row is None else int(row[0])

    def exams_read(self, reader: str) -> set[str]:
        """Exam keys this reader has recorded an initial assessment for."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT exam_key FROM initial_reads WHERE reader = ?", (reader,))}
