"""The site's correction chain on PostgreSQL, extended by the server.

A workstation sends an event's own fields (:func:`mammotriage.store.events.event_fields`:
uuid, time, reader, workstation, UIDs, action, geometry, payload). The database's
``mt_chain_event`` trigger (:mod:`.schema`) extends the chain in one serialised step
under ``pg_advisory_xact_lock``: ``seq`` (last + 1), ``prev_hash``, ``hash`` (computed
in PL/pgSQL from the same canonical JSON bytes as
:func:`~mammotriage.store.events.event_hash`; the tests compare the two) and ``mac``
(HMAC-SHA256 under the site's audit key, which lives in ``mt_private.audit_key`` and is
readable by ``mt_admin`` only), and moves the head record (``audit_head``). Concurrent
workstations therefore never fork the chain, and none of them holds the key.

Sending is idempotent by event uuid: an event already stored (a retry after a lost
acknowledgement) changes nothing; the same uuid with other content is refused.

:meth:`SiteCorrectionLog.verify` walks the whole chain with the local log's own walk
(:func:`~mammotriage.store.events.walk_chain`) and checks the server's head record,
so it reports the same kinds of findings as ``mammotriage audit verify``: a changed
event, a broken link, a gap, a truncated tail, a wrong MAC. Run as ``mt_admin`` it
checks the MACs too; other roles cannot read the key and get the hash checks only
(``macs_checked`` is False).
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg.rows import dict_row

from mammotriage.store.audit import AuditKey, Head
from mammotriage.store.events import (
    _FIELDS,
    GENESIS,
    Event,
    VerifyReport,
    check_head,
    event_fields,
    event_from_row,
    events_query,
    walk_chain,
)
from mammotriage.store.pg.schema import ACCOUNT_SEAL_VERSION, KEY_PLACE, at_least, site_key

__all__ = ["SERVER_AWAY", "PgConnected", "ServerAnchor", "SiteCorrectionLog", "SiteVerifyReport", "connect"]

Conn = psycopg.Connection[dict[str, Any]]
#: What a call raises when the server cannot be reached (down, restarting, network).
SERVER_AWAY: tuple[type[Exception], ...] = (psycopg.OperationalError,)
_CLIENT_FIELDS = tuple(name for name in _FIELDS if name != "prev_hash")
_INSERT = (f"INSERT INTO correction_events ({', '.join(_CLIENT_FIELDS)}) "
           f"VALUES ({', '.join(['%s'] * len(_CLIENT_FIELDS))})")
#: With a reader's site sign-in (store.pg.accounts): the token goes with the event (never stored).
_INSERT_SIGNED = (f"INSERT INTO correction_events ({', '.join(_CLIENT_FIELDS)}, session_token) "
                  f"VALUES ({', '.join(['%s'] * (len(_CLIENT_FIELDS) + 1))})")
#: The key of an event's fields that carries its reader's sign-in token (not an event field).
TOKEN = "session_token"


def _insert(fields: dict[str, str]) -> tuple[str, list[str]]:
    values = [fields[name] for name in _CLIENT_FIELDS]
    if fields.get(TOKEN):
        return _INSERT_SIGNED, [*values, fields[TOKEN]]
    return _INSERT, values


def connect(dsn: str) -> Conn:
    """An autocommit connection with dict rows (callers open transactions explicitly)."""
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


class PgConnected:
    """Base of the site store's clients: one connection, opened on first use and again
    after the server dropped it; closed on exit."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: Conn | None = None

    @property
    def conn(self) -> Conn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = connect(self.dsn)
        return self._conn

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (without opening one)."""
        return self._conn is not None and not self._conn.closed

    def cut(self) -> bool:
        """From another thread: shut the connection's socket down, so that a call blocked
        on a server that never answers fails at once (the next call reconnects). False:
        there is no open connection to cut (a connect in progress ends by its timeout)."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.OperationalError):
            return False
        return True

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SiteVerifyReport(VerifyReport):
    #: False when the role could not read the site's key (hashes and links checked only).
    macs_checked: bool = True
    #: Events stored before the site sealed accounts (schema version 10): their ``account``
    #: is not covered by a MAC.
    accounts_unsealed: int = 0


def account_seal_message(archive_id: str, event_hash: str, account: str | None) -> str:
    """What ``account_mac`` seals (schema ``ACCOUNT_SEAL``, the same text)."""
    return f"mammotriage.account/1|{archive_id}|{event_hash}|" + ("-" if account is None else f"={account}")


def account_seal_from_message(archive_id: str, seq: int) -> str:
    """What ``account_seal_from.mac`` seals (schema ``ACCOUNT_SEAL_FROM``)."""
    return f"mammotriage.account-seal-from/1|{archive_id}|{seq:d}"


