"""The site database's schema: versioned, append-only migrations (like ``store.db``).

:data:`MIGRATIONS` is an ordered list; migration *n* (1-based) brings the database from
version ``n - 1`` to ``n``. A later feature adds its tables by **appending** a
:class:`PgMigration`, never by editing one that has shipped. Each migration runs in its
own transaction together with the bump of ``mt_schema.version``, under an advisory
lock, so two processes migrating at once apply each step once and a failure leaves the
database at a well-defined version. Migrations run as the owner, ``mt_admin``.

Version 1, the correction chain:

- ``correction_events``: the columns of the SQLite table (text values, so the hash is
  :func:`mammotriage.store.events.event_hash` of the same strings) plus
  ``received_at`` (server time of arrival; not hashed). ``seq``, ``prev_hash``,
  ``hash`` and ``mac`` are assigned by the BEFORE INSERT trigger ``mt_chain_event``,
  whatever the client sends: it takes ``pg_advisory_xact_lock(CHAIN_LOCK)``, skips an
  ``event_id`` that is already stored (identical content: a retry; different content:
  refused), and extends the chain by one (``seq = last + 1``, no gaps), computing the
  hash in PL/pgSQL from the same canonical JSON bytes as ``event_hash`` and the
  HMAC-SHA256 under the site's audit key.
- ``mt_private.audit_key``: the site's 32-byte audit key (as HMAC inner/outer pads),
  readable by ``mt_admin`` only; the trigger runs as its owner (SECURITY DEFINER), so a
  workstation can append but can neither read the key nor compute a MAC.
- ``audit_head``: one row (count, last seq, last hash, its MAC, time): the server's head
  record (what ``store.audit.FileAnchor`` is for one workstation), updated only by the
  chain trigger.
- ``site_identity``: the site's archive id (immutable), named in the head MAC.
- Append-only: UPDATE, DELETE and TRUNCATE of ``correction_events`` (and DELETE or a
  direct UPDATE of the head) raise, also for the owner. The one admin path is
  documented in ``docs/hospital-it.md`` (a superuser or the owner disabling the trigger),
  and ``verify`` finds what it changed unless the audit key was used too.

Version 2, the shared triage queue (:mod:`mammotriage.triage.site_queue`):
``triage_jobs`` (one per exam and model sha256; status, lease, claim token) and
``triage_results`` (exactly one per exam and model sha256; per image-set revision from version 8).

Version 3 accepts the action ``arbitrate``. Version 4, provenance of migrated events (:mod:`mammotriage.net.site_migrate`):
``migrated_events``, one append-only row per event moved from a standalone archive (the
source archive id, seq, previous hash, hash and MAC); its insert trigger checks that the
site's copy of the event, hashed with the source's previous hash, gives the source hash.
Version 5, double reading across
workstations (:mod:`mammotriage.store.pg.double_reading`): ``reading_locks`` (the soft
locks, take and release rows as in the SQLite table; append-only by trigger, also for
the owner; a workstation may insert and read, never update or delete) and a partial
index of the sign / amend / arbitrate events by exam.
Version 6, the site's model registry (:mod:`mammotriage.store.pg.models`):
``site_model_packages`` (one row per published package: its folder as a tar, the tar's
sha256 and the verified metadata) and ``site_model_events`` (promote / rollback, who,
why, the gate report); both append-only, written by the owner only (the site server's
``mammotriage site models``), read by workstations and workers. A triage job can be
``superseded`` (a promotion moved the exam to the new model).
Version 7, site accounts (:mod:`mammotriage.store.pg.accounts`): ``site_readers`` (a
reader's name and their own login role), ``site_reader_events`` (disable / enable),
``site_settings`` (``accounts_required``), all append-only; the reader's sign-ins in
``mt_private.reader_sessions`` (the token's sha256, 12 hours), made by
``mt_reader_sign_in`` (SECURITY DEFINER, callable by an active reader's role only); and
the BEFORE INSERT trigger ``correction_events_account`` (before the chain's): an event
carrying a sign-in token (``session_token``, never stored) must be by that sign-in's
reader, made before it expired and sent within a week, and gets ``account``; without a
token it is refused when the site requires accounts.
Version 8, re-triage of a study that receives new images (:mod:`mammotriage.triage.site_queue`):
``triage_jobs.images`` (the sha256 of the study's image SOP Instance UIDs the job is
for, recorded at ``images_at``; ``mt_newest_images(exam)`` is the last one recorded for
an exam under any model) and ``revision`` (raised each time new images queue a done, running or failed job
again); ``triage_results`` keeps one row per exam, model and revision.
Version 9, soft locks under site accounts: ``reading_locks`` gets ``session_token``
(never stored) and ``account``, and the BEFORE INSERT trigger ``reading_locks_account``
checks a lock's reader against the sign-in as events are checked (a lock without one
is refused where the site requires accounts).
Version 10, account seals: the BEFORE INSERT trigger ``correction_events_chain_seal``
(after the chain's, by name) sets ``account_mac``, the HMAC under the audit key of the
site, the event's hash and its ``account`` (:data:`ACCOUNT_SEAL`); the migration records
the first sealed seq (the next one) in ``account_seal_from`` (append-only, with its own
MAC), so that
``verify`` finds an account changed, added or removed by the admin path, and a seal
removed from an event stored after sealing began. Events stored before are counted as
unsealed, not as problems.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from mammotriage.store.audit import KEY_BYTES, AuditKey, Head
from mammotriage.store.events import _FIELDS, GENESIS

__all__ = ["CHAIN_LOCK", "LOCK_ACCOUNTS_VERSION", "MIGRATIONS", "NEW_IMAGES_ON_CONFLICT", "READING_LOCKS_VERSION", "RETRIAGE_VERSION", "SCHEMA_VERSION", "SITE_MODELS_VERSION", "PgMigration", "migrate",
           "schema_version"]

#: ``pg_advisory_xact_lock`` keys: the chain's extension, and migrations.
CHAIN_LOCK = 0x4D54_0001
MIGRATE_LOCK = 0x4D54_0002
#: the site model registry's promotions and the queue moves that follow them (store.pg.models)
MODELS_LOCK = 0x4D54_0003

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class PgMigration:
    """One schema step: SQL statements or callables taking the connection, in one transaction."""

    name: str
    steps: Sequence[str | Callable[[Conn], None]]


def _canonical_sql() -> str:
    """PL/pgSQL expression: the canonical JSON of ``NEW``'s hashed fields, as ``event_hash`` writes it.

    Keys sorted, no spaces, strings escaped by ``to_json(text)`` (the same escapes as
    Python's ``json.dumps(ensure_ascii=False)``: ``\\" \\\\ \\b \\f \\n \\r \\t`` and
    ``\\u00XX`` below U+0020, everything else as UTF-8).
    """
    parts = [f"'\"{name}\":' || to_json(NEW.{name})::text" for name in sorted(_FIELDS)]
    return "'{' || " + " || ',' || ".join(parts) + " || '}'"


def _mac_sql(message: str) -> str:
    return (f"encode(sha256(k.opad || sha256(k.ipad || convert_to({message}, 'UTF8'))), 'hex')")


def _install_key(conn: Conn) -> None:
    """A fresh audit key (HMAC pads precomputed) and the site's identity; the empty head."""
    secret = secrets.token_bytes(KEY_BYTES)
    block = secret.ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in block)
    opad = bytes(b ^ 0x5C for b in block)
    archive_id = str(uuid.uuid4())
    conn.execute("INSERT INTO mt_private.audit_key (secret, ipad, opad) VALUES (%s, %s, %s)",
                 (secret, ipad, opad))
    conn.execute("INSERT INTO site_identity (archive_id) VALUES (%s)", (archive_id,))
    head = Head(0, 0, GENESIS).signed(site_key(secret), archive_id)
    conn.execute("INSERT INTO audit_head (id, count, last_seq, last_hash, mac) VALUES (1, 0, 0, %s, %s)",
                 (GENESIS, head.mac))


