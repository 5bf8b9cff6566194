"""``mammotriage site init|start|stop|status DIR``: a site server in one folder.

A site server holds what the workstations and AI workers of one screening site share:

* ``DIR/postgres``: the PostgreSQL cluster of the site store (correction chain, shared
  triage queue; :class:`mammotriage.store.pg.cluster.PgCluster`);
* ``DIR/orthanc``: the Orthanc image archive, DICOMweb on (:class:`mammotriage.net.orthanc.OrthancServer`);
* ``DIR/tls``: the TLS material (:class:`mammotriage.net.tls.SiteTls`): the site CA and
  the server certificate both servers present (PostgreSQL ``ssl = on`` with ``hostssl``
  lines only, Orthanc HTTPS), or the site's own certificate;
* ``DIR/site.json``: what ``start``/``stop``/``status`` need to find both again (ports,
  AE title, listen addresses, the TLS folder; no secrets: the passwords stay in each
  server's own 0600 files).

``init`` creates both and leaves them stopped; ``start`` starts PostgreSQL, then Orthanc
(if Orthanc fails, PostgreSQL is stopped again, so a failed start leaves nothing half
up); ``stop`` stops Orthanc, then PostgreSQL; ``status`` reports both (``--json``: the
shape below); ``tls`` renews the server certificate (or takes the site's own, or
switches a site made before TLS to it). Hospital IT runs these as a service
(docs/hospital-it.md, "Site mode").

``status --json``::

    {"folder": "...", "running": true,
     "postgres": {"initialised": true, "running": true, "pid": 123, "port": 5432, "folder": "..."},
     "orthanc": {"configured": true, "running": true, "answering": true, ...},
     "tls": {"encrypted": true, "source": "generated", "folder": "...", "warning": null,
             "server_certificate": {"not_after": "2028-03-05T18:00:00Z", "days_left": 824,
                                    "names": ["127.0.0.1", "localhost"], "sha256": "...", ...},
             "ca_certificate": {...}}}

A site made before TLS has ``"tls": {"encrypted": false, "warning": "..."}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammotriage.jsonio import write_atomic

if TYPE_CHECKING:  # imported when used: building the command line must stay fast
    from mammotriage.net.orthanc import OrthancServer
    from mammotriage.net.tls import SiteTls
    from mammotriage.store.pg.cluster import PgCluster, PgTls

__all__ = ["SITE_FILE", "SiteError", "add_site_commands", "init_site", "load_site", "renew_tls", "site_status",
           "start_site", "stop_site"]

SITE_FILE = "site.json"
FORMAT = "mammotriage-site/1"
DEFAULT_PG_PORT = 5432
#: net.orthanc's defaults (a test keeps them equal)
DEFAULT_HTTP_PORT = 8042
DEFAULT_DICOM_PORT = 4242
DEFAULT_AE_TITLE = "MT_ARCHIVE"
TLS_FOLDER = "tls"
NOT_ENCRYPTED = ("this site was made before TLS: PostgreSQL and Orthanc's HTTP port are not encrypted "
                 "(switch it on with 'mammotriage site tls DIR', then give the workstations new profiles)")
_EVERYWHERE = ("*", "0.0.0.0", "::")


class SiteError(RuntimeError):
    """A site folder that cannot be created, read, started or stopped (the message says why)."""


def _paths(folder: Path) -> tuple[Path, Path, Path]:
    return folder / SITE_FILE, folder / "postgres", folder / "orthanc"


def _listen(listen: Sequence[str] | None, remote_access: bool) -> tuple[str, tuple[str, ...], list[str]]:
    """(listen_addresses, pg_hba client networks, names the certificate must carry)."""
    from mammotriage.net.tls import normalise_name

    wanted = list(listen or ())
    if not wanted:
        wanted = ["*"] if remote_access else ["127.0.0.1"]
    addresses = ["127.0.0.1"]  # the server's own tools always connect on loopback
    names: list[str] = []
    for item in wanted:
        for part in (p.strip() for p in item.split(",")):
            if part in _EVERYWHERE:
                addresses = ["*"]
                continue
            try:
                name = normalise_name(part)
            except ValueError as exc:
                raise SiteError(f"--listen: {exc}") from None
            names.append(name)
            if name not in addresses and "*" not in addresses and name != "localhost":
                addresses.append(name)
    if "*" in addresses:
        addresses = ["*"]
    remote = addresses != ["127.0.0.1"]
    clients = ("0.0.0.0/0", "::/0") if remote else ("127.0.0.1/32",)
    return ",".join(addresses), clients, names


def _tls_record(tls: SiteTls) -> dict[str, Any]:
    from mammotriage.net.tls import name_matches

    return {"folder": TLS_FOLDER, "source": tls.source,
            "check_hostname": name_matches("127.0.0.1", tls.server_info().names)}


def _make_tls(tls: SiteTls, hosts: Sequence[str], days: int, tls_cert: str | Path | None,
              tls_key: str | Path | None, tls_ca: str | Path | None, renew: bool = False) -> None:
    from mammotriage.net.tls import TlsError

    if (tls_cert is None) != (tls_key is None):
        raise SiteError("--tls-cert and --tls-key go together (the site's own certificate and its key)")
    if tls_ca is not None and tls_cert is None:
        raise SiteError("--tls-ca needs --tls-cert and --tls-key")
    try:
        if tls_cert is not None:
            tls.install(tls_cert, tls_key, tls_ca)  # type: ignore[arg-type]
        elif renew and tls.exists():
            tls.renew(list(hosts) or None, days)
        else:
            tls.generate(hosts, days)
    except TlsError as exc:
        raise SiteError(str(exc)) from None


def init_site(folder: str | Path, *, pg_port: int = DEFAULT_PG_PORT, http_port: int = DEFAULT_HTTP_PORT,
              dicom_port: int = DEFAULT_DICOM_PORT, aet: str = DEFAULT_AE_TITLE,
              remote_access: bool = False, hosts: Sequence[str] = (), listen: Sequence[str] | None = None,
              tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
              tls_ca: str | Path | None = None, days: int | None = None,
              dicom_tls: bool = False, pacs: tuple[str, str, int] | None = None) -> dict[str, Any]:
    """Create the site server's configuration in ``folder`` (both servers stopped).

    ``pacs``: ``(AE title, host, port)`` of the PACS the archive forwards the AI results
    to, once each (then workstations' outboxes send none: results reach the PACS one way).

    ``hosts``: the server's addresses and DNS names on the site network (the server
    certificate names them, with 127.0.0.1 and localhost); ``listen``: PostgreSQL's
    addresses (default 127.0.0.1; ``*`` with ``remote_access``); ``tls_cert``/``tls_key``
    [``tls_ca``]: the site's own certificate instead of a generated one; ``dicom_tls``:
    the DICOM port speaks DICOM TLS only (with the same certificate).
    """
    from mammotriage.net.orthanc import OrthancServer
    from mammotriage.net.tls import SERVER_DAYS, SiteTls
    from mammotriage.store.pg.cluster import PgCluster

    folder = Path(folder).absolute()
    site_file, pg_dir, orthanc_dir = _paths(folder)
    if site_file.exists():
        raise SiteError(f"{site_file} exists: {folder} already holds a site server")
    if len({pg_port, http_port, dicom_port}) != 3:
        raise SiteError(f"the PostgreSQL, HTTP and DICOM ports must differ ({pg_port}, {http_port}, {dicom_port})")
    listen_addresses, clients, listen_names = _listen(listen, remote_access)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tls = SiteTls(folder / TLS_FOLDER)
        _make_tls(tls, [*hosts, *listen_names], days or SERVER_DAYS, tls_cert, tls_key, tls_ca)
        record = _tls_record(tls)
        orthanc = OrthancServer(orthanc_dir, http_port, dicom_port, aet, remote_access=remote_access,
                                tls_pem=tls.server_pem, tls_ca=tls.ca_cert, tls_check_hostname=record["check_hostname"],
                                dicom_tls=(tls.server_cert, tls.server_key) if dicom_tls else None,
                                forward_results=pacs)
        orthanc.write_config()  # it checks ports, AE title and the Orthanc install
        PgCluster(pg_dir, pg_port, listen=listen_addresses, clients=clients,
                  tls=_pg_tls(tls, record)).init()
    except BaseException:
        # a failed init leaves no half-made site behind (only what this call created)
        import shutil

        if made:
            shutil.rmtree(made[-1], ignore_errors=True)
        raise
    profile = {"format": FORMAT, "postgres": {"folder": "postgres", "port": pg_port, "listen": listen_addresses,
                                              "clients": list(clients)},
               "orthanc": {"folder": "orthanc", "http_port": orthanc.http_port, "dicom_port": orthanc.dicom_port,
                           "aet": orthanc.aet, "remote_access": bool(remote_access), "dicom_tls": bool(dicom_tls),
                           "forward_results": _pacs_text(orthanc.forward_results)},
               "tls": record}
    write_atomic(site_file, (json.dumps(profile, indent=1) + "\n").encode("utf-8"))
    return profile


def _pacs_text(pacs: tuple[str, str, int] | None) -> str | None:
    return None if pacs is None else f"{pacs[0]}@{pacs[1]}:{pacs[2]}"


def parse_pacs(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` (``--pacs``) as (AE title, host, port)."""
    aet, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not (at and colon and aet and host and port.isdigit()):
        raise SiteError(f"--pacs {text!r}: expected AET@HOST:PORT, e.g. PACS@10.0.0.5:104")
    return aet, host.strip("[]"), int(port)


