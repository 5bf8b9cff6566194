"""Site profiles: what a workstation or AI worker needs to join a site server.

``mammotriage site profile DIR --role workstation|worker --out FILE`` writes one JSON
file from a site server folder (``site init`` made it)::

    {"format": "mammotriage-site-profile/1", "role": "workstation",
     "postgres": {"host": "127.0.0.1", "port": 5432, "database": "mammotriage",
                  "user": "mt_workstation", "password": "...", "sslmode": "verify-full"},
     "dicomweb": {"url": "https://127.0.0.1:8042/dicom-web", "user": "mammotriage", "password": "..."},
     "tls": {"ca": "-----BEGIN CERTIFICATE-----...", "ca_sha256": "..."}}

The file holds the role's database password and the archive's credentials, so it is
written with mode 0600 (owner only) from its creation on, and :func:`load_profile`
refuses a profile that others can read. Every problem of a profile is a
:class:`SiteProfileError` naming the file and the field.

``tls.ca`` is the site CA's certificate (never its key): the client writes it next to
the profile (``FILE.ca.pem``, 0600; a private temporary file when that folder cannot
be written) and connects with ``sslmode=verify-full`` and DICOMweb over https, both
trusting that CA only. ``--host`` must be a name of the server certificate. A profile
from before TLS (no ``tls``, ``http://``) still works, unencrypted:
:meth:`SiteProfile.warning` says so.
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
    #: the site CA's certificate file (written from the profile), None for a profile from before TLS
    ca_file: Path | None = None
    sslmode: str | None = None
    #: The site archive forwards the AI results to the PACS: this workstation's outbox sends none.
    archive_forwards_results: bool = False

    @property
    def encrypted(self) -> bool:
        return self.ca_file is not None and self.dicomweb_url.startswith("https://")

    def warning(self) -> str | None:
        """What a reader or IT should know about the link (None when it is encrypted)."""
        if self.encrypted:
            return None
        return (f"{self.path}: the link to the site server is not encrypted (a profile from before TLS): "
                "database password, corrections and images cross the network in clear; ask IT for a new "
                "profile ('mammotriage site profile' on a site with TLS)")

    def dsn(self, connect_timeout: int = 5, *, user: str | None = None, password: str | None = None) -> str:
        """libpq connection string of the profile's database role (verify-full with the site CA);
        ``user``/``password``: another role of the same server (a reader's site account)."""
        from psycopg.conninfo import make_conninfo

        from mammotriage.store.pg.cluster import KEEPALIVE

        extra = {}
        if self.ca_file is not None:
            extra = {"sslmode": self.sslmode or "verify-full", "sslrootcert": str(self.ca_file)}
        return make_conninfo(host=self.pg_host, port=self.pg_port, dbname=self.database, user=user or self.user,
                             password=self.password if password is None else password,
                             connect_timeout=connect_timeout,
                             application_name=f"mammotriage-{self.role}", **KEEPALIVE, **extra)

    def archive(self, cache_folder: str | Path, cache_bytes: int, **kwargs: Any) -> Any:
        """A :class:`~mammotriage.net.dicomweb.DicomWebArchive` of the site archive (https with the site CA)."""
        from mammotriage.net.dicomweb import DicomWebArchive, InstanceCache

        base = self.dicomweb_url.removesuffix("/dicom-web")
        return DicomWebArchive(base, (self.dicomweb_user, self.dicomweb_password),
                               InstanceCache(cache_folder, cache_bytes), ca=self.ca_file, **kwargs)

    def where(self) -> str:
        """The servers, without secrets (for logs and the status bar)."""
        return (f"PostgreSQL {self.pg_host}:{self.pg_port}/{self.database} as {self.user}, archive {self.dicomweb_url}"
                + ("" if self.encrypted else " (not encrypted)"))


def make_profile(folder: str | Path, role: str, host: str = DEFAULT_HOST) -> dict[str, Any]:
    """The profile of ``role`` for the site server folder ``folder`` (as JSON data)."""
    from mammotriage.net.orthanc import DICOMWEB_ROOT, OrthancError
    from mammotriage.net.site import load_site, site_tls
    from mammotriage.net.tls import TlsError, name_matches
    from mammotriage.store.pg.cluster import DATABASE, PgError

    if role not in ROLES:
        raise SiteProfileError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if not host.strip() or any(c in host for c in "/ @?#"):
        raise SiteProfileError(f"--host {host!r} is not a host name or address")
    cluster, orthanc, _ = load_site(folder)
    tls = site_tls(folder)
    try:
        password = cluster.password(ROLES[role])
        web_user, web_password = orthanc.credentials()
        if tls is not None:
            ca_pem = tls.ca_pem()
            ca_sha256 = tls.ca_info().sha256
            names = tls.server_info().names
    except (PgError, OrthancError, TlsError) as exc:
        raise SiteProfileError(f"{Path(folder).absolute()}: {exc}") from exc
    if tls is not None and not name_matches(host, names):
        raise SiteProfileError(f"--host {host} is not a name of the server certificate ({', '.join(names)}): "
                               f"clients verify it; give one of those, or renew the certificate with "
                               f"'mammotriage site tls {Path(folder)} --host {host}'")
    url_host = f"[{host}]" if ":" in host else host
    data: dict[str, Any] = {
        "format": FORMAT, "role": role,
        "postgres": {"host": host, "port": cluster.port, "database": DATABASE, "user": ROLES[role],
                     "password": password},
        "dicomweb": {"url": f"{'https' if tls else 'http'}://{url_host}:{orthanc.http_port}{DICOMWEB_ROOT}",
                     "user": web_user, "password": web_password}}
    data["results"] = {"archive_forwards": orthanc.forward_results is not None}
    if tls is not None:
        data["postgres"]["sslmode"] = "verify-full"
        data["tls"] = {"ca": ca_pem, "ca_sha256": ca_sha256}
    return data


def _ca_file(path: Path, pem: str) -> Path:
    """The site CA of profile ``path`` as a 0600 file next to it (else a private temporary file)."""
    from mammotriage.jsonio import write_atomic

    target = path.with_name(path.name + ".ca.pem")
    data = pem.encode("ascii")
    try:
        if not (target.is_file() and target.read_bytes() == data):
            write_atomic(target, data, mode=0o600)
        return target
    except OSError:
        import atexit
        import os
        import tempfile

        fd, name = tempfile.mkstemp(prefix="mammotriage-site-ca-", suffix=".pem")  # 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        atexit.register(lambda: Path(name).unlink(missing_ok=True))
        return Path(name)


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
    ca_file = sslmode = None
    if "tls" in data:
        ca = _field(path, data, "tls", "ca", str)
        if "-----BEGIN CERTIFICATE-----" not in ca or "-----END CERTIFICATE-----" not in ca:
            raise SiteProfileError(f"{path}: field 'tls.ca' must be the site CA's certificate (PEM)")
        if not url.startswith("https://"):
            raise SiteProfileError(f"{path}: field 'dicomweb.url' must be https:// when the profile has 'tls'")
        sslmode = data["postgres"].get("sslmode", "verify-full") if isinstance(data.get("postgres"), dict) else None
        if sslmode not in ("verify-full", "verify-ca"):
            raise SiteProfileError(f"{path}: field 'postgres.sslmode' must be verify-full or verify-ca "
                                   f"(is {sslmode!r})")
        try:
            ca_file = _ca_file(path, ca)
        except (OSError, UnicodeEncodeError) as exc:
            raise SiteProfileError(f"{path}: cannot write the site CA certificate: {exc}") from None
    return SiteProfile(
        path=path, role=role,
        pg_host=_field(path, data, "postgres", "host", str), pg_port=_field(path, data, "postgres", "port", int),
        database=_field(path, data, "postgres", "database", str), user=_field(path, data, "postgres", "user", str),
        password=_field(path, data, "postgres", "password", str), dicomweb_url=url.rstrip("/"),
        dicomweb_user=_field(path, data, "dicomweb", "user", str),
        dicomweb_password=_field(path, data, "dicomweb", "password", str), ca_file=ca_file, sslmode=sslmode,
        archive_forwards_results=_forwards(path, data))


def _forwards(path: Path, data: dict[str, Any]) -> bool:
    results = data.get("results", {})
    value = results.get("archive_forwards", False) if isinstance(results, dict) else None
    if not isinstance(value, bool):
        raise SiteProfileError(f"{path}: field 'results.archive_forwards' must be true or false (is {value!r})")
    return value
