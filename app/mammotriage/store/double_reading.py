"""Double reading with arbitration, and the soft lock that says who is reading an exam.

The site setting (``double_reading.json`` in the data directory, off when the file is
missing, so a standalone workstation reads as before)::

    {"enabled": true, "discordance": "recall", "lease_s": 600}

With it on, every exam is read by two readers independently:

* **Readers.** The first two distinct readers to sign an exam are its first and second
  reader. A third reader can no longer sign it; they may only arbitrate it.
* **Blinding.** Until both have signed, a reader's query for the exam's events
  (:class:`DoubleReadingLog`, the correction log the viewer reads through) returns that
  reader's own events only: no other reader's marks, notes or assessment. Once both
  have signed, everyone sees both reads.
* **Discordance** (:func:`discordance`, the named rule ``discordance``): ``recall``
  (default): the two signed recall decisions differ (the recall a reader signs,
  proposed from :data:`~mammotriage.store.assessment.RECALL_BIRADS`: 0, 4A, 4B, 4C and 5);
  ``birads`` (stricter): the recall decisions or the BI-RADS category of either breast
  differ (4A, 4B and 4C are distinct categories; a breast assessed by one reader only
  differs too).
* **Arbitration.** A discordant exam is on the arbitration list until a third reader
  (neither of the two) records the consensus: an ``arbitrate`` correction event (the
  hash-chained log, payload checked by
  :func:`~mammotriage.store.assessment.validate_arbitration`: the consensus assessment,
  ``role: "arbitration"``, the rule, its reasons and the two ``sign`` events arbitrated).
  The arbitrator's marks are their own correction events, as for any reader.
  :meth:`DoubleReading.case` gives both reads side by side.

The soft lock (:class:`ReadingLocks`, table ``reading_locks``, append-only): opening an
exam takes a lease (``lease_s``, default 10 minutes, renewed by taking it again); another
reader opening it is told who holds it and gets no lock; an expired lease is free, and
the holder releases it on closing the exam. It is advisory: it stops two readers from
reading one exam at once by accident, never anyone from viewing it.

Two stores, one set of rules. Everything here reads and writes through a small
:class:`Backend` seam (the SQL differences: placeholders, the clock, how one exam's
changes are serialised): :class:`SqliteBackend` for a workstation's archive, and
:class:`mammotriage.store.pg.double_reading.PgBackend` for the site's PostgreSQL store,
where :mod:`mammotriage.store.pg.double_reading` builds the same log, site view and
locks over the site's correction chain, so double reading spans workstations.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mammotriage.clock import utc_datetime
from mammotriage.store import db
from mammotriage.store.assessment import BREASTS, assessment_text
from mammotriage.store.audit import AuditAnchor, AuditKey
from mammotriage.store.events import (
    CorrectionError,
    CorrectionLog,
    Event,
    event_from_row,
    events_query,
)
from mammotriage.store.labels import ReaderLabels, fold

__all__ = [
    "DISCORDANCE_RULES",
    "ArbitrationCase",
    "Backend",
    "DoubleReading",
    "DoubleReadingLog",
    "DoubleReadingPolicy",
    "DoubleReadingRules",
    "DoubleReadingView",
    "ExamStatus",
    "Lock",
    "LockResult",
    "LockRules",
    "Read",
    "ReadingLocks",
    "SqliteBackend",
    "StatusIndex",
    "StoreUnreachable",
    "arbitration_list",
    "discordance",
    "exam_status",
    "exam_statuses",
    "snapshot_readers",
]

#: The named discordance rules, from the default to the stricter one.
DISCORDANCE_RULES = ("recall", "birads")
#: How long a soft lock lasts unless it is taken again, in seconds.
DEFAULT_LEASE_S = 600
#: Events that decide an exam's double-reading state.
STATE_ACTIONS = ("sign", "amend", "arbitrate")


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class DoubleReadingPolicy:
    """The site's double-reading setting (see the module docstring)."""

    enabled: bool = False
    discordance: str = "recall"
    lease_s: int = DEFAULT_LEASE_S
    source: str = ""

    FILE = "double_reading.json"

    def __post_init__(self) -> None:
        if self.discordance not in DISCORDANCE_RULES:
            raise ValueError(f"discordance must be one of {', '.join(DISCORDANCE_RULES)}, "
                             f"not {self.discordance!r}")
        if not 10 <= int(self.lease_s) <= 24 * 3600:
            raise ValueError(f"lease_s must be 10 to 86400 seconds, not {self.lease_s!r}")

    @classmethod
    def load(cls, folder: str | Path) -> DoubleReadingPolicy:
        """The setting of a data directory: no file is double reading off. A broken file
        keeps double reading on with the default rule (the safe side: reads stay blind
        and discordant ones reach arbitration) and says why in ``source``."""
        path = Path(folder) / cls.FILE
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            enabled = data.get("enabled", True)
            if not isinstance(enabled, bool):
                raise ValueError(f"enabled must be true or false, not {enabled!r}")
            return cls(enabled, str(data.get("discordance", "recall")),
                       int(data.get("lease_s", DEFAULT_LEASE_S)), str(path))
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            return cls(True, "recall", DEFAULT_LEASE_S,
                       f"{path} unreadable ({exc}): double reading on, discordance rule recall")

    def save(self, folder: str | Path) -> Path:
        """Write the setting into a data directory (what a site administrator does)."""
        path = Path(folder) / self.FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"enabled": self.enabled, "discordance": self.discordance,
                                    "lease_s": int(self.lease_s)}, indent=2) + "\n", encoding="utf-8")
        return path


