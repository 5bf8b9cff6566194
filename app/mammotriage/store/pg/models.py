"""The site's model registry on PostgreSQL: one active model for every worker and workstation.

Standalone, each workstation keeps its own registry (:mod:`mammotriage.model.registry`).
A site runs one model: the server's registry says which, and holds the packages, so a
promotion reaches every AI worker (and workstation) from the server, wherever they run.

Rules
-----
- ``site_model_packages``: a published package (its folder as a tar, the tar's sha256,
  its verified metadata), one row per weights sha256; ``site_model_events``: promote and
  rollback, who and why, and the gate report behind a promotion. Both are append-only
  (triggers, also for the owner) and written by the owner (``mt_admin``: the site
  server's ``mammotriage site models``) only; workstations and workers may read them.
- The active model is a fold over the events: ``promote`` pushes a version, ``rollback``
  returns to the one active before the last promotion (its event names that version).
- A promotion (or rollback) moves the queue in the same transaction: every pending job
  of another model is ``superseded`` and its exam queued for the new model (same
  priority); with ``retriage`` (default) every other exam the queue has seen is queued
  for the new model below new work (priority -1), so the worklist's scores all come from
  one model again. Exams with a job for the new model already keep it.
- Packaging and checking (tar, metadata, weights) are the caller's
  (:mod:`mammotriage.net.site_models`): this module stores and returns bytes whose
  sha256 it checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mammotriage.store.pg.events import PgConnected
from mammotriage.store.pg.schema import (
    MODELS_LOCK,
    NEW_IMAGES_ON_CONFLICT,
    SITE_MODELS_VERSION,
    at_least,
)

__all__ = ["RETRIAGE_PRIORITY", "SiteModelError", "SiteModelVersion", "SiteModels"]

#: Priority of the jobs a promotion queues for exams already triaged by another model
#: (new exams come first; :class:`~mammotriage.triage.site_queue.SiteQueue` claims by priority).
RETRIAGE_PRIORITY = -1
_SHA = re.compile(r"^[0-9a-f]{64}$")
#: A package version: it names a folder on every worker and workstation (no separators, no "..").
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def check_version(version: str) -> str:
    if not VERSION.match(version) or ".." in version:
        raise SiteModelError(f"model version {version!r} is not a plain version (letters, digits, '._+-')")
    return version


class SiteModelError(RuntimeError):
    """A site registry operation that is refused, with the reason."""


@dataclass(frozen=True)
class SiteModelVersion:
    weights_sha256: str
    version: str
    archive_sha256: str
    archive_bytes: int
    metadata: dict[str, Any]
    published_by: str
    published_at: str

    def label(self) -> str:
        return f"v{self.version} ({self.weights_sha256[:12]}...)"


_COLUMNS = ("weights_sha256, version, archive_sha256, octet_length(archive) AS archive_bytes, metadata, "
            "published_by, published_at::text AS published_at")


def _version(row: dict[str, Any]) -> SiteModelVersion:
    meta = row["metadata"]
    return SiteModelVersion(str(row["weights_sha256"]), str(row["version"]), str(row["archive_sha256"]),
                            int(row["archive_bytes"]), dict(meta) if isinstance(meta, dict) else {},
                            str(row["published_by"]), str(row["published_at"]))


class SiteModels(PgConnected):
    """Read the site registry (any role); publish, promote and roll back (the owner)."""

    def _check_schema(self) -> None:
        conn = self.conn
        if getattr(self, "_checked", None) is conn:
            return
        if not at_least(conn, SITE_MODELS_VERSION):
            raise SiteModelError(f"the site database predates schema version {SITE_MODELS_VERSION} (the site's "
                                 "model registry): `mammotriage site start` on the site server runs its migrations")
        self._checked = conn

    # ----------------------------------------------------------------- reading
    def get(self, weights_sha256: str) -> SiteModelVersion | None:
        self._check_schema()
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM site_model_packages WHERE weights_sha256 = %s",
                                (weights_sha256,)).fetchone()
        return _version(row) if row else None

    def versions(self) -> list[SiteModelVersion]:
        self._check_schema()
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM site_model_packages ORDER BY published_at, version")
        return [_version(r) for r in rows.fetchall()]

    def history(self) -> list[dict[str, Any]]:
        """Every promotion and rollback, oldest first (id, sha256, version, action, who, reason, at)."""
        self._check_schema()
        rows = self.conn.execute(
            "SELECT e.id, e.weights_sha256, p.version, e.action, e.who, e.reason, e.at::text AS at, "
            "e.report IS NOT NULL AS has_report FROM site_model_events e "
            "JOIN site_model_packages p USING (weights_sha256) ORDER BY e.id").fetchall()
        return [dict(r) for r in rows]

    def _stack(self) -> list[str]:
        stack: list[str] = []
        for e in self.conn.execute("SELECT weights_sha256, action FROM site_model_events ORDER BY id").fetchall():
            if e["action"] == "promote":
                stack.append(str(e["weights_sha256"]))
            elif stack:
                stack.pop()
        return stack

    def active_sha256(self) -> str | None:
        """The active model's weights sha256 (None: the site has not promoted one); one query."""
        self._check_schema()
        stack = self._stack()
        return stack[-1] if stack else None

    def active(self) -> SiteModelVersion | None:
        sha = self.active_sha256()
        return None if sha is None else self.get(sha)

    def archive(self, weights_sha256: str) -> bytes:
        """The package's tar, checked against its recorded sha256."""
        self._check_schema()
        row = self.conn.execute("SELECT archive, archive_sha256 FROM site_model_packages WHERE weights_sha256 = %s",
                                (weights_sha256,)).fetchone()
        if row is None:
            raise SiteModelError(f"model {weights_sha256[:12]}... is not published on the site")
        data = bytes(row["archive"])
        if hashlib.sha256(data).hexdigest() != row["archive_sha256"]:
            raise SiteModelError(f"the site's copy of model {weights_sha256[:12]}... does not match its recorded "
                                 "sha256: refusing it")
        return data

    def promoting_report(self, weights_sha256: str) -> dict[str, Any] | None:
        """The gate report of the last promotion of this model (None: promoted without one)."""
        self._check_schema()
        row = self.conn.execute(
            "SELECT report FROM site_model_events WHERE weights_sha256 = %s AND action = 'promote' "
            "AND report IS NOT NULL ORDER BY id DESC LIMIT 1", (weights_sha256,)).fetchone()
        report = row["report"] if row else None
        return report if isinstance(report, dict) else None

    def operating_points(self, weights_sha256: str) -> dict[str, Any]:
        """Operating points recalibrated by the gate report of the last promotion of this model."""
        points = (self.promoting_report(weights_sha256) or {}).get("operating_points")
        return dict(points) if isinstance(points, dict) else {}

    # ----------------------------------------------------------------- the owner
    def publish(self, weights_sha256: str, version: str, archive: bytes, metadata: dict[str, Any],
                who: str) -> bool:
        """Store a package (True when new; the same weights published again change nothing)."""
        self._check_schema()
        if not _SHA.match(weights_sha256):
            raise SiteModelError(f"not a weights sha256: {weights_sha256!r}")
        check_version(version)
        if str(metadata.get("weights_sha256")) != weights_sha256 or str(metadata.get("version")) != version:
            raise SiteModelError("the metadata names other weights or another version than the package")
        known = self.get(weights_sha256)
        if known is not None and known.version != version:
            raise SiteModelError(f"these weights are published as v{known.version} already, not v{version}")
        with self.conn.transaction():
            cur = self.conn.execute(
                "INSERT INTO site_model_packages (weights_sha256, version, archive, archive_sha256, metadata, "
                "published_by) VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (weights_sha256) DO NOTHING",
                (weights_sha256, version, archive, hashlib.sha256(archive).hexdigest(),
                 json.dumps(metadata, sort_keys=True, allow_nan=False), who))
        return cur.rowcount == 1

    def promote(self, weights_sha256: str, who: str, reason: str, report: dict[str, Any] | None = None, *,
                retriage: bool = True, expected_active: str | bool | None = False) -> dict[str, int]:
        """Make a published model active and move the queue to it (one transaction).

        Returns the queue's changes: ``superseded`` (pending jobs of other models),
        ``queued`` (their exams, now queued for this model), ``retriage`` (other exams
        queued below new work). ``expected_active`` (a sha256, or None for "no model
        yet"): refuse when the active model is another one by the time the promotion
        holds the lock (the gate report was checked against that one).
        """
        self._check_schema()
        if not who.strip() or not reason.strip():
            raise SiteModelError("a promotion needs who and why")
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MODELS_LOCK,))
            if self.get(weights_sha256) is None:
                raise SiteModelError(f"model {weights_sha256[:12]}... is not published on the site")
            stack = self._stack()
            if expected_active is not False and (stack[-1] if stack else None) != expected_active:
                raise SiteModelError("the site's active model changed while this promotion was checked: "
                                     "validate against the new one")
            if stack and stack[-1] == weights_sha256:
                raise SiteModelError(f"{self._label(weights_sha256)} is already the site's active model")
            self.conn.execute(
                "INSERT INTO site_model_events (weights_sha256, action, who, reason, report) "
                "VALUES (%s, 'promote', %s, %s, %s::jsonb)",
                (weights_sha256, who, reason, None if report is None else json.dumps(report, allow_nan=False)))
            return self._move_queue(weights_sha256, retriage)

    def rollback(self, who: str, reason: str, *, retriage: bool = True) -> tuple[SiteModelVersion, dict[str, int]]:
        """Return to the model active before the last promotion; the queue moves to it."""
        self._check_schema()
        if not who.strip() or not reason.strip():
            raise SiteModelError("a rollback needs who and why")
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MODELS_LOCK,))
            stack = self._stack()
            if len(stack) < 2:
                raise SiteModelError("there is no earlier site model to return to")
            back = stack[-2]
            self.conn.execute("INSERT INTO site_model_events (weights_sha256, action, who, reason) "
                              "VALUES (%s, 'rollback', %s, %s)", (back, who, reason))
            moved = self._move_queue(back, retriage)
            version = self.get(back)
        assert version is not None
        return version, moved

    def _label(self, sha: str) -> str:
        v = self.get(sha)
        return v.label() if v else f"{sha[:12]}..."

    def move_pending(self, sha: str) -> dict[str, int]:
        """Pending jobs of other models are superseded, their exams queued for ``sha`` (a
        job of ``sha`` that an earlier promotion superseded is pending again), if ``sha``
        is still the active model under the registry's lock (a worker following the site
        runs this too, for jobs a watcher queued for the old model while the promotion was
        on its way; a stale call does nothing). One statement: a job committed meanwhile
        is either moved with its exam or left for the next call. Needs the queue's rights."""
        label = self._label(sha)
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MODELS_LOCK,))
            stack = self._stack()
            if not stack or stack[-1] != sha:
                return {"superseded": 0, "queued": 0}
            row = self.conn.execute(
                """
                WITH sup AS (
                    UPDATE triage_jobs SET status = 'superseded', finished_at = clock_timestamp(), reason = %(why)s
                    WHERE status = 'pending' AND model_sha256 <> %(sha)s
                    RETURNING exam_key, priority),
                rev AS (
                    UPDATE triage_jobs SET status = 'pending', reason = NULL, finished_at = NULL,
                           images = COALESCE(mt_newest_images(exam_key), images), images_at = clock_timestamp()
                    WHERE model_sha256 = %(sha)s AND status = 'superseded' AND exam_key IN (SELECT exam_key FROM sup)
                    RETURNING exam_key),
                ins AS (
                    INSERT INTO triage_jobs (exam_key, model_sha256, priority, images, images_at)
                    SELECT exam_key, %(sha)s, max(priority), mt_newest_images(exam_key), clock_timestamp() FROM sup
                    WHERE exam_key NOT IN (SELECT exam_key FROM triage_jobs
                                           WHERE model_sha256 = %(sha)s AND status = 'superseded')
                    GROUP BY exam_key
                    """ + NEW_IMAGES_ON_CONFLICT + """
                    RETURNING exam_key)
                SELECT (SELECT count(*) FROM sup) AS superseded,
                       (SELECT count(*) FROM rev) + (SELECT count(*) FROM ins) AS queued
                """, {"sha": sha, "why": f"the site runs {label}: the exam is queued for it"}).fetchone()
        assert row is not None
        return {"superseded": int(row["superseded"]), "queued": int(row["queued"])}

    def _move_queue(self, sha: str, retriage: bool) -> dict[str, int]:
        moved = self.move_pending(sha)
        again = 0
        if retriage:  # every exam this model has not triaged, below new work
            again = self.conn.execute(
                "UPDATE triage_jobs SET status = 'pending', reason = NULL, finished_at = NULL, priority = %s, "
                "images = COALESCE(mt_newest_images(exam_key), images), images_at = clock_timestamp() "
                "WHERE model_sha256 = %s AND status = 'superseded'", (RETRIAGE_PRIORITY, sha)).rowcount
            again += self.conn.execute(
                "INSERT INTO triage_jobs (exam_key, model_sha256, priority, images, images_at) "
                "SELECT exam_key, %s, %s, mt_newest_images(exam_key), clock_timestamp() FROM triage_jobs "
                "WHERE model_sha256 <> %s GROUP BY exam_key" + NEW_IMAGES_ON_CONFLICT,
                (sha, RETRIAGE_PRIORITY, sha)).rowcount
        return {**moved, "retriage": int(again)}
