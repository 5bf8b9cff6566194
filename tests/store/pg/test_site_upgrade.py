"""A site made by an older version: `site start` brings its schema up to date, and the
roles other machines use get their session limits (a real PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest
from pgsupport import running_cluster

from mammotriage.store.pg import schema
from mammotriage.store.pg.cluster import ROLE_SETTINGS, PgError


@pytest.fixture(scope="module")
def cluster():
    with running_cluster() as c:
        yield c


def test_a_site_database_of_an_older_version_is_brought_up_to_date(cluster) -> None:
    """Before, the schema was migrated only when the site was made: a site made by an
    older version stayed at its version (`site migrate` refused it for lacking version 4)."""
    from psycopg import sql

    from mammotriage.store.pg.cluster import DATABASE, SUPERUSER

    with psycopg.connect(cluster.dsn(SUPERUSER, database="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
    cluster._create_database()
    with psycopg.connect(cluster.dsn("mt_admin"), autocommit=True) as conn:  # what an older version made
        assert schema.migrate(conn, schema.MIGRATIONS[:-1]) == schema.SCHEMA_VERSION - 1
    assert cluster.upgrade() == (schema.SCHEMA_VERSION - 1, schema.SCHEMA_VERSION)
    with psycopg.connect(cluster.dsn("mt_admin"), autocommit=True) as conn:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION


def test_upgrade_applies_pending_migrations_and_role_settings(cluster) -> None:
    with psycopg.connect(cluster.dsn("mt_admin"), autocommit=True) as conn:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    assert cluster.upgrade() == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)  # nothing pending: nothing done
    for role in ROLE_SETTINGS:
        with psycopg.connect(cluster.dsn(role)) as conn:
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "1min"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5min"
    with psycopg.connect(cluster.dsn("mt_admin")) as conn:  # the owner (migrations, backups): no limit
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "0"


def test_a_database_newer_than_the_code_is_refused_by_name(cluster) -> None:
    with psycopg.connect(cluster.dsn("mt_admin"), autocommit=True) as conn:
        conn.execute("UPDATE mt_schema SET version = %s", (schema.SCHEMA_VERSION + 1,))
    try:
        with pytest.raises(PgError, match="upgrade Mammo Triage"):
            cluster.upgrade()
    finally:
        with psycopg.connect(cluster.dsn("mt_admin"), autocommit=True) as conn:
            conn.execute("UPDATE mt_schema SET version = %s", (schema.SCHEMA_VERSION,))