# --------------------------------------------------------------------------- the rule


def discordance(first: Mapping[str, Any], second: Mapping[str, Any], rule: str = "recall") -> list[str]:
    """Why two signed assessments are discordant under ``rule`` (empty: concordant)."""
    if rule not in DISCORDANCE_RULES:
        raise ValueError(f"unknown discordance rule {rule!r} (one of {', '.join(DISCORDANCE_RULES)})")
    reasons = []
    if bool(first.get("recall")) != bool(second.get("recall")):
        reasons.append("recall: " + " vs ".join("recall" if a.get("recall") else "no recall"
                                                for a in (first, second)))
    if rule == "birads":
        a, b = first.get("breasts") or {}, second.get("breasts") or {}
        for side in BREASTS:
            ca, cb = (a.get(side) or {}).get("birads"), (b.get(side) or {}).get("birads")
            if ca != cb:
                reasons.append(f"{side} BI-RADS: {ca or 'not assessed'} vs {cb or 'not assessed'}")
    return reasons


# --------------------------------------------------------------------------- exam state


@dataclass(frozen=True)
class Read:
    """One reader's signed read of an exam."""

    reader: str
    seq: int  # of the sign event
    at: str
    assessment: dict[str, Any]

    @property
    def recall(self) -> bool:
        return bool(self.assessment.get("recall"))

    def to_json(self) -> dict[str, Any]:
        return {"reader": self.reader, "seq": self.seq, "at": self.at, "assessment": self.assessment,
                "text": assessment_text(self.assessment)}


@dataclass(frozen=True)
class ExamStatus:
    """Where an exam stands in double reading.

    ``state``: ``unread`` (nobody signed), ``first read`` (one reader signed, or one of
    the two re-opened their read), ``concordant``, ``discordant`` (on the arbitration
    list) or ``arbitrated``.
    """

    exam_key: str
    state: str
    readers: tuple[str, ...] = ()  # first and second reader, in the order they first signed
    reads: tuple[Read, ...] = ()  # their current signed reads (same order)
    reasons: tuple[str, ...] = ()  # why the two reads are discordant
    arbitration: Read | None = None  # the arbitrate event (reader = the arbitrator)
    unblinded: bool = False  # both readers have signed at least once

    @property
    def arbitrator(self) -> str:
        return self.arbitration.reader if self.arbitration else ""

    def consensus(self) -> dict[str, Any] | None:
        """The exam's final assessment: the arbitration, or the concordant reads' (both
        recall decisions agree; the more suspicious read's assessment)."""
        if self.arbitration is not None:
            chosen = self.arbitration.assessment
        elif self.state == "concordant":
            chosen = max(self.reads, key=lambda r: _suspicion(r.assessment)).assessment
        else:
            return None
        return {"breasts": chosen["breasts"], "recall": chosen["recall"]}

    def to_json(self) -> dict[str, Any]:
        return {"exam_key": self.exam_key, "state": self.state, "readers": list(self.readers),
                "reads": [r.to_json() for r in self.reads], "reasons": list(self.reasons),
                "arbitration": self.arbitration.to_json() if self.arbitration else None,
                "unblinded": self.unblinded}


