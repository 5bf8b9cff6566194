"""``mammotriage site migrate --profile PROFILE``: a standalone workstation's archive into a site.

What moves (docs/hospital-it.md, "Migrating a standalone archive"):

1. **The standalone chain is verified first** (:meth:`CorrectionLog.verify` with the
   installation's audit key): a broken or forged chain is refused before anything is
   sent, naming the first bad event.
2. **Images**: every stored instance goes to the site's Orthanc with STOW-RS, one
   request per instance, unless the archive already holds its SOP Instance UID
   (QIDO-RS per study, before and again after sending: what QIDO-RS does not list
   afterwards counts as failed). A file that is missing, changed since it was imported
   (sha256), or is not DICOM is reported with its path and the reason; the batch goes
   on. Nothing is ever deleted or changed locally.
3. **Corrections**: the standalone events, in their original order, in batches (one
   transaction each) through :meth:`SiteCorrectionLog.send_batch`: the server re-chains
   them (new ``seq``, ``prev_hash``, ``hash`` and MAC under the site's key) and, in the
   same transaction, ``migrated_events`` records each one's provenance (source archive
   id, source seq, previous hash, hash and MAC; site schema version 4). Its trigger
   checks that the site's copy, hashed with the source's previous hash, gives the
   source hash, so the provenance cannot claim another content. Events keep their uuid:
   an event the site already has is skipped, so a second run, or a run after a kill or
   a lost server, moves nothing twice.

Exit codes: 0 everything is in the site; 1 partial (a file failed, ``--limit`` was
reached, or a server went away midway: run again to finish); 2 nothing was done (a
bad profile or archive, a refused chain, a site that cannot be reached or is too old).
Progress (counts, rate, ETA) goes to stderr; the summary to stdout (``--json``:
:meth:`MigrationReport.to_json`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported when used: building the command line must stay fast
    from mammotriage.net.dicomweb import DicomWebArchive
    from mammotriage.net.site_profile import SiteProfile
    from mammotriage.store.events import CorrectionLog
    from mammotriage.store.pg.events import SiteCorrectionLog

__all__ = ["DEFAULT_BATCH", "MIGRATED_SCHEMA", "MigrationError", "MigrationReport", "add_migrate_command",
           "audit_provenance", "cmd_migrate", "migrate_archive"]

#: Events per transaction.
DEFAULT_BATCH = 200
#: The site schema version that has ``migrated_events``.
MIGRATED_SCHEMA = 4
_LOOKUP_CHUNK = 5000
_PROVENANCE_COLUMNS = ("event_id", "source_archive", "source_seq", "source_prev_hash", "source_hash", "source_mac")
_INSERT_PROVENANCE = (f"INSERT INTO migrated_events ({', '.join(_PROVENANCE_COLUMNS)}) "
                      f"VALUES ({', '.join(['%s'] * len(_PROVENANCE_COLUMNS))}) ON CONFLICT DO NOTHING")


class MigrationError(RuntimeError):
    """The migration cannot start (the message says why); nothing was sent."""


class _Stopped(Exception):
    """A server went away midway (or the limit was reached): what is done stays done."""


@dataclass
class MigrationReport:
    dry_run: bool = False
    home: str = ""
    source_archive: str = ""
    source_events: int = 0
    images_total: int = 0
    images_sent: int = 0
    images_skipped: int = 0
    images_failed: int = 0
    #: instances QIDO-RS lists after the run (of the ones the archive should hold)
    images_verified: int = 0
    #: dry run: what would be sent / migrated
    images_to_send: int = 0
    events_total: int = 0
    events_migrated: int = 0
    events_skipped: int = 0
    events_to_migrate: int = 0
    #: {"file", "sop_uid", "reason"} for each image that failed
    problems: list[dict[str, str]] = field(default_factory=list)
    #: why the run stopped before the end ('' when it did not)
    stopped: str = ""
    site_head: dict[str, Any] | None = None
    site_chain_ok: bool | None = None
    site_problems: list[str] = field(default_factory=list)
    provenance_ok: bool | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped or self.images_failed or self.site_chain_ok is False or self.provenance_ok is False:
            return 1
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0, "dry_run": self.dry_run, "stopped": self.stopped,
            "source": {"home": self.home, "archive_id": self.source_archive, "events": self.source_events,
                       "chain": "verified"},
            "images": {"total": self.images_total, "sent": self.images_sent, "skipped": self.images_skipped,
                       "failed": self.images_failed, "verified": self.images_verified,
                       "to_send": self.images_to_send, "problems": self.problems},
            "events": {"total": self.events_total, "migrated": self.events_migrated,
                       "skipped": self.events_skipped, "to_migrate": self.events_to_migrate},
            "site": {"head": self.site_head, "chain_ok": self.site_chain_ok, "problems": self.site_problems,
                     "provenance_ok": self.provenance_ok},
        }

    def text(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        lines = [f"standalone archive {self.home} ({self.source_archive}): chain verified, "
                 f"{self.source_events} correction events",
                 f"images: {self.images_total} stored; "
                 + (f"{self.images_to_send} {verb}" if self.dry_run else f"{self.images_sent} {verb}")
                 + f", {self.images_skipped} already in the site archive, {self.images_failed} failed"
                 + ("" if self.dry_run else f"; {self.images_verified} found by QIDO-RS afterwards")]
        lines += [f"  failed {p['file']}: {p['reason']}" for p in self.problems]
        moved = self.events_to_migrate if self.dry_run else self.events_migrated
        lines.append(f"corrections: {self.events_total} events; {moved} "
                     f"{'would be migrated' if self.dry_run else 'migrated'}, "
                     f"{self.events_skipped} already in the site")
        if self.site_head is not None:
            lines.append(f"site chain: {self.site_head['count']} events up to {self.site_head['last_seq']} "
                         f"({str(self.site_head['last_hash'])[:12]}), "
                         + ("verified" if self.site_chain_ok else "NOT verified")
                         + ("" if self.provenance_ok is None else
                            ", provenance " + ("verified" if self.provenance_ok else "NOT verified")))
        lines += [f"  site: {p}" for p in self.site_problems]
        if self.stopped:
            lines.append(f"stopped before the end: {self.stopped}; run the same command again to go on")
        return "\n".join(lines)


class _Progress:
    """One line on stderr at most every ``every_s`` seconds: counts, rate and ETA."""

    def __init__(self, what: str, total: int, stream: TextIO | None, every_s: float = 1.0):
        self.what, self.total, self.stream, self.every_s = what, total, stream, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, counts: str, n: int = 1, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is None or (not final and now - self.last < self.every_s):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-6)
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        eta = "done" if self.done >= self.total else f"ETA {int(left // 60)}m{int(left % 60):02d}s"
        print(f"migrate: {self.what} {self.done}/{self.total} ({counts}), {rate:.1f}/s, {eta}",
              file=self.stream, flush=True)


# ----------------------------------------------------------------- the standalone side

def _key_path(home: Path | None) -> Path:
    """The audit key of the installation whose data directory is ``home`` (store.audit's rule)."""
    import os

    from mammotriage.store.audit import ENV_AUDIT_KEY, audit_key_path

    if home is None or os.environ.get(ENV_AUDIT_KEY):
        return audit_key_path()
    home = home.expanduser().absolute()
    return home.parent / f"{home.name}-keys" / "audit.key"


def _open_standalone(home: Path | None) -> tuple[Path, CorrectionLog]:
    import sqlite3

    from mammotriage.config import data_dir
    from mammotriage.store.audit import AuditKey, AuditKeyError
    from mammotriage.store.events import CorrectionLog

    folder = (home.expanduser().absolute() if home is not None else data_dir(create=False))
    archive = folder / "archive.sqlite"
    if not archive.is_file():
        raise MigrationError(f"{folder}: no standalone archive there (no {archive.name})")
    try:
        key = AuditKey.load(_key_path(home), create=False)
        return folder, CorrectionLog(archive, key=key)
    except AuditKeyError as exc:
        raise MigrationError(f"the standalone chain cannot be verified: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{archive}: cannot be opened as an archive ({exc})") from None


def _source_rows(log: CorrectionLog) -> list[dict[str, Any]]:
    return [dict(r) for r in log.conn.execute("SELECT * FROM correction_events ORDER BY seq")]


# ----------------------------------------------------------------- images

@dataclass(frozen=True)
class _Image:
    sop_uid: str
    series_uid: str
    study_uid: str
    path: str
    sha256: str
    size: int


def _images(archive_file: Path) -> list[_Image]:
    from mammotriage.store.archive import Archive

    with Archive(archive_file) as archive:
        rows = archive.conn.execute(
            "SELECT sop_uid, series_uid, study_uid, path, sha256, size FROM images "
            "ORDER BY study_uid, series_uid, imported_at, sop_uid").fetchall()
    return [_Image(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5])) for r in rows]