def _pg_tls(tls: SiteTls, record: dict[str, Any]) -> PgTls:
    from mammotriage.store.pg.cluster import PgTls

    return PgTls(tls.server_cert, tls.server_key, tls.ca_cert,
                 "verify-full" if record.get("check_hostname", True) else "verify-ca")


def site_tls(folder: str | Path) -> SiteTls | None:
    """The site's TLS material, or None for a site made before TLS."""
    from mammotriage.net.tls import SiteTls

    _, _, profile = load_site(folder)
    record = profile.get("tls")
    if not isinstance(record, dict):
        return None
    return SiteTls(Path(folder).absolute() / str(record.get("folder", TLS_FOLDER)))


def load_site(folder: str | Path) -> tuple[PgCluster, OrthancServer, dict[str, Any]]:
    """The two servers of the site folder ``folder`` (``site init`` made it)."""
    from mammotriage.net.orthanc import OrthancError, OrthancServer
    from mammotriage.net.tls import SiteTls
    from mammotriage.store.pg.cluster import PgCluster

    folder = Path(folder).absolute()
    site_file, _, _ = _paths(folder)
    if not site_file.exists():
        raise SiteError(f"{folder}: not a site server folder (no {SITE_FILE}; run 'mammotriage site init {folder}')")
    try:
        profile = json.loads(site_file.read_text(encoding="utf-8"))
        if not isinstance(profile, dict) or profile.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        pg = profile["postgres"]
        record = profile.get("tls")
        tls = SiteTls(folder / str(record["folder"])) if isinstance(record, dict) else None
        cluster = PgCluster(folder / str(pg["folder"]), int(pg["port"]), listen=str(pg.get("listen", "127.0.0.1")),
                            clients=tuple(pg.get("clients", ("127.0.0.1/32",))),
                            tls=_pg_tls(tls, record) if tls is not None and isinstance(record, dict) else None)
        orthanc = OrthancServer.load(folder / str(profile["orthanc"]["folder"]))
    except (OSError, ValueError, KeyError, TypeError, OrthancError) as exc:
        raise SiteError(f"{site_file}: cannot be read ({exc})") from exc
    return cluster, orthanc, profile


