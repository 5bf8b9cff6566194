"""Reader corrections as append-only, hash-chained events.

Every action a reader takes on an image or an exam is one event: who, when, on which
workstation, which image (SOP Instance UID and the sha256 of its decoded pixels), which
model's marks were on screen, what was done, and the geometry in stored-image pixel
coordinates. Nothing is ever updated or deleted (SQLite triggers refuse it); current
labels are a fold over the events (:mod:`mammotriage.store.labels`).

Each event stores the hash of the previous one, so ``mammotriage audit verify`` finds
an edited event (its hash no longer matches), a removed one (a gap in the sequence or
a broken link) and a truncated tail (the sequence counter is ahead of the last event).
The chain is anchored (:mod:`mammotriage.store.audit`): every event carries an HMAC of
its hash under the installation's audit key, kept outside the database, and each
append writes a keyed head record (count, last seq, last hash) to a file beside the
key, so a re-chained, truncated or emptied log is found too.

Durability: the database runs in WAL mode with ``synchronous=FULL``; :meth:`append`
returns only after the event's transaction is committed, so an acknowledged event
survives a crash or a killed process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammotriage.clock import utc_now
from mammotriage.dicom.vocab import FINDING_KINDS
from mammotriage.store import db
from mammotriage.store.audit import AuditAnchor, AuditKey, FileAnchor, Head

LOG = logging.getLogger(__name__)

GENESIS = "0" * 64
ACTIONS = frozenset({
    "accept",        # an AI mark is a true finding
    "reject",        # an AI mark is a false positive
    "adjust",        # new geometry for a mark or a reader finding
    "change_kind",   # new kind for a mark or a reader finding
    "add",           # a finding the AI missed, drawn by the reader
    "delete",        # remove one of the reader's own findings
    "birads",        # exam-level BI-RADS assessment 0-6
    "density",       # exam-level breast density A-D
    "note",          # free text
    "sign",          # the reader signs the exam's assessment (payload: store.assessment)
    "amend",         # re-opens a signed exam (payload: {"reason": text})
    "arbitrate",     # double reading: a third reader's consensus of two discordant reads
                     # (payload: the assessment + role, rule, reads; store.double_reading)
    "undo",          # the target event no longer counts
    "redo",          # an undone event counts again
})
KINDS = FINDING_KINDS  # the finding kinds a reader may record (mammotriage.dicom.vocab)
IMAGE_ACTIONS = frozenset({"accept", "reject", "adjust", "change_kind", "add", "delete"})
_FIELDS = ("event_id", "at", "reader", "workstation", "exam_key", "study_uid", "series_uid", "sop_uid",
           "pixel_sha256", "model_version", "action", "target", "kind", "geometry", "payload", "prev_hash")


class CorrectionError(ValueError):
    """An event that cannot be recorded (invalid action, kind or geometry)."""


@dataclass(frozen=True)
class Event:
    seq: int
    event_id: str
    at: str
    reader: str
    workstation: str
    exam_key: str
    study_uid: str
    series_uid: str
    sop_uid: str
    pixel_sha256: str
    model_version: str
    action: str
    target: str
    kind: str
    geometry: dict[str, Any] | None
    payload: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    mac: str = ""


@dataclass
class VerifyReport:
    ok: bool
    events: int
    problems: list[str]
    #: The newest valid head record (``Head.to_json()``), or None.
    head: dict[str, Any] | None = None
    #: Events recorded before the audit key existed (anchored only by a head).
    unkeyed: int = 0


def event_hash(fields: dict[str, str]) -> str:
    """sha256 of the canonical JSON of an event's fields (the stored text values)."""
    canonical = json.dumps({k: fields[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate_geometry(geometry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Check a geometry in stored-image pixel coordinates; returns a normalised copy.

    ``{"type": "box" | "ellipse", "box": [x0, y0, x1, y1]}`` (x = column, y = row,
    x0 < x1, y0 < y1; an ellipse is inscribed in its box) or
    ``{"type": "polygon", "points": [[x, y], ...]}`` (at least 3 points).
    """
    if geometry is None:
        return None
    kind = geometry.get("type")
    if kind in ("box", "ellipse"):
        box = [float(v) for v in geometry.get("box", [])]
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise CorrectionError(f"{kind} needs four finite coordinates, got {geometry.get('box')}")
        x0, y0, x1, y1 = box
        if not (x0 < x1 and y0 < y1) or min(box) < 0:
            raise CorrectionError(f"{kind} [{x0}, {y0}, {x1}, {y1}] is empty or outside the image")
        return {"type": kind, "box": [round(v, 3) for v in box]}
    if kind == "polygon":
        points = [[float(x), float(y)] for x, y in geometry.get("points", [])]
        if len(points) < 3 or not all(math.isfinite(v) and v >= 0 for p in points for v in p):
            raise CorrectionError("a polygon needs at least three finite points in the image")
        return {"type": "polygon", "points": [[round(x, 3), round(y, 3)] for x, y in points]}
    raise CorrectionError(f"unknown geometry type {kind!r}")


def events_query(exam_key: str | None, sop_uid: str | None, placeholder: str) -> tuple[str, list[str]]:
    """The SELECT of an exam's (and/or an image's) events in chain order, and its parameters."""
    where, params = [], []
    if exam_key is not None:
        where.append(f"exam_key = {placeholder}")
        params.append(exam_key)
    if sop_uid is not None:
        where.append(f"sop_uid = {placeholder}")
        params.append(sop_uid)
    sql = "SELECT * FROM correction_events" + (" WHERE " + " AND ".join(where) if where else "")
    return sql + " ORDER BY seq", params


def event_fields(workstation: str, *, reader: str, exam_key: str, action: str, study_uid: str = "",
                 series_uid: str = "", sop_uid: str = "", pixel_sha256: str = "", model_version: str = "",
                 target: str = "", kind: str = "", geometry: dict[str, Any] | None = None,
                 payload: dict[str, Any] | None = None) -> dict[str, str]:
    """Check one new event and return its stored text fields (a fresh ``event_id`` and
    time; no ``prev_hash`` yet: whoever extends the chain adds it).

    Raises
    ------
    CorrectionError
        An unknown action or kind, a missing target, geometry, image or pixel hash, an
        invalid BI-RADS, density, assessment or amendment.
    """
    if action not in ACTIONS:
        raise CorrectionError(f"unknown action {action!r}")
    if not reader:
        raise CorrectionError("every event needs a reader")
    if action in IMAGE_ACTIONS and not sop_uid:
        raise CorrectionError(f"{action} needs the image's SOP Instance UID")
    if action in IMAGE_ACTIONS and (len(pixel_sha256) != 64):
        raise CorrectionError(f"{action} needs the sha256 of the image pixels")
    if kind and kind not in KINDS:
        raise CorrectionError(f"unknown finding kind {kind!r} (one of {', '.join(KINDS)})")
    if action in ("add", "change_kind") and not kind:
        raise CorrectionError(f"{action} needs a kind")
    if action in ("add", "adjust") and geometry is None:
        raise CorrectionError(f"{action} needs a geometry")
    if action in ("accept", "reject", "adjust", "change_kind", "delete", "undo", "redo") and not target:
        raise CorrectionError(f"{action} needs a target")
    payload = dict(payload or {})
    if action == "birads" and payload.get("birads") not in range(7):
        raise CorrectionError("BI-RADS must be 0-6")
    if action == "density" and payload.get("density") not in ("A", "B", "C", "D"):
        raise CorrectionError("breast density must be A, B, C or D")
    if action == "sign":
        from mammotriage.store.assessment import AssessmentError, validate_assessment

        try:
            payload = validate_assessment(payload)
        except AssessmentError as exc:
            raise CorrectionError(str(exc)) from exc
    if action == "arbitrate":
        from mammotriage.store.assessment import AssessmentError, validate_arbitration

        try:
            payload = validate_arbitration(payload)
        except AssessmentError as exc:
            raise CorrectionError(str(exc)) from exc
    if action == "amend" and not str(payload.get("reason", "")).strip():
        raise CorrectionError("an amendment needs a reason")
    geometry = validate_geometry(geometry)
    return {
        "event_id": str(uuid.uuid4()), "at": utc_now("microseconds"), "reader": reader, "workstation": workstation,
        "exam_key": exam_key, "study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid,
        "pixel_sha256": pixel_sha256, "model_version": model_version, "action": action,
        "target": target, "kind": kind,
        "geometry": json.dumps(geometry, sort_keys=True) if geometry is not None else "",
        "payload": json.dumps(payload, sort_keys=True) if payload else "",
    }


def reader_name(name: str) -> str:
    """A reader's name as stored: stripped, 1-64 characters."""
    name = name.strip()
    if not name or len(name) > 64:
        raise CorrectionError("a reader name must be 1-64 characters")
    return name


class SessionReaders:
    """The readers of a site-mode log, kept for this session only (no site accounts yet)."""

    _readers: set[str]

    def add_reader(self, name: str, full_name: str = "") -> None:
        self._readers.add(reader_name(name))

    def readers(self) -> list[str]:
        return sorted(self._readers)


class CorrectionLog(db.Connected):
    """The append-only event log in the archive database."""

    def __init__(self, archive_path: str | Path, workstation: str | None = None, *,
                 key: AuditKey | None = None, anchor: AuditAnchor | None = None):
        super().__init__(archive_path)
        self.workstation = workstation or socket.gethostname()
        try:
            self.key = key or AuditKey.load()
        except BaseException:
            self.close()
            raise
        self.archive_id = self._archive_id()
        self.anchor: AuditAnchor = anchor or FileAnchor(self.key, self.archive_id)
        self._adopt_unkeyed_chain()

    def _archive_id(self) -> str:
        try:
            row = self.conn.execute("SELECT archive_id FROM audit_anchor LIMIT 1").fetchone()
        except sqlite3.DatabaseError:
            row = None
        return str(row[0]) if row else "unknown-archive"

    def _adopt_unkeyed_chain(self) -> None:
        """First open after the upgrade: anchor the events recorded before the key."""
        if not isinstance(self.anchor, FileAnchor) or self.anchor.exists():
            return
        try:
            keyed = self.conn.execute("SELECT 1 FROM correction_events WHERE mac != '' LIMIT 1").fetchone()
            head = self.head()
        except sqlite3.DatabaseError:
            return
        if keyed is None and head.count:
            LOG.info("anchoring %d correction events recorded before the audit key", head.count)
            self.anchor.record(head)

    def head(self) -> Head:
        """The chain's end now (unsigned: see :meth:`Head.signed`)."""
        row = self.conn.execute("SELECT COUNT(*), MAX(seq) FROM correction_events").fetchone()
        count, last_seq = int(row[0]), int(row[1] or 0)
        last = self.conn.execute("SELECT hash FROM correction_events WHERE seq = ?", (last_seq,)).fetchone()
        return Head(count, last_seq, last[0] if last else GENESIS)

    def signed_head(self) -> Head:
        """:meth:`head` with its MAC: what snapshots and exports record."""
        return self.head().signed(self.key, self.archive_id)

    # ----------------------------------------------------------------- readers
    def add_reader(self, name: str, full_name: str = "") -> None:
        name = reader_name(name)
        with db.transaction(self.conn):
            self.conn.execute("INSERT OR IGNORE INTO readers (name, full_name, created_at) VALUES (?, ?, ?)",
                              (name, full_name, utc_now("microseconds")))

    def readers(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM readers ORDER BY name")]

    # ----------------------------------------------------------------- append
    def append(self, *, reader: str, exam_key: str, action: str, study_uid: str = "", series_uid: str = "",
               sop_uid: str = "", pixel_sha256: str = "", model_version: str = "", target: str = "",
               kind: str = "", geometry: dict[str, Any] | None = None,
               payload: dict[str, Any] | None = None) -> Event:
        """Record one event; returns it once it is committed (durable)."""
        fields = event_fields(
            self.workstation, reader=reader, exam_key=exam_key, action=action, study_uid=study_uid,
            series_uid=series_uid, sop_uid=sop_uid, pixel_sha256=pixel_sha256, model_version=model_version,
            target=target, kind=kind, geometry=geometry, payload=payload)
        payload = json.loads(fields["payload"]) if fields["payload"] else {}
        with db.transaction(self.conn):
            self._check_append(reader, exam_key, action, payload)  # under the write lock, with the insert
            row = self.conn.execute("SELECT hash FROM correction_events ORDER BY seq DESC LIMIT 1").fetchone()
            fields["prev_hash"] = row[0] if row else GENESIS
            digest = event_hash(fields)
            mac = self.key.mac(digest)
            cur = self.conn.execute(
                f"INSERT INTO correction_events ({', '.join(_FIELDS)}, hash, mac) "
                f"VALUES ({', '.join('?' * len(_FIELDS))}, ?, ?)",
                (*[fields[k] for k in _FIELDS], digest, mac))
            seq = cur.lastrowid
            count = int(self.conn.execute("SELECT COUNT(*) FROM correction_events").fetchone()[0])
        try:
            self.anchor.record(Head(count, int(seq or 0), digest))
        except OSError as exc:  # the event is committed and keyed; the next append catches up
            LOG.warning("could not record the audit head: %s", exc)
        return event_from_row(dict(fields, seq=seq, hash=digest, mac=mac))

    def _check_append(self, reader: str, exam_key: str, action: str, payload: dict[str, Any]) -> None:
        """A subclass's rule for what may be appended, run inside the append's transaction
        (so it sees every committed event and none can slip in before the insert); raise
        :class:`CorrectionError` to refuse. The plain log takes every valid event."""

    # ----------------------------------------------------------------- read
    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]:
        sql, params = events_query(exam_key, sop_uid, "?")
        return [event_from_row(dict(r)) for r in self.conn.execute(sql, params)]

    def verify(self) -> VerifyReport:
        """Walk the whole chain; report every edited, removed, re-chained or truncated event.

        A missing or damaged table is reported as a problem, never raised.
        """
        try:
            return self._verify()
        except sqlite3.DatabaseError as exc:
            return VerifyReport(ok=False, events=0, problems=[
                f"cannot read the correction events in {self.path}: {exc} "
                "(the table was dropped or the database is damaged)"])

    def _verify(self) -> VerifyReport:
        walk = walk_chain(self.conn.execute("SELECT * FROM correction_events ORDER BY seq"), self.key,
                          f"{self.key.path} is not this installation's key")
        problems, expected_seq, n, by_seq = walk.problems, walk.next_seq, walk.events, walk.by_seq
        issued = self.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'correction_events'").fetchone()
        if issued is not None and expected_seq is not None and issued[0] >= expected_seq:
            problems.append(f"events {expected_seq}..{issued[0]} at the end are missing (deleted)")
        elif issued is not None and expected_seq is None and issued[0] > 0:
            problems.append(f"all {issued[0]} events are missing (deleted)")
        head, head_problems = self.anchor.latest()
        problems += head_problems
        problems += check_head(head, n, by_seq, walk.keyed, self.anchor)
        problems += self._check_snapshot_heads(by_seq)
        return VerifyReport(ok=not problems, events=n, problems=problems,
                            head=head.to_json() if head else None, unkeyed=walk.unkeyed)


    def _check_snapshot_heads(self, by_seq: dict[int, str]) -> list[str]:
        """Every dataset snapshot pins the chain it was folded from: it must still be there."""
        problems = []
        try:
            rows = self.conn.execute("SELECT sha256, manifest FROM dataset_snapshots").fetchall()
        except sqlite3.DatabaseError:
            return []
        for sha, rel in rows:
            try:
                manifest = json.loads((self.path.parent / rel).read_text(encoding="utf-8"))
                if isinstance(manifest.get("store"), dict) and manifest["store"].get("kind") == "site":
                    continue  # the site's chain, not this one: `audit verify --site` checks that
                h = manifest["audit_head"]
                head = Head(int(h["count"]), int(h["last_seq"]), str(h["last_hash"]), str(h["mac"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a snapshot from before anchoring, or unreadable (dataset checks say so)
            if not head.valid(self.key, self.archive_id):
                problems.append(f"snapshot {sha[:12]}: its audit head has a wrong MAC")
            elif by_seq.get(head.last_seq) != head.last_hash or \
                    sum(1 for s in by_seq if s <= head.last_seq) != head.count:
                problems.append(f"snapshot {sha[:12]} was made from {head.count} events up to event "
                                f"{head.last_seq}, which the chain no longer holds (deleted or rewritten)")
        return problems


@dataclass
class ChainWalk:
    """What one pass over the events in ``seq`` order found (:func:`walk_chain`)."""

    problems: list[str]
    events: int
    unkeyed: int
    keyed: bool
    #: hash of every event by its seq
    by_seq: dict[int, str]
    #: the seq the next event should have (None: no events)
    next_seq: int | None


def walk_chain(rows: Iterable[Mapping[str, Any]], key: AuditKey | None, wrong_key: str) -> ChainWalk:
    """Check events (stored text values, ``seq`` ascending) link by link.

    Finds gaps (deleted events), broken links, changed content and, with ``key``,
    missing or wrong MACs (``wrong_key`` says which key was used, for the message).
    The local log and the site store's chain both run this one walk.
    """
    problems: list[str] = []
    prev = GENESIS
    expected_seq: int | None = None
    n = unkeyed = 0
    keyed_seen = False
    by_seq: dict[int, str] = {}
    for row in rows:
        n += 1
        r = dict(row)
        if expected_seq is not None and r["seq"] != expected_seq:
            problems.append(f"events {expected_seq}..{r['seq'] - 1} are missing (deleted)")
        expected_seq = int(r["seq"]) + 1
        if r["prev_hash"] != prev:
            problems.append(f"event {r['seq']} ({r['event_id']}): does not follow the previous event "
                            "(an event before it was removed or changed)")
        if event_hash(r) != r["hash"]:
            problems.append(f"event {r['seq']} ({r['event_id']}): content changed after it was recorded")
        mac = str(r.get("mac") or "")
        if not mac:
            if keyed_seen:
                problems.append(f"event {r['seq']} ({r['event_id']}): has no MAC (written without "
                                "the audit key)")
            unkeyed += 1
        else:
            keyed_seen = True
            if key is not None and not key.verify(r["hash"], mac):
                problems.append(f"event {r['seq']} ({r['event_id']}): MAC does not match (edited or "
                                f"re-chained without the audit key, or {wrong_key})")
        by_seq[int(r["seq"])] = r["hash"]
        prev = r["hash"]
    return ChainWalk(problems, n, unkeyed, keyed_seen, by_seq, expected_seq)


def check_head(head: Head | None, n: int, by_seq: dict[int, str], keyed: bool,
                anchor: AuditAnchor) -> list[str]:
    """Problems of the chain against its newest head record."""
    where = getattr(anchor, "path", "the audit anchor")
    if head is None:
        if keyed or n:
            return [f"no head record in {where} although {n} events exist "
                    "(the head file was removed, or the archive's identity was changed)"]
        return []
    if head.last_seq not in by_seq:
        last = max(by_seq, default=0)
        if head.last_seq > last:
            return [f"the chain ends at event {last} ({n} events) but its head record says "
                    f"{head.count} events up to event {head.last_seq}: the tail was deleted (truncated)"]
        return [f"event {head.last_seq} named by the head record is missing (deleted)"]
    if by_seq[head.last_seq] != head.last_hash:
        return [f"event {head.last_seq} differs from the head record (the chain was rewritten)"]
    below = sum(1 for s in by_seq if s <= head.last_seq)
    if below != head.count:
        return [f"{head.count} events up to event {head.last_seq} were anchored, {below} are there now"]
    return []


def event_from_row(r: Mapping[str, Any]) -> Event:
    """An :class:`Event` from a stored row (text values as stored)."""
    return Event(
        seq=int(r["seq"]), event_id=r["event_id"], at=r["at"], reader=r["reader"], workstation=r["workstation"],
        exam_key=r["exam_key"], study_uid=r["study_uid"], series_uid=r["series_uid"], sop_uid=r["sop_uid"],
        pixel_sha256=r["pixel_sha256"], model_version=r["model_version"], action=r["action"],
        target=r["target"], kind=r["kind"], geometry=json.loads(r["geometry"]) if r["geometry"] else None,
        payload=json.loads(r["payload"]) if r["payload"] else {}, prev_hash=r["prev_hash"], hash=r["hash"],
        mac=str(r.get("mac") or ""))