def _site_archive(profile: SiteProfile, cache_folder: Path) -> DicomWebArchive:
    archive: DicomWebArchive = profile.archive(cache_folder, 1 << 20)  # https, verified with the site's CA
    return archive


def _held(web: DicomWebArchive, study_uid: str) -> set[str]:
    return {i.sop_uid for i in web.find_instances(study_uid)}


def _check_file(image: _Image, full: bool) -> tuple[str, Any]:
    """('', dataset) or (reason, None). ``full``: read and hash it (else: exists, same size)."""
    import os

    from mammotriage.digest import sha256_file_size

    try:
        size = os.stat(image.path).st_size
        if size != image.size:
            return f"changed since it was imported ({size} bytes, {image.size} recorded)", None
        if not full:
            return "", None
        digest, _ = sha256_file_size(image.path)
        if digest != image.sha256:
            return "changed since it was imported (its sha256 differs from the recorded one)", None
        import pydicom

        try:
            ds = pydicom.dcmread(image.path)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad file is reported, the batch goes on
            return f"not a readable DICOM file ({type(exc).__name__}: {exc})", None
    except FileNotFoundError:
        return "no such file (moved or deleted since it was imported)", None
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}", None
    if str(getattr(ds, "SOPInstanceUID", "")) != image.sop_uid:
        return f"holds SOP Instance UID {getattr(ds, 'SOPInstanceUID', '(none)')}, not {image.sop_uid}", None
    return "", ds


