"""``mammotriage site init|start|stop|status DIR``: a site server in one folder.

A site server holds what the workstations and AI workers of one screening site share:

* ``DIR/postgres``: the PostgreSQL cluster of the site store (correction chain, shared
  triage queue; :class:`mammotriage.store.pg.cluster.PgCluster`);
* ``DIR/orthanc``: the Orthanc image archive, DICOMweb on (:class:`mammotriage.net.orthanc.OrthancServer`);
* ``DIR/site.json``: what ``start``/``stop``/``status`` need to find both again (ports,
  AE title; no secrets: the passwords stay in each server's own 0600 files).

``init`` creates both and leaves them stopped; ``start`` starts PostgreSQL, then Orthanc
(if Orthanc fails, PostgreSQL is stopped again, so a failed start leaves nothing half
up); ``stop`` stops Orthanc, then PostgreSQL; ``status`` reports both (``--json``: the
shape below). Hospital IT runs these as a service (docs/hospital-it.md, "Site mode").

``status --json``::

    {"folder": "...", "running": true,
     "postgres": {"initialised": true, "running": true, "pid": 123, "port": 5432, "folder": "..."},
     "orthanc": {"configured": true, "running": true, "answering": true, ...}}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammotriage.jsonio import write_atomic

if TYPE_CHECKING:  # imported when used: building the command line must stay fast
    from mammotriage.net.orthanc import OrthancServer
    from mammotriage.store.pg.cluster import PgCluster

__all__ = ["SITE_FILE", "SiteError", "add_site_commands", "init_site", "load_site", "site_status", "start_site", "stop_site"]

SITE_FILE = "site.json"
FORMAT = "mammotriage-site/1"
DEFAULT_PG_PORT = 5432
#: net.orthanc's defaults (a test keeps them equal)
DEFAULT_HTTP_PORT = 8042
DEFAULT_DICOM_PORT = 4242
DEFAULT_AE_TITLE = "MT_ARCHIVE"


class SiteError(RuntimeError):
    """A site folder that cannot be created, read, started or stopped (the message says why)."""


def _paths(folder: Path) -> tuple[Path, Path, Path]:
    return folder / SITE_FILE, folder / "postgres", folder / "orthanc"


def init_site(folder: str | Path, *, pg_port: int = DEFAULT_PG_PORT, http_port: int = DEFAULT_HTTP_PORT,
              dicom_port: int = DEFAULT_DICOM_PORT, aet: str = DEFAULT_AE_TITLE,
              remote_access: bool = False) -> dict[str, Any]:
    """Create the site server's configuration in ``folder`` (both servers stopped)."""
    from mammotriage.net.orthanc import OrthancServer
    from mammotriage.store.pg.cluster import PgCluster

    folder = Path(folder).absolute()
    site_file, pg_dir, orthanc_dir = _paths(folder)
    if site_file.exists():
        raise SiteError(f"{site_file} exists: {folder} already holds a site server")
    if len({pg_port, http_port, dicom_port}) != 3:
        raise SiteError(f"the PostgreSQL, HTTP and DICOM ports must differ ({pg_port}, {http_port}, {dicom_port})")
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        orthanc = OrthancServer(orthanc_dir, http_port, dicom_port, aet, remote_access=remote_access)
        orthanc.write_config()  # first: it checks ports, AE title and the Orthanc install
        PgCluster(pg_dir, pg_port).init()
    except BaseException:
        # a failed init leaves no half-made site behind (only what this call created)
        import shutil

        if made:
            shutil.rmtree(made[-1], ignore_errors=True)
        raise
    profile = {"format": FORMAT, "postgres": {"folder": "postgres", "port": pg_port},
               "orthanc": {"folder": "orthanc", "http_port": orthanc.http_port, "dicom_port": orthanc.dicom_port,
                           "aet": orthanc.aet, "remote_access": bool(remote_access)}}
    write_atomic(site_file, (json.dumps(profile, indent=1) + "\n").encode("utf-8"))
    return profile


def load_site(folder: str | Path) -> tuple[PgCluster, OrthancServer, dict[str, Any]]:
    """The two servers of the site folder ``folder`` (``site init`` made it)."""
    from mammotriage.net.orthanc import OrthancError, OrthancServer
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
        cluster = PgCluster(folder / str(pg["folder"]), int(pg["port"]))
        orthanc = OrthancServer.load(folder / str(profile["orthanc"]["folder"]))
    except (OSError, ValueError, KeyError, TypeError, OrthancError) as exc:
        raise SiteError(f"{site_file}: cannot be read ({exc})") from exc
    return cluster, orthanc, profile


def site_status(folder: str | Path) -> dict[str, Any]:
    cluster, orthanc, _ = load_site(folder)
    pg = cluster.status().to_json()
    oc = orthanc.status().to_json()
    return {"folder": str(Path(folder).absolute()), "running": bool(pg["running"] and oc.get("answering")),
            "postgres": pg, "orthanc": oc}


def start_site(folder: str | Path) -> dict[str, Any]:
    """Start PostgreSQL, then Orthanc; on Orthanc's failure stop what this call started."""
    from mammotriage.net.orthanc import OrthancError

    cluster, orthanc, _ = load_site(folder)
    was_running = cluster.status().running
    if not was_running:
        cluster.start()
    try:
        orthanc.start()
    except OrthancError:
        if not was_running:
            cluster.stop()
        raise
    return site_status(folder)


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
                   help="let other hosts reach Orthanc's HTTP port (workstations on the site network)")
    q.add_argument("--json", action="store_true")
    for name, text in (("start", "start PostgreSQL, then Orthanc"), ("stop", "stop Orthanc, then PostgreSQL"),
                       ("status", "report both servers")):
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
    p.set_defaults(func=cmd_site)


def _say(status: dict[str, Any]) -> str:
    pg, oc = status["postgres"], status["orthanc"]
    pg_text = (f"running (pid {pg['pid']}, port {pg['port']})" if pg["running"]
               else ("stopped" if pg["initialised"] else "not initialised"))
    return f"site {status['folder']}\n  PostgreSQL: {pg_text}\n  Orthanc: {oc.get('detail', '')}"


def cmd_site(args: argparse.Namespace) -> int:
    from mammotriage.net.orthanc import OrthancError
    from mammotriage.store.pg.cluster import PgError

    if args.site_command == "profile":
        return _cmd_profile(args)
    try:
        if args.site_command == "init":
            init_site(args.folder, pg_port=args.pg_port, http_port=args.http_port, dicom_port=args.dicom_port,
                      aet=args.aet, remote_access=args.remote_access)
            status = site_status(args.folder)
        elif args.site_command == "start":
            status = start_site(args.folder)
        elif args.site_command == "stop":
            status = stop_site(args.folder)
        else:
            status = site_status(args.folder)
    except (SiteError, PgError, OrthancError) as exc:
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
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("  other hosts reach the servers only when they listen on the site network "
              "(docs/hospital-it.md, 'Joining a workstation')", file=sys.stderr)
    return 0
