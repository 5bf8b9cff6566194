"""Results back to the PACS: a persistent outbox and a C-STORE sender with retries.

Queuing copies the object into ``<data dir>/outbox/`` and records it in the
``outbox`` table of the archive database, in one step, before anything is sent: if
the PACS is down, the program crashes or the machine restarts, the object is still
there and is sent when the PACS is back.  Nothing is deleted before the PACS has
answered the C-STORE with a success (or warning) status.

Entry life cycle::

    pending --send--> sending --success--> sent
       ^                 |
       +--- transient ---+  (PACS unreachable, association rejected or aborted,
       |                     out of resources): retried with exponential back-off
       |                 +--- permanent ---> failed  (PACS refuses the object,
       +------ retry_failed() ----------+            file missing); kept with the reason

An entry left in ``sending`` by a crash goes back to ``pending`` when a sender
starts (sending an instance twice is harmless: the PACS keeps one copy per SOP
Instance UID).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from mammotriage.clock import utc_now
from mammotriage.config import archive_path, data_dir
from mammotriage.dicom import MammoReadError, open_dataset
from mammotriage.digest import sha256_file_size
from mammotriage.net.settings import NetworkSettings, PeerSettings
from mammotriage.store import db

__all__ = [
    "KINDS",
    "Outbox",
    "OutboxError",
    "OutboxItem",
    "OutboxSender",
    "OutboxSink",
    "SendReport",
    "queue_result",
]

LOG = logging.getLogger(__name__)

#: What an entry holds, for display: AI structured report, AI segmentation, the
#: readers' final findings, anything else.
KINDS = ("ai-sr", "ai-seg", "reader-findings", "other")

STATUSES = ("pending", "sending", "sent", "failed")

#: At most this many entries per association (PS3.8 allows 128 presentation contexts).
BATCH_SIZE = 100


class OutboxError(ValueError):
    """An object that cannot be queued (not DICOM, no SOP Instance UID ...)."""


@dataclass(frozen=True)
class OutboxItem:
    """One outbox entry (a row of the ``outbox`` table)."""

    id: int
    path: str
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    transfer_syntax: str
    kind: str
    sha256: str
    size: int
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str
    sent_to: str
    created_at: str
    updated_at: str
    sent_at: str | None

    @property
    def sop_class_name(self) -> str:
        """Readable SOP class name (the UID when unknown)."""
        try:
            name = UID(self.sop_class_uid).name
        except Exception:  # noqa: BLE001
            name = ""
        return name or self.sop_class_uid

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (``mammotriage outbox --json``)."""
        data = dict(self.__dict__)
        data["sop_class"] = self.sop_class_name
        data["next_attempt_at"] = (
            _dt.datetime.fromtimestamp(self.next_attempt_at, _dt.UTC).isoformat(timespec="seconds")
            if self.status == "pending"
            else None
        )
        return data