def tls_status(folder: str | Path) -> dict[str, Any]:
    """The ``tls`` part of ``site status``: certificates, expiry and any warning."""
    from mammotriage.net.tls import TlsError

    tls = site_tls(folder)
    if tls is None:
        return {"encrypted": False, "warning": NOT_ENCRYPTED}
    try:
        return tls.to_json()
    except TlsError as exc:
        return {"encrypted": True, "source": tls.source, "folder": str(tls.folder),
                "warning": f"the TLS material cannot be read: {exc}"}


def site_status(folder: str | Path) -> dict[str, Any]:
    cluster, orthanc, _ = load_site(folder)
    pg = cluster.status().to_json()
    oc = orthanc.status().to_json()
    return {"folder": str(Path(folder).absolute()), "running": bool(pg["running"] and oc.get("answering")),
            "postgres": pg, "orthanc": oc, "tls": tls_status(folder)}


def renew_tls(folder: str | Path, *, hosts: Sequence[str] = (), days: int | None = None,
              tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
              tls_ca: str | Path | None = None) -> dict[str, Any]:
    """``site tls``: a new server certificate from the site CA (or the site's own), put into use.

    A running PostgreSQL reloads its files; a running Orthanc is restarted. A site made
    before TLS is switched to TLS (its workstations need new profiles).
    """
    from mammotriage.net.orthanc import OrthancServer
    from mammotriage.net.tls import SERVER_DAYS, SiteTls

    folder = Path(folder).absolute()
    cluster, orthanc, profile = load_site(folder)
    tls = site_tls(folder)
    enabling = tls is None
    if tls is None:
        tls = SiteTls(folder / TLS_FOLDER)
    _make_tls(tls, hosts, days or SERVER_DAYS, tls_cert, tls_key, tls_ca, renew=True)
    record = _tls_record(tls)
    profile["tls"] = record
    write_atomic(folder / SITE_FILE, (json.dumps(profile, indent=1) + "\n").encode("utf-8"))
    cluster.tls = _pg_tls(tls, record)
    if enabling:
        cluster.configure_tls()
    else:
        cluster.install_tls_files()
    cluster.reload()
    was_running = orthanc.status().running
    orthanc.stop()
    orthanc = OrthancServer(orthanc.folder, orthanc.http_port, orthanc.dicom_port, orthanc.aet,
                            stable_age_s=orthanc.stable_age_s, remote_access=orthanc.remote_access,
                            allowed_senders=orthanc.allowed_senders, binary=orthanc._binary, plugin=orthanc._plugin,
                            name=orthanc.name, tls_pem=tls.server_pem, tls_ca=tls.ca_cert,
                            tls_check_hostname=record["check_hostname"],
                            dicom_tls=(tls.server_cert, tls.server_key) if orthanc.dicom_tls else None,
                            forward_results=orthanc.forward_results)
    orthanc.write_config()
    if was_running:
        orthanc.start()
    return site_status(folder)


