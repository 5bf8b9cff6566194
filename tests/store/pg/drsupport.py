"""Double reading on either store, for tests parametrised over both backends.

:class:`DoubleStore` builds the same objects (one reader's log, soft locks, the site
view, a viewer session) on a real SQLite archive file or on a real PostgreSQL cluster
(``pgsupport.running_cluster``), and reads back what the store holds (the plain log)
and whether its chain verifies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mammotriage.store.double_reading import (
    DoubleReading,
    DoubleReadingLog,
    DoubleReadingPolicy,
    ReadingLocks,
)
from mammotriage.store.events import CorrectionLog, Event
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.viewer.double_reading import DoubleReadingSession

BACKENDS = ("sqlite", "postgres")
ON = DoubleReadingPolicy(enabled=True, discordance="recall", lease_s=600)


class DoubleStore:
    """One store (``kind``: sqlite or postgres) and the objects a test opens on it (closed by :meth:`close`)."""

    def __init__(self, kind: str, home: Path, cluster: PgCluster | None = None):
        self.kind = kind
        self.home = home
        self.archive = home / "archive.sqlite"
        self.cluster = cluster
        self.prefix = f"dr-{uuid.uuid4().hex[:8]}-"  # a shared cluster: every test its own exam keys
        self._stack = ExitStack()

    @property
    def dsn(self) -> str:
        assert self.cluster is not None
        return self.cluster.dsn("mt_workstation")

    def key(self, n: int | str) -> str:
        return f"{self.prefix}{n}"

    def _keep(self, obj: Any) -> Any:
        self._stack.callback(obj.close)
        return obj

    def log(self, reader: str, policy: DoubleReadingPolicy = ON, workstation: str | None = None) -> Any:
        if self.kind == "sqlite":
            return self._keep(DoubleReadingLog(self.archive, reader, policy, workstation or f"ws-{reader}"))
        from mammotriage.store.pg.double_reading import SiteDoubleReadingLog

        return self._keep(SiteDoubleReadingLog(self.dsn, reader, policy, workstation or f"ws-{reader}"))

    def locks(self, workstation: str, lease_s: int = 600) -> Any:
        if self.kind == "sqlite":
            return self._keep(ReadingLocks(self.archive, workstation, lease_s))
        from mammotriage.store.pg.double_reading import SiteReadingLocks

        return self._keep(SiteReadingLocks(self.dsn, workstation, lease_s))

    def site(self, policy: DoubleReadingPolicy = ON) -> Any:
        if self.kind == "sqlite":
            return self._keep(DoubleReading(self.archive, policy))
        from mammotriage.store.pg.double_reading import SiteDoubleReading

        return self._keep(SiteDoubleReading(self.dsn, policy))

    def session(self, reader: str, policy: DoubleReadingPolicy = ON) -> DoubleReadingSession:
        if self.kind == "sqlite":
            made = DoubleReadingSession(self.archive, self.home, reader, workstation=f"ws-{reader}", policy=policy)
        else:
            made = DoubleReadingSession.on_site(self.dsn, self.home, reader, workstation=f"ws-{reader}",
                                                policy=policy)
        return self._keep(made)

    def stored(self) -> list[Event]:
        """Every event the store holds (unblinded, this test's exams only)."""
        if self.kind == "sqlite":
            with CorrectionLog(self.archive) as plain:
                events = plain.events()
        else:
            from mammotriage.store.pg.events import SiteCorrectionLog

            with SiteCorrectionLog(self.dsn) as plain:
                events = plain.events()
        return [e for e in events if e.exam_key.startswith(self.prefix)]

    def verify(self) -> Any:
        """The store's chain check (the site's as its owner, so the MACs are checked too)."""
        if self.kind == "sqlite":
            with CorrectionLog(self.archive) as plain:
                return plain.verify()
        from mammotriage.store.pg.events import SiteCorrectionLog

        assert self.cluster is not None
        with SiteCorrectionLog(self.cluster.dsn("mt_admin")) as admin:
            report = admin.verify()
        assert report.macs_checked
        return report

    def close(self) -> None:
        self._stack.close()


def double_store(request: pytest.FixtureRequest, tmp_path: Path, cluster_fixture: str = "site_cluster"
                 ) -> Iterator[DoubleStore]:
    """The body of a ``store`` fixture parametrised over :data:`BACKENDS` (the cluster
    fixture is only asked for, and so only started, by the postgres case)."""
    kind = request.param
    cluster = request.getfixturevalue(cluster_fixture) if kind == "postgres" else None
    home = tmp_path / "home"
    ON.save(home)  # the data directory's setting: double reading on
    store = DoubleStore(kind, home, cluster)
    try:
        yield store
    finally:
        store.close()