#: BI-RADS from least to most suspicious (as store.consensus.BIRADS_ORDER, with 4A-4C).
_BIRADS_RANK = {c: i for i, c in enumerate(("1", "2", "3", "0", "4A", "4B", "4C", "5", "6"))}


def _suspicion(assessment: Mapping[str, Any]) -> tuple[int, int]:
    worst = max((_BIRADS_RANK.get(str(b.get("birads")), -1)
                 for b in (assessment.get("breasts") or {}).values()), default=-1)
    return (1 if assessment.get("recall") else 0, worst)


class StateEvent(Protocol):
    """What :func:`exam_status` reads of an event (a :class:`~mammotriage.store.events.Event` has it)."""

    @property
    def seq(self) -> int: ...
    @property
    def reader(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def at(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Signature:
    """A state event read with only the columns the state needs."""

    seq: int
    exam_key: str
    reader: str
    action: str
    at: str
    payload: dict[str, Any]


def exam_status(exam_key: str, events: Iterable[StateEvent], rule: str = "recall") -> ExamStatus:
    """The double-reading state of one exam from its events in order (any events: only
    ``sign``, ``amend`` and ``arbitrate`` count)."""
    current: dict[str, Read | None] = {}  # reader -> current signed read (None: re-opened)
    order: list[str] = []  # readers by first signature
    arbitration: Read | None = None
    for e in events:
        if e.action == "sign":
            current[e.reader] = Read(e.reader, e.seq, e.at, dict(e.payload))
            if e.reader not in order:
                order.append(e.reader)
        elif e.action == "amend" and arbitration is not None and e.reader == arbitration.reader:
            arbitration = None  # the arbitrator re-opened the arbitration
        elif e.action == "amend" and e.reader in current:
            current[e.reader] = None
        elif e.action == "arbitrate":
            arbitration = Read(e.reader, e.seq, e.at, dict(e.payload))
    readers = tuple(order[:2])
    reads = tuple(r for r in (current.get(name) for name in readers) if r is not None)
    unblinded = len(readers) == 2
    if arbitration is not None:
        return ExamStatus(exam_key, "arbitrated", readers, reads,
                          tuple(arbitration.assessment.get("reasons", [])), arbitration, unblinded)
    if not readers:
        return ExamStatus(exam_key, "unread")
    if len(reads) < 2:
        return ExamStatus(exam_key, "first read", readers, reads, unblinded=unblinded)
    reasons = tuple(discordance(reads[0].assessment, reads[1].assessment, rule))
    return ExamStatus(exam_key, "discordant" if reasons else "concordant", readers, reads, reasons,
                      unblinded=unblinded)


def snapshot_readers(status: ExamStatus) -> tuple[list[str] | None, str]:
    """The snapshot rule ``arbitrated`` for one exam: whose labels make its consensus
    (``None``: all its readers, by union) and the ``consensus_source`` recorded."""
    if status.state == "arbitrated":
        return [status.arbitrator], "arbitration"
    if status.state == "concordant":
        return list(status.readers), "concordant-union"
    return None, "awaiting-arbitration-union" if status.state == "discordant" else "union"


def may_see(status: ExamStatus, viewer: str, event_reader: str) -> bool:
    """Blinding: may ``viewer`` see an event of ``event_reader`` on this exam?"""
    return event_reader == viewer or status.unblinded


def check_event(status: ExamStatus, reader: str, action: str) -> None:
    """Refuse an event the double-reading roles do not allow (raises :class:`CorrectionError`).

    The first two signers are the exam's readers; a third reader records marks and the
    consensus of a discordant exam only (``arbitrate``), once.
    """
    readers = status.readers
    third = len(readers) == 2 and reader not in readers
    if action == "arbitrate":
        if reader in readers:
            raise CorrectionError(f"{reader} read this exam: a third reader arbitrates it")
        if status.state == "arbitrated":
            raise CorrectionError(f"this exam was arbitrated by {status.arbitrator} already")
        if status.state != "discordant":
            raise CorrectionError(f"this exam is {status.state}, not discordant: nothing to arbitrate")
        return
    if status.arbitrator == reader and action != "amend":
        raise CorrectionError(f"{reader} arbitrated this exam: amend the arbitration to change it")
    if third and action == "sign":
        raise CorrectionError(f"this exam is double-read by {readers[0]} and {readers[1]}: "
                              "a third reader records an arbitration, not a read")
    if third and status.state != "discordant" and action not in ("note", "amend"):
        raise CorrectionError(f"this exam is double-read by {readers[0]} and {readers[1]} and "
                              f"{status.state}: a third reader has nothing to record")


# --------------------------------------------------------------------------- the backend seam


class StoreUnreachable(CorrectionError):
    """The store cannot be reached (the site server is down or away): nothing was read or recorded."""


class Backend(Protocol):
    """What the rules need of a store, whichever it is (SQLite file or the site's PostgreSQL).

    SQL is written once, with ``?`` placeholders; a backend translates its paramstyle.
    """

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a SELECT; its rows as tuples."""
        ...

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run an INSERT (inside :meth:`serialised`)."""
        ...

    def events(self, exam_key: str) -> list[Event]:
        """Every correction event of an exam in chain order (unfiltered)."""
        ...

    def serialised(self, exam_key: str) -> AbstractContextManager[None]:
        """One transaction in which no other client changes the exam's events or locks
        (SQLite: the database's write lock; PostgreSQL: an advisory lock on the exam)."""
        ...

    def now(self) -> _dt.datetime:
        """The store's clock (UTC): the site server's for the site store, so leases do not
        depend on the workstations' clocks agreeing."""
        ...


class SqliteBackend:
    """:class:`Backend` over a SQLite connection (``conn``: a callable returning it, so a
    closed owner raises; ``lock``: the owner's lock around its statements)."""

    def __init__(self, conn: Callable[[], sqlite3.Connection], lock: threading.RLock | None = None):
        self._conn = conn
        self._lock = lock or threading.RLock()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in self._conn().execute(sql, tuple(params)).fetchall()]

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._conn().execute(sql, tuple(params))

    def events(self, exam_key: str) -> list[Event]:
        sql, params = events_query(exam_key, None, "?")
        with self._lock:
            return [event_from_row(dict(r)) for r in self._conn().execute(sql, params)]

    @contextmanager
    def serialised(self, exam_key: str) -> Iterator[None]:
        conn = self._conn()
        if conn.in_transaction:  # already in the caller's transaction (the log's append)
            yield
            return
        with self._lock, db.transaction(conn):
            yield

    def now(self) -> _dt.datetime:
        return utc_datetime()


def _backend(store: sqlite3.Connection | Backend) -> Backend:
    return SqliteBackend(lambda: store) if isinstance(store, sqlite3.Connection) else store


# --------------------------------------------------------------------------- the log


class DoubleReadingRules:
    """Blinding and the readers' roles for one reader, over a :class:`Backend`: what the
    local :class:`DoubleReadingLog` and the site's
    :class:`~mammotriage.store.pg.double_reading.SiteDoubleReadingLog` share."""

    reader: str
    policy: DoubleReadingPolicy
    backend: Backend

    def status(self, exam_key: str) -> ExamStatus:
        return exam_statuses(self.backend, self.policy.discordance, [exam_key])[exam_key]

    def blind(self, events: list[Event]) -> list[Event]:
        """``events`` without every other reader's event of an exam until both of its
        readers have signed (all of them with the policy off)."""
        if not self.policy.enabled:
            return events
        statuses: dict[str, ExamStatus] = {}
        out = []
        for e in events:
            if e.reader != self.reader:
                status = statuses.get(e.exam_key)
                if status is None:
                    status = statuses[e.exam_key] = self.status(e.exam_key)
                if not may_see(status, self.reader, e.reader):
                    continue
            out.append(e)
        return out

    def check(self, reader: str, exam_key: str, action: str, payload: dict[str, Any]) -> None:
        """The roles, checked in the append's transaction: two workstations cannot both
        become an exam's second reader or both arbitrate it; an arbitration names the
        exam's two current reads."""
        if not self.policy.enabled:
            return
        if reader != self.reader:
            raise CorrectionError(f"this log records {self.reader}'s reads, not {reader}'s")
        status = self.status(exam_key)
        check_event(status, reader, action)
        if action == "arbitrate":
            named = [(r["reader"], r["seq"]) for r in payload.get("reads", [])]
            if named != [(r.reader, r.seq) for r in status.reads]:
                raise CorrectionError("an arbitration names the exam's two current reads: "
                                      + ", ".join(f"{r.reader} (event {r.seq})" for r in status.reads))


class DoubleReadingLog(DoubleReadingRules, CorrectionLog):
    """The correction log as one reader sees and writes it under double reading.

    :meth:`events` leaves out every other reader's event of an exam until both of its
    readers have signed; :meth:`append` refuses what the roles do not allow
    (:func:`check_event`). With the policy off it is the plain log.
    """

    def __init__(self, archive_path: str | Path, reader: str, policy: DoubleReadingPolicy,
                 workstation: str | None = None, *, key: AuditKey | None = None,
                 anchor: AuditAnchor | None = None):
        super().__init__(archive_path, workstation, key=key, anchor=anchor)
        self.reader = reader
        self.policy = policy
        self.backend = SqliteBackend(lambda: self.conn, self._lock)

    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]:
        return self.blind(super().events(exam_key, sop_uid))

    def _check_append(self, reader: str, exam_key: str, action: str, payload: dict[str, Any]) -> None:
        self.check(reader, exam_key, action, payload)