def start_site(folder: str | Path) -> dict[str, Any]:
    """Start PostgreSQL (and bring its schema up to date), then Orthanc; on a failure stop
    what this call started."""
    cluster, orthanc, _ = load_site(folder)
    was_running = cluster.status().running
    if not was_running:
        cluster.start()
    try:
        before, after = cluster.upgrade()  # a site made by an older version: its schema brought up to date
        if before != after:
            print(f"site database: schema version {before} -> {after}", file=sys.stderr)
        archive_was_running = orthanc.status().running
        orthanc.start()
        if orthanc.forward_results and not archive_was_running:
            _resend_lost_forwards(orthanc)
    except Exception:
        if not was_running:
            cluster.stop()
        raise
    return site_status(folder)


def _resend_lost_forwards(orthanc: OrthancServer) -> None:
    """Orthanc just started: a "queued" forward is a store job the stop lost (jobs are not
    saved); sent again, as are the failed ones. Best effort: said, never fatal."""
    from mammotriage.net.orthanc import OrthancError

    try:
        counts = orthanc.forward_pending(include_queued=True)
    except OrthancError as exc:
        print(f"site start: AI results to the PACS not checked: {exc}", file=sys.stderr)
        return
    if counts["queued"]:
        print(f"site start: {counts['queued']} AI result(s) the PACS had not taken sent again", file=sys.stderr)


def stop_site(folder: str | Path) -> dict[str, Any]:
    """Stop Orthanc, then PostgreSQL (stopping a stopped server is not an error)."""
    cluster, orthanc, _ = load_site(folder)
    orthanc.stop()
    if cluster.status().running:
        cluster.stop()
    return site_status(folder)