class Outbox(db.Connected):
    """The persistent queue of objects to send to the PACS.

    Parameters
    ----------
    path
        Archive database (the ``outbox`` table lives there); default
        :func:`mammotriage.config.archive_path`.
    folder
        Where queued copies are kept until sent; default ``<data dir>/outbox``.
    clock
        Wall clock in Unix seconds (back-off times are stored as wall-clock times so
        that they survive a restart); replaceable for tests.

    Notes
    -----
    Thread-safe (one connection, serialised by a lock); several processes may use
    the same database (SQLite WAL, claims are atomic ``UPDATE`` statements).
    """

    closed_name = "outbox"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        folder: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder) if folder is not None else data_dir() / "outbox"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._listeners: list[Callable[[], None]] = []
        super().__init__(path if path is not None else archive_path())

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every :meth:`enqueue` (a sender wakes up on it)."""
        self._listeners.append(listener)

    # -- queue -------------------------------------------------------------------

    def enqueue(self, file: str | os.PathLike[str], *, kind: str = "other") -> OutboxItem:
        """Queue a DICOM file for the PACS (copied into the outbox folder first).

        Queuing an object that is already waiting (same SOP Instance UID, pending or
        being sent) returns the waiting entry and copies nothing.

        Parameters
        ----------
        file
            A DICOM Part 10 file (SR, SEG or any storage object).
        kind
            One of :data:`KINDS`.

        Raises
        ------
        OutboxError
            The file cannot be read, is not DICOM, or lacks SOP Class/Instance UID
            or a transfer syntax.
        """
        if kind not in KINDS:
            raise OutboxError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        src = Path(file)
        if not src.is_file():
            raise OutboxError(f"{src}: no such file")
        try:  # the reader's bounded parse: a deflate bomb is refused, not inflated
            ds = open_dataset(src)
        except MammoReadError as exc:
            raise OutboxError(f"{src}: {exc.reason}") from None  # the reader's reason: not DICOM, a bomb ...
        except Exception as exc:  # noqa: BLE001 - any other parse failure is "not DICOM" too
            raise OutboxError(f"{src}: not a DICOM file ({type(exc).__name__}: {exc})") from None
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "").strip()
        missing = [
            n for n, v in (("SOP Class UID", sop_class), ("SOP Instance UID", sop_uid),
                           ("Transfer Syntax UID", ts)) if not v
        ]
        if missing:
            raise OutboxError(f"{src}: missing {', '.join(missing)}")
        study = str(ds.get("StudyInstanceUID", "") or "").strip()

        with self._lock:
            existing = self._live(sop_uid)
            if existing is not None:
                return existing
            copy = self.folder / f"{uuid.uuid4().hex}.dcm"
            tmp = copy.with_suffix(".part")
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, copy)
            digest, size = sha256_file_size(copy)
            now = utc_now()
            try:
                with db.transaction(self.conn):
                    cur = self.conn.execute(
                        """
                        INSERT INTO outbox (path, sop_class_uid, sop_uid, study_uid,
                            transfer_syntax, kind, sha256, size, status, attempts,
                            next_attempt_at, created_at, updated_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)
                        """,
                        (str(copy), sop_class, sop_uid, study, ts, kind, digest, size,
                         self.clock(), now, now),
                    )
            except sqlite3.IntegrityError:
                # Queued meanwhile by another process.
                copy.unlink(missing_ok=True)
                existing = self._live(sop_uid)
                if existing is None:
                    raise
                return existing
            item = self.item(int(cur.lastrowid or 0))
        assert item is not None
        LOG.info("queued %s %s for the PACS (outbox #%d)", kind, sop_uid, item.id)
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                LOG.exception("outbox listener failed")
        return item

    def _live(self, sop_uid: str) -> OutboxItem | None:
        rows = self._rows(
            "SELECT * FROM outbox WHERE sop_uid = ? AND status IN ('pending', 'sending')",
            (sop_uid,),
        )
        return rows[0] if rows else None

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[OutboxItem]:
        with self._lock:
            rows = self.conn.execute(sql, tuple(params)).fetchall()
        return [OutboxItem(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118 - a Row iterates its values

    def item(self, item_id: int) -> OutboxItem | None:
        """One entry by id, or ``None``."""
        rows = self._rows("SELECT * FROM outbox WHERE id = ?", (item_id,))
        return rows[0] if rows else None

    def items(self, status: str | None = None) -> list[OutboxItem]:
        """Entries, oldest first, optionally only those with one status."""
        if status is None:
            return self._rows("SELECT * FROM outbox ORDER BY id")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        return self._rows("SELECT * FROM outbox WHERE status = ? ORDER BY id", (status,))

    def counts(self) -> dict[str, int]:
        """Number of entries per status (every status present, 0 when none)."""
        with self._lock:
            rows = self.conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def next_due(self) -> float | None:
        """Unix time of the earliest pending retry, or ``None`` when nothing waits."""
        with self._lock:
            row = self.conn.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    # -- state changes (used by the sender) --------------------------------------

    def recover(self) -> int:
        """Put entries left in ``sending`` by a crash back to ``pending``; returns how many."""
        with self._lock, db.transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE outbox SET status = 'pending', updated_at = ? WHERE status = 'sending'",
                (utc_now(),),
            )
        return cur.rowcount

    def claim_due(self, limit: int = BATCH_SIZE) -> list[OutboxItem]:
        """Mark up to ``limit`` due pending entries as ``sending`` and return them."""
        now = self.clock()
        with self._lock, db.transaction(self.conn):
            ids = [
                int(r[0])
                for r in self.conn.execute(
                    "SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? "
                    "ORDER BY next_attempt_at, id LIMIT ?",
                    (now, limit),
                ).fetchall()
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            self.conn.execute(
                f"UPDATE outbox SET status = 'sending', updated_at = ? WHERE id IN ({marks})",
                (utc_now(), *ids),
            )
        return self._rows(f"SELECT * FROM outbox WHERE id IN ({marks}) ORDER BY id", ids)

    def mark_sent(self, item: OutboxItem, peer: str, note: str = "") -> None:
        """The PACS stored the object: record it and delete the queued copy."""
        now = utc_now()
        with self._lock, db.transaction(self.conn):
            self.conn.execute(
                "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_to = ?, "
                "sent_at = ?, updated_at = ?, last_error = ? WHERE id = ?",
                (peer, now, now, note, item.id),
            )
        try:
            Path(item.path).unlink(missing_ok=True)
        except OSError as exc:
            LOG.warning("cannot delete sent outbox copy %s: %s", item.path, exc)

    def mark_retry(self, item: OutboxItem, error: str, delay_s: float, *, count: bool = True) -> None:
        """A transient failure: back to ``pending``, next try in ``delay_s`` seconds."""
        with self._lock, db.transaction(self.conn):
            self.conn.execute(
                "UPDATE outbox SET status = 'pending', attempts = attempts + ?, last_error = ?, "
                "next_attempt_at = ?, updated_at = ? WHERE id = ?",
                (1 if count else 0, error, self.clock() + delay_s, utc_now(), item.id),
            )

    def mark_failed(self, item: OutboxItem, error: str) -> None:
        """A permanent failure: kept with its reason until :meth:`retry_failed`."""
        with self._lock, db.transaction(self.conn):
            self.conn.execute(
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (error, utc_now(), item.id),
            )

    def retry_now(self) -> int:
        """Make every pending entry due now (skip the back-off); returns how many."""
        with self._lock, db.transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending'", (self.clock(),)
            )
        return cur.rowcount

    def retry_failed(self) -> int:
        """Queue every failed entry again (e.g. after the PACS was reconfigured)."""
        with self._lock, db.transaction(self.conn):
            cur = self.conn.execute(
                """
                UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?,
                    updated_at = ?
                WHERE status = 'failed'
                  AND NOT EXISTS (SELECT 1 FROM outbox AS o
                                  WHERE o.sop_uid = outbox.sop_uid
                                    AND o.status IN ('pending', 'sending'))
                """,
                (self.clock(), utc_now()),
            )
        if cur.rowcount:
            for listener in list(self._listeners):
                try:
                    listener()
                except Exception:
                    LOG.exception("outbox listener failed")
        return cur.rowcount


def queue_result(
    path: str | os.PathLike[str],
    kind: str,
    *,
    settings: NetworkSettings | None = None,
    outbox: Outbox | None = None,
) -> OutboxItem | None:
    """Queue a result object for the PACS when the site sends results.

    The writer of AI results (SR, SEG) and of the readers' final findings calls this
    for every object it writes.

    Parameters
    ----------
    path
        The DICOM file just written.
    kind
        ``"ai-sr"``, ``"ai-seg"`` or ``"reader-findings"``.
    settings
        Network settings; default ``network.json``.
    outbox
        Outbox to use; default one on the archive database (opened and closed here).

    Returns
    -------
    OutboxItem or None
        The queued entry, or ``None`` when ``send_results`` is off.  With it on and
        no PACS configured yet, the entry waits until one is.
    """
    from mammotriage.net.settings import load_settings

    settings = settings if settings is not None else load_settings()
    if not settings.send_results:
        return None
    if outbox is not None:
        return outbox.enqueue(path, kind=kind)
    with Outbox() as own:
        return own.enqueue(path, kind=kind)


class OutboxSink:
    """The result sink (:class:`mammotriage.triage.sink.ResultSink`) that the
    composition root gives the triage side: each DICOM result written is queued for the
    PACS when the site sends results.

    The network settings are read once, when the sink is made (:meth:`from_settings`),
    not for every result. The outbox on the archive database is opened on first use, in
    the process that uses it, so the sink can be handed to a spawned worker process.
    """

    def __init__(self, send_results: bool, archive_file: str | Path | None = None, problem: str = ""):
        self.send_results = bool(send_results)
        self.archive_file = archive_file
        self.problem = problem  # why results are not sent although the site may want them
        self._outbox: Outbox | None = None

    @classmethod
    def from_settings(cls, settings: NetworkSettings | None = None,
                      archive_file: str | Path | None = None) -> OutboxSink:
        """A sink following ``settings`` (default: ``network.json``, read now). Unreadable
        settings send nothing and say why in :attr:`problem`."""
        from mammotriage.net.settings import NetworkConfigError, load_settings

        try:
            settings = settings if settings is not None else load_settings()
        except NetworkConfigError as exc:
            return cls(False, archive_file, f"results are not queued for the PACS: {exc}")
        return cls(settings.send_results, archive_file)

    def queue(self, path: Path, kind: str) -> bool:
        if not self.send_results:
            return False
        if self._outbox is None:
            self._outbox = Outbox(self.archive_file)
        return self._outbox.enqueue(path, kind=kind) is not None

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_outbox": None}


# --------------------------------------------------------------------------- sender


@dataclass
class SendReport:
    """Outcome of one :meth:`OutboxSender.send_due` pass."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    error: str = ""  # association-level error of the pass, if any

    @property
    def attempted(self) -> int:
        """Entries handled in this pass."""
        return self.sent + self.retried + self.failed