def _migrate_images(web: DicomWebArchive, images: list[_Image], report: MigrationReport, *, dry_run: bool,
                    limit: int | None, stream: TextIO | None) -> None:
    from mammotriage.net.dicomweb import DicomWebError

    report.images_total = len(images)
    by_study: dict[str, list[_Image]] = {}
    for image in images:
        by_study.setdefault(image.study_uid, []).append(image)
    progress = _Progress("images", len(images), stream)

    def counts() -> str:
        done = report.images_to_send if dry_run else report.images_sent
        return (f"{'to send' if dry_run else 'sent'} {done}, skipped {report.images_skipped}, "
                f"failed {report.images_failed}")

    def fail(image: _Image, reason: str) -> None:
        report.images_failed += 1
        report.problems.append({"file": image.path, "sop_uid": image.sop_uid, "reason": reason})
        if stream is not None:
            print(f"migrate: {image.path}: {reason}", file=stream, flush=True)

    for study_uid, study in by_study.items():
        try:
            held = _held(web, study_uid)
        except DicomWebError as exc:
            raise _Stopped(f"the site archive: {exc}") from None
        expected: list[_Image] = []
        for image in study:
            if image.sop_uid in held:
                report.images_skipped += 1
                expected.append(image)
            elif limit is not None and report.images_sent >= limit:
                raise _Stopped(f"--limit {limit} images sent")
            else:
                reason, ds = _check_file(image, full=not dry_run)
                if reason:
                    fail(image, reason)
                elif dry_run:
                    report.images_to_send += 1
                else:
                    try:
                        result = web.store([ds])
                    except DicomWebError as exc:
                        if exc.code in ("timeout", "unreachable") or (exc.status or 0) >= 500:
                            raise _Stopped(f"the site archive: {exc}") from None
                        fail(image, f"refused by the site archive: {exc.reason}")
                    else:
                        if result.failed:
                            fail(image, "refused by the site archive: " + "; ".join(w for _, w in result.failed))
                        else:
                            report.images_sent += 1
                            expected.append(image)
                    del ds
            progress.step(counts())
        if dry_run or not expected:
            continue
        try:
            held = _held(web, study_uid)
        except DicomWebError as exc:
            raise _Stopped(f"the site archive, verifying study {study_uid}: {exc}") from None
        for image in expected:
            if image.sop_uid in held:
                report.images_verified += 1
            else:
                fail(image, "stored by STOW-RS but not listed by QIDO-RS afterwards")
    progress.step(counts(), 0, final=True)


# ----------------------------------------------------------------- corrections

def _present(conn: Any, ids: list[str]) -> set[str]:
    """Which of the event uuids the site chain holds."""
    found: set[str] = set()
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        rows = conn.execute("SELECT event_id FROM correction_events WHERE event_id = ANY(%s)",
                            (ids[start:start + _LOOKUP_CHUNK],)).fetchall()
        found |= {str(r["event_id"]) for r in rows}
    return found