#: Where the site's audit key lives (what messages call it).
KEY_PLACE = "mt_private.audit_key"


def site_key(secret: bytes) -> AuditKey:
    """The site's audit key as a :class:`~mammotriage.store.audit.AuditKey` (its "path" names the table)."""
    return AuditKey(bytes(secret), Path(KEY_PLACE))

_TEXT_COLUMNS = ", ".join(f"{name} TEXT NOT NULL DEFAULT ''" for name in _FIELDS
                          if name not in ("event_id", "at", "reader", "workstation", "exam_key", "action",
                                          "prev_hash"))
_CLIENT_COLUMNS = ", ".join(name for name in _FIELDS if name != "prev_hash")
_SAME_CONTENT = " AND ".join(f"prior.{name} = NEW.{name}" for name in _FIELDS if name != "prev_hash")
#: The actions version 1 accepts, frozen here (a migration never changes once shipped):
#: an action added to ``store.events.ACTIONS`` needs a migration that widens the CHECK
#: and adds it to :data:`SITE_ACTIONS` (a test compares the two).
_V1_ACTIONS = ("accept", "add", "adjust", "amend", "birads", "change_kind", "delete", "density", "note",
               "redo", "reject", "sign", "undo")
_ACTIONS_SQL = ", ".join(f"'{a}'" for a in _V1_ACTIONS)
#: version 3: double reading's ``arbitrate`` (the third reader's consensus)
_V3_ACTIONS = (*_V1_ACTIONS, "arbitrate")
SITE_ACTIONS = frozenset(_V3_ACTIONS)

