"""Double reading on the site's PostgreSQL store: the same rules, across workstations.

The rules are :mod:`mammotriage.store.double_reading`'s (readers, blinding, discordance,
the arbitration list, soft locks); this module only supplies the site store behind them:

- :class:`PgBackend`: the :class:`~mammotriage.store.double_reading.Backend` seam on
  one PostgreSQL connection (``%s`` placeholders, the server's clock, and
  ``pg_advisory_xact_lock`` on the exam for a change that must see every other one).
- :class:`SiteDoubleReadingLog`: one reader's correction log over the site chain
  (:class:`~mammotriage.store.pg.events.SiteCorrectionLog`). Its events are blinded as
  the local log's are. An append checks the reader's role and inserts the event in one
  transaction under the exam's advisory lock, so two workstations cannot both become an
  exam's second reader or both arbitrate it; the chain trigger then extends the chain as
  for any event. Because the check needs the server, these appends are synchronous (not
  buffered like :class:`~mammotriage.viewer.site_log.SiteLog`'s): while the server is
  away an append is refused with :class:`~mammotriage.store.double_reading.StoreUnreachable`
  and reads return what was last read, so an open exam stays readable. An exam another
  client holds (a stalled workstation mid-change) is waited for at most
  :data:`LOCK_WAIT_S`, then refused the same way.
- :class:`SiteDoubleReading`: the site view (every exam's state, the arbitration list,
  both reads side by side).
- :class:`SiteReadingLocks`: the soft locks in the site table ``reading_locks``
  (site schema :data:`~.schema.READING_LOCKS_VERSION`, append-only). Of two workstations opening an exam at the same
  moment exactly one gets the lease: each takes the exam's advisory lock, then reads
  the newest row and inserts its own in that transaction.
- :class:`ServerWatch`: what a window's clients on one server share. A call that does
  not end within its backend's ``deadline_s`` has its connection cut
  (:meth:`~mammotriage.store.pg.events.PgConnected.cut`) and is refused as away, so a
  server that stops answering (a frozen backend, a cable pulled) costs the reader's
  window at most that long once; afterwards calls are refused at once, without trying,
  until a ``probe`` backend (the window's background reader) reaches the server again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from mammotriage.store.double_reading import (
    DEFAULT_LEASE_S,
    DoubleReadingPolicy,
    DoubleReadingRules,
    DoubleReadingView,
    LockRules,
    StoreUnreachable,
)
from mammotriage.store.events import (
    CorrectionError,
    Event,
    SessionReaders,
    event_fields,
    event_from_row,
    events_query,
)
from mammotriage.store.pg.accounts import SignIns
from mammotriage.store.pg.events import SERVER_AWAY, TOKEN, PgConnected, SiteCorrectionLog
from mammotriage.store.pg.schema import LOCK_ACCOUNTS_VERSION, READING_LOCKS_VERSION

__all__ = ["EXAM_LOCK", "LOCK_WAIT_S", "SITE_CALL_S", "PgBackend", "ServerWatch", "SiteDoubleReading", "SiteDoubleReadingLog",
           "SiteReadingLocks"]

#: First key of ``pg_advisory_xact_lock(EXAM_LOCK, hashtext(exam_key))``: one exam's
#: double-reading changes (role-checked appends, lock takes and releases), one at a time.
#: (The two-key form never meets the chain's one-key ``CHAIN_LOCK``.)
EXAM_LOCK = 0x4D54_0003
#: Seconds a change waits for an exam another client is changing before it is refused
#: (a change holds the exam a few milliseconds; a client that holds it longer is stalled,
#: and the reader's window must not wait on it).
LOCK_WAIT_S = 3.0
#: Seconds a call of a reader's window on the site server may wait before it is cut and
#: refused as away (its double-reading log and soft locks): longer than an exam's lock is
#: waited for, so that a busy exam is refused as "being changed on another workstation",
#: not as a server that is away.
SITE_CALL_S = LOCK_WAIT_S + 2.0
_CACHED_READS = 32
_AWAY: tuple[type[Exception], ...] = (StoreUnreachable, *SERVER_AWAY)


def _refused(what: str, exc: BaseException) -> CorrectionError:
    """The reader's words for a change the server refused (its first line of reason)."""
    return CorrectionError(f"{what}: the site refused it: {str(exc).strip().splitlines()[0]}")