def _provenanced(conn: Any, source_archive: str) -> set[str]:
    rows = conn.execute("SELECT event_id FROM migrated_events WHERE source_archive = %s",
                        (source_archive,)).fetchall()
    return {str(r["event_id"]) for r in rows}


def _check_site_schema(conn: Any) -> None:
    row = conn.execute("SELECT to_regclass('public.migrated_events') IS NOT NULL AS ok, "
                       "(SELECT max(version) FROM mt_schema) AS version").fetchone()
    if not row["ok"]:
        raise MigrationError(f"the site database is at schema version {row['version']}; migrating needs version "
                             f"{MIGRATED_SCHEMA} (provenance of migrated events): upgrade the site server first")


def _migrate_events(site: SiteCorrectionLog, rows: list[dict[str, Any]], source_archive: str,
                    report: MigrationReport, *, dry_run: bool, batch: int, limit: int | None,
                    stream: TextIO | None) -> None:
    import psycopg

    from mammotriage.store.events import _FIELDS
    from mammotriage.store.pg.events import SERVER_AWAY

    report.events_total = len(rows)
    try:
        conn = site.conn
        done = _provenanced(conn, source_archive)
        todo = [r for r in rows if str(r["event_id"]) not in done]
        present = _present(conn, [str(r["event_id"]) for r in todo])
    except SERVER_AWAY as exc:
        site.close()
        raise _Stopped(f"the site store: {exc}") from None
    report.events_skipped = len(rows) - len(todo) + len(present)
    if dry_run:
        report.events_to_migrate = len(todo) - len(present)
        return
    progress = _Progress("corrections", len(todo), stream)
    fields = [name for name in _FIELDS if name != "prev_hash"]
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        if limit is not None:
            room = limit - report.events_migrated
            if room <= 0:
                raise _Stopped(f"--limit {limit} events migrated")
            chunk = chunk[:room]
        new = sum(1 for r in chunk if str(r["event_id"]) not in present)
        try:
            with site.conn.transaction():
                site.send_batch([{name: str(r[name]) for name in fields} for r in chunk])
                with site.conn.cursor() as cur:
                    cur.executemany(_INSERT_PROVENANCE, [
                        (str(r["event_id"]), source_archive, int(r["seq"]), str(r["prev_hash"]), str(r["hash"]),
                         str(r.get("mac") or "")) for r in chunk])
        except SERVER_AWAY as exc:
            site.close()
            raise _Stopped(f"the site store: {exc}") from None
        except psycopg.DatabaseError as exc:
            first, last = chunk[0]["seq"], chunk[-1]["seq"]
            raise _Stopped(f"the site store refused standalone events {first}..{last}: "
                           f"{str(exc).splitlines()[0]}") from None
        report.events_migrated += new
        progress.step(f"migrated {report.events_migrated}, skipped {report.events_skipped}", len(chunk))
    progress.step(f"migrated {report.events_migrated}, skipped {report.events_skipped}", 0, final=True)


def audit_provenance(site: SiteCorrectionLog, source_archive: str) -> list[str]:
    """Problems of the migrated events of ``source_archive`` (empty: all is well).

    Each site event, hashed with its source's previous hash, gives its source hash; the
    source events link up in source order (each one's previous hash is the hash of the
    source event before it, from the start of the source chain); and the site holds them
    in the same order.
    """
    from mammotriage.store.events import GENESIS, event_hash

    rows = site.conn.execute(
        "SELECT c.*, m.source_seq, m.source_prev_hash, m.source_hash FROM migrated_events m "
        "JOIN correction_events c USING (event_id) WHERE m.source_archive = %s ORDER BY m.source_seq",
        (source_archive,)).fetchall()
    problems: list[str] = []
    prev_hash, prev_site_seq = GENESIS, 0
    for r in rows:
        row = dict(r)
        if event_hash(dict(row, prev_hash=row["source_prev_hash"])) != row["source_hash"]:
            problems.append(f"site event {row['seq']} ({row['event_id']}): its content differs from source "
                            f"event {row['source_seq']}")
        if row["source_prev_hash"] != prev_hash:
            problems.append(f"source event {row['source_seq']} ({row['event_id']}) does not follow the one "
                            "migrated before it (a source event is missing from the site)")
        if int(row["seq"]) <= prev_site_seq:
            problems.append(f"site event {row['seq']} ({row['event_id']}) is out of the source's order")
        prev_hash, prev_site_seq = row["source_hash"], int(row["seq"])
    return problems


# ----------------------------------------------------------------- the whole migration