_V1_CHAIN = PgMigration(
    name="corrections: the server-extended hash chain, the site's audit key and head, roles' grants",
    steps=(
        "GRANT USAGE ON SCHEMA public TO mt_workstation, mt_worker",
        "CREATE SCHEMA mt_private",
        "REVOKE ALL ON SCHEMA mt_private FROM PUBLIC",
        """
        CREATE TABLE mt_private.audit_key (
            secret BYTEA NOT NULL CHECK (length(secret) = 32),
            ipad   BYTEA NOT NULL CHECK (length(ipad) = 64),
            opad   BYTEA NOT NULL CHECK (length(opad) = 64)
        )
        """,
        """
        CREATE TABLE site_identity (
            archive_id TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE audit_head (
            id        INTEGER PRIMARY KEY CHECK (id = 1),
            count     BIGINT NOT NULL,
            last_seq  BIGINT NOT NULL,
            last_hash TEXT NOT NULL,
            mac       TEXT NOT NULL,
            at        TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """,
        f"""
        CREATE TABLE correction_events (
            seq          BIGINT PRIMARY KEY,          -- assigned by the chain trigger: no gaps
            event_id     TEXT NOT NULL UNIQUE,
            at           TEXT NOT NULL,               -- UTC ISO 8601, when the reader acted
            reader       TEXT NOT NULL,
            workstation  TEXT NOT NULL,
            exam_key     TEXT NOT NULL,
            action       TEXT NOT NULL CHECK (action IN ({_ACTIONS_SQL})),
            {_TEXT_COLUMNS},
            prev_hash    TEXT NOT NULL,
            hash         TEXT NOT NULL UNIQUE,
            mac          TEXT NOT NULL,
            received_at  TIMESTAMPTZ NOT NULL DEFAULT now()   -- when the server chained it
        )
        """,
        "CREATE INDEX correction_events_exam ON correction_events (exam_key)",
        "CREATE INDEX correction_events_sop ON correction_events (sop_uid)",
        f"""
        CREATE FUNCTION mt_chain_event() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
        DECLARE
            prior correction_events%ROWTYPE;
            h   audit_head%ROWTYPE;
            k   mt_private.audit_key%ROWTYPE;
            site TEXT;
        BEGIN
            IF current_setting('transaction_isolation') <> 'read committed' THEN
                RAISE EXCEPTION 'correction events are appended under READ COMMITTED only (this transaction is %)',
                    current_setting('transaction_isolation');
            END IF;
            PERFORM pg_advisory_xact_lock({CHAIN_LOCK:d});
            SELECT * INTO prior FROM correction_events WHERE event_id = NEW.event_id;
            IF FOUND THEN
                IF {_SAME_CONTENT} THEN
                    RETURN NULL;   -- already stored: a retry after a lost acknowledgement
                END IF;
                RAISE EXCEPTION 'event % is already stored with different content', NEW.event_id
                    USING ERRCODE = 'unique_violation';
            END IF;
            SELECT * INTO h FROM audit_head WHERE id = 1 FOR UPDATE;
            SELECT * INTO k FROM mt_private.audit_key;
            SELECT archive_id INTO site FROM site_identity;
            NEW.seq := h.last_seq + 1;
            NEW.prev_hash := h.last_hash;
            NEW.hash := encode(sha256(convert_to({_canonical_sql()}, 'UTF8')), 'hex');
            NEW.mac := {_mac_sql("NEW.hash")};
            NEW.received_at := clock_timestamp();
            UPDATE audit_head SET count = h.count + 1, last_seq = NEW.seq, last_hash = NEW.hash,
                   at = NEW.received_at,
                   mac = {_mac_sql("'mammotriage.audit-head/1|' || site || '|' || (h.count + 1)::text || '|' || "
                                   "NEW.seq::text || '|' || NEW.hash")}
            WHERE id = 1;
            RETURN NEW;
        END
        $fn$
        """,
        "REVOKE ALL ON FUNCTION mt_chain_event() FROM PUBLIC",
        """
        CREATE TRIGGER correction_events_chain BEFORE INSERT ON correction_events
        FOR EACH ROW EXECUTE FUNCTION mt_chain_event()
        """,
        """
        CREATE FUNCTION mt_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
        END
        $fn$
        """,
        """
        CREATE TRIGGER correction_events_no_update BEFORE UPDATE OR DELETE ON correction_events
        FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER correction_events_no_truncate BEFORE TRUNCATE ON correction_events
        FOR EACH STATEMENT EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER site_identity_immutable BEFORE UPDATE OR DELETE ON site_identity
        FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER site_identity_no_truncate BEFORE TRUNCATE ON site_identity
        FOR EACH STATEMENT EXECUTE FUNCTION mt_refuse_change()
        """,
        # The head moves only inside the chain trigger (trigger depth 2), never by hand.
        """
        CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
        FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
        FOR EACH STATEMENT EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER audit_head_only_by_chain BEFORE UPDATE ON audit_head
        FOR EACH ROW WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION mt_refuse_change()
        """,
        _install_key,
        f"GRANT SELECT, INSERT ({_CLIENT_COLUMNS}) ON correction_events TO mt_workstation",
        "GRANT SELECT ON correction_events TO mt_worker",
        "GRANT SELECT ON audit_head, site_identity TO mt_workstation, mt_worker",
    ),
)