# ------------------------------------------------------------------ command line

def add_site_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "site", help="the site server: PostgreSQL store + Orthanc archive (init, start, stop, status)",
        description="A screening site's server in one folder: the PostgreSQL site store and the Orthanc "
                    "image archive (DICOMweb). 'init' creates both, stopped; 'start' and 'stop' run them; "
                    "'status' reports them.")
    sub = p.add_subparsers(dest="site_command", required=True)
    q = sub.add_parser("init", help="create a site server folder")
    q.add_argument("folder", type=Path)
    q.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help=f"PostgreSQL port (default {DEFAULT_PG_PORT})")
    q.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"Orthanc REST/DICOMweb port (default {DEFAULT_HTTP_PORT})")
    q.add_argument("--dicom-port", type=int, default=DEFAULT_DICOM_PORT,
                   help=f"Orthanc DICOM port (default {DEFAULT_DICOM_PORT})")
    q.add_argument("--aet", default=DEFAULT_AE_TITLE, help=f"the archive's AE title (default {DEFAULT_AE_TITLE})")
    q.add_argument("--remote-access", action="store_true",
                   help="let other hosts reach Orthanc's HTTPS port and PostgreSQL (workstations on the site "
                        "network; PostgreSQL listens on every address unless --listen says where)")
    q.add_argument("--listen", action="append", metavar="ADDRESS",
                   help="an address PostgreSQL listens on besides 127.0.0.1 (repeatable; '*': every address); "
                        "default 127.0.0.1 only")
    _add_tls_options(q)
    q.add_argument("--pacs", metavar="AET@HOST:PORT",
                   help="the PACS the archive forwards the AI results (SR, SEG) to, once each; the workstations' "
                        "outboxes then send none (default: the archive forwards nothing)")
    q.add_argument("--dicom-tls", action="store_true",
                   help="the archive's DICOM port speaks DICOM TLS only (senders must use TLS; default: plain DICOM)")
    q.add_argument("--json", action="store_true")
    q = sub.add_parser("tls", help="renew the server certificate (or take the site's own)",
                       description="Sign a new server key and certificate with the site CA (the names of the "
                                   "current one unless --host is given), or take the site's own certificate "
                                   "(--tls-cert/--tls-key); a running PostgreSQL reloads it, a running Orthanc "
                                   "is restarted. The CA stays, so the workstations' profiles stay valid. On a "
                                   "site made before TLS this switches TLS on (then write new profiles).")
    q.add_argument("folder", type=Path)
    _add_tls_options(q)
    q.add_argument("--json", action="store_true")
    for name, text in (("start", "start PostgreSQL, then Orthanc"), ("stop", "stop Orthanc, then PostgreSQL"),
                       ("status", "report both servers"),
                       ("forward", "send the AI results the PACS has not taken yet (a forward that failed)")):
        q = sub.add_parser(name, help=text)
        q.add_argument("folder", type=Path)
        q.add_argument("--json", action="store_true")
    q = sub.add_parser("profile", help="write the profile a workstation or AI worker joins the site with",
                       description="Write a site profile (JSON, mode 0600: it holds the role's database password "
                                   "and the archive's credentials) for 'mammotriage app --site FILE'.")
    q.add_argument("folder", type=Path)
    q.add_argument("--role", choices=("workstation", "worker"), required=True)
    q.add_argument("--out", type=Path, required=True, metavar="FILE")
    q.add_argument("--host", default="127.0.0.1",
                   help="the site server's address on the site network (default 127.0.0.1: this machine)")
    from mammotriage.net.site_migrate import add_migrate_command

    add_migrate_command(sub)  # 'site migrate': its own handler (a standalone archive into the site)
    from mammotriage.net.site_models import add_models_command

    add_models_command(sub)  # 'site models': its own handler (the site's model registry)
    from mammotriage.net.site_accounts import add_accounts_command

    add_accounts_command(sub)  # 'site accounts': its own handler (readers' site accounts)
    p.set_defaults(func=cmd_site)