# --------------------------------------------------------------------------- site view


@dataclass(frozen=True)
class ArbitrationCase:
    """What the arbitrator sees: both reads side by side, with each reader's labels."""

    status: ExamStatus
    labels: dict[str, ReaderLabels] = field(default_factory=dict)  # first, second reader -> labels

    def to_json(self) -> dict[str, Any]:
        side = []
        for read in self.status.reads:
            rl = self.labels.get(read.reader) or ReaderLabels(read.reader)
            side.append({**read.to_json(), "findings": [
                {"sop_uid": lab.sop_uid, "label_id": lab.label_id, "kind": lab.kind, "geometry": lab.geometry,
                 "source": lab.source, "status": lab.status} for lab in rl.labels() if lab.is_positive]})
        return {"exam_key": self.status.exam_key, "reasons": list(self.status.reasons), "reads": side}


def exam_statuses(store: sqlite3.Connection | Backend, rule: str = "recall", keys: Sequence[str] | None = None
                  ) -> dict[str, ExamStatus]:
    """Double-reading state of every exam with a signature (or of the exams ``keys``), one
    query; ``store``: a SQLite connection or any :class:`Backend`."""
    backend = _backend(store)
    marks = ",".join("?" * len(STATE_ACTIONS))
    sql = f"SELECT seq, exam_key, reader, action, at, payload FROM correction_events WHERE action IN ({marks})"
    if keys is None:
        rows = backend.rows(sql, STATE_ACTIONS)
    else:  # a worklist page: by exam key (index correction_events_exam), 500 at a time
        rows = []
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            rows += backend.rows(sql + f" AND exam_key IN ({','.join('?' * len(chunk))})", (*STATE_ACTIONS, *chunk))
    by_exam: dict[str, list[_Signature]] = {}
    for seq, key, reader, action, at, payload in sorted(rows, key=lambda r: int(r[0])):
        by_exam.setdefault(key, []).append(
            _Signature(int(seq), key, reader, action, at, json.loads(payload) if payload else {}))
    wanted = list(by_exam) if keys is None else list(keys)
    return {k: exam_status(k, by_exam.get(k, []), rule) for k in wanted}