_V2_SITE_QUEUE = PgMigration(
    name="triage: the shared job queue (leases, claim tokens) and one result per exam and model",
    steps=(
        """
        CREATE TABLE triage_jobs (
            id           BIGSERIAL PRIMARY KEY,
            exam_key     TEXT NOT NULL,
            model_sha256 TEXT NOT NULL CHECK (length(model_sha256) = 64),
            status       TEXT NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'running', 'done', 'failed')),
            priority     INTEGER NOT NULL DEFAULT 0,
            enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            claimed_by   TEXT,
            claim_token  UUID,                 -- new per claim: a re-claimed job's old token is void
            claimed_at   TIMESTAMPTZ,
            lease_until  TIMESTAMPTZ,
            attempts     INTEGER NOT NULL DEFAULT 0,
            finished_at  TIMESTAMPTZ,
            reason       TEXT,
            UNIQUE (exam_key, model_sha256)
        )
        """,
        "CREATE INDEX triage_jobs_next ON triage_jobs (status, model_sha256, priority DESC, enqueued_at, id)",
        """
        CREATE TABLE triage_results (
            exam_key     TEXT NOT NULL,
            model_sha256 TEXT NOT NULL,
            job_id       BIGINT NOT NULL REFERENCES triage_jobs (id),
            worker_id    TEXT NOT NULL,
            result       JSONB NOT NULL,
            created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (exam_key, model_sha256)
        )
        """,
        """
        CREATE TRIGGER triage_results_no_update BEFORE UPDATE OR DELETE ON triage_results
        FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()
        """,
        "GRANT SELECT, INSERT, UPDATE ON triage_jobs TO mt_worker",
        "GRANT USAGE ON SEQUENCE triage_jobs_id_seq TO mt_worker",
        "GRANT SELECT, INSERT ON triage_results TO mt_worker",
        "GRANT SELECT ON triage_jobs, triage_results TO mt_workstation",
    ),
)

_V3_ARBITRATE = PgMigration(
    name="corrections: the action 'arbitrate' (double reading's consensus) is accepted",
    steps=(
        "ALTER TABLE correction_events DROP CONSTRAINT correction_events_action_check",
        "ALTER TABLE correction_events ADD CONSTRAINT correction_events_action_check CHECK (action IN ("
        + ", ".join(f"'{a}'" for a in _V3_ACTIONS) + "))",
    ),
)

#: version 4's check: the site row's content, with the source's previous hash, hashes to the
#: source hash (the same canonical JSON as version 1's chain, over the stored row ``r``)
_SOURCE_HASH_SQL = _canonical_sql().replace("NEW.", "r.").replace("r.prev_hash", "NEW.source_prev_hash")

_V4_MIGRATED = PgMigration(
    name="corrections: provenance of the events migrated from a standalone archive (site migrate)",
    steps=(
        """
        CREATE TABLE migrated_events (
            event_id         TEXT PRIMARY KEY,    -- in correction_events (the insert trigger checks)
            source_archive   TEXT NOT NULL,       -- the standalone archive's id (audit_anchor)
            source_seq       BIGINT NOT NULL,
            source_prev_hash TEXT NOT NULL,
            source_hash      TEXT NOT NULL,
            source_mac       TEXT NOT NULL DEFAULT '',  -- under the standalone's own key
            migrated_by      TEXT NOT NULL,
            migrated_at      TIMESTAMPTZ NOT NULL,
            UNIQUE (source_archive, source_seq)
        )
        """,
        f"""
        CREATE FUNCTION mt_check_provenance() RETURNS trigger LANGUAGE plpgsql AS $fn$
        DECLARE
            r correction_events%ROWTYPE;
        BEGIN
            SELECT * INTO r FROM correction_events WHERE event_id = NEW.event_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'event % is not in the site chain', NEW.event_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF encode(sha256(convert_to({_SOURCE_HASH_SQL}, 'UTF8')), 'hex') <> NEW.source_hash THEN
                RAISE EXCEPTION 'event %: the stored content does not hash to its source hash %',
                    NEW.event_id, NEW.source_hash USING ERRCODE = 'check_violation';
            END IF;
            NEW.migrated_by := session_user;
            NEW.migrated_at := clock_timestamp();
            RETURN NEW;
        END
        $fn$
        """,
        """
        CREATE TRIGGER migrated_events_check BEFORE INSERT ON migrated_events
        FOR EACH ROW EXECUTE FUNCTION mt_check_provenance()
        """,
        """
        CREATE TRIGGER migrated_events_no_update BEFORE UPDATE OR DELETE ON migrated_events
        FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER migrated_events_no_truncate BEFORE TRUNCATE ON migrated_events
        FOR EACH STATEMENT EXECUTE FUNCTION mt_refuse_change()
        """,
        "GRANT SELECT, INSERT (event_id, source_archive, source_seq, source_prev_hash, source_hash, source_mac) "
        "ON migrated_events TO mt_workstation",
        "GRANT SELECT ON migrated_events TO mt_worker",
    ),
)



