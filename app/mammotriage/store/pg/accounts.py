"""Site accounts: a reader signs in with their own database role, and the server checks
that every event they send is theirs.

Standalone, "sign in as another reader" is a name typed into a dialog. On a site that
is not enough (double reading counts two distinct readers), so:

- Each reader has a login role of their own (:func:`reader_role` of the name; a member
  of the group ``mt_reader``, which may connect to the site database and call one
  function). ``mammotriage site accounts add DIR NAME`` creates it (the superuser's
  work) and records the reader in ``site_readers``; ``disable`` / ``enable`` append to
  ``site_reader_events`` and lock or unlock the role.
- Signing in (:func:`sign_in`) is a connection as that role with the reader's password
  (PostgreSQL checks it: scram-sha-256), then ``mt_reader_sign_in``, which returns a
  random token valid for :data:`~mammotriage.store.pg.schema.SIGN_IN_HOURS` hours (the
  server keeps only its sha256). The workstation keeps the token with the reader's
  events (``session_token``), and its usual connection (``mt_workstation``) sends them.
- The server's trigger refuses an event whose token is unknown, belongs to another
  reader, was made after the sign-in expired or is sent more than a week later, or whose
  reader's account is disabled; it records ``account`` (the signed-in reader) and never
  stores the token. With ``site accounts require DIR on``, an event without a token is
  refused too.
- The workstation knows when a sign-in lapses (:class:`SignIns`): from then on a
  reader's change is refused on the spot ("not recorded: ... sign in again"), never
  kept to be refused by the server later, where the reader would not see it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from mammotriage.store.events import CorrectionError
from mammotriage.store.pg.cluster import READER_GROUP, password_verifier
from mammotriage.store.pg.events import PgConnected, connect
from mammotriage.store.pg.schema import ACCOUNTS_VERSION, SIGN_IN_HOURS, at_least

__all__ = ["GROUP", "AccountError", "SignIn", "SignInExpired", "SignIns", "SiteAccounts", "reader_role", "sign_in"]

#: The group every reader's role belongs to (CONNECT on the site database).
GROUP = READER_GROUP


class AccountError(RuntimeError):
    """A site account operation that is refused, or a sign-in that failed, with the reason."""


def reader_role(reader: str) -> str:
    """The login role of a reader: derived from the name, so a workstation needs no lookup."""
    name = reader.strip()
    if not 1 <= len(name) <= 64:
        raise AccountError(f"a reader's name has 1 to 64 characters (is {reader!r})")
    return "mtr_" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class SignIn:
    reader: str
    token: str
    #: when the server stops taking the reader's events, on this workstation's clock
    #: (epoch seconds): the moment the sign-in was asked for plus ``SIGN_IN_HOURS``, so
    #: never later than the server's own end (it tolerates 5 minutes of clock skew)
    expires_at: float = float("inf")


class SignInExpired(CorrectionError):
    """A reader's site sign-in has lapsed: their changes are refused until they sign in again."""


class SignIns(dict[str, str]):
    """reader -> the site sign-in token sent with their events and soft locks, and when
    each sign-in lapses. A token set as a plain item never lapses here (the server
    still checks it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self._ends: dict[str, float] = {}

    def put(self, got: SignIn) -> None:
        self[got.reader] = got.token
        self._ends[got.reader] = got.expires_at

    def __setitem__(self, reader: str, token: str) -> None:
        super().__setitem__(reader, token)
        self._ends.pop(reader, None)

    def __delitem__(self, reader: str) -> None:
        super().__delitem__(reader)
        self._ends.pop(reader, None)

    def pop(self, reader: str, *default: Any) -> Any:
        self._ends.pop(reader, None)
        return super().pop(reader, *default)

    # Every other way in or out of the dict goes through the two above, so a token set
    # anew never keeps the end of the sign-in it replaces, and none outlives its token.
    def update(self, *args: Any, **kw: str) -> None:
        for reader, token in dict(*args, **kw).items():
            self[reader] = token

    def __ior__(self, other: Any) -> SignIns:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, reader: str, token: str | None = None) -> str | None:  # type: ignore[override]
        if reader not in self:
            if token is None:
                raise TypeError("a sign-in needs a token")
            self[reader] = token
        return self[reader]

    def clear(self) -> None:
        super().clear()
        self._ends.clear()

    def popitem(self) -> tuple[str, str]:
        reader, token = super().popitem()
        self._ends.pop(reader, None)
        return reader, token

    def copy(self) -> SignIns:
        out = SignIns(self.clock)
        dict.update(out, self)
        out._ends = dict(self._ends)
        return out

    __copy__ = copy

    def ends_at(self, reader: str) -> float | None:
        """When ``reader``'s sign-in lapses (None: not signed in with an account here)."""
        return self._ends.get(reader) if reader in self else None

    def token_for(self, reader: str) -> str | None:
        """The token to send with ``reader``'s change (None: signed in by name only).

        Raises
        ------
        SignInExpired
            The sign-in has lapsed: nothing may be recorded under it.
        """
        token = self.get(reader)
        end = self._ends.get(reader)
        if token is not None and end is not None and self.clock() >= end:
            raise SignInExpired(f"the site sign-in of {reader} ended at {time.strftime('%H:%M', time.localtime(end))} "
                                f"(a sign-in lasts {SIGN_IN_HOURS} hours): sign in again (Ctrl+Shift+R)")
        return token