class StatusIndex:
    """Every exam's double-reading state, kept up to date from the log incrementally: the
    first :meth:`update` reads every ``sign`` / ``amend`` / ``arbitrate`` event, later ones
    only the exams with such events after the last one seen (one indexed query when
    nothing changed). The window's worklist and arbitration list read it on each refresh.
    Relies on events committing in ``seq`` order (SQLite: one writer at a time; the site
    store: the chain trigger holds its lock until the append commits)."""

    def __init__(self, rule: str = "recall"):
        self.rule = rule
        self.seq = 0
        self.statuses: dict[str, ExamStatus] = {}

    def update(self, store: sqlite3.Connection | Backend) -> set[str]:
        """Catch up with the log; returns the exam keys whose state was re-read."""
        backend = _backend(store)
        marks = ",".join("?" * len(STATE_ACTIONS))
        rows = backend.rows(f"SELECT seq, exam_key FROM correction_events WHERE seq > ? AND action IN ({marks})",
                            (self.seq, *STATE_ACTIONS))
        if not rows:
            return set()
        changed = {str(r[1]) for r in rows}
        last = max(int(r[0]) for r in rows)
        if self.seq == 0:
            self.statuses = exam_statuses(backend, self.rule)
        else:
            self.statuses.update(exam_statuses(backend, self.rule, sorted(changed)))
        self.seq = last
        return changed

    def get(self, keys: Iterable[str]) -> dict[str, ExamStatus]:
        return {k: self.statuses[k] for k in keys if k in self.statuses}