def _add_tls_options(q: argparse.ArgumentParser) -> None:
    from mammotriage.net.tls import SERVER_DAYS

    q.add_argument("--host", action="append", default=[], metavar="ADDRESS",
                   help="an address or DNS name of the server on the site network, named in the server "
                        "certificate (repeatable; 127.0.0.1 and localhost always are)")
    q.add_argument("--days", type=int, default=None,
                   help=f"validity of a generated server certificate in days (default {SERVER_DAYS})")
    q.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="the site's own server certificate (PEM, with its chain) instead of a generated one")
    q.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM, no passphrase)")
    q.add_argument("--tls-ca", type=Path, metavar="FILE",
                   help="the CA certificate workstations verify it with (default: the chain's root)")


def _say(status: dict[str, Any]) -> str:
    pg, oc = status["postgres"], status["orthanc"]
    pg_text = (f"running (pid {pg['pid']}, port {pg['port']})" if pg["running"]
               else ("stopped" if pg["initialised"] else "not initialised"))
    text = f"site {status['folder']}\n  PostgreSQL: {pg_text}\n  Orthanc: {oc.get('detail', '')}"
    tls = status.get("tls") or {}
    cert = tls.get("server_certificate")
    if cert:
        text += (f"\n  TLS: server certificate valid until {cert['not_after']} ({cert['days_left']} days), "
                 f"names {', '.join(cert['names'])}; "
                 f"{'the site CA' if tls.get('source') == 'generated' else 'the site' + chr(39) + 's own CA'} "
                 f"{tls['ca_certificate']['subject']}")
    elif not tls.get("encrypted", True):
        text += "\n  TLS: off"
    if tls.get("warning"):
        text += f"\n  warning: {tls['warning']}"
    return text


def cmd_site(args: argparse.Namespace) -> int:
    from mammotriage.net.orthanc import OrthancError
    from mammotriage.net.settings import NetworkConfigError
    from mammotriage.net.tls import TlsError
    from mammotriage.store.pg.cluster import PgError

    if args.site_command == "profile":
        return _cmd_profile(args)
    try:
        if args.site_command == "init":
            init_site(args.folder, pg_port=args.pg_port, http_port=args.http_port, dicom_port=args.dicom_port,
                      pacs=parse_pacs(args.pacs) if args.pacs else None,
                      aet=args.aet, remote_access=args.remote_access, hosts=args.host, listen=args.listen,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca, days=args.days,
                      dicom_tls=args.dicom_tls)
            status = site_status(args.folder)
        elif args.site_command == "tls":
            status = renew_tls(args.folder, hosts=args.host, days=args.days, tls_cert=args.tls_cert,
                               tls_key=args.tls_key, tls_ca=args.tls_ca)
        elif args.site_command == "start":
            status = start_site(args.folder)
        elif args.site_command == "stop":
            status = stop_site(args.folder)
        elif args.site_command == "forward":
            _, orthanc, _ = load_site(args.folder)
            counts = orthanc.forward_pending()
            print(json.dumps(counts) if args.json else
                  f"{counts['results']} AI results in the archive, {counts['sent']} at the PACS, "
                  f"{counts['queued']} sent now")
            return 0
        else:
            status = site_status(args.folder)
    except (SiteError, PgError, OrthancError, TlsError, NetworkConfigError) as exc:
        print(f"site {args.site_command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=1) if args.json else _say(status))
    if args.site_command == "start" and not status["running"]:
        return 1
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from mammotriage.net.site_profile import SiteProfileError, write_profile

    try:
        profile = write_profile(args.folder, args.role, args.out, args.host)
    except (SiteError, SiteProfileError) as exc:
        print(f"site profile: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {profile.path} (mode 0600: it holds the {profile.user} password and the archive's "
          f"credentials; copy it to the {profile.role} only)\n  {profile.where()}")
    if profile.ca_file is not None:
        print(f"  TLS: verify-full and https with the site CA it carries (written to {profile.ca_file})")
    elif warning := profile.warning():
        print(f"  warning: {warning}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("  other hosts reach the servers only when they listen on the site network "
              "(docs/hospital-it.md, 'Joining a workstation')", file=sys.stderr)
    return 0