def migrate_archive(profile: SiteProfile, home: Path | None = None, *, dry_run: bool = False,
                    batch: int = DEFAULT_BATCH, limit: int | None = None,
                    stream: TextIO | None = None) -> MigrationReport:
    """Move the standalone archive of data directory ``home`` (default: this installation's)
    into the site of ``profile``; see the module docstring.

    Raises
    ------
    MigrationError
        Nothing could be done (no archive, no key, a refused chain, an unreachable or
        too old site); the message says why.
    """
    import tempfile

    from mammotriage.net.dicomweb import DicomWebError
    from mammotriage.store.pg.events import SERVER_AWAY, SiteCorrectionLog

    if batch < 1:
        raise MigrationError(f"--batch must be at least 1 (is {batch})")
    folder, log = _open_standalone(home)
    with log:
        verified = log.verify()
        if not verified.ok:
            raise MigrationError(
                f"the standalone chain in {log.path} does not verify, nothing was migrated: "
                f"{verified.problems[0]}" + (f" (and {len(verified.problems) - 1} more problems; "
                                             "'mammotriage audit verify' lists them)"
                                             if len(verified.problems) > 1 else ""))
        rows = _source_rows(log)
        report = MigrationReport(dry_run=dry_run, home=str(folder), source_archive=log.archive_id,
                                 source_events=verified.events)
    images = _images(folder / "archive.sqlite")
    with SiteCorrectionLog(profile.dsn()) as site, tempfile.TemporaryDirectory(prefix="mt-migrate-") as tmp:
        try:
            _check_site_schema(site.conn)
        except SERVER_AWAY as exc:
            raise MigrationError(f"cannot reach the site store ({profile.where()}): {exc}") from None
        web = _site_archive(profile, Path(tmp))
        try:
            try:
                web.find_studies(StudyInstanceUID="1.2.3.4.5.6.7.8.9")  # is it there (and are we let in)?
            except DicomWebError as exc:
                raise MigrationError(f"cannot reach the site archive ({profile.dicomweb_url}): {exc}") from None
            try:
                _migrate_images(web, images, report, dry_run=dry_run, limit=limit, stream=stream)
                _migrate_events(site, rows, report.source_archive, report, dry_run=dry_run, batch=batch,
                                limit=limit, stream=stream)
            except _Stopped as exc:
                report.stopped = str(exc)
        finally:
            web.close()
        try:
            report.site_head = site.head().to_json()
            if not dry_run:
                check = site.verify()
                report.site_chain_ok, report.site_problems = check.ok, list(check.problems)
                problems = audit_provenance(site, report.source_archive)
                report.provenance_ok = not problems
                report.site_problems += problems
        except SERVER_AWAY as exc:
            report.stopped = report.stopped or f"the site store: {exc}"
    return report


# ----------------------------------------------------------------- command line

def add_migrate_command(sub: Any) -> None:
    """``site migrate`` (called from :func:`mammotriage.net.site.add_site_commands`)."""
    q = sub.add_parser(
        "migrate", help="move a standalone archive (images and corrections) into a site",
        description="Verify this workstation's correction chain, send its images to the site archive "
                    "(STOW-RS, skipping what it has) and its corrections to the site store (re-chained by "
                    "the server, with their provenance). Safe to run again: nothing moves twice. Exit 0: "
                    "all moved; 1: partial (run again); 2: nothing done.")
    q.add_argument("--profile", type=Path, required=True, metavar="PROFILE",
                   help="the site profile ('mammotriage site profile ... --role workstation')")
    q.add_argument("--home", type=Path, metavar="DIR",
                   help="the standalone data directory (default: this installation's)")
    q.add_argument("--dry-run", action="store_true", help="say what would move, send nothing")
    q.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="N",
                   help=f"corrections per transaction (default {DEFAULT_BATCH})")
    q.add_argument("--limit", type=int, metavar="N",
                   help="send at most N images and N corrections in this run (a staged migration)")
    q.add_argument("--json", action="store_true", help="the summary as JSON")
    q.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    q.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from mammotriage.net.site_profile import SiteProfileError, load_profile

    try:
        if args.limit is not None and args.limit < 1:
            raise MigrationError(f"--limit must be at least 1 (is {args.limit})")
        profile = load_profile(args.profile)
        report = migrate_archive(profile, args.home, dry_run=args.dry_run, batch=args.batch, limit=args.limit,
                                 stream=None if args.quiet else sys.stderr)
    except (MigrationError, SiteProfileError) as exc:
        print(f"site migrate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else report.text())
    return report.exit_code