class ServerWatch:
    """Whether one site server is away, shared by the clients of a window (thread-safe).

    A backend that finds the server away marks it (:meth:`down`); while it is marked, the
    backends that are not probes refuse their calls at once. Any call that reaches the
    server marks it back (:meth:`up`); the probe (a background reader) is the one that
    keeps trying meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._away: str | None = None
        self._since = 0.0
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, call: Callable[[], None]) -> None:
        """``call()`` each time the server is found away (the probe reads again at once:
        a call that was only slow does not keep the window's calls refused long)."""
        self._listeners.append(call)

    @property
    def away(self) -> str | None:
        """Why the server was found away (None: it answered last)."""
        with self._lock:
            return self._away

    def down(self, why: str) -> None:
        with self._lock:
            fresh = self._away is None
            if fresh:
                self._since = time.time()
            self._away = why
        if fresh:
            for call in list(self._listeners):
                call()

    def up(self) -> None:
        with self._lock:
            self._away = None

    def refusal(self, where: str) -> str | None:
        """The text of a call refused without trying (None: try)."""
        with self._lock:
            if self._away is None:
                return None
            since = time.strftime("%H:%M:%S", time.localtime(self._since))
            return (f"{where} is away since {since} ({self._away}): nothing was read or recorded; "
                    "it is tried again in the background")


class PgBackend:
    """:class:`~mammotriage.store.double_reading.Backend` on an owner's connection
    (``owner.conn``: reconnects after the server dropped it). A server that cannot be
    reached raises :class:`StoreUnreachable`.

    ``deadline_s``: a call still waiting on the server after this long has its connection
    cut and is refused (None: no deadline; a connect is bounded by the DSN's
    ``connect_timeout``). ``watch``: shared with the window's other clients (see
    :class:`ServerWatch`); a ``probe`` backend tries whatever the watch says."""

    def __init__(self, owner: PgConnected, where: str = "the site server", *, deadline_s: float | None = None,
                 watch: ServerWatch | None = None, probe: bool = False):
        self.owner = owner
        self.where = where
        self.deadline_s = deadline_s
        self.watch = watch
        self.probe = probe
        self._depth = 0  # calls nest (an append's checks run inside its serialised change)

    def guarded(self) -> contextlib.AbstractContextManager[None]:
        """The deadline and the away rules for a call on ``owner.conn`` made outside the
        backend's own methods (``SiteCorrectionLog.events``)."""
        return self._away()

    @contextmanager
    def _away(self) -> Iterator[None]:
        if self._depth:  # inside another call of this backend: the outer call handles it all
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.watch is not None and not self.probe:
            refused = self.watch.refusal(self.where)
            if refused is not None:
                raise StoreUnreachable(refused)
        # a connection open before the call that fails at once was dropped while idle (a
        # server restart): evidence of nothing now, the next call reconnects; a connect
        # that fails, or a call cut at its deadline, finds the server away
        stale = self.owner.connected
        cut = threading.Event()
        timer = None
        if self.deadline_s is not None:
            def on_deadline() -> None:
                cut.set()  # before the cut: the call it ends reads it at once
                if not self.owner.cut():
                    cut.clear()  # no connection open (a connect ends by its own timeout)
            timer = threading.Timer(self.deadline_s, on_deadline)
            timer.daemon = True
            timer.start()
        self._depth = 1
        try:
            yield
        except SERVER_AWAY as exc:
            self.owner.close()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if cut.is_set():
                first = f"it did not answer within {self.deadline_s:g} s"
            if self.watch is not None and (cut.is_set() or not stale):
                self.watch.down(first)
            raise StoreUnreachable(f"{self.where} cannot be reached ({first}): nothing was read or recorded") from exc
        except psycopg.errors.UndefinedTable as exc:  # a site database from before reading_locks
            first = str(exc).strip().splitlines()[0]
            raise StoreUnreachable(f"{self.where}'s database has no double reading yet ({first}): its schema "
                                   f"predates version {READING_LOCKS_VERSION}; upgrade the site database "
                                   "(`mammotriage site start` on the site server runs its migrations)") from exc
        else:
            if self.watch is not None:
                self.watch.up()
        finally:
            self._depth = 0
            if timer is not None:
                timer.cancel()
                timer.join()
                if cut.is_set():  # cut as the call ended (answered or not): the next call reconnects
                    self.owner.close()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._away(), self.owner.conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return list(cur.fetchall())

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._away():
            self.owner.conn.execute(sql.replace("?", "%s"), tuple(params))

    def events(self, exam_key: str) -> list[Event]:
        sql, params = events_query(exam_key, None, "%s")
        with self._away():
            return [event_from_row(r) for r in self.owner.conn.execute(sql, params)]

    @contextmanager
    def serialised(self, exam_key: str) -> Iterator[None]:
        """The exam's advisory lock for one transaction, waited for at most
        :data:`LOCK_WAIT_S` (``lock_timeout``): an exam another client holds longer is
        refused with :class:`StoreUnreachable`, nothing recorded."""
        with self._away():
            conn = self.owner.conn
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'")
                    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (EXAM_LOCK, exam_key))
                    conn.execute("SET LOCAL lock_timeout = DEFAULT")  # the change itself: the role's limits
                    yield
            except psycopg.errors.LockNotAvailable:
                raise StoreUnreachable(
                    f"exam {exam_key} is being changed on another workstation (its lock on {self.where} was not "
                    f"free within {LOCK_WAIT_S:g} s): nothing was recorded; try again") from None

    def now(self) -> _dt.datetime:
        stamp: _dt.datetime = self.rows("SELECT clock_timestamp()")[0][0]
        return stamp.astimezone(_dt.UTC)