def arbitration_list(statuses: Iterable[ExamStatus], reader: str | None = None) -> list[ExamStatus]:
    """The discordant exams of ``statuses`` (those ``reader`` did not read, when given),
    oldest second read first."""
    waiting = [s for s in statuses if s.state == "discordant" and (reader is None or reader not in s.readers)]
    return sorted(waiting, key=lambda s: (max(r.seq for r in s.reads), s.exam_key))


class DoubleReadingView:
    """The site's view of double reading over a :class:`Backend`: every exam's state and
    the arbitration list (:class:`DoubleReading` on SQLite, ``SiteDoubleReading`` on the site store)."""

    policy: DoubleReadingPolicy
    backend: Backend

    def statuses(self, keys: Sequence[str] | None = None) -> dict[str, ExamStatus]:
        """State of every exam with a signature (or of the exams ``keys``)."""
        return exam_statuses(self.backend, self.policy.discordance, keys)

    def arbitration_list(self) -> list[ExamStatus]:
        """Discordant exams awaiting a third reader, oldest second read first."""
        return arbitration_list(self.statuses().values())

    def case(self, exam_key: str, ai_marks: Mapping[str, list[dict[str, Any]]] | None = None,
             model_version: str = "") -> ArbitrationCase:
        """Both reads of an exam side by side (only once both have signed: blinding)."""
        status = self.statuses([exam_key])[exam_key]
        if not status.unblinded:
            return ArbitrationCase(status)
        events = self.backend.events(exam_key)
        labels = {}
        for reader in status.readers:
            own = [e for e in events if e.reader == reader]
            labels[reader] = fold(own, ai_marks, model_version, readers=[reader])[reader]
        return ArbitrationCase(status, labels)


class DoubleReading(DoubleReadingView, db.Connected):
    """:class:`DoubleReadingView` of a workstation's archive."""

    def __init__(self, archive_path: str | Path, policy: DoubleReadingPolicy):
        super().__init__(archive_path)
        self.policy = policy
        self.backend = SqliteBackend(lambda: self.conn, self._lock)


# --------------------------------------------------------------------------- soft locks


@dataclass(frozen=True)
class Lock:
    """A lease on an exam: ``reader`` at ``workstation`` until ``expires_at``."""

    exam_key: str
    reader: str
    workstation: str
    at: str
    expires_at: str

    @property
    def text(self) -> str:
        return f"being read by {self.reader}"

    def to_json(self) -> dict[str, Any]:
        return {"exam_key": self.exam_key, "reader": self.reader, "workstation": self.workstation,
                "at": self.at, "expires_at": self.expires_at}


@dataclass(frozen=True)
class LockResult:
    """The answer to taking a lock: ``granted`` with the lease, or the other holder."""

    granted: bool
    lock: Lock | None  # the lease taken, or the one held by someone else


def _iso(t: _dt.datetime) -> str:
    return t.isoformat(timespec="microseconds")


#: The columns a lock is read from, in :func:`_live`'s order.
_LOCK_COLUMNS = "exam_key, reader, workstation, action, at, expires_at"


