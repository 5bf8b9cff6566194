"""SQLite connection helper for the local archive.

Every connection is opened the same way:

* ``journal_mode=WAL`` so the UI can read while an import writes;
* ``synchronous=FULL`` so a committed import survives a power cut;
* ``foreign_keys=ON`` so rows can never point at a missing study or series;
* autocommit mode (``isolation_level=None``): callers open transactions explicitly
  with :func:`transaction`, so it is always clear what is atomic.

The schema is versioned with ``PRAGMA user_version``.  :data:`MIGRATIONS` is an ordered
list; migration *n* (1-based) brings the database from version ``n - 1`` to ``n``.
A later feature adds its tables by **appending** a :class:`Migration` to the list —
never by editing one that has shipped.  Each migration runs in its own transaction
together with the ``user_version`` bump, so a crash leaves the database at a
well-defined version.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Connected",
    "Migration",
    "SchemaVersionError",
    "connect",
    "migrate",
    "schema_version",
    "transaction",
]

#: How long a connection waits for another writer before failing, in milliseconds.
BUSY_TIMEOUT_MS = 10_000


class SchemaVersionError(RuntimeError):
    """The database was written by a newer Mammo Triage than this one."""


@dataclass(frozen=True)
class Migration:
    """One schema step.

    Parameters
    ----------
    name
        Short description, for logs and error messages.
    steps
        SQL statements (one statement per string) or callables taking the
        connection, run in order inside one transaction.
    """

    name: str
    steps: Sequence[str | Callable[[sqlite3.Connection], None]]


_V1_ARCHIVE = Migration(
    name="archive: studies, series, images, rejections",
    steps=(
        """
        CREATE TABLE studies (
            study_uid    TEXT PRIMARY KEY,
            patient_id   TEXT NOT NULL DEFAULT '',
            patient_name TEXT NOT NULL DEFAULT '',
            accession    TEXT NOT NULL DEFAULT '',
            study_date   TEXT,                      -- ISO 8601 date or NULL
            description  TEXT NOT NULL DEFAULT '',
            exam_key     TEXT NOT NULL
        )
        """,
        "CREATE INDEX studies_exam_key ON studies (exam_key)",
        """
        CREATE TABLE series (
            series_uid   TEXT PRIMARY KEY,
            study_uid    TEXT NOT NULL REFERENCES studies (study_uid),
            modality     TEXT NOT NULL DEFAULT '',
            description  TEXT NOT NULL DEFAULT '',
            manufacturer TEXT NOT NULL DEFAULT '',
            model        TEXT NOT NULL DEFAULT '',
            UNIQUE (series_uid, study_uid)
        )
        """,
        "CREATE INDEX series_study ON series (study_uid)",
        """
        CREATE TABLE images (
            sop_uid             TEXT PRIMARY KEY,
            series_uid          TEXT NOT NULL,
            study_uid           TEXT NOT NULL REFERENCES studies (study_uid),
            path                TEXT NOT NULL,      -- absolute; the file is never modified
            sha256              TEXT NOT NULL CHECK (length(sha256) = 64),
            size                INTEGER NOT NULL,
            laterality          TEXT NOT NULL,      -- Laterality value: L, R, B, U
            "view"              TEXT NOT NULL,      -- View value: CC, MLO, ...
            view_modifiers      TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
            presentation_intent TEXT NOT NULL,
            "rows"              INTEGER NOT NULL,
            "columns"           INTEGER NOT NULL,
            transfer_syntax     TEXT NOT NULL,
            photometric         TEXT NOT NULL,
            spacing_row_mm      REAL,
            spacing_col_mm      REAL,
            spacing_source      TEXT,
            imported_at         TEXT NOT NULL,      -- UTC ISO 8601
            FOREIGN KEY (series_uid, study_uid) REFERENCES series (series_uid, study_uid)
        )
        """,
        "CREATE INDEX images_study ON images (study_uid)",
        "CREATE INDEX images_series ON images (series_uid)",
        "CREATE INDEX images_path ON images (path)",
        """
        CREATE TABLE rejections (
            id     INTEGER PRIMARY KEY AUTOINCREMENT,
            path   TEXT NOT NULL,
            reason TEXT NOT NULL,
            code   TEXT NOT NULL,
            at     TEXT NOT NULL                    -- UTC ISO 8601
        )
        """,
        "CREATE INDEX rejections_path ON rejections (path)",
    ),
)

_V2_TRIAGE = Migration(
    name="triage: job queue and AI results per model version",
    steps=(
        """
        CREATE TABLE triage_jobs (
            exam_key      TEXT NOT NULL,
            model_version TEXT NOT NULL,
            status        TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
            priority      INTEGER NOT NULL DEFAULT 0,   -- > 0: a reader opened the exam
            enqueued_at   TEXT NOT NULL,                -- UTC ISO 8601
            started_at    TEXT,
            finished_at   TEXT,
            attempts      INTEGER NOT NULL DEFAULT 0,
            reason        TEXT,                         -- why it failed
            PRIMARY KEY (exam_key, model_version)
        )
        """,
        "CREATE INDEX triage_jobs_next ON triage_jobs (status, priority DESC, enqueued_at)",
        """
        CREATE TABLE ai_image_results (
            sop_uid        TEXT NOT NULL REFERENCES images (sop_uid),
            model_version  TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,
            score          REAL NOT NULL,
            findings       TEXT NOT NULL,   -- JSON [{box: [x0, y0, x1, y1], kind, score}], stored pixels
            map_path       TEXT,            -- suspicion map (.npy, float16), relative to the data dir
            map_factor     REAL,            -- stored pixels per map pixel
            created_at     TEXT NOT NULL,
            PRIMARY KEY (sop_uid, model_version)
        )
        """,
        """
        CREATE TABLE ai_exam_results (
            exam_key       TEXT NOT NULL,
            model_version  TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,
            score          REAL NOT NULL,
            score_left     REAL,
            score_right    REAL,
            created_at     TEXT NOT NULL,
            PRIMARY KEY (exam_key, model_version)
        )
        """,
    ),
)

_V3_INITIAL_READS = Migration(
    name="reading: initial assessments recorded before AI is shown",
    steps=(
        """
        CREATE TABLE initial_reads (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            exam_key   TEXT NOT NULL,
            reader     TEXT NOT NULL,
            birads     INTEGER NOT NULL CHECK (birads BETWEEN 0 AND 6),
            at         TEXT NOT NULL                -- UTC ISO 8601; append-only
        )
        """,
        "CREATE INDEX initial_reads_exam ON initial_reads (exam_key, reader)",
    ),
)

_V4_OUTBOX = Migration(
    name="outbox: DICOM objects queued for the PACS",
    steps=(
        """
        CREATE TABLE outbox (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            path            TEXT NOT NULL,      -- copy kept in the outbox folder until sent
            sop_class_uid   TEXT NOT NULL,
            sop_uid         TEXT NOT NULL,
            study_uid       TEXT NOT NULL DEFAULT '',
            transfer_syntax TEXT NOT NULL,
            kind            TEXT NOT NULL DEFAULT 'other',  -- ai-sr, ai-seg, reader-findings, other
            sha256          TEXT NOT NULL CHECK (length(sha256) = 64),
            size            INTEGER NOT NULL,
            status          TEXT NOT NULL
                            CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,      -- Unix time of the next try (pending rows)
            last_error      TEXT NOT NULL DEFAULT '',
            sent_to         TEXT NOT NULL DEFAULT '',   -- AET@host:port that accepted it
            created_at      TEXT NOT NULL,      -- UTC ISO 8601
            updated_at      TEXT NOT NULL,      -- UTC ISO 8601
            sent_at         TEXT                -- UTC ISO 8601
        )
        """,
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at)",
        # One live entry per object: queuing it again while it waits is a no-op.
        """
        CREATE UNIQUE INDEX outbox_live_sop ON outbox (sop_uid)
        WHERE status IN ('pending', 'sending')
        """,
    ),
)

_V5_CORRECTIONS = Migration(
    name="corrections: append-only, hash-chained reader events; local readers",
    steps=(
        """
        CREATE TABLE correction_events (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: gaps reveal deletions
            event_id      TEXT NOT NULL UNIQUE,
            at            TEXT NOT NULL,           -- UTC ISO 8601
            reader        TEXT NOT NULL,
            workstation   TEXT NOT NULL,
            exam_key      TEXT NOT NULL,
            study_uid     TEXT NOT NULL DEFAULT '',
            series_uid    TEXT NOT NULL DEFAULT '',
            sop_uid       TEXT NOT NULL DEFAULT '',  -- '' for exam-level events (BI-RADS, density, note)
            pixel_sha256  TEXT NOT NULL DEFAULT '',  -- sha256 of the decoded stored pixels
            model_version TEXT NOT NULL DEFAULT '',  -- the model whose marks were shown
            action        TEXT NOT NULL,
            target        TEXT NOT NULL DEFAULT '',  -- the finding or event acted on
            kind          TEXT NOT NULL DEFAULT '',
            geometry      TEXT NOT NULL DEFAULT '',  -- JSON, stored-image pixel coordinates
            payload       TEXT NOT NULL DEFAULT '',  -- JSON: suspicion, BI-RADS, density, note ...
            prev_hash     TEXT NOT NULL,
            hash          TEXT NOT NULL UNIQUE
        )
        """,
        "CREATE INDEX correction_events_exam ON correction_events (exam_key)",
        "CREATE INDEX correction_events_sop ON correction_events (sop_uid)",
        """
        CREATE TRIGGER correction_events_no_update BEFORE UPDATE ON correction_events
        BEGIN SELECT RAISE(ABORT, 'correction events are append-only'); END
        """,
        """
        CREATE TRIGGER correction_events_no_delete BEFORE DELETE ON correction_events
        BEGIN SELECT RAISE(ABORT, 'correction events are append-only'); END
        """,
        """
        CREATE TABLE readers (
            name       TEXT PRIMARY KEY,
            full_name  TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        )
        """,
    ),
)

_V6_DATASET_SNAPSHOTS = Migration(
    name="datasets: immutable, content-addressed label snapshots",
    steps=(
        """
        CREATE TABLE dataset_snapshots (
            sha256           TEXT PRIMARY KEY CHECK (length(sha256) = 64),  -- of the manifest file
            created_at       TEXT NOT NULL,            -- UTC ISO 8601
            name             TEXT NOT NULL DEFAULT '',
            description      TEXT NOT NULL DEFAULT '',
            role             TEXT NOT NULL CHECK (role IN ('training', 'validation')),
            consensus        TEXT NOT NULL,            -- union, majority or adjudicator:READER
            exams            INTEGER NOT NULL,
            images           INTEGER NOT NULL,
            readers          INTEGER NOT NULL,
            labels           INTEGER NOT NULL,         -- positive reader labels
            consensus_labels INTEGER NOT NULL,
            manifest         TEXT NOT NULL             -- relative to the archive's folder
        )
        """,
        """
        CREATE TRIGGER dataset_snapshots_immutable
        BEFORE UPDATE OF sha256, created_at, name, description, role, consensus, exams, images,
                         readers, labels, consensus_labels, manifest ON dataset_snapshots
        BEGIN SELECT RAISE(ABORT, 'dataset snapshots are immutable'); END
        """,
    ),
)

_V7_MODEL_REGISTRY = Migration(
    name="model registry (immutable versions, one active) and per-image input statistics",
    steps=(
        """
        CREATE TABLE model_versions (
            version        TEXT PRIMARY KEY,
            path           TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,
            parent         TEXT,
            origin         TEXT NOT NULL,           -- shipped | site
            registered_at  TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE model_events (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            at       TEXT NOT NULL,
            version  TEXT NOT NULL REFERENCES model_versions (version),
            action   TEXT NOT NULL CHECK (action IN ('register', 'promote', 'rollback', 'refuse')),
            who      TEXT NOT NULL,
            reason   TEXT NOT NULL DEFAULT '',
            report   TEXT NOT NULL DEFAULT ''      -- JSON gate report, when there is one
        )
        """,
        """
        CREATE TABLE image_stats (
            sop_uid      TEXT NOT NULL REFERENCES images (sop_uid),
            mean         REAL NOT NULL,            -- breast region of the 8-bit display image
            std          REAL NOT NULL,
            p05          REAL NOT NULL,
            p95          REAL NOT NULL,
            breast_frac  REAL NOT NULL,            -- breast area / image area
            computed_at  TEXT NOT NULL,
            PRIMARY KEY (sop_uid)
        )
        """,
    ),
)

def _new_archive_id(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO audit_anchor (archive_id, created_at) VALUES (?, datetime('now'))",
                 (str(uuid.uuid4()),))


_V8_AUDIT_ANCHOR = Migration(
    name="audit anchoring: a keyed MAC per correction event; the archive's identity for its head file",
    steps=(
        # '' for events recorded before the key existed (anchored by the first head).
        "ALTER TABLE correction_events ADD COLUMN mac TEXT NOT NULL DEFAULT ''",
        """
        CREATE TABLE audit_anchor (
            archive_id TEXT NOT NULL,   -- random UUID: names the head file beside the key
            created_at TEXT NOT NULL
        )
        """,
        _new_archive_id,
        """
        CREATE TRIGGER audit_anchor_immutable BEFORE UPDATE ON audit_anchor
        BEGIN SELECT RAISE(ABORT, 'the archive identity is immutable'); END
        """,
        """
        CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor
        BEGIN SELECT RAISE(ABORT, 'the archive identity is immutable'); END
        """,
    ),
)


def _append_only(table: str, what: str) -> tuple[str, ...]:
    return tuple(f"""
        CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}
        BEGIN SELECT RAISE(ABORT, '{what} are append-only'); END
        """ for op in ("UPDATE", "DELETE"))


_V9_REGISTRY_APPEND_ONLY = Migration(
    name="model registry: append-only versions, events and initial reads; gate reports kept in the store",
    steps=(
        *_append_only("model_versions", "model versions"),
        *_append_only("model_events", "model events"),
        *_append_only("initial_reads", "initial reads"),
        """
        CREATE TABLE gate_reports (
            sha256              TEXT PRIMARY KEY CHECK (length(sha256) = 64),  -- of the canonical JSON
            at                  TEXT NOT NULL,           -- UTC ISO 8601
            candidate_version   TEXT NOT NULL,
            candidate_sha256    TEXT NOT NULL,
            parent_sha256       TEXT NOT NULL,
            validation_snapshot TEXT NOT NULL,
            passed              INTEGER NOT NULL CHECK (passed IN (0, 1)),
            report              TEXT NOT NULL            -- the report, canonical JSON
        )
        """,
        "CREATE INDEX gate_reports_candidate ON gate_reports (candidate_sha256)",
        *_append_only("gate_reports", "gate reports"),
    ),
)

_V10_PATIENT_ISSUER = Migration(
    name="studies: Issuer of Patient ID (priors link by issuer and Patient ID)",
    steps=("ALTER TABLE studies ADD COLUMN patient_id_issuer TEXT NOT NULL DEFAULT ''",),
)

def _exam_index_refresh(key: str) -> str:
    """Statements (trigger body) that rebuild the ``exam_index`` row of exam ``key``."""
    return f"""
        DELETE FROM exam_index WHERE exam_key = {key};
        INSERT INTO exam_index (exam_key, patient_id, patient_name, study_date, accessions, study_uids)
        SELECT exam_key, MIN(patient_id), MIN(patient_name), MIN(study_date),
               COALESCE(GROUP_CONCAT(NULLIF(accession, ''), ' '), ''), GROUP_CONCAT(study_uid, ' ')
        FROM (SELECT * FROM studies WHERE exam_key = {key} ORDER BY study_uid) GROUP BY exam_key;"""


_V11_SCALE = Migration(
    name="speed: measured per-view inference times (queue ETAs); a per-exam index for a 10,000-exam worklist",
    steps=(
        """
        CREATE TABLE inference_times (
            id             INTEGER PRIMARY KEY AUTOINCREMENT,
            weights_sha256 TEXT NOT NULL,           -- the model measured (whatever its version name)
            model_version  TEXT NOT NULL,
            views          INTEGER NOT NULL CHECK (views > 0),
            seconds        REAL NOT NULL CHECK (seconds >= 0),  -- read + model + store, one exam
            per_view_s     REAL NOT NULL CHECK (per_view_s >= 0),
            at             TEXT NOT NULL            -- UTC ISO 8601
        )
        """,
        "CREATE INDEX inference_times_weights ON inference_times (weights_sha256, id)",
        # the queue of one model version in claim order (worklist, ETAs, counts)
        "CREATE INDEX triage_jobs_version ON triage_jobs (model_version, status, priority DESC, enqueued_at)",
        # One row per exam, kept by triggers on studies: the worklist pages over it without
        # grouping studies (or reading images) on every query.
        """
        CREATE TABLE exam_index (
            exam_key     TEXT PRIMARY KEY,
            patient_id   TEXT NOT NULL,
            patient_name TEXT NOT NULL,
            study_date   TEXT,                 -- the earliest of its studies
            accessions   TEXT NOT NULL,        -- space-separated, non-empty ones
            study_uids   TEXT NOT NULL         -- space-separated, in UID order
        )
        """,
        "CREATE INDEX exam_index_date ON exam_index (study_date DESC, exam_key)",
        "CREATE INDEX exam_index_patient ON exam_index (patient_id, study_date DESC)",
        """
        INSERT INTO exam_index (exam_key, patient_id, patient_name, study_date, accessions, study_uids)
        SELECT exam_key, MIN(patient_id), MIN(patient_name), MIN(study_date),
               COALESCE(GROUP_CONCAT(NULLIF(accession, ''), ' '), ''), GROUP_CONCAT(study_uid, ' ')
        FROM (SELECT * FROM studies ORDER BY exam_key, study_uid) GROUP BY exam_key
        """,
        f"CREATE TRIGGER exam_index_insert AFTER INSERT ON studies BEGIN {_exam_index_refresh('NEW.exam_key')} END",
        f"CREATE TRIGGER exam_index_delete AFTER DELETE ON studies BEGIN {_exam_index_refresh('OLD.exam_key')} END",
        f"""CREATE TRIGGER exam_index_update AFTER UPDATE ON studies BEGIN
            {_exam_index_refresh('OLD.exam_key')} {_exam_index_refresh('NEW.exam_key')} END""",
    ),
)

_V12_READING_LOCKS = Migration(
    name="double reading: soft locks ('being read by'), append-only take/release rows with a lease",
    steps=(
        """
        CREATE TABLE reading_locks (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            exam_key    TEXT NOT NULL,
            reader      TEXT NOT NULL,
            workstation TEXT NOT NULL,
            action      TEXT NOT NULL CHECK (action IN ('take', 'release')),
            at          TEXT NOT NULL,           -- UTC ISO 8601
            expires_at  TEXT NOT NULL            -- UTC ISO 8601 end of the lease; '' for a release
        )
        """,
        "CREATE INDEX reading_locks_exam ON reading_locks (exam_key, id)",
        *_append_only("reading_locks", "reading locks"),
    ),
)

_V13_SITE_EVENTS = Migration(
    name="site mode: the site chain's events as the worklist reads them (a copy the workstation refreshes)",
    steps=(
        """
        CREATE TABLE site_events (
            seq      INTEGER PRIMARY KEY,        -- the site chain's own sequence number
            exam_key TEXT NOT NULL,
            reader   TEXT NOT NULL,
            action   TEXT NOT NULL,
            at       TEXT NOT NULL,              -- UTC ISO 8601, when the reader acted
            payload  TEXT NOT NULL DEFAULT '',
            hash     TEXT NOT NULL               -- the chain's hash of the event (which chain it is)
        )
        """,
        "CREATE INDEX site_events_exam ON site_events (exam_key, seq)",
        """
        CREATE TABLE site_events_source (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            archive_id TEXT NOT NULL             -- the site whose chain the copy is (site_identity)
        )
        """,
    ),
)

_V14_QUEUED_AT = Migration(
    name="triage: when each job was (last) queued, from which a site workstation's hold counts",
    steps=("ALTER TABLE triage_jobs ADD COLUMN queued_at TEXT",),  # NULL: queued before version 14
)

#: Ordered schema migrations. Append only; index ``i`` produces version ``i + 1``.
MIGRATIONS: list[Migration] = [_V1_ARCHIVE, _V2_TRIAGE, _V3_INITIAL_READS, _V4_OUTBOX, _V5_CORRECTIONS,
                               _V6_DATASET_SNAPSHOTS, _V7_MODEL_REGISTRY, _V8_AUDIT_ANCHOR,
                               _V9_REGISTRY_APPEND_ONLY, _V10_PATIENT_ISSUER, _V11_SCALE,
                               _V12_READING_LOCKS, _V13_SITE_EVENTS, _V14_QUEUED_AT]

#: The schema version this code writes.
SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def transaction(
    conn: sqlite3.Connection, *, immediate: bool = True
) -> Iterator[sqlite3.Connection]:
    """Run a block in one transaction: commit on success, roll back on any exception.

    Parameters
    ----------
    conn
        A connection opened by :func:`connect` (autocommit mode).
    immediate
        Take the write lock at ``BEGIN`` (``BEGIN IMMEDIATE``) rather than at the first
        write, so that two writers fail fast instead of dead-locking mid-transaction.

    Yields
    ------
    sqlite3.Connection
        The same connection.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the database's ``PRAGMA user_version``."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None) -> int:
    """Bring the schema up to date and return the resulting version.

    Parameters
    ----------
    conn
        Connection in autocommit mode (as opened by :func:`connect`).
    migrations
        Ordered migrations; defaults to :data:`MIGRATIONS`.

    Returns
    -------
    int
        The schema version after migrating (``len(migrations)``).

    Raises
    ------
    SchemaVersionError
        The database is at a version newer than the migrations known here.
    """
    steps = list(MIGRATIONS if migrations is None else migrations)
    target = len(steps)
    if schema_version(conn) == target:
        return target
    # The write lock is taken before the version is re-read, so two processes
    # opening a fresh archive at once cannot both apply migration 1.
    with transaction(conn):
        current = schema_version(conn)
        if current > target:
            raise SchemaVersionError(
                f"archive schema version {current} is newer than this program "
                f"supports ({target}); update Mammo Triage"
            )
    while (current := schema_version(conn)) < target:
        migration = steps[current]
        with transaction(conn):
            if schema_version(conn) != current:  # another process got there first
                continue
            for step in migration.steps:
                if callable(step):
                    step(conn)
                else:
                    conn.execute(step)
            # PRAGMA does not accept bound parameters; the value is an int we computed.
            conn.execute(f"PRAGMA user_version = {current + 1:d}")
    return schema_version(conn)