def accounts_required(dsn: str) -> bool:
    """Whether the site refuses corrections made without a site sign-in (any role that reads it)."""
    try:
        with connect(dsn) as conn:
            row = conn.execute("SELECT mt_accounts_required() AS r").fetchone()
    except psycopg.errors.UndefinedFunction:  # a site database from before accounts
        return False
    return bool(row and row["r"])


def sign_in(dsn_as_reader: str, workstation: str) -> SignIn:
    """Sign in: ``dsn_as_reader`` connects as the reader's role with their password."""
    asked = time.time()
    try:
        with connect(dsn_as_reader) as conn:
            row = conn.execute("SELECT mt_reader_sign_in(%s) AS s", (workstation,)).fetchone()
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "password authentication failed" in text:
            raise AccountError("wrong name or password") from exc
        if "not permitted to log in" in text:
            raise AccountError("this site account is disabled") from exc
        raise
    except psycopg.errors.InsufficientPrivilege as exc:
        raise AccountError("this account is not an active reader of the site") from exc
    except psycopg.Error as exc:
        raise AccountError(f"the site refused the sign-in: {str(exc).strip().splitlines()[0]}") from exc
    if row is None:  # pragma: no cover - a function call returns a row
        raise AccountError("the site returned no sign-in")
    reader, _, token = str(row["s"]).rpartition(" ")  # the token has no space; a name may
    return SignIn(reader, token, asked + SIGN_IN_HOURS * 3600.0)


class SiteAccounts(PgConnected):
    """The accounts on the server: ``dsn`` is the owner (``mt_admin``), ``superuser`` the
    cluster's superuser (roles are the superuser's work)."""

    def __init__(self, dsn: str, superuser: str) -> None:
        super().__init__(dsn)
        self.superuser = superuser

    def _check(self) -> None:
        if not at_least(self.conn, ACCOUNTS_VERSION):
            raise AccountError(f"the site database predates schema version {ACCOUNTS_VERSION} (site accounts): "
                               "`mammotriage site start` runs its migrations")

    def _roles(self, *statements: sql.Composed) -> None:
        with psycopg.connect(self.superuser, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def add(self, reader: str, password: str, who: str, database: str) -> str:
        """Create the reader's role and record them; returns the role."""
        self._check()
        reader = reader.strip()
        role = reader_role(reader)
        if len(password) < 12:
            raise AccountError("a password has at least 12 characters")
        if self.conn.execute("SELECT 1 FROM site_readers WHERE reader = %s", (reader,)).fetchone():
            raise AccountError(f"{reader} has a site account already (site accounts password to change it)")
        with psycopg.connect(self.superuser, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (GROUP,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(GROUP)))
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(GROUP)))
                # to find mt_reader_sign_in (tables stay closed: no privilege on them)
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(GROUP)))
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(role), sql.Literal(password_verifier(conn, role, password)), sql.Identifier(GROUP)))
            else:  # left by an add that failed before its record: taken over
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password_verifier(conn, role, password))))
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), sql.Identifier(role)))
            conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = '30s'").format(
                sql.Identifier(role), sql.Identifier(database)))
        with self.conn.transaction():
            self.conn.execute("INSERT INTO site_readers (reader, role, added_by) VALUES (%s, %s, %s)",
                              (reader, role, who))
        return role

    def password(self, reader: str, password: str) -> None:
        self._check()
        if len(password) < 12:
            raise AccountError("a password has at least 12 characters")
        self._known(reader)
        role = reader_role(reader)
        with psycopg.connect(self.superuser, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password_verifier(conn, role, password))))

    def _known(self, reader: str) -> None:
        if not self.conn.execute("SELECT 1 FROM site_readers WHERE reader = %s", (reader,)).fetchone():
            raise AccountError(f"{reader} has no site account")

    def set_enabled(self, reader: str, enabled: bool, who: str) -> None:
        self._check()
        self._known(reader)
        self._roles(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(reader_role(reader)),
                                                        sql.SQL("LOGIN" if enabled else "NOLOGIN")))
        with self.conn.transaction():
            self.conn.execute("INSERT INTO site_reader_events (reader, action, who) VALUES (%s, %s, %s)",
                              (reader, "enable" if enabled else "disable", who))

    def require(self, required: bool, who: str) -> None:
        self._check()
        with self.conn.transaction():
            self.conn.execute("INSERT INTO site_settings (name, value, who) VALUES ('accounts_required', %s, %s)",
                              ("true" if required else "false", who))

    def listing(self) -> dict[str, Any]:
        self._check()
        rows = self.conn.execute(
            "SELECT reader, role, added_by, added_at::text AS added_at, mt_reader_active(reader) AS active "
            "FROM site_readers ORDER BY reader").fetchall()
        required = self.conn.execute("SELECT mt_accounts_required() AS r").fetchone()
        return {"required": bool(required["r"]) if required else False, "readers": [dict(r) for r in rows]}


def new_password() -> str:
    """A generated password for a new account (shown once)."""
    return secrets.token_urlsafe(15)