def check_account_seals(rows: list[dict[str, Any]], seal_from: dict[str, Any] | None, key: AuditKey | None,
                        archive_id: str) -> tuple[list[str], int]:
    """Problems with the events' account seals, and how many events predate sealing.

    ``rows``: ``seq, event_id, hash, account, account_mac`` of every event; ``seal_from``:
    the ``account_seal_from`` row, which the migration to version 10 wrote (None: it is
    gone). Without ``key`` only the presence of the seals is checked.
    """
    problems: list[str] = []
    start: int | None = None
    if seal_from is not None:
        start = int(seal_from["seq"])
        if key is not None and not key.verify(account_seal_from_message(archive_id, start), seal_from["mac"]):
            problems.append(f"the record that account seals start at event {start} does not match its MAC "
                            "(changed outside the server's trigger)")
    else:
        problems.append("the record of where account sealing starts (account_seal_from) is missing: it was "
                        "removed outside the server's triggers, so no event's account can be trusted")
    unsealed = 0
    for r in rows:
        seq, mac = int(r["seq"]), r["account_mac"]
        if mac is None:
            if start is not None and seq >= start:
                problems.append(f"event {seq} ({r['event_id']}): stored after account sealing began, but its "
                                "account seal is missing (removed outside the server's trigger)")
            else:
                unsealed += 1
        elif start is None or seq < start:
            problems.append(f"event {seq} ({r['event_id']}): carries an account seal from before sealing began")
        elif key is not None and not key.verify(account_seal_message(archive_id, r["hash"], r["account"]), mac):
            shown = "none" if r["account"] is None else repr(r["account"])
            problems.append(f"event {seq} ({r['event_id']}): the account it shows ({shown}) is not the one the "
                            "server sealed when it stored the event (the account seal does not match)")
    return problems, unsealed


class ServerAnchor:
    """The server's head record as a :class:`~mammotriage.store.audit.AuditAnchor`.

    :meth:`record` does nothing: the chain trigger moves the head inside the append's
    own transaction, so no client can record (or forget to record) one.
    """

    path = "the site database's audit_head"

    def __init__(self, conn: Conn, key: AuditKey | None, archive_id: str):
        self.conn = conn
        self.key = key
        self.archive_id = archive_id

    def record(self, head: Head) -> None:
        """The server records its heads itself (see the class docstring)."""

    def latest(self) -> tuple[Head | None, list[str]]:
        row = self.conn.execute("SELECT count, last_seq, last_hash, mac, at FROM audit_head WHERE id = 1").fetchone()
        if row is None:
            return None, ["the site database has no head record (audit_head is empty)"]
        head = Head(int(row["count"]), int(row["last_seq"]), str(row["last_hash"]), str(row["mac"]),
                    row["at"].isoformat() if row["at"] else "")
        if self.key is not None and not head.valid(self.key, self.archive_id):
            return None, ["the site database's head record has a wrong MAC (changed without the audit key)"]
        return (head if head.count or head.last_seq else None), []


