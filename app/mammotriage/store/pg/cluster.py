"""A PostgreSQL cluster in one folder: create, start, stop, and connect to it.

``PgCluster(folder, port)`` keeps everything below ``folder``:

- ``data/``: the cluster (``initdb``), listening on TCP only (no Unix socket), on
  ``127.0.0.1`` unless a site gives ``listen`` and ``clients``; every connection
  authenticates with scram-sha-256 (``pg_hba.conf`` has no ``trust`` line). With
  ``tls`` (:class:`PgTls`, what ``site init`` gives) the server runs ``ssl = on`` with
  a copy of the site's certificate and key (``data/server.crt``, ``data/server.key``,
  0600), ``pg_hba.conf`` has only ``hostssl ... scram-sha-256`` lines (the superuser
  and ``mt_admin`` from 127.0.0.1 only) and rejects plain TCP, and :meth:`PgCluster.dsn`
  asks for ``sslmode=verify-full`` with the site CA;
- ``secrets/`` (mode 0700): one generated password per role, each in a 0600 file
  (``postgres.password`` for the superuser, ``mt_admin.password``, ...);
- ``postgres.log``: the server's log (``pg_ctl -l``).

:meth:`PgCluster.init` creates the cluster, the database :data:`DATABASE` and the roles
(:data:`ROLES`), and runs the site schema's migrations as ``mt_admin``. The
``mammotriage site init/start/stop/status`` commands are thin wrappers over
:meth:`init`, :meth:`start`, :meth:`stop` and :meth:`status`.

Binaries are found by :func:`find_bindir`: ``$MAMMOTRIAGE_PG_BINDIR``, then
``pg_config --bindir``, then the newest ``/usr/lib/postgresql/<version>/bin``, then
``initdb`` on ``PATH``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATABASE",
    "ENV_BINDIR",
    "ROLES",
    "ClusterStatus",
    "PgCluster",
    "PgError",
    "PgMissingError",
    "PgTls",
    "find_bindir",
    "password_verifier",
]

#: Environment variable naming the folder of initdb / pg_ctl (overrides the search).
ENV_BINDIR = "MAMMOTRIAGE_PG_BINDIR"
DATABASE = "mammotriage"
#: TCP settings of every connection (libpq): a server that vanished without closing the
#: connection (power cut, cable, a firewall dropping idle flows) is noticed within about a
#: minute by an idle connection (keepalive probes after 30 s idle, 3 x 10 s) and within
#: 30 s by one waiting for an answer (``tcp_user_timeout``), instead of the system's two
#: hours; the workstation then reconnects or buffers.
KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
             "tcp_user_timeout": 30000}
SUPERUSER = "postgres"
#: The site's roles: the owner, the reading workstations, the AI workers.
ROLES = ("mt_admin", "mt_workstation", "mt_worker")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_NEEDED = ("initdb", "pg_ctl", "postgres")
#: Roles that may connect from other hosts (the others: from 127.0.0.1 only).
REMOTE_ROLES = ("mt_workstation", "mt_worker")
#: The group of the readers' own roles (site accounts, store.pg.accounts).
READER_GROUP = "mt_reader"
#: session settings of the roles other machines use: a session left idle inside a
#: transaction (which could hold the chain's lock and stall every workstation's appends)
#: is ended by the server; a statement never runs longer than the limit
ROLE_SETTINGS: dict[str, dict[str, str]] = {
    role: {"idle_in_transaction_session_timeout": "60s", "statement_timeout": "300s"} for role in REMOTE_ROLES}


class PgError(RuntimeError):
    """A PostgreSQL tool failed; the message carries its output."""


class PgMissingError(PgError):
    """The PostgreSQL server binaries are not installed."""


def _has_tools(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _NEEDED)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises
    ------
    PgMissingError
        None was found; the message names the package to install.
    """
    tried: list[str] = []
    env = os.environ.get(ENV_BINDIR)
    if env:
        folder = Path(env).expanduser()
        if _has_tools(folder):
            return folder
        raise PgMissingError(f"${ENV_BINDIR}={env} does not hold {', '.join(_NEEDED)}")
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            tried.append("pg_config --bindir failed")
    if _DEBIAN_ROOT.is_dir():
        candidates += sorted(_DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if _has_tools(folder):
            return folder
        tried.append(str(folder))
    where = f" (looked in {', '.join(tried)})" if tried else ""
    raise PgMissingError(
        "the PostgreSQL server is not installed: initdb and pg_ctl were not found" + where +
        f"; install the Debian package postgresql (apt-get install postgresql) or set ${ENV_BINDIR}")


@dataclass(frozen=True)
class ClusterStatus:
    """What ``pg_ctl status`` says about a cluster folder."""

    initialised: bool
    running: bool
    pid: int | None
    port: int
    folder: str

    def to_json(self) -> dict[str, object]:
        return {"initialised": self.initialised, "running": self.running, "pid": self.pid,
                "port": self.port, "folder": self.folder}


@dataclass(frozen=True)
class PgTls:
    """The TLS files of a cluster: the server's certificate and key, the CA clients verify with.

    ``sslmode``: what this host's own connections ask for, ``verify-full`` when the
    certificate names the address they use (127.0.0.1), else ``verify-ca``.
    """

    cert: Path
    key: Path
    ca: Path
    sslmode: str = "verify-full"


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def password_verifier(conn: Any, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` for ``role`` (libpq's
    ``PQencryptPasswordConn``, computed on this side), for ``CREATE/ALTER ROLE ...
    PASSWORD``: the server stores it as given and never sees the password, so a failing
    statement (or ``log_statement``) cannot write the password into its log."""
    verifier = conn.pgconn.encrypt_password(password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256")
    text = bytes(verifier).decode("ascii")
    if not text.startswith("SCRAM-SHA-256$"):
        raise PgError(f"libpq did not give a SCRAM-SHA-256 verifier for {role}")
    return text


class PgCluster:
    """One PostgreSQL cluster under ``folder``, serving on ``port``.

    Parameters
    ----------
    folder
        Everything of the cluster lives below it (created by :meth:`init`).
    port
        TCP port the server listens on.
    listen
        ``listen_addresses`` (``127.0.0.1``: this machine only).
    clients
        Networks allowed by ``pg_hba.conf`` (CIDR), all with scram-sha-256.
    bindir
        Folder of the PostgreSQL binaries (default: :func:`find_bindir`).
    os_user
        The account the server runs as when this process is root (PostgreSQL refuses
        to run as root): default ``postgres``, which the Debian package creates. The
        folder is handed to it; otherwise the server runs as the calling user.
    tls
        The site's certificate, key and CA (:class:`PgTls`); None: plain TCP (as before TLS).
    """

    def __init__(self, folder: str | Path, port: int = 5432, *, listen: str = "127.0.0.1",
                 clients: Sequence[str] = ("127.0.0.1/32",), bindir: str | Path | None = None,
                 os_user: str | None = None, tls: PgTls | None = None):
        self.folder = Path(folder).absolute()
        self.tls = tls
        self.port = int(port)
        self.listen = listen
        self.clients = tuple(clients)
        self._bindir = Path(bindir) if bindir is not None else None
        self._os_user = os_user

    def server_account(self) -> tuple[int, int] | None:
        """(uid, gid) the tools run as, or None for the calling user (not root).

        Raises
        ------
        PgError
            This process is root and the account does not exist.
        """
        if os.name != "posix" or os.geteuid() != 0:
            return None
        import pwd

        name = self._os_user or SUPERUSER
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PgError(f"PostgreSQL refuses to run as root and there is no account {name!r} to run it as: "
                          "install the Debian package postgresql (it creates the account) or pass os_user") from None
        return entry.pw_uid, entry.pw_gid

    def _hand_over(self, account: tuple[int, int] | None) -> None:
        """Give the folder to the server's account; check it can reach the folder."""
        if account is None:
            return
        uid, gid = account
        for path in [self.folder, *self.folder.rglob("*")]:
            os.chown(path, uid, gid)
        for parent in self.folder.parents:
            st = parent.stat()
            if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
                raise PgError(f"the server's account (uid {uid}) cannot enter {parent} (mode "
                              f"{st.st_mode & 0o777:o}): put the cluster folder {self.folder} elsewhere")

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def secrets(self) -> Path:
        return self.folder / "secrets"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def host(self) -> str:
        """The address clients on this machine connect to."""
        first = self.listen.split(",")[0].strip()
        return "127.0.0.1" if first in ("", "*", "0.0.0.0") else first

    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    def _tool(self, name: str) -> str:
        return str(self.bindir() / name)

    def _run(self, args: list[str], what: str, timeout: float = 120,
             client: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the server's account, or a client tool (pg_dump) as ``client``."""
        kwargs = self._as_server() if client is None else {"env": self._client_env(client)}
        try:
            result = subprocess.run(args, **kwargs, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise PgError(f"{what} did not finish within {timeout:.0f} s (cluster {self.data})") from exc
        except OSError as exc:
            raise PgError(f"{what} could not run: {exc}") from exc
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-2000:]
            raise PgError(f"{what} failed (exit {result.returncode}, cluster {self.data}): {tail}")
        return result

    def _as_server(self) -> dict[str, Any]:
        """subprocess arguments that run a tool as the server's account, in the folder."""
        kwargs: dict[str, Any] = {"env": dict(os.environ, LC_ALL="C", TZ="UTC"),
                                  "cwd": str(self.folder) if self.folder.is_dir() else None}
        account = self.server_account()
        if account is not None:
            kwargs.update(user=account[0], group=account[1], extra_groups=[])
        return kwargs

    # ----------------------------------------------------------------- secrets
    def password_file(self, role: str) -> Path:
        return self.secrets / f"{role}.password"

    def password(self, role: str) -> str:
        path = self.password_file(role)
        try:
            return path.read_text(encoding="ascii").strip()
        except OSError as exc:
            raise PgError(f"cannot read the password of {role} ({path}): {exc}") from None

    def dsn(self, role: str = "mt_workstation", *, database: str = DATABASE, connect_timeout: int = 5) -> str:
        """libpq connection string for ``role`` (superuser: ``postgres``)."""
        if role != SUPERUSER and role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        from psycopg.conninfo import make_conninfo

        extra = {} if self.tls is None else {"sslmode": self.tls.sslmode, "sslrootcert": str(self.tls.ca)}
        return make_conninfo(host=self.host, port=self.port, dbname=database, user=role,
                             password=self.password(role), connect_timeout=connect_timeout,
                             application_name="mammotriage", **KEEPALIVE, **extra)

    # ----------------------------------------------------------------- lifecycle
    def init(self) -> None:
        """Create the cluster, the database, the roles and the schema (then stop it).

        Raises
        ------
        PgError
            ``folder`` already holds a cluster, or a tool failed (its output is in the message).
        """
        if (self.data / "PG_VERSION").exists():
            raise PgError(f"{self.data} already holds a PostgreSQL cluster")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.secrets, 0o700)
        for role in (SUPERUSER, *ROLES):
            if not self.password_file(role).exists():
                _write_secret(self.password_file(role), secrets.token_urlsafe(24))
        self._hand_over(self.server_account())
        self._run([self._tool("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=scram-sha-256",
                   f"--pwfile={self.password_file(SUPERUSER)}", "-E", "UTF8", "--locale=C"], "initdb")
        self._configure()
        self.start()
        try:
            self._bootstrap()
        finally:
            self.stop()

    def _configure(self) -> None:
        conf = self.data / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write("\n# written by mammotriage (store.pg.cluster)\n"
                     f"listen_addresses = '{self.listen}'\n"
                     f"port = {self.port:d}\n"
                     "unix_socket_directories = ''\n"
                     "password_encryption = 'scram-sha-256'\n"
                     "timezone = 'UTC'\n"
                     "max_connections = 100\n")
        if self.tls is not None:
            self.configure_tls()
        else:
            hba = ["# written by mammotriage: TCP only, every role with scram-sha-256",
                   *(f"host all all {net} scram-sha-256" for net in self.clients)]
            (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n", encoding="utf-8")

    def configure_tls(self) -> None:
        """Switch the cluster to TLS only (``self.tls``): files, ``ssl = on``, ``hostssl`` lines.

        Also for a cluster made before TLS (``site tls``); takes effect at the next
        start or :meth:`reload`.
        """
        if self.tls is None:
            raise PgError("configure_tls needs the cluster's tls files")
        self.install_tls_files()
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write("\n# written by mammotriage (store.pg.cluster): TLS only\n"
                     "ssl = on\n"
                     "ssl_cert_file = 'server.crt'\n"
                     "ssl_key_file = 'server.key'\n"
                     "ssl_min_protocol_version = 'TLSv1.2'\n")
        self.write_tls_hba()

    def write_tls_hba(self) -> None:
        """``pg_hba.conf`` for TLS: the superuser and mt_admin from this host only; the
        workstation and worker roles and the readers' roles (group ``mt_reader``, site
        accounts) from the clients' networks; plain TCP rejected. Takes effect at the next
        start or :meth:`reload`."""
        local = ",".join((SUPERUSER, *(r for r in ROLES if r not in REMOTE_ROLES)))
        remote = ",".join((*REMOTE_ROLES, "+" + READER_GROUP))
        hba = ["# written by mammotriage: TCP with TLS only (hostssl), every role with scram-sha-256;",
               "# the superuser and mt_admin from this host only; plain TCP is rejected",
               f"hostssl all {local} 127.0.0.1/32 scram-sha-256",
               *(f"hostssl all {remote} {net} scram-sha-256" for net in self.clients),
               "hostnossl all all 0.0.0.0/0 reject",
               "hostnossl all all ::/0 reject"]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n", encoding="utf-8")

    def install_tls_files(self) -> None:
        """Copy the certificate and key into the data folder (0600, owned by the server's account)."""
        if self.tls is None:
            raise PgError("install_tls_files needs the cluster's tls files")
        account = self.server_account()
        for source, name in ((self.tls.cert, "server.crt"), (self.tls.key, "server.key")):
            target = self.data / name
            try:
                data = source.read_bytes()
                tmp = target.with_name(f".{name}.new")
                tmp.unlink(missing_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                if account is not None:
                    os.chown(tmp, *account)
                os.replace(tmp, target)
            except OSError as exc:
                raise PgError(f"cannot copy {source} to {target}: {exc}") from None

    def reload(self) -> None:
        """``pg_ctl reload`` (new certificate files, pg_hba.conf) when the server runs."""
        if self.status().running:
            self._run([self._tool("pg_ctl"), "-D", str(self.data), "reload"], "pg_ctl reload")

    def _bootstrap(self) -> None:
        import psycopg
        from psycopg import sql

        from mammotriage.store.pg import schema

        with psycopg.connect(self.dsn(SUPERUSER, database="postgres"), autocommit=True) as conn:
            for role in ROLES:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password_verifier(conn, role, self.password(role)))))
        self._create_database()
        with psycopg.connect(self.dsn("mt_admin"), autocommit=True) as conn:
            schema.migrate(conn)
        self._role_settings()

    def _role_settings(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(SUPERUSER), autocommit=True) as conn:
            for role, settings in ROLE_SETTINGS.items():
                for name, value in settings.items():
                    conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                        sql.Identifier(role), sql.Identifier(DATABASE), sql.Identifier(name), sql.Literal(value)))

    def upgrade(self) -> tuple[int, int]:
        """On a running server: the site schema's pending migrations (as ``mt_admin``) and
        the roles' session settings (:data:`ROLE_SETTINGS`). Returns (version before, after).

        Raises
        ------
        PgError
            The database is newer than this code, or the server refused.
        """
        import psycopg

        from mammotriage.store.pg import schema

        try:
            with psycopg.connect(self.dsn("mt_admin"), autocommit=True) as conn:
                before = schema.schema_version(conn)
                after = schema.migrate(conn)
            self._role_settings()
        except schema.SchemaVersionError as exc:
            raise PgError(str(exc)) from None
        except psycopg.Error as exc:
            raise PgError(f"cannot bring the site database up to date: {exc}") from None
        return before, after

    def _create_database(self) -> None:
        """A new, empty site database owned by mt_admin, closed to PUBLIC (the superuser's work)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(SUPERUSER, database="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER mt_admin ENCODING 'UTF8' TEMPLATE template0")
                         .format(sql.Identifier(DATABASE)))
        with psycopg.connect(self.dsn(SUPERUSER), autocommit=True) as conn:
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            conn.execute("ALTER SCHEMA public OWNER TO mt_admin")
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(DATABASE)))
            for role in ROLES:
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(role)))

    # ----------------------------------------------------------------- backup
    def _client_env(self, role: str) -> dict[str, str]:
        env = dict(os.environ, PGPASSWORD=self.password(role), LC_ALL="C")
        if self.tls is not None:
            env.update(PGSSLMODE=self.tls.sslmode, PGSSLROOTCERT=str(self.tls.ca))
        return env

    def backup(self, path: str | Path) -> Path:
        """``pg_dump -Fc`` of the site database as mt_admin (online, consistent). Returns ``path``.

        The dump holds the audit key (``mt_private``): keep it as private as the key.
        """
        target = Path(path).absolute()
        args = [self._tool("pg_dump"), "-Fc", "-h", self.host, "-p", str(self.port), "-U", "mt_admin",
                "-d", DATABASE, "-f", str(target)]
        self._run(args, "pg_dump", 600, client="mt_admin")
        return target

    def restore(self, path: str | Path) -> None:
        """Replace the site database by a :meth:`backup` (the server must run; clients are cut off).

        The database is dropped, created empty as at :meth:`init`, and filled by
        ``pg_restore`` as mt_admin; this cluster's roles and passwords stay.
        """
        import psycopg
        from psycopg import sql

        source = Path(path).absolute()
        if not source.is_file():
            raise PgError(f"no backup at {source}")
        with psycopg.connect(self.dsn(SUPERUSER, database="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        self._create_database()
        self._run([self._tool("pg_restore"), "-h", self.host, "-p", str(self.port), "-U", "mt_admin",
                          "-d", DATABASE, "--no-owner", "--role=mt_admin", "--exit-on-error", str(source)],
                  "pg_restore", 600, client="mt_admin")

    def start(self, timeout: float = 60) -> None:
        """Start the server (no-op when it runs); returns once it accepts connections."""
        if self.status().running:
            return
        self._run([self._tool("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                   "-t", str(int(timeout)), "start"], "pg_ctl start", timeout + 30)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server (no-op when it is not running). ``mode``: smart, fast or immediate."""
        if not self.status().running:
            return
        self._run([self._tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)),
                   "stop"], "pg_ctl stop", timeout + 30)

    def restart(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl restart``: open connections are closed, clients reconnect."""
        self._run([self._tool("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w",
                   "-t", str(int(timeout)), "restart"], "pg_ctl restart", timeout + 30)

    def status(self) -> ClusterStatus:
        """Whether the folder holds a cluster and whether its server runs (``pg_ctl status``)."""
        if not (self.data / "PG_VERSION").exists():
            return ClusterStatus(False, False, None, self.port, str(self.folder))
        result = subprocess.run([self._tool("pg_ctl"), "-D", str(self.data), "status"], **self._as_server(),
                                capture_output=True, text=True, timeout=30)
        # pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        pid = None
        match = re.search(r"PID:\s*(\d+)", result.stdout)
        if match:
            pid = int(match.group(1))
        return ClusterStatus(result.returncode != 4, result.returncode == 0, pid, self.port, str(self.folder))