class SiteDoubleReadingLog(SessionReaders, DoubleReadingRules):
    """One reader's correction log on the site store under double reading (see the module
    docstring). It answers what :class:`~mammotriage.viewer.corrections.ExamCorrections`
    asks of a log (``append``, ``events``) and what the local
    :class:`~mammotriage.store.double_reading.DoubleReadingLog` adds (``status``)."""

    def __init__(self, dsn: str, reader: str, policy: DoubleReadingPolicy, workstation: str | None = None, *,
                 deadline_s: float | None = None, watch: ServerWatch | None = None):
        self.site = SiteCorrectionLog(dsn, workstation)
        self._pg = PgBackend(self.site, deadline_s=deadline_s, watch=watch)
        self.backend = self._pg
        self.reader = reader
        self.policy = policy
        self._readers: set[str] = set()
        self._last: OrderedDict[tuple[str | None, str | None], list[Event]] = OrderedDict()
        #: reader -> site sign-in token (store.pg.accounts.sign_in): sent with their events
        self.sign_ins = SignIns()

    @property
    def workstation(self) -> str:
        return self.site.workstation

    def close(self) -> None:
        self.site.close()

    def __enter__(self) -> SiteDoubleReadingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- append / read
    def append(self, *, reader: str, exam_key: str, action: str, **fields: Any) -> Event:
        """Check one event (its fields, then the reader's role against every committed
        event of the exam) and record it; returns it as the server chained it.

        Raises
        ------
        CorrectionError
            The event is invalid or the roles refuse it (nothing is recorded);
            :class:`StoreUnreachable` when the server cannot be reached.
        """
        made = event_fields(self.workstation, reader=reader, exam_key=exam_key, action=action, **fields)
        payload = json.loads(made["payload"]) if made["payload"] else {}
        token = self.sign_ins.token_for(reader)
        with self.backend.serialised(exam_key):
            self.check(reader, exam_key, action, payload)
            try:
                return self.site.send({**made, TOKEN: token} if token else made)
            except (psycopg.IntegrityError, psycopg.DataError) as exc:  # the server refused it (site accounts)
                raise _refused("not recorded", exc) from exc

    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]:
        """The site's events as this reader may see them; while the server is away, the
        last ones read for the same exam (or image)."""
        key = (exam_key, sop_uid)
        try:
            with self._pg.guarded():
                seen = self.blind(self.site.events(exam_key, sop_uid))
        except _AWAY:
            return list(self._last.get(key, []))
        self._last[key] = seen
        self._last.move_to_end(key)
        while len(self._last) > _CACHED_READS:
            self._last.popitem(last=False)
        return list(seen)

    def verify(self) -> Any:
        """The site chain's :meth:`~mammotriage.store.pg.events.SiteCorrectionLog.verify`."""
        return self.site.verify()


class SiteDoubleReading(DoubleReadingView, PgConnected):
    """The site view of double reading on the site store (read-only)."""

    def __init__(self, dsn: str, policy: DoubleReadingPolicy, *, deadline_s: float | None = None,
                 watch: ServerWatch | None = None, probe: bool = False):
        super().__init__(dsn)
        self.policy = policy
        self.backend = PgBackend(self, deadline_s=deadline_s, watch=watch, probe=probe)


class SiteReadingLocks(LockRules, PgConnected):
    """Soft locks in the site store's ``reading_locks`` (see :class:`~mammotriage.store.double_reading.LockRules`)."""

    def __init__(self, dsn: str, workstation: str | None = None, lease_s: int = DEFAULT_LEASE_S, *,
                 deadline_s: float | None = None, watch: ServerWatch | None = None, probe: bool = False):
        super().__init__(dsn)
        self.workstation = workstation or socket.gethostname()
        self.lease_s = int(lease_s)
        self.backend = PgBackend(self, deadline_s=deadline_s, watch=watch, probe=probe)
        #: reader -> site sign-in token (store.pg.accounts.sign_in): sent with their takes and releases
        self.sign_ins = SignIns()

    def _insert(self, exam_key: str, reader: str, action: str, at: str, expires_at: str) -> None:
        token = self.sign_ins.token_for(reader)
        columns, values = "exam_key, reader, workstation, action, at, expires_at", [
            exam_key, reader, self.workstation, action, at, expires_at]
        if token:
            columns, values = columns + ", session_token", [*values, token]
        try:
            self.backend.write(f"INSERT INTO reading_locks ({columns}) VALUES ({', '.join(['?'] * len(values))})",
                               values)
        except (psycopg.IntegrityError, psycopg.DataError) as exc:  # the server refused it (site accounts)
            raise _refused("soft lock not recorded", exc) from exc
        except psycopg.errors.UndefinedColumn as exc:  # a sign-in, but a site database from before version 9
            raise CorrectionError(f"soft lock not recorded: the site database predates schema version "
                                  f"{LOCK_ACCOUNTS_VERSION} (locks under sign-ins); upgrade it (`mammotriage site "
                                  f"start` on the site server runs its migrations)") from exc