class SiteCorrectionLog(PgConnected):
    """The site's correction chain, for one workstation (or the admin's verify).

    Parameters
    ----------
    dsn
        libpq connection string (``PgCluster.dsn("mt_workstation")``).
    workstation
        Recorded in every event (default: the host name).

    Every call raises one of :data:`SERVER_AWAY` when the server cannot be reached; the
    next call reconnects (:mod:`.buffer` keeps events meanwhile).
    """

    def __init__(self, dsn: str, workstation: str | None = None):
        super().__init__(dsn)
        self.workstation = workstation or socket.gethostname()

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)``; a connection the server dropped is closed before re-raising."""
        try:
            return fn(self.conn, *args)
        except SERVER_AWAY:
            self.close()
            raise

    # ----------------------------------------------------------------- append
    def append(self, *, reader: str, exam_key: str, action: str, **fields: Any) -> Event:
        """Check and record one event (:func:`~mammotriage.store.events.event_fields`'s arguments)."""
        return self.send(event_fields(self.workstation, reader=reader, exam_key=exam_key, action=action,
                                      **fields))

    def send(self, fields: dict[str, str]) -> Event:
        """Store an event made earlier (its own fields); returns it as chained by the server.

        Idempotent: an event whose uuid is already stored is returned as stored.

        Raises
        ------
        psycopg.errors.UniqueViolation
            The uuid is stored with other content.
        """
        def run(conn: Conn) -> Event:
            with conn.transaction():
                conn.execute(*_insert(fields))
                row = conn.execute("SELECT * FROM correction_events WHERE event_id = %s",
                                   (fields["event_id"],)).fetchone()
            if row is None:  # pragma: no cover - the trigger stores or refuses, never drops
                raise RuntimeError(f"event {fields['event_id']} was neither stored nor refused")
            return event_from_row(row)

        result: Event = self._call(run)
        return result

    def send_batch(self, batch: list[dict[str, str]]) -> list[Event]:
        """Store events made earlier, in order, in ONE transaction; returns them as chained.

        The trigger extends the chain row by row exactly as for :meth:`send` (the chain
        lock is taken by the first row and held to the commit), so the batch either
        commits whole or not at all; a batch retried after a lost acknowledgement is
        skipped row by row (idempotent by uuid). The inserts go in one pipeline (one round
        trip), then one read of the stored rows.

        Raises
        ------
        psycopg.errors.UniqueViolation
            One of the uuids is stored with other content (nothing of the batch is stored).
        """
        if not batch:
            return []
        ids = [fields["event_id"] for fields in batch]

        def run(conn: Conn) -> list[Event]:
            with conn.transaction():
                with conn.cursor() as cur:
                    # in order (the chain's order): one pipeline per run of the same statement
                    for statement, run in itertools.groupby((_insert(fields) for fields in batch),
                                                            key=lambda x: x[0]):
                        cur.executemany(statement, [values for _, values in run])
                rows = conn.execute("SELECT * FROM correction_events WHERE event_id = ANY(%s)", (ids,)).fetchall()
            stored = {str(r["event_id"]): event_from_row(r) for r in rows}
            missing = [i for i in ids if i not in stored]
            if missing:  # pragma: no cover - the trigger stores or refuses, never drops
                raise RuntimeError(f"events {missing[:3]} were neither stored nor refused")
            return [stored[i] for i in ids]

        result: list[Event] = self._call(run)
        return result

    # ----------------------------------------------------------------- read
    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]:
        query, params = events_query(exam_key, sop_uid, "%s")

        def run(conn: Conn) -> list[Event]:
            return [event_from_row(r) for r in conn.execute(query, params)]

        result: list[Event] = self._call(run)
        return result

    def head(self) -> Head:
        """The chain's end (the server's head record, with its MAC)."""
        def run(conn: Conn) -> Head:
            row = conn.execute("SELECT count, last_seq, last_hash, mac FROM audit_head WHERE id = 1").fetchone()
            if row is None:
                return Head(0, 0, GENESIS)
            return Head(int(row["count"]), int(row["last_seq"]), str(row["last_hash"]), str(row["mac"]))

        result: Head = self._call(run)
        return result

    def archive_id(self) -> str:
        row = self._call(lambda conn: conn.execute("SELECT archive_id FROM site_identity").fetchone())
        return str(row["archive_id"]) if row else "unknown-site"

    # ----------------------------------------------------------------- verify
    def _key(self, conn: Conn) -> AuditKey | None:
        try:
            with conn.transaction():
                row = conn.execute("SELECT secret FROM mt_private.audit_key").fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return None
        return site_key(bytes(row["secret"])) if row else None

    def verify(self) -> SiteVerifyReport:
        """Walk the whole chain and check it against the server's head record.

        Problems are reported, never raised (a dropped table included); an unreachable
        server raises one of :data:`SERVER_AWAY`.
        """
        try:
            report: SiteVerifyReport = self._call(self._verify)
            return report
        except SERVER_AWAY:
            raise
        except psycopg.DatabaseError as exc:
            return SiteVerifyReport(ok=False, events=0, problems=[
                f"cannot read the site's correction events: {exc} (a table was dropped or access is refused)"])

    def _verify(self, conn: Conn) -> SiteVerifyReport:
        key = self._key(conn)
        row = conn.execute("SELECT archive_id FROM site_identity").fetchone()
        archive_id = str(row["archive_id"]) if row else "unknown-site"
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one consistent picture
            sealed = at_least(conn, ACCOUNT_SEAL_VERSION)
            seal_rows: list[dict[str, Any]] = []

            def rows() -> Iterator[dict[str, Any]]:  # one pass: the chain's walk and the seals' columns
                for row in conn.execute("SELECT * FROM correction_events ORDER BY seq"):
                    if sealed:
                        seal_rows.append({c: row[c] for c in ("seq", "event_id", "hash", "account", "account_mac")})
                    yield row

            walk = walk_chain(rows(), key, f"{KEY_PLACE} is not this site's key")
            anchor = ServerAnchor(conn, key, archive_id)
            head, problems = anchor.latest()
            seal_problems: list[str] = []
            unsealed = 0
            if sealed:
                seal_problems, unsealed = check_account_seals(
                    seal_rows, conn.execute("SELECT seq, mac FROM account_seal_from").fetchone(), key, archive_id)
        problems = walk.problems + problems
        problems += check_head(head, walk.events, walk.by_seq, walk.keyed, anchor)
        problems += seal_problems
        return SiteVerifyReport(ok=not problems, events=walk.events, problems=problems,
                                head=head.to_json() if head else None, unkeyed=walk.unkeyed,
                                macs_checked=key is not None, accounts_unsealed=unsealed)