def _live(row: Sequence[Any] | None, now: _dt.datetime) -> Lock | None:
    if row is None:
        return None
    exam_key, reader, workstation, action, at, expires_at = row
    if action != "take" or _dt.datetime.fromisoformat(expires_at) <= now:
        return None
    return Lock(exam_key, reader, workstation, at, expires_at)


class LockRules:
    """Soft locks over a :class:`Backend` (table ``reading_locks``: append-only take and
    release rows); :class:`ReadingLocks` on SQLite, ``SiteReadingLocks`` on the site store.
    A taker and a releaser hold :meth:`Backend.serialised` on the exam, so of two
    workstations opening it at the same moment exactly one gets the lease."""

    backend: Backend
    workstation: str
    lease_s: int

    def _now(self, now: _dt.datetime | None) -> _dt.datetime:
        return (now or self.backend.now()).astimezone(_dt.UTC)

    def _latest(self, exam_key: str) -> tuple[Any, ...] | None:
        rows = self.backend.rows(f"SELECT {_LOCK_COLUMNS} FROM reading_locks WHERE exam_key = ? "
                                 "ORDER BY id DESC LIMIT 1", (exam_key,))
        return rows[0] if rows else None

    def holder(self, exam_key: str, now: _dt.datetime | None = None) -> Lock | None:
        """Who holds the exam now (None: free, released or expired)."""
        return _live(self._latest(exam_key), self._now(now))

    def holders(self, now: _dt.datetime | None = None, keys: Sequence[str] | None = None) -> dict[str, Lock]:
        """Every exam held now (or those of ``keys``) -> its lock (the worklist's "being read by")."""
        t = self._now(now)
        if keys is None:
            rows = self.backend.rows(f"SELECT {_LOCK_COLUMNS} FROM reading_locks WHERE id IN "
                                     "(SELECT MAX(id) FROM reading_locks GROUP BY exam_key)")
        else:
            rows = []
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                rows += self.backend.rows(
                    f"SELECT {_LOCK_COLUMNS} FROM reading_locks WHERE id IN (SELECT MAX(id) FROM reading_locks "
                    f"WHERE exam_key IN ({','.join('?' * len(chunk))}) GROUP BY exam_key)", chunk)
        return {lock.exam_key: lock for lock in (_live(r, t) for r in rows) if lock is not None}

    def take(self, exam_key: str, reader: str, now: _dt.datetime | None = None) -> LockResult:
        """Take (or renew) the lease; refused while another reader's lease runs."""
        if not reader:
            raise ValueError("a lock needs a reader")
        with self.backend.serialised(exam_key):
            t = self._now(now)
            held = _live(self._latest(exam_key), t)
            if held is not None and held.reader != reader:
                return LockResult(False, held)
            lock = Lock(exam_key, reader, self.workstation, _iso(t), _iso(t + _dt.timedelta(seconds=self.lease_s)))
            self._insert(exam_key, reader, "take", lock.at, lock.expires_at)
        return LockResult(True, lock)

    def _insert(self, exam_key: str, reader: str, action: str, at: str, expires_at: str) -> None:
        """One take or release row (the site's locks add the reader's sign-in)."""
        self.backend.write("INSERT INTO reading_locks (exam_key, reader, workstation, action, at, expires_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (exam_key, reader, self.workstation, action, at, expires_at))

    def release(self, exam_key: str, reader: str, now: _dt.datetime | None = None) -> bool:
        """Give the exam back; False when ``reader`` did not hold it (nothing written)."""
        with self.backend.serialised(exam_key):
            t = self._now(now)
            held = _live(self._latest(exam_key), t)
            if held is None or held.reader != reader:
                return False
            self._insert(exam_key, reader, "release", _iso(t), "")
        return True


class ReadingLocks(LockRules, db.Connected):
    """Soft locks on exams in a workstation's archive (see :class:`LockRules`)."""

    def __init__(self, archive_path: str | Path, workstation: str | None = None,
                 lease_s: int = DEFAULT_LEASE_S):
        super().__init__(archive_path)
        self.workstation = workstation or socket.gethostname()
        self.lease_s = int(lease_s)
        self.backend = SqliteBackend(lambda: self.conn, self._lock)