def connect(
    path: str | Path, *, migrations: Sequence[Migration] | None = None
) -> sqlite3.Connection:
    """Open (creating if needed) an archive database and migrate it.

    Parameters
    ----------
    path
        Database file. Its parent folder is created if missing.
    migrations
        Ordered migrations to apply; defaults to :data:`MIGRATIONS`.

    Returns
    -------
    sqlite3.Connection
        Autocommit connection with ``row_factory = sqlite3.Row``; usable from any
        thread (``check_same_thread=False``) provided the caller serialises access.

    Raises
    ------
    sqlite3.OperationalError
        The database cannot be opened or put in WAL mode (e.g. a read-only folder or
        a network share without shared-memory support).
    SchemaVersionError
        The database was written by a newer version.
    """
    db_path = Path(path).expanduser()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(db_path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        if mode != "wal":
            raise sqlite3.OperationalError(
                f"could not enable WAL journal mode on {db_path} (got {mode!r})"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


class Connected:
    """Base for the archive's table owners: one migrated connection, closed on exit.

    Every connection to the archive file is opened here. ``close`` is idempotent and
    thread-safe (under ``_lock``, which subclasses also hold around their statements);
    :attr:`conn` raises :class:`sqlite3.ProgrammingError` once closed.
    """

    #: what the error after :meth:`close` calls the object ("archive is closed")
    closed_name = "database"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = connect(self.path)

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection (raises once closed)."""
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"{self.closed_name} is closed")
        return self._conn

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
