"""Site profiles: what a workstation or AI worker needs to join a site server.

``mammotriage site profile DIR --role workstation|worker --out FILE`` writes one JSON
file from a site server folder (``site init`` made it)::

    {"format": "mammotriage-site-profile/1", "role": "workstation",
     "postgres": {"host": "127.0.0.1", "port": 5432, "database": "mammotriage",
                  "user": "mt_workstation", "password": "..."},
     "dicomweb": {"url": "http://127.0.0.1:8042/dicom-web", "user": "mammotriage", "password": "..."}}

The file holds the role's database password and the archive's credentials, so it is
written with mode 0600 (owner only) from its creation on, and :func:`load_profile`
refuses a profile that others can read. Every problem of a profile is a
:class:`SiteProfileError` naming the file and the field.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "ROLES", "SiteProfile", "SiteProfileError", "load_profile", "make_profile", "write_profile"]

FORMAT = "mammotriage-site-profile/1"
#: profile role -> the site database's role (store.pg.cluster.ROLES)
ROLES = {"workstation": "mt_workstation", "worker": "mt_worker"}
DEFAULT_HOST = "127.0.0.1"


class SiteProfileError(ValueError):
    """A profile that cannot be written or read (the message names the file and the field)."""


@dataclass(frozen=True)
class SiteProfile:
    path: Path
    role: str
    pg_host: str
    pg_port: int
    database: str
    user: str
    password: str
    dicomweb_url: str
    dicomweb_user: str
    dicomweb_password: str

    def dsn(self, connect_timeout: int = 5) -> str:
        """libpq connection string of the profile's database role."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host=self.pg_host, port=self.pg_port, dbname=self.database, user=self.user,
                             password=self.password, connect_timeout=connect_timeout,
                             application_name=f"mammotriage-{self.role}")

    def where(self) -> str:
        """The servers, without secrets (for logs and the status bar)."""
        return f"PostgreSQL {self.pg_host}:{self.pg_port}/{self.database} as {self.user}, archive {self.dicomweb_url}"


def make_profile(folder: str | Path, role: str, host: str = DEFAULT_HOST) -> dict[str, Any]:
    """The profile of ``role`` for the site server folder ``folder`` (as JSON data)."""
    from mammotriage.net.orthanc import DICOMWEB_ROOT, OrthancError
    from mammotriage.net.site import load_site
    from mammotriage.store.pg.cluster import DATABASE, PgError

    if role not in ROLES:
        raise SiteProfileError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if not host.strip() or any(c in host for c in "/ @?#"):
        raise SiteProfileError(f"--host {host!r} is not a host name or address")
    cluster, orthanc, _ = load_site(folder)
    try:
        password = cluster.password(ROLES[role])
        web_user, web_password = orthanc.credentials()
    except (PgError, OrthancError) as exc:
        raise SiteProfileError(f"{Path(folder).absolute()}: {exc}") from exc
    url_host = f"[{host}]" if ":" in host else host
    return {"format": FORMAT, "role": role,
            "postgres": {"host": host, "port": cluster.port, "database": DATABASE, "user": ROLES[role],
                         "password": password},
            "dicomweb": {"url": f"http://{url_host}:{orthanc.http_port}{DICOMWEB_ROOT}", "user": web_user,
                         "password": web_password}}


def write_profile(folder: str | Path, role: str, out: str | Path, host: str = DEFAULT_HOST) -> SiteProfile:
    """Write the profile of ``role`` to ``out`` (mode 0600) and return it as loaded back."""
    from mammotriage.jsonio import write_atomic

    data = make_profile(folder, role, host)
    out = Path(out)
    try:
        write_atomic(out, (json.dumps(data, indent=1) + "\n").encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise SiteProfileError(f"{out}: cannot write the profile: {exc}") from exc
    return load_profile(out)


def _field(path: Path, data: dict[str, Any], section: str, name: str, kind: type) -> Any:
    where = f"{section}.{name}" if section else name
    holder = data.get(section) if section else data
    if not isinstance(holder, dict):
        raise SiteProfileError(f"{path}: field '{section}' must be an object")
    if name not in holder:
        raise SiteProfileError(f"{path}: field '{where}' is missing")
    value = holder[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise SiteProfileError(f"{path}: field '{where}' must be a port number 1-65535 (is {value!r})")
    elif not isinstance(value, str) or not value.strip():
        raise SiteProfileError(f"{path}: field '{where}' must be non-empty text")
    return value


def load_profile(path: str | Path) -> SiteProfile:
    """Read and check a site profile; refuses one others can read (like ssh a private key)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SiteProfileError(f"{path}: no such site profile (write one with 'mammotriage site profile')") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteProfileError(f"{path}: cannot read the site profile: {exc}") from None
    if not stat.S_ISREG(mode):
        raise SiteProfileError(f"{path}: a site profile must be a plain file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SiteProfileError(f"{path}: the site profile holds passwords and is readable by others "
                               f"(mode {stat.S_IMODE(mode):04o}); chmod 600 {path}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SiteProfileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SiteProfileError(f"{path}: a site profile is a JSON object")
    if data.get("format") != FORMAT:
        raise SiteProfileError(f"{path}: field 'format' must be {FORMAT!r} (is {data.get('format')!r})")
    role = _field(path, data, "", "role", str)
    if role not in ROLES:
        raise SiteProfileError(f"{path}: field 'role' must be one of {', '.join(ROLES)} (is {role!r})")
    url = _field(path, data, "dicomweb", "url", str)
    if not url.startswith(("http://", "https://")):
        raise SiteProfileError(f"{path}: field 'dicomweb.url' must be an http:// or https:// URL (is {url!r})")
    return SiteProfile(
        path=path, role=role,
        pg_host=_field(path, data, "postgres", "host", str), pg_port=_field(path, data, "postgres", "port", int),
        database=_field(path, data, "postgres", "database", str), user=_field(path, data, "postgres", "user", str),
        password=_field(path, data, "postgres", "password", str), dicomweb_url=url.rstrip("/"),
        dicomweb_user=_field(path, data, "dicomweb", "user", str),
        dicomweb_password=_field(path, data, "dicomweb", "password", str))
