"""The site server's TLS material: a site CA and a server certificate, made with ``openssl``.

``site init DIR`` makes ``DIR/tls/`` (:class:`SiteTls`)::

    ca.key       the site CA's private key (mode 0600; it never leaves the server)
    ca.crt       the site CA's certificate (what site profiles carry; public)
    server.key   the server's private key (mode 0600)
    server.crt   the server's certificate, signed by the CA; subjectAltName: the
                 server's addresses and DNS names (``--host``; always 127.0.0.1 and localhost)
    server.pem   server.key + server.crt in one file (mode 0600), as Orthanc's
                 ``SslCertificate`` wants it
    source.json  "generated" (this CA) or "site" (the site's own certificate, copied verbatim)

Keys are ECDSA P-256, certificates SHA-256; the CA is valid :data:`CA_DAYS` days, a
server certificate :data:`SERVER_DAYS` days (``--days``). :meth:`SiteTls.renew` signs a
new server key with the same CA, so site profiles (which carry only the CA) stay valid.
A site's own certificate (``--tls-cert/--tls-key [--tls-ca]``) is checked (the key
matches, the chain verifies for a TLS server, no passphrase) and copied byte for byte.

Every ``openssl`` call takes an argument list (no shell) under umask 077, writes into a
temporary folder beside the material and is renamed into place; a failure is a
:class:`TlsError` naming the step, the file and openssl's own message.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mammotriage.jsonio import write_atomic

__all__ = ["CA_DAYS", "DEFAULT_HOSTS", "RENEW_BEFORE_DAYS", "SERVER_DAYS", "CertInfo", "SiteTls", "TlsError",
           "cert_info", "name_matches", "openssl", "verify_session"]

CA_DAYS = 3650
SERVER_DAYS = 825
#: ``site status`` warns when the server certificate ends within this many days.
RENEW_BEFORE_DAYS = 30
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


class TlsError(RuntimeError):
    """TLS material that cannot be made, read or used (the message names the file and the reason)."""


def openssl(args: Sequence[str], what: str, *, stdin: str | None = None, timeout: float = 60) -> str:
    """Run ``openssl args`` (no shell, umask 077, C locale); its stdout, or a :class:`TlsError`."""
    binary = shutil.which("openssl")
    if binary is None:
        raise TlsError(f"{what}: the openssl command is not installed (Debian: apt-get install openssl)")
    try:
        result = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                                env=dict(os.environ, LC_ALL="C"), umask=0o077)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TlsError(f"{what}: openssl could not run: {exc}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-4:]
        raise TlsError(f"{what}: openssl {args[0]} failed (exit {result.returncode}): {' / '.join(tail)}")
    return result.stdout


def normalise_name(name: str) -> str:
    """An address in its canonical form, a DNS name in lower case; ValueError when neither."""
    text = name.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?)*\.?", text):
        raise ValueError(f"{name!r} is neither an IP address nor a DNS name")
    return text.rstrip(".").lower()


def name_matches(host: str, names: Iterable[str]) -> bool:
    """Whether a client connecting to ``host`` accepts a certificate naming ``names`` (RFC 6125 wildcards)."""
    try:
        want = normalise_name(host)
    except ValueError:
        return False
    for name in names:
        name = name.lower()
        if name == want:
            return True
        if name.startswith("*.") and "." in want and want.split(".", 1)[1] == name[2:]:
            try:
                ipaddress.ip_address(want)
            except ValueError:
                return True
    return False


@dataclass(frozen=True)
class CertInfo:
    """What ``openssl x509`` says about a certificate."""

    path: str
    subject: str
    issuer: str
    not_after: datetime
    names: tuple[str, ...]
    sha256: str

    def days_left(self, now: datetime | None = None) -> int:
        return int((self.not_after - (now or datetime.now(UTC))).total_seconds() // 86400)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "subject": self.subject, "issuer": self.issuer,
                "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "days_left": self.days_left(),
                "names": list(self.names), "sha256": self.sha256}


def cert_info(path: Path) -> CertInfo:
    """The first certificate of the PEM file ``path``."""
    what = f"reading the certificate {path}"
    if not path.is_file():
        raise TlsError(f"{what}: no such file")
    out = openssl(["x509", "-in", str(path), "-noout", "-subject", "-issuer", "-enddate", "-fingerprint",
                   "-sha256", "-nameopt", "RFC2253", "-ext", "subjectAltName"], what)
    fields: dict[str, str] = {}
    names: list[str] = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        key, _, value = line.partition("=")
        if key in ("subject", "issuer", "notAfter", "sha256 Fingerprint"):
            fields[key] = value.strip()
        elif line.startswith("X509v3 Subject Alternative Name") and i + 1 < len(lines):
            for item in lines[i + 1].split(","):
                kind, _, value = item.strip().partition(":")
                if kind in ("DNS", "IP Address") and value:
                    names.append(normalise_name(value) if kind == "IP Address" else value.lower())
    try:
        not_after = datetime.strptime(" ".join(fields["notAfter"].split()), "%b %d %H:%M:%S %Y GMT")
    except (KeyError, ValueError):
        raise TlsError(f"{what}: openssl gave no readable expiry date") from None
    return CertInfo(str(path), fields.get("subject", ""), fields.get("issuer", ""),
                    not_after.replace(tzinfo=UTC), tuple(names),
                    fields.get("sha256 Fingerprint", "").replace(":", "").lower())


def _certificates(text: str) -> list[str]:
    return [_BEGIN + block.split(_END)[0] + _END + "\n" for block in text.split(_BEGIN)[1:] if _END in block]


def _ext_file(folder: Path, names: Sequence[str]) -> Path:
    alt = []
    for name in names:
        try:
            alt.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            alt.append(f"DNS:{name}")
    path = folder / "server.ext"
    path.write_text("basicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\n"
                    "extendedKeyUsage = serverAuth\n"
                    "subjectKeyIdentifier = hash\n"
                    "authorityKeyIdentifier = keyid, issuer\n"
                    f"subjectAltName = {', '.join(alt)}\n", encoding="ascii")
    return path


def _new_key(path: Path, what: str) -> None:
    openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)], what)


class SiteTls:
    """The TLS material of one site server, in ``folder`` (``DIR/tls``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).absolute()

    ca_key = property(lambda self: self.folder / "ca.key")
    ca_cert = property(lambda self: self.folder / "ca.crt")
    server_key = property(lambda self: self.folder / "server.key")
    server_cert = property(lambda self: self.folder / "server.crt")
    server_pem = property(lambda self: self.folder / "server.pem")
    source_file = property(lambda self: self.folder / "source.json")

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.server_key, self.server_cert, self.server_pem))

    @property
    def source(self) -> str:
        """"generated" (the site CA made here) or "site" (the site's own certificate)."""
        try:
            return str(json.loads(self.source_file.read_text(encoding="utf-8"))["source"])
        except (OSError, ValueError, KeyError, TypeError):
            return "generated" if self.ca_key.is_file() else "site"

    def ca_pem(self) -> str:
        try:
            text = self.ca_cert.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise TlsError(f"{self.ca_cert}: cannot read the site CA certificate: {exc}") from None
        if not _certificates(text):
            raise TlsError(f"{self.ca_cert}: not a PEM certificate")
        return text

    def server_info(self) -> CertInfo:
        return cert_info(self.server_cert)

    def ca_info(self) -> CertInfo:
        return cert_info(self.ca_cert)

    # ------------------------------------------------------------------ making

    def _workdir(self) -> Path:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        return Path(tempfile.mkdtemp(prefix=".new-", dir=self.folder))

    def _commit(self, work: Path, names: Sequence[str], source: str) -> None:
        """Move the files made in ``work`` into place (the server pair last, the PEM for Orthanc from them)."""
        key = (work / "server.key").read_bytes()
        cert = (work / "server.crt").read_bytes()
        write_atomic(work / "server.pem", key + (b"" if key.endswith(b"\n") else b"\n") + cert, 0o600)
        for name in names:
            if (work / name).exists():
                os.chmod(work / name, 0o600 if name.endswith((".key", ".pem")) else 0o644)
                os.replace(work / name, self.folder / name)
        write_atomic(self.source_file, (json.dumps({"source": source}) + "\n").encode(), 0o644)

    def generate(self, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = SERVER_DAYS,
                 ca_name: str = "Mammo Triage site CA") -> CertInfo:
        """Make the site CA (unless it exists) and a server certificate for ``hosts``."""
        names = self.names_for(hosts)
        self._check_days(days)
        work = self._workdir()
        try:
            if not (self.ca_key.is_file() and self.ca_cert.is_file()):
                _new_key(work / "ca.key", f"making the site CA key in {self.folder}")
                serial = secrets.token_hex(16)
                openssl(["req", "-x509", "-new", "-key", str(work / "ca.key"), "-sha256", "-days", str(CA_DAYS),
                         "-set_serial", f"0x{serial}", "-subj", f"/CN={ca_name} {serial[:8]}",
                         "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                         "-addext", "subjectKeyIdentifier=hash", "-out", str(work / "ca.crt")],
                        f"making the site CA certificate in {self.folder}")
                self._commit_ca(work)
            self._sign(work, names, days)
            self._commit(work, ("server.key", "server.crt", "server.pem"), "generated")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self.server_info()

    def _commit_ca(self, work: Path) -> None:
        os.chmod(work / "ca.key", 0o600)
        os.replace(work / "ca.key", self.ca_key)
        os.chmod(work / "ca.crt", 0o644)
        os.replace(work / "ca.crt", self.ca_cert)

    @staticmethod
    def _check_days(days: int) -> None:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= CA_DAYS:
            raise TlsError(f"a server certificate's validity must be 1..{CA_DAYS} days, not {days!r}")

    def _sign(self, work: Path, names: Sequence[str], days: int) -> None:
        self._check_days(days)
        if not self.ca_key.is_file():
            raise TlsError(f"{self.ca_key}: no site CA key here (the site uses its own certificate: "
                           "give the new one with --tls-cert/--tls-key)")
        ca_left = self.ca_info().days_left()
        if ca_left < days:
            raise TlsError(f"the site CA {self.ca_cert} ends in {ca_left} days, before a {days}-day certificate "
                           "would: give --days below that (a new CA means new site profiles)")
        what = f"signing the server certificate in {self.folder}"
        _new_key(work / "server.key", f"making the server key in {self.folder}")
        openssl(["req", "-new", "-key", str(work / "server.key"), "-subj", f"/CN={names[0]}",
                 "-out", str(work / "server.csr")], what)
        openssl(["x509", "-req", "-in", str(work / "server.csr"), "-CA", str(self.ca_cert), "-CAkey",
                 str(self.ca_key), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days), "-sha256",
                 "-extfile", str(_ext_file(work, names)), "-out", str(work / "server.crt")], what)

    @staticmethod
    def names_for(hosts: Iterable[str]) -> list[str]:
        """The certificate's names: ``hosts`` (checked, canonical) first, then 127.0.0.1 and localhost."""
        names: list[str] = []
        for host in (*hosts, *DEFAULT_HOSTS):
            try:
                name = normalise_name(host)
            except ValueError as exc:
                raise TlsError(f"--host: {exc}") from None
            if name not in names:
                names.append(name)
        return names

    def renew(self, hosts: Sequence[str] | None = None, days: int = SERVER_DAYS) -> CertInfo:
        """A new server key and certificate from the site CA (names: ``hosts``, else the current ones)."""
        names = self.names_for(hosts if hosts else self.server_info().names)
        work = self._workdir()
        try:
            self._sign(work, names, days)
            self._commit(work, ("server.key", "server.crt", "server.pem"), "generated")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self.server_info()

    def install(self, cert: str | Path, key: str | Path, ca: str | Path | None = None) -> CertInfo:
        """Take the site's own certificate and key (copied verbatim) after checking them.

        ``ca``: the CA workstations verify against; without it the last certificate of
        ``cert``'s chain, when it is self-signed (a root), else an error.
        """
        cert, key = Path(cert).absolute(), Path(key).absolute()
        for path, what in ((cert, "--tls-cert"), (key, "--tls-key"), *(((Path(ca), "--tls-ca"),) if ca else ())):
            if not path.is_file():
                raise TlsError(f"{what} {path}: no such file")
        cert_bytes, key_bytes = cert.read_bytes(), key.read_bytes()
        chain = _certificates(cert_bytes.decode("ascii", errors="replace"))
        if not chain:
            raise TlsError(f"--tls-cert {cert}: not a PEM certificate")
        if b"ENCRYPTED" in key_bytes:
            raise TlsError(f"--tls-key {key}: the key is protected by a passphrase; the servers start unattended, "
                           "so give the key without one (openssl pkey -in KEY -out PLAIN.key), kept mode 0600")
        mine = openssl(["pkey", "-in", str(key), "-pubout", "-passin", "pass:"], f"--tls-key {key}: reading the key")
        theirs = openssl(["x509", "-in", str(cert), "-noout", "-pubkey"], f"--tls-cert {cert}: reading the certificate")
        if mine.strip() != theirs.strip():
            raise TlsError(f"--tls-key {key} is not the key of --tls-cert {cert} (their public keys differ)")
        work = self._workdir()
        try:
            if ca is not None:
                ca_text = Path(ca).read_text(encoding="ascii", errors="replace")
                if not _certificates(ca_text):
                    raise TlsError(f"--tls-ca {ca}: not a PEM certificate")
            else:
                root = chain[-1]
                (work / "root.crt").write_text(root, encoding="ascii")
                info = cert_info(work / "root.crt")
                if info.subject != info.issuer:
                    raise TlsError(f"--tls-cert {cert}: its chain does not end in a root certificate; give the CA "
                                   "that signed it with --tls-ca FILE (workstations verify against it)")
                ca_text = root
            (work / "ca.crt").write_text(ca_text, encoding="ascii")
            args = ["verify", "-purpose", "sslserver", "-CAfile", str(work / "ca.crt")]
            if len(chain) > 1:
                (work / "chain.crt").write_text("".join(chain[1:]), encoding="ascii")
                args += ["-untrusted", str(work / "chain.crt")]
            openssl([*args, str(cert)], f"--tls-cert {cert}: checking it against the CA")
            (work / "server.crt").write_bytes(cert_bytes)
            (work / "server.key").write_bytes(key_bytes)
            self._commit(work, ("server.key", "server.crt", "server.pem", "ca.crt"), "site")
            self.ca_key.unlink(missing_ok=True)  # a generated CA is no longer the site's
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self.server_info()

    def to_json(self) -> dict[str, Any]:
        """For ``site status --json``: the source, the files and both certificates' names and expiry."""
        server = self.server_info()
        ca = self.ca_info()
        left = server.days_left()
        warning = None
        if left < 0:
            warning = f"the server certificate expired {-left} days ago: renew it with 'mammotriage site tls DIR'"
        elif left < RENEW_BEFORE_DAYS:
            warning = f"the server certificate ends in {left} days: renew it with 'mammotriage site tls DIR'"
        return {"encrypted": True, "source": self.source, "folder": str(self.folder),
                "server_certificate": server.to_json(), "ca_certificate": ca.to_json(), "warning": warning}


def verify_session(session: Any, ca: str | os.PathLike[str] | None, check_hostname: bool = True) -> Any:
    """Make a ``requests.Session`` trust only ``ca`` (None: leave it as it is); returns it.

    ``check_hostname=False`` only for this host's own calls to a site certificate that
    does not name 127.0.0.1 (the chain is still verified against ``ca``).
    """
    if ca is None:
        return session
    session.verify = str(ca)
    if not check_hostname:
        from requests.adapters import HTTPAdapter

        class _ChainOnly(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                kwargs["assert_hostname"] = False
                super().init_poolmanager(*args, **kwargs)

        session.mount("https://", _ChainOnly())
    return session
