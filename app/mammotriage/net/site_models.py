"""The site's models: publish and promote on the server, follow the active one on workers.

``mammotriage site models list|promote|rollback DIR`` (registered by one line in
:mod:`mammotriage.net.site`) runs on the site server with the owner's role and writes the
site registry (:mod:`mammotriage.store.pg.models`):

* ``promote DIR PACKAGE --who NAME (--gate-report FILE | --force-reason TEXT)`` checks
  the package (``model.package.verify``: metadata, weights sha256), publishes it (its
  folder as a tar in the site store; once per weights) and makes it the site's active
  model. The gate report (``mammotriage validate``'s JSON) must be for this package's
  weights, must have passed, and must compare it with the site's active model; its
  recalibrated operating points go with the promotion, as on a workstation. The queue
  moves to the new model in the same transaction (``--no-retriage``: only the pending
  jobs).
* ``rollback DIR --who NAME --reason TEXT`` returns to the model active before.

:class:`ModelFollower` is the worker's side: it asks the site which model is active
(one query, every ``every_s`` seconds, between jobs), fetches a new one's tar from the
site store, checks it (the tar's sha256, only regular files inside the folder, the
package's own weights check, the registered weights), unpacks it into the worker's
folder and hands the loaded model over; a worker on any machine with a site profile
follows promotions without a file copied by hand. Anything refused keeps the model it
has, says why and tries again later.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mammotriage.model.package import ModelPackageError, verify
from mammotriage.store.pg.models import SiteModelError, SiteModels, SiteModelVersion, check_version

__all__ = ["MAX_PACKAGE_BYTES", "ModelFollower", "add_models_command", "check_gate_report", "pack_package",
           "unpack_package"]

#: A package larger than this is refused (the shipped one is a few MiB).
MAX_PACKAGE_BYTES = 1 << 30


def pack_package(folder: str | Path) -> tuple[bytes, dict[str, Any]]:
    """(uncompressed tar of a verified package folder, its metadata); links and other
    non-regular files are refused, names are relative, owners and times are zeroed."""
    folder = Path(folder)
    try:
        meta = verify(folder)
    except ModelPackageError as exc:
        raise SiteModelError(str(exc)) from exc
    check_version(str(meta.get("version")))
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise SiteModelError(f"{path}: not a regular file: a package holds files and folders only")
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_dir():
                tar.addfile(info)
                continue
            total += info.size
            if total > MAX_PACKAGE_BYTES:
                raise SiteModelError(f"{folder}: larger than {MAX_PACKAGE_BYTES >> 20} MiB")
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue(), meta


def unpack_package(data: bytes, version: SiteModelVersion, into: str | Path) -> Path:
    """Unpack a site package into ``into/<sha256>/<version>`` (atomically) and verify it.

    Refused: a tar whose sha256 is not the recorded one, a member that is not a regular
    file or folder or leaves the folder, more than :data:`MAX_PACKAGE_BYTES`, weights
    other than the registered ones. An existing, verified copy is reused.
    """
    root = Path(into).resolve()
    dest = root / version.weights_sha256 / check_version(version.version)
    if dest.resolve().parent.parent != root:
        raise SiteModelError(f"model {version.label()}: its folder would leave {root}")
    if dest.is_dir():
        try:
            if verify(dest).get("weights_sha256") == version.weights_sha256:
                return dest
        except ModelPackageError:
            pass
        shutil.rmtree(dest)
    if hashlib.sha256(data).hexdigest() != version.archive_sha256:
        raise SiteModelError(f"model {version.label()}: the package does not match its recorded sha256")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    except OSError as exc:
        raise SiteModelError(f"model {version.label()}: cannot make its folder ({exc})") from exc
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            total = 0
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if not (member.isfile() or member.isdir()) or Path(member.name).is_absolute() or ".." in parts:
                    raise SiteModelError(f"model {version.label()}: the package member {member.name!r} is not a "
                                         "file inside the package")
                total += member.size
                if total > MAX_PACKAGE_BYTES:
                    raise SiteModelError(f"model {version.label()}: larger than {MAX_PACKAGE_BYTES >> 20} MiB")
            tar.extractall(tmp, filter="data")
        try:
            meta = verify(tmp)
        except ModelPackageError as exc:
            raise SiteModelError(f"model {version.label()}: {exc}") from exc
        if meta.get("weights_sha256") != version.weights_sha256 or str(meta.get("version")) != version.version:
            raise SiteModelError(f"model {version.label()}: the package holds v{meta.get('version')} "
                                 f"({str(meta.get('weights_sha256'))[:12]}...)")
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError) as exc:
        raise SiteModelError(f"model {version.label()}: the package cannot be unpacked ({exc})") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_gate_report(report: Any, meta: dict[str, Any], active: SiteModelVersion | None) -> None:
    """Refuse a gate report that is not a passed validation of this package against the
    site's active model (``mammotriage validate``'s JSON)."""
    if not isinstance(report, dict):
        raise SiteModelError("the gate report is not a JSON object")
    def part(name: str) -> dict[str, Any]:
        value = report.get(name)
        return value if isinstance(value, dict) else {}

    cand = part("candidate")
    if cand.get("weights_sha256") != meta.get("weights_sha256"):
        raise SiteModelError(f"the gate report is for candidate v{cand.get('version')} "
                             f"({str(cand.get('weights_sha256'))[:12]}...), not for v{meta.get('version')} "
                             f"({str(meta.get('weights_sha256'))[:12]}...)")
    if str(cand.get("version")) != str(meta.get("version")):
        raise SiteModelError(f"the gate report names candidate v{cand.get('version')}, the package is "
                             f"v{meta.get('version')}")
    points = report.get("operating_points", {})
    if not isinstance(points, dict) or not all(
            isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in points.values()):
        raise SiteModelError("the gate report's operating_points is not an object of numbers")
    if report.get("passed") is not True:
        reasons = report.get("reasons")
        reasons = reasons if isinstance(reasons, list) else []
        raise SiteModelError("the gate refused this candidate: " + ("; ".join(map(str, reasons)) or "not passed"))
    parent = part("parent")
    if active is not None and parent.get("weights_sha256") != active.weights_sha256:
        raise SiteModelError(f"the gate report compares v{meta.get('version')} with v{parent.get('version')}, "
                             f"not with the site's active model {active.label()}: validate again")


class ModelFollower:
    """The site's active model, loaded, for a worker (``poll`` between jobs).

    ``load(folder, version, operating_points)`` loads a verified package folder (the
    triage worker's ``load_model``). ``poll()`` returns the newly loaded model when the
    site's active one changed since the last poll, else None; it asks the site at most
    every ``every_s`` seconds and never raises (a refusal or an away server is said and
    the model held is kept).
    """

    def __init__(self, dsn: str, folder: str | Path, load: Callable[[Path, SiteModelVersion, dict[str, Any]], Any],
                 *, every_s: float = 10.0, say: Callable[[str], None] = print) -> None:
        self.dsn = dsn
        self.folder = Path(folder)
        self.load = load
        self.every_s = float(every_s)
        self.say = say
        self.sha256: str | None = None
        #: the site's active model as last read (what new studies are queued for), even
        #: while this worker could not take it
        self.active_sha256: str | None = None
        self.model: Any = None
        self._asked = 0.0
        self.retry_s = 300.0
        self._refused: dict[str, float] = {}   # sha256 -> when to try it again

    def first(self) -> Any:
        """The site's active model now; raises :class:`SiteModelError` when there is none
        or it cannot be loaded (the worker cannot start)."""
        with SiteModels(self.dsn) as models:
            active = models.active()
            if active is None:
                raise SiteModelError("the site has no active model: promote one on the site server "
                                     "(`mammotriage site models promote DIR PACKAGE ...`)")
            self._take(models, active)
            self.active_sha256 = active.weights_sha256
        return self.model

    def _take(self, models: SiteModels, version: SiteModelVersion) -> None:
        folder = unpack_package(models.archive(version.weights_sha256), version, self.folder)
        try:
            model = self.load(folder, version, models.operating_points(version.weights_sha256))
        except Exception as exc:
            raise SiteModelError(f"model {version.label()} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        self.model, self.sha256 = model, version.weights_sha256
        self._asked = time.monotonic()

    def poll(self) -> Any:
        if time.monotonic() - self._asked < self.every_s:
            return None
        self._asked = time.monotonic()
        try:
            with SiteModels(self.dsn) as models:
                sha = models.active_sha256()
                if sha is not None:
                    self.active_sha256 = sha
                if sha is not None and sha == self.sha256:
                    self._move(models, sha)
                    return None
                if sha is None or time.monotonic() < self._refused.get(sha, 0.0):
                    return None
                version = models.get(sha)
                if version is None:
                    return None
                before = self.sha256
                try:
                    self._take(models, version)
                except SiteModelError as exc:
                    self._refused[sha] = time.monotonic() + self.retry_s
                    self.say(f"site model {version.label()} refused, keeping the model held (its jobs wait; "
                             f"trying again in {self.retry_s:.0f} s): {exc}")
                    return None
                self._refused.pop(sha, None)
                self.say(f"site model {version.label()} is active: running it"
                         + (f" (was {before[:12]}...)" if before else ""))
                self._move(models, sha)
                return self.model
        except Exception as exc:  # noqa: BLE001 - the store is away: ask again later
            self.say(f"site models: cannot ask the site store ({type(exc).__name__}: {exc}); asking again later")
            return None

    def _move(self, models: SiteModels, sha: str) -> None:
        """Jobs a watcher queued for the model before: moved (never in the way of a handover)."""
        try:
            moved = models.move_pending(sha)
        except Exception as exc:  # noqa: BLE001 - said; the next poll moves them
            self.say(f"site models: pending jobs of other models not moved yet ({type(exc).__name__}: {exc})")
            return
        if moved["superseded"]:
            self.say(f"site models: {moved['superseded']} pending job(s) of another model moved to the active "
                     f"{sha[:12]}...")


# ---------------------------------------------------------------------- commands

def add_models_command(sub: Any) -> None:
    """``site models`` (called from :func:`mammotriage.net.site.add_site_commands`)."""
    q = sub.add_parser(
        "models", help="the site's model registry: list, promote (publish) and roll back",
        description="The one model the site's AI workers and workstations run. 'promote' publishes a checked "
                    "package to the site store and makes it active (a passed gate report against the active "
                    "model, or a logged override); the triage queue moves to it. Runs on the site server.")
    msub = q.add_subparsers(dest="models_command", required=True)
    r = msub.add_parser("list", help="published models, the active one and the history")
    r.add_argument("folder", type=Path)
    r.add_argument("--json", action="store_true")
    r = msub.add_parser("promote", help="publish a package and make it the site's active model")
    r.add_argument("folder", type=Path)
    r.add_argument("package", type=Path)
    r.add_argument("--who", required=True, help="who promotes (recorded)")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--gate-report", type=Path, metavar="FILE",
                   help="the passed gate report of 'mammotriage validate' for this package")
    g.add_argument("--force-reason", metavar="TEXT", help="promote without a gate report, recording why")
    r.add_argument("--no-retriage", action="store_true",
                   help="move only the pending jobs to the new model (default: also re-triage every exam)")
    r.add_argument("--json", action="store_true")
    r = msub.add_parser("rollback", help="return to the model active before the last promotion")
    r.add_argument("folder", type=Path)
    r.add_argument("--who", required=True)
    r.add_argument("--reason", required=True)
    r.add_argument("--no-retriage", action="store_true")
    r.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_models)


def _listing(models: SiteModels) -> dict[str, Any]:
    active = models.active_sha256()
    return {"active": active,
            "versions": [{"version": v.version, "weights_sha256": v.weights_sha256, "bytes": v.archive_bytes,
                          "published_by": v.published_by, "published_at": v.published_at,
                          "active": v.weights_sha256 == active} for v in models.versions()],
            "history": models.history()}


def cmd_models(args: argparse.Namespace) -> int:
    from mammotriage.net.site import SiteError, load_site
    from mammotriage.store.pg.cluster import PgError

    name = f"site models {args.models_command}"
    try:
        cluster, _, _ = load_site(args.folder)
        with SiteModels(cluster.dsn("mt_admin")) as models:
            if args.models_command == "list":
                out = _listing(models)
            elif args.models_command == "promote":
                bundle, meta = pack_package(args.package)
                report = None
                active = models.active()
                if args.gate_report is not None:
                    try:
                        report = json.loads(args.gate_report.read_text(encoding="utf-8"))
                    except (OSError, ValueError) as exc:
                        raise SiteModelError(f"{args.gate_report}: cannot be read ({exc})") from exc
                    check_gate_report(report, meta, active)
                sha, version = str(meta["weights_sha256"]), str(meta.get("version"))
                new = models.publish(sha, version, bundle, meta, args.who)
                moved = models.promote(sha, args.who, args.force_reason or "validation gate passed", report,
                                       retriage=not args.no_retriage,
                                       expected_active=None if active is None else active.weights_sha256)
                out = {"promoted": version, "weights_sha256": sha, "published": new, "queue": moved}
            else:
                back, moved = models.rollback(args.who, args.reason, retriage=not args.no_retriage)
                out = {"active": back.version, "weights_sha256": back.weights_sha256, "queue": moved}
    except (SiteError, PgError, SiteModelError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the store refused or is away: said, exit 2
        print(f"{name}: the site store: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=1))
    elif args.models_command == "list":
        for v in out["versions"]:
            print(f"{'*' if v['active'] else ' '} v{v['version']} {v['weights_sha256'][:12]}... "
                  f"({v['bytes'] >> 10} KiB, published by {v['published_by']} {v['published_at']})")
        for e in out["history"]:
            print(f"  {e['at']} {e['action']} v{e['version']} by {e['who']}: {e['reason']}")
        if not out["versions"]:
            print("no model published on the site")
    else:
        q = out["queue"]
        what = "promoted" if args.models_command == "promote" else "rolled back to"
        print(f"{what} v{out.get('promoted') or out.get('active')} ({out['weights_sha256'][:12]}...): "
              f"{q['superseded']} pending jobs moved to it, {q['retriage']} exams queued for re-triage")
    return 0