_V5_READING_LOCKS = PgMigration(
    name="double reading: the soft locks (append-only) and the index of the readers' state events",
    steps=(
        """
        CREATE TABLE reading_locks (
            id          BIGSERIAL PRIMARY KEY,
            exam_key    TEXT NOT NULL,
            reader      TEXT NOT NULL,
            workstation TEXT NOT NULL,
            action      TEXT NOT NULL CHECK (action IN ('take', 'release')),
            at          TEXT NOT NULL,          -- UTC ISO 8601 (the server's clock unless given)
            expires_at  TEXT NOT NULL,          -- UTC ISO 8601 end of the lease; '' for a release
            received_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        "CREATE INDEX reading_locks_exam ON reading_locks (exam_key, id)",
        """
        CREATE TRIGGER reading_locks_no_update BEFORE UPDATE OR DELETE ON reading_locks
        FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()
        """,
        """
        CREATE TRIGGER reading_locks_no_truncate BEFORE TRUNCATE ON reading_locks
        FOR EACH STATEMENT EXECUTE FUNCTION mt_refuse_change()
        """,
        "CREATE INDEX correction_events_state ON correction_events (exam_key, seq) "
        "WHERE action IN ('sign', 'amend', 'arbitrate')",
        "GRANT SELECT, INSERT (exam_key, reader, workstation, action, at, expires_at) ON reading_locks "
        "TO mt_workstation",
        "GRANT USAGE ON SEQUENCE reading_locks_id_seq TO mt_workstation",
        "GRANT SELECT ON reading_locks TO mt_worker",
    ),
)

def _append_only(table: str) -> tuple[str, str]:
    """The triggers that refuse UPDATE, DELETE and TRUNCATE of ``table`` (also for the owner)."""
    return (f"CREATE TRIGGER {table}_no_update BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION mt_refuse_change()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION mt_refuse_change()")


_V6_SITE_MODELS = PgMigration(
    name="models: the site registry (published packages, promotions) and superseded triage jobs",
    steps=(
        """
        CREATE TABLE site_model_packages (
            weights_sha256 TEXT PRIMARY KEY CHECK (weights_sha256 ~ '^[0-9a-f]{64}$'),
            version        TEXT NOT NULL CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$'),  -- a folder name
            archive        BYTEA NOT NULL,        -- the package folder as an uncompressed tar
            archive_sha256 TEXT NOT NULL CHECK (archive_sha256 ~ '^[0-9a-f]{64}$'),
            metadata       JSONB NOT NULL,        -- the package's metadata.json (verified before)
            published_by   TEXT NOT NULL,
            published_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        """
        CREATE TABLE site_model_events (
            id             BIGSERIAL PRIMARY KEY,
            weights_sha256 TEXT NOT NULL REFERENCES site_model_packages (weights_sha256),
            action         TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
            who            TEXT NOT NULL,
            reason         TEXT NOT NULL,
            report         JSONB,                 -- the gate report behind a promotion
            at             TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        *_append_only("site_model_packages"),
        *_append_only("site_model_events"),
        "ALTER TABLE triage_jobs DROP CONSTRAINT triage_jobs_status_check",
        "ALTER TABLE triage_jobs ADD CONSTRAINT triage_jobs_status_check "
        "CHECK (status IN ('pending', 'running', 'done', 'failed', 'superseded'))",
        "GRANT SELECT ON site_model_packages, site_model_events TO mt_workstation, mt_worker",
    ),
)

#: Hours a reader's sign-in lasts (a shift); events made within it are accepted up to
#: a week later (a workstation's buffer while the server was away).
SIGN_IN_HOURS = 12

_V7_ACCOUNTS = PgMigration(
    name="accounts: site readers (database roles), their sign-ins, and events checked against them",
    steps=(
        """
        CREATE TABLE site_readers (
            reader   TEXT PRIMARY KEY CHECK (length(reader) BETWEEN 1 AND 64),
            role     TEXT NOT NULL UNIQUE,
            added_by TEXT NOT NULL,
            added_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        """
        CREATE TABLE site_reader_events (
            id     BIGSERIAL PRIMARY KEY,
            reader TEXT NOT NULL REFERENCES site_readers (reader),
            action TEXT NOT NULL CHECK (action IN ('disable', 'enable')),
            who    TEXT NOT NULL,
            at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        """
        CREATE TABLE site_settings (
            id    BIGSERIAL PRIMARY KEY,
            name  TEXT NOT NULL CHECK (name IN ('accounts_required')),
            value TEXT NOT NULL,
            who   TEXT NOT NULL,
            at    TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )
        """,
        *_append_only("site_readers"),
        *_append_only("site_reader_events"),
        *_append_only("site_settings"),
        """
        CREATE TABLE mt_private.reader_sessions (
            token_sha256 TEXT PRIMARY KEY,
            reader       TEXT NOT NULL REFERENCES site_readers (reader),
            workstation  TEXT NOT NULL,
            started_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            expires_at   TIMESTAMPTZ NOT NULL
        )
        """,
        """
        CREATE FUNCTION mt_reader_active(r TEXT) RETURNS BOOLEAN LANGUAGE sql STABLE AS $fn$
            SELECT EXISTS (SELECT 1 FROM site_readers WHERE reader = r)
               AND COALESCE((SELECT action FROM site_reader_events WHERE reader = r ORDER BY id DESC LIMIT 1),
                            'enable') = 'enable'
        $fn$
        """,
        """
        CREATE FUNCTION mt_accounts_required() RETURNS BOOLEAN LANGUAGE sql STABLE AS $fn$
            SELECT COALESCE((SELECT value FROM site_settings WHERE name = 'accounts_required'
                             ORDER BY id DESC LIMIT 1), 'false') = 'true'
        $fn$
        """,
        f"""
        CREATE FUNCTION mt_reader_sign_in(ws TEXT) RETURNS TEXT LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = public, pg_temp AS $fn$
        DECLARE
            r TEXT;
            token TEXT;
        BEGIN
            SELECT reader INTO r FROM site_readers WHERE role = session_user;
            IF NOT FOUND OR NOT mt_reader_active(r) THEN
                RAISE EXCEPTION 'role % is not an active reader of this site', session_user
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            token := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
            INSERT INTO mt_private.reader_sessions (token_sha256, reader, workstation, expires_at)
            VALUES (encode(sha256(convert_to(token, 'UTF8')), 'hex'), r, left(ws, 200),
                    clock_timestamp() + make_interval(hours => {SIGN_IN_HOURS}));
            RETURN r || ' ' || token;
        END
        $fn$
        """,
        "REVOKE ALL ON FUNCTION mt_reader_sign_in(TEXT) FROM PUBLIC",
        "GRANT EXECUTE ON FUNCTION mt_reader_sign_in(TEXT) TO PUBLIC",  # it checks session_user itself
        "ALTER TABLE correction_events ADD COLUMN session_token TEXT, ADD COLUMN account TEXT",
        """
        CREATE FUNCTION mt_account_event() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = public, pg_temp AS $fn$
        DECLARE
            s mt_private.reader_sessions%ROWTYPE;
            token TEXT := NEW.session_token;
        BEGIN
            NEW.session_token := NULL;  -- never stored
            NEW.account := NULL;
            IF EXISTS (SELECT 1 FROM correction_events WHERE event_id = NEW.event_id) THEN
                RETURN NEW;  -- a retry: the chain trigger skips or refuses it
            END IF;
            IF token IS NULL THEN
                IF mt_accounts_required() THEN
                    RAISE EXCEPTION 'event % by %: this site requires readers to sign in with a site account',
                        NEW.event_id, NEW.reader USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END IF;
            SELECT * INTO s FROM mt_private.reader_sessions
            WHERE token_sha256 = encode(sha256(convert_to(token, 'UTF8')), 'hex');
            IF NOT FOUND THEN
                RAISE EXCEPTION 'event % by %: unknown site sign-in', NEW.event_id, NEW.reader
                    USING ERRCODE = 'check_violation';
            END IF;
            IF s.reader <> NEW.reader THEN
                RAISE EXCEPTION 'event %: made as % under the site sign-in of %', NEW.event_id, NEW.reader, s.reader
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NOT mt_reader_active(s.reader) THEN
                RAISE EXCEPTION 'event % by %: the site account is disabled', NEW.event_id, NEW.reader
                    USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.at::timestamptz < s.started_at - interval '5 minutes' THEN
                RAISE EXCEPTION 'event % by %: dated before its site sign-in (%)', NEW.event_id, NEW.reader,
                    s.started_at USING ERRCODE = 'check_violation';
            END IF;
            IF NEW.at::timestamptz > s.expires_at + interval '5 minutes'
               OR clock_timestamp() > s.expires_at + interval '7 days' THEN
                RAISE EXCEPTION 'event % by %: made or sent after the site sign-in expired (%)', NEW.event_id,
                    NEW.reader, s.expires_at USING ERRCODE = 'check_violation';
            END IF;
            NEW.account := s.reader;
            RETURN NEW;
        END
        $fn$
        """,
        "REVOKE ALL ON FUNCTION mt_account_event() FROM PUBLIC",
        # fires before correction_events_chain (BEFORE triggers run in name order)
        """
        CREATE TRIGGER correction_events_account BEFORE INSERT ON correction_events
        FOR EACH ROW EXECUTE FUNCTION mt_account_event()
        """,
        "GRANT INSERT (session_token) ON correction_events TO mt_workstation",
        "GRANT SELECT ON site_readers, site_reader_events, site_settings TO mt_workstation, mt_worker",
    ),
)

_V8_RETRIAGE = PgMigration(
    name="triage: a study that receives new images after its job is triaged again (image set, revision)",
    steps=(
        "ALTER TABLE triage_jobs ADD COLUMN images TEXT CHECK (images IS NULL OR images ~ '^[0-9a-f]{64}$')",
        "ALTER TABLE triage_jobs ADD COLUMN images_at TIMESTAMPTZ",  # when ``images`` was recorded
        # the image set recorded last for an exam, whichever model's job holds it
        """
        CREATE FUNCTION mt_newest_images(exam TEXT) RETURNS TEXT LANGUAGE sql STABLE AS $fn$
            SELECT images FROM triage_jobs WHERE exam_key = exam AND images IS NOT NULL
            ORDER BY images_at DESC NULLS LAST, id DESC LIMIT 1
        $fn$
        """,
        "ALTER TABLE triage_jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0)",
        "ALTER TABLE triage_results ADD COLUMN revision INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0)",
        "ALTER TABLE triage_results DROP CONSTRAINT triage_results_pkey",
        "ALTER TABLE triage_results ADD PRIMARY KEY (exam_key, model_sha256, revision)",
    ),
)

_V9_LOCK_ACCOUNTS = PgMigration(
    name="accounts: a soft lock is taken under its reader's site sign-in",
    steps=(
        "ALTER TABLE reading_locks ADD COLUMN session_token TEXT, ADD COLUMN account TEXT",
        """
        CREATE FUNCTION mt_account_lock() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = public, pg_temp AS $fn$
        DECLARE
            token TEXT := NEW.session_token;
            what TEXT := format('soft lock on %s by %s', NEW.exam_key, NEW.reader);
            holder TEXT;
            until TIMESTAMPTZ;
        BEGIN
            NEW.session_token := NULL;  -- never stored
            NEW.account := NULL;
            IF token IS NULL AND mt_accounts_required() THEN
                RAISE EXCEPTION '%: this site requires readers to sign in with a site account', what
                    USING ERRCODE = 'check_violation';
            ELSIF token IS NULL THEN
                RETURN NEW;
            END IF;
            SELECT reader, expires_at INTO holder, until FROM mt_private.reader_sessions
            WHERE token_sha256 = encode(sha256(convert_to(token, 'UTF8')), 'hex');
            CASE
                WHEN holder IS NULL THEN
                    RAISE EXCEPTION '%: unknown site sign-in', what USING ERRCODE = 'check_violation';
                WHEN holder <> NEW.reader THEN
                    RAISE EXCEPTION 'soft lock on %: taken as % under the site sign-in of %', NEW.exam_key,
                        NEW.reader, holder USING ERRCODE = 'check_violation';
                WHEN NOT mt_reader_active(holder) THEN
                    RAISE EXCEPTION '%: the site account is disabled', what USING ERRCODE = 'check_violation';
                WHEN clock_timestamp() > until THEN
                    RAISE EXCEPTION '%: the site sign-in expired (%)', what, until USING ERRCODE = 'check_violation';
                ELSE
                    NEW.account := holder;
            END CASE;
            RETURN NEW;
        END
        $fn$
        """,
        "REVOKE ALL ON FUNCTION mt_account_lock() FROM PUBLIC",
        """
        CREATE TRIGGER reading_locks_account BEFORE INSERT ON reading_locks
        FOR EACH ROW EXECUTE FUNCTION mt_account_lock()
        """,
        "GRANT INSERT (session_token) ON reading_locks TO mt_workstation",
    ),
)

#: The message of an event's account seal (version 10): the site, the event's chain hash
#: and its account (``=name``, or ``-`` for none), so that neither can be changed alone.
ACCOUNT_SEAL = "'mammotriage.account/1|' || site || '|' || NEW.hash || '|' || COALESCE('=' || NEW.account, '-')"
#: The message of the first sealed seq (version 10), in ``account_seal_from``.
ACCOUNT_SEAL_FROM = "'mammotriage.account-seal-from/1|' || {site} || '|' || ({seq})::text"

_V10_ACCOUNT_SEAL = PgMigration(
    name="accounts: each new event's account sealed with its chain hash under the audit key",
    steps=(
        "ALTER TABLE correction_events ADD COLUMN account_mac TEXT",
        """
        CREATE TABLE account_seal_from (
            id  INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            mac TEXT NOT NULL
        )
        """,
        # where sealing starts, recorded now (the next seq), so a verify can tell a stripped
        # seal from an event stored before this version even if every seal was stripped
        f"""
        INSERT INTO account_seal_from (id, seq, mac)
        SELECT 1, h.last_seq + 1, {_mac_sql(ACCOUNT_SEAL_FROM.format(site="s.archive_id", seq="h.last_seq + 1"))}
        FROM audit_head h, mt_private.audit_key k, site_identity s
        """,
        *_append_only("account_seal_from"),
        f"""
        CREATE FUNCTION mt_seal_account() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = public, pg_temp AS $fn$
        DECLARE
            k mt_private.audit_key%ROWTYPE;
            site TEXT;
        BEGIN
            -- fires after correction_events_chain (names in order), under its lock: NEW.hash is set
            SELECT * INTO k FROM mt_private.audit_key;
            SELECT archive_id INTO site FROM site_identity;
            NEW.account_mac := {_mac_sql(ACCOUNT_SEAL)};
            RETURN NEW;
        END
        $fn$
        """,
        "REVOKE ALL ON FUNCTION mt_seal_account() FROM PUBLIC",
        """
        CREATE TRIGGER correction_events_chain_seal BEFORE INSERT ON correction_events
        FOR EACH ROW EXECUTE FUNCTION mt_seal_account()
        """,
        "GRANT SELECT ON account_seal_from TO mt_workstation, mt_worker",
    ),
)

#: Version 8's rule for a job that exists already when an exam is queued with an image
#: set (``INSERT ... SELECT ..., images`` appends it; ``SiteQueue.enqueue`` and the queue
#: moves of ``SiteModels``): another set than the job's queues a done, running or failed
#: job again under the next revision (a running claim is voided); a pending or superseded
#: job, or one that never recorded a set, only records it; the same set, or none, does
#: nothing. A job queued again gets ``enqueued_at = now()`` (the statement's transaction
#: start), which is how ``RETURNING enqueued_at = now()`` tells it from a set only recorded.
NEW_IMAGES_ON_CONFLICT = """
    ON CONFLICT (exam_key, model_sha256) DO UPDATE SET
        images = EXCLUDED.images, images_at = clock_timestamp(),
        status = CASE WHEN {again} THEN 'pending' ELSE triage_jobs.status END,
        revision = triage_jobs.revision + CASE WHEN {again} THEN 1 ELSE 0 END,
        priority = CASE WHEN {again} THEN GREATEST(triage_jobs.priority, EXCLUDED.priority)
                        ELSE triage_jobs.priority END,
        enqueued_at = CASE WHEN {again} THEN now() ELSE triage_jobs.enqueued_at END,
        attempts = CASE WHEN {again} THEN 0 ELSE triage_jobs.attempts END,
        claim_token = CASE WHEN {again} THEN NULL ELSE triage_jobs.claim_token END,
        lease_until = CASE WHEN {again} THEN NULL ELSE triage_jobs.lease_until END,
        finished_at = CASE WHEN {again} THEN NULL ELSE triage_jobs.finished_at END,
        reason = CASE WHEN {again} THEN 'the study received new images after it was ' || triage_jobs.status
                                        || ': queued again (revision ' || (triage_jobs.revision + 1) || ')'
                      ELSE triage_jobs.reason END
    WHERE EXCLUDED.images IS NOT NULL AND triage_jobs.images IS DISTINCT FROM EXCLUDED.images
""".format(again="(triage_jobs.images IS NOT NULL AND triage_jobs.status IN ('running', 'done', 'failed'))")

MIGRATIONS: list[PgMigration] = [_V1_CHAIN, _V2_SITE_QUEUE, _V3_ARBITRATE, _V4_MIGRATED, _V5_READING_LOCKS,
                                 _V6_SITE_MODELS, _V7_ACCOUNTS, _V8_RETRIAGE, _V9_LOCK_ACCOUNTS,
                                 _V10_ACCOUNT_SEAL]
SCHEMA_VERSION = len(MIGRATIONS)
#: The version that brought double reading's ``reading_locks`` (store.pg.double_reading).
READING_LOCKS_VERSION = MIGRATIONS.index(_V5_READING_LOCKS) + 1
#: The version that brought the site's model registry (store.pg.models).
SITE_MODELS_VERSION = MIGRATIONS.index(_V6_SITE_MODELS) + 1
#: The version that brought site accounts (store.pg.accounts).
ACCOUNTS_VERSION = MIGRATIONS.index(_V7_ACCOUNTS) + 1
#: The version that brought re-triage of studies with new images (triage.site_queue).
RETRIAGE_VERSION = MIGRATIONS.index(_V8_RETRIAGE) + 1
#: The version that checks soft locks against site sign-ins (store.pg.double_reading).
LOCK_ACCOUNTS_VERSION = MIGRATIONS.index(_V9_LOCK_ACCOUNTS) + 1
#: The version that seals each event's account with its hash (store.pg.events verify).
ACCOUNT_SEAL_VERSION = MIGRATIONS.index(_V10_ACCOUNT_SEAL) + 1


class SchemaVersionError(RuntimeError):
    """The site database was written by a newer Mammo Triage than this one."""


def schema_version(conn: Conn) -> int:
    row = conn.execute("SELECT to_regclass('public.mt_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT version FROM mt_schema").fetchone()
    return int(got[0]) if got else 0


def at_least(conn: Any, version: int) -> bool:
    """Whether the site database has reached schema ``version`` (any role; dict or tuple rows)."""
    row = conn.execute("SELECT max(version) AS v FROM mt_schema").fetchone()
    value = None if row is None else (row["v"] if isinstance(row, dict) else row[0])
    return value is not None and int(value) >= version


def migrate(conn: Conn, migrations: Sequence[PgMigration] | None = None) -> int:
    """Bring the database to the newest version; returns it. ``conn``: the owner, autocommit.

    Raises
    ------
    SchemaVersionError
        The database is newer than this code.
    """
    steps = list(MIGRATIONS if migrations is None else migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS mt_schema (version INTEGER NOT NULL)")
        if conn.execute("SELECT 1 FROM mt_schema").fetchone() is None:
            conn.execute("INSERT INTO mt_schema (version) VALUES (0)")
        conn.execute("GRANT SELECT ON mt_schema TO mt_workstation, mt_worker")
    current = schema_version(conn)
    if current > len(steps):
        raise SchemaVersionError(f"the site database is at schema version {current}; this Mammo Triage "
                                 f"knows up to {len(steps)}: upgrade Mammo Triage")
    while current < len(steps):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            current = schema_version(conn)
            if current >= len(steps):
                break
            for step in steps[current].steps:
                if callable(step):
                    step(conn)
                else:
                    conn.execute(step)
            conn.execute("UPDATE mt_schema SET version = %s", (current + 1,))
        current = schema_version(conn)
    return current