def _backoff(settings: NetworkSettings, attempts: int) -> float:
    """Delay before the next try after ``attempts`` failed tries (>= 1)."""
    return min(settings.retry_max_s, settings.retry_initial_s * 2 ** max(attempts - 1, 0))


def _status_text(status: Dataset | None) -> str:
    if status is None:
        return ""
    value = int(getattr(status, "Status", -1))
    comment = str(getattr(status, "ErrorComment", "") or "").strip()
    return f"status 0x{value:04X}" + (f" ({comment})" if comment else "")


_REJECT_DIAGNOSTICS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised (our AE title is not configured at the PACS)",
    (1, 7): "called AE title not recognised (check the PACS AE title)",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


class OutboxSender:
    """Sends due outbox entries to the configured PACS with C-STORE.

    Parameters
    ----------
    outbox
        The queue.
    settings
        Our AE title, the PACS peer and the back-off parameters; re-read with
        ``settings_loader`` before every pass when given.
    settings_loader
        Optional ``() -> NetworkSettings`` so that a changed ``network.json`` takes
        effect without a restart.
    timeout_s
        Connection, ACSE and DIMSE timeout.
    poll_s
        The background thread looks for new entries at least this often (entries
        queued by other processes; those queued through ``outbox`` wake it at once).

    Notes
    -----
    :meth:`send_due` sends one pass synchronously (for the CLI and tests);
    :meth:`start` runs passes on a background thread, waking when an entry is
    queued and when the earliest retry is due.
    """

    def __init__(
        self,
        outbox: Outbox,
        settings: NetworkSettings,
        *,
        settings_loader: Callable[[], NetworkSettings] | None = None,
        timeout_s: float = 30.0,
        poll_s: float = 2.0,
    ) -> None:
        self.outbox = outbox
        self.poll_s = poll_s
        self.settings = settings
        self._loader = settings_loader
        self.timeout_s = timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recovered = False
        outbox.add_listener(self.wake)

    # -- one pass ----------------------------------------------------------------

    def _current_settings(self) -> NetworkSettings:
        if self._loader is not None:
            try:
                self.settings = self._loader()
            except Exception as exc:  # noqa: BLE001 - keep the last good settings
                LOG.error("cannot reload network settings, keeping the previous ones: %s", exc)
        return self.settings

    def send_due(self) -> SendReport:
        """Send every entry that is due now, in batches of :data:`BATCH_SIZE`.

        Returns
        -------
        SendReport
            Counts of sent, re-queued and failed entries, and the association error
            of the last batch that could not be sent.
        """
        if not self._recovered:
            recovered = self.outbox.recover()
            if recovered:
                LOG.info("outbox: %d entries interrupted by a restart are pending again", recovered)
            self._recovered = True
        settings = self._current_settings()
        report = SendReport()
        while not self._stop.is_set():
            batch = self.outbox.claim_due(BATCH_SIZE)
            if not batch:
                break
            part = self._send_batch(batch, settings)
            report.sent += part.sent
            report.retried += part.retried
            report.failed += part.failed
            report.error = part.error or report.error
            if part.error:  # the PACS is unreachable: the rest waits for its back-off
                break
        return report

    def _send_batch(self, batch: list[OutboxItem], settings: NetworkSettings) -> SendReport:
        report = SendReport()
        peer = settings.pacs
        if peer is None:
            msg = "no PACS configured (set 'pacs' in network.json)"
            for item in batch:
                self.outbox.mark_retry(item, msg, settings.retry_initial_s, count=False)
            report.retried = len(batch)
            report.error = msg
            return report

        present: list[OutboxItem] = []
        for item in batch:
            if not Path(item.path).is_file():
                self.outbox.mark_failed(item, f"queued copy {item.path} is missing")
                report.failed += 1
            else:
                present.append(item)
        if not present:
            return report

        ae = self._make_ae(settings, present)
        connected = threading.Event()
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.set())],
        )
        if (
            not assoc.is_established
            and connected.is_set()
            and assoc.rejected_contexts
            and not assoc.accepted_contexts
        ):
            # The PACS answered but takes none of these object kinds: a permanent failure.
            for item in present:
                self.outbox.mark_failed(
                    item,
                    f"{peer} does not accept {item.sop_class_name} "
                    f"({UID(item.transfer_syntax).name}): presentation context rejected",
                )
            report.failed += len(present)
            ae.shutdown()
            return report
        if not assoc.is_established:
            error = self._association_error(assoc, peer, connected.is_set())
            for item in present:
                self.outbox.mark_retry(item, error, _backoff(settings, item.attempts + 1))
            report.retried += len(present)
            report.error = error
            LOG.warning("outbox: %s; %d entries wait for a retry", error, len(present))
            ae.shutdown()
            return report
        try:
            for index, item in enumerate(present):
                if not assoc.is_established:
                    error = f"association with {peer} lost"
                    for rest in present[index:]:
                        self.outbox.mark_retry(rest, error, _backoff(settings, rest.attempts + 1))
                    report.retried += len(present) - index
                    report.error = error
                    break
                self._send_one(assoc, item, peer, settings, report)
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
        return report

    def _make_ae(self, settings: NetworkSettings, items: Sequence[OutboxItem]) -> AE:
        ae = AE(ae_title=settings.ae_title)
        ae.connection_timeout = self.timeout_s
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        contexts: dict[str, list[str]] = {}
        for item in items:
            syntaxes = contexts.setdefault(item.sop_class_uid, [])
            for ts in (item.transfer_syntax,):
                if ts not in syntaxes:
                    syntaxes.append(ts)
        for sop_class, syntaxes in contexts.items():
            # Uncompressed objects may be sent in either little-endian encoding.
            if all(not UID(ts).is_compressed for ts in syntaxes):
                for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                    if ts not in syntaxes:
                        syntaxes.append(ts)
            ae.add_requested_context(sop_class, syntaxes)
        return ae

    @staticmethod
    def _association_error(assoc: Any, peer: PeerSettings, connected: bool) -> str:
        if not connected:
            return f"cannot connect to {peer} (PACS down or unreachable)"
        if assoc.is_rejected:
            rsp = getattr(assoc.acceptor, "primitive", None)
            source = int(getattr(rsp, "result_source", 0) or 0)
            diag = int(getattr(rsp, "diagnostic", 0) or 0)
            why = _REJECT_DIAGNOSTICS.get((source, diag), f"source {source}, reason {diag}")
            return f"association rejected by {peer}: {why}"
        if assoc.is_aborted:
            return f"association with {peer} aborted"
        return f"no answer from {peer} to the association request"

    def _send_one(
        self,
        assoc: Any,
        item: OutboxItem,
        peer: PeerSettings,
        settings: NetworkSettings,
        report: SendReport,
    ) -> None:
        try:
            ds = pydicom.dcmread(item.path)
        except Exception as exc:  # noqa: BLE001
            self.outbox.mark_failed(item, f"cannot read queued copy: {type(exc).__name__}: {exc}")
            report.failed += 1
            return
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:
            # No accepted presentation context: the PACS does not take this object.
            self.outbox.mark_failed(
                item, f"{peer} does not accept {item.sop_class_name} in this encoding ({exc})"
            )
            report.failed += 1
            return
        except Exception as exc:  # noqa: BLE001 - network trouble mid-send: retry later
            error = f"sending to {peer} failed: {type(exc).__name__}: {exc}"
            self.outbox.mark_retry(item, error, _backoff(settings, item.attempts + 1))
            report.retried += 1
            return
        if status is None or "Status" not in status:
            error = f"no response from {peer} (timeout or aborted association)"
            self.outbox.mark_retry(item, error, _backoff(settings, item.attempts + 1))
            report.retried += 1
            return
        code = int(status.Status)
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF:
            self.outbox.mark_sent(item, str(peer), "" if code == 0 else f"warning {_status_text(status)}")
            report.sent += 1
        elif 0xA700 <= code <= 0xA7FF:
            # Out of resources at the PACS: transient.
            self.outbox.mark_retry(
                item, f"{peer} is out of resources: {_status_text(status)}",
                _backoff(settings, item.attempts + 1),
            )
            report.retried += 1
        else:
            self.outbox.mark_failed(item, f"{peer} refused the object: {_status_text(status)}")
            report.failed += 1

    # -- background thread ---------------------------------------------------------

    def wake(self) -> None:
        """Ask the background thread for a pass now (e.g. after an entry was queued)."""
        self._wake.set()

    def start(self) -> None:
        """Start sending on a background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.send_due()
            except Exception:  # the sender must keep running
                LOG.exception("outbox pass failed")
                self._recovered = False  # claimed entries go back to pending next pass
            due = self.outbox.next_due() if not self._stop.is_set() else None
            # Entries queued by another process (the triage worker) are seen by polling.
            wait = self.poll_s if due is None else max(0.05, min(self.poll_s, due - self.outbox.clock()))
            self._wake.wait(wait)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread after its current C-STORE."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
