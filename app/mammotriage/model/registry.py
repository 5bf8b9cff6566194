"""Model registry: immutable model versions, exactly one active, every change logged.

Versions are registered from verified packages (the shipped ones in ``models/`` and the
site's own candidates under ``<data dir>/models/``). Registering **copies the whole
package folder** into the data directory, content-addressed by its weights sha256
(``<data dir>/models/packages/<sha256>/<version>/``), so reinstalling, moving or
upgrading the app never takes the active model (or the validity of its results) away;
a version's weights hash never changes. Which version is active is a fold over the
append-only ``model_events`` (``promote`` makes a version active, ``rollback`` returns
to the one active before the last promotion), so the history of what the site ran is
never lost. ``model_versions``, ``model_events`` and the stored gate reports refuse
UPDATE and DELETE (SQLite triggers). Every AI result keeps the version and weights hash
that produced it.

This module is the read side that everything running a model uses; promotion, rollback,
gate reports and pruning are the learning loop's (:mod:`mammotriage.learning.registry`).
The app and the triage worker load only :meth:`ModelRegistry.active_package`: the
registry's copy of the active version, verified against the registered hash.

A shipped version found at start-up (:meth:`ModelRegistry.ensure_shipped`) that is new
to the site is registered as a candidate and, by the site policy ``shipped_models`` in
``<data dir>/models.json`` — ``"propose"`` (default: the ML lead validates and promotes)
or ``"promote-after-gate"`` (promoted as soon as a local gate report for it passes) —
announced; it is never ignored silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammotriage.clock import utc_now
from mammotriage.model.package import (
    METADATA,
    WEIGHTS,
    ModelPackageError,
    default_model_dir,
    read_metadata,
    verify,
)
from mammotriage.store import db

#: Where package copies live, relative to the data directory (the archive's folder).
STORE = Path("models") / "packages"
#: Site settings of the registry, in the data directory.
SETTINGS_NAME = "models.json"
SHIPPED_POLICIES = ("propose", "promote-after-gate")


class RegistryError(RuntimeError):
    """A registry operation that is refused, with the reason."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: str  # the registry's copy (content-addressed), or the source folder of a legacy row
    weights_sha256: str
    parent: str | None
    origin: str
    registered_at: str
    source: str = field(default="", compare=False)  # the folder it was registered from


@dataclass(frozen=True)
class ShippedNotice:
    """What :meth:`ModelRegistry.ensure_shipped` did with the shipped package."""

    version: ModelVersion | None
    message: str = ""  # "" when there is nothing to tell


def report_digest(report: dict[str, Any]) -> str:
    """sha256 of a gate report's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(canonical_report(report).encode()).hexdigest()


def canonical_report(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True, separators=(",", ":"), default=str)


def site_policy(data_dir: Path) -> str:
    """``shipped_models`` from ``models.json`` (default ``"propose"``); a bad file is an error."""
    path = Path(data_dir) / SETTINGS_NAME
    if not path.is_file():
        return "propose"
    try:
        value = json.loads(path.read_text()).get("shipped_models", "propose")
    except (json.JSONDecodeError, AttributeError, OSError) as exc:
        raise RegistryError(f"{path}: unreadable site settings ({exc})") from exc
    if value not in SHIPPED_POLICIES:
        raise RegistryError(f"{path}: shipped_models must be one of {', '.join(SHIPPED_POLICIES)}, not {value!r}")
    return str(value)


#: The promote/rollback side, moved to :class:`mammotriage.learning.registry.ModelRegistry`
#: in architecture v2; reached from here for one release, with a DeprecationWarning.
MOVED_TO_LEARNING = frozenset({"record_report", "stored_report", "after_gate", "promote", "rollback",
                               "referenced", "prune"})


class ModelRegistry(db.Connected):

    if not TYPE_CHECKING:  # the type checker sees only the read side
        def __getattr__(self, name: str) -> Any:
            """Deprecated: the promote/rollback methods of the old registry, for scripts
            that still call them here (removed next release)."""
            if name not in MOVED_TO_LEARNING:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            warnings.warn(f"ModelRegistry.{name} moved: use mammotriage.learning.registry.ModelRegistry",
                          DeprecationWarning, stacklevel=2)
            from mammotriage.learning import registry as learning

            return getattr(learning.ModelRegistry, name).__get__(self)

    # ----------------------------------------------------------------- store
    @property
    def data_dir(self) -> Path:
        return self.path.expanduser().resolve().parent

    def store_dir(self, weights_sha256: str, version: str) -> Path:
        """The content-addressed copy of a version's package."""
        return self.data_dir / STORE / weights_sha256 / version

    def _row(self, r: sqlite3.Row) -> ModelVersion:
        copy = self.store_dir(r["weights_sha256"], r["version"])
        source = r["path"]
        path = copy if copy.is_dir() else Path(source) if Path(source).is_absolute() else self.data_dir / source
        return ModelVersion(r["version"], str(path), r["weights_sha256"], r["parent"], r["origin"],
                            r["registered_at"], source)

    def _copy_in(self, package_dir: Path, weights_sha256: str, version: str) -> Path:
        """Copy the whole package folder into the store (atomically); verify the copy."""
        final = self.store_dir(weights_sha256, version)
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{version}.copying-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(package_dir, tmp, ignore=shutil.ignore_patterns(".*"))
        try:
            meta = verify(tmp)
            if meta.get("weights_sha256") != weights_sha256 or str(meta.get("version")) != version:
                raise RegistryError(f"{package_dir}: changed while it was copied into the registry")
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    # ----------------------------------------------------------------- versions
    def register(self, package_dir: str | Path, origin: str = "site", who: str = "system") -> ModelVersion:
        """Register a verified package (its folder is copied into the store); registering
        the same version twice is a no-op (that restores a missing copy), registering
        different weights under a used version number is refused."""
        package_dir = Path(package_dir).resolve()
        meta = verify(package_dir)
        version = str(meta.get("version") or "")
        if not version:
            raise RegistryError(f"{package_dir}: metadata has no version")
        sha = str(meta["weights_sha256"])
        existing = self.get(version)
        if existing is not None:
            if existing.weights_sha256 != sha:
                raise RegistryError(f"version {version} is already registered with other weights "
                                    f"({existing.weights_sha256[:12]}...): versions are immutable")
            self._copy_in(package_dir, sha, version)
            return self._must_get(version)
        copy = self._copy_in(package_dir, sha, version)
        with db.transaction(self.conn):
            self.conn.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?)",
                              (version, str(copy.relative_to(self.data_dir)), sha,
                               meta.get("parent_version") or None, origin, utc_now()))
            self._log(version, "register", who, f"{origin} package from {package_dir}")
        return self._must_get(version)

    def ensure_shipped(self, package_dir: str | Path | None = None) -> ModelVersion | None:
        """Register the shipped package; make it active if nothing is. Returns its version."""
        return self.check_shipped(package_dir).version

    def check_shipped(self, package_dir: str | Path | None = None) -> ShippedNotice:
        """Register the shipped package. The first one becomes active; a version new to
        the site is registered as a candidate and announced (by the site policy, proposed
        to the ML lead or promoted once it passes the local gate); the message says so."""
        folder = Path(package_dir) if package_dir else default_model_dir()
        try:
            known = self.get(str(verify(folder).get("version") or ""))
            version = self.register(folder, origin="shipped")
        except ModelPackageError:
            return ShippedNotice(None)
        except RegistryError as exc:  # e.g. other weights under a used version: the active model stays
            return ShippedNotice(None, f"the model shipped in {folder} was not registered: {exc}")
        if self.active() is None:
            with db.transaction(self.conn):
                self._log(version.version, "promote", "system", "first shipped model")
            return ShippedNotice(version)
        try:
            policy, problem = site_policy(self.data_dir), ""
        except RegistryError as exc:  # a bad settings file never turns the AI off: say it, propose
            policy, problem = "propose", f" ({exc}; using 'propose')"
        if known is None:
            if policy == "promote-after-gate":
                why = "promoted by site policy once a local gate report for it passes"
            else:
                why = "proposed to the ML lead"
            with db.transaction(self.conn):
                self._log(version.version, "register", "system",
                          f"new shipped version: a candidate, {why} (site policy {policy})")
        pending = self.pending_shipped()
        if version.version in pending:
            return ShippedNotice(version, f"model {version.version} shipped with this install is a candidate "
                                 f"(active: {getattr(self.active(), 'version', 'none')}): validate it (`mammotriage validate "
                                 f"{version.version}`) and promote it in the Model panel"
                                 + (" - the site policy promotes it once it passes"
                                    if policy == "promote-after-gate" else "") + problem)
        return ShippedNotice(version, problem.strip(" ()"))

    def pending_shipped(self) -> list[str]:
        """Shipped versions never promoted nor refused (candidates waiting for the ML lead)."""
        decided = {r[0] for r in self.conn.execute(
            "SELECT DISTINCT version FROM model_events WHERE action IN ('promote', 'refuse')")}
        return [v.version for v in self.versions() if v.origin == "shipped" and v.version not in decided]

    def get(self, version: str) -> ModelVersion | None:
        r = self.conn.execute("SELECT * FROM model_versions WHERE version = ?", (version,)).fetchone()
        return self._row(r) if r else None

    def versions(self) -> list[ModelVersion]:
        return [self._row(r) for r in self.conn.execute("SELECT * FROM model_versions ORDER BY registered_at")]

    def history(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM model_events ORDER BY id")]

    # ----------------------------------------------------------------- active
    def _active_stack(self) -> list[str]:
        stack: list[str] = []
        for e in self.conn.execute("SELECT version, action FROM model_events "
                                   "WHERE action IN ('promote', 'rollback') ORDER BY id"):
            if e["action"] == "promote":
                stack.append(e["version"])
            elif stack:
                stack.pop()
        return stack

    def _must_get(self, version: str) -> ModelVersion:
        found = self.get(version)
        if found is None:
            raise RegistryError(f"model {version} is not registered")
        return found

    def active(self) -> ModelVersion | None:
        stack = self._active_stack()
        return self.get(stack[-1]) if stack else None

    def active_fingerprint(self) -> tuple[object, ...] | None:
        """What identifies the active version and its package copy now, without hashing:
        (version, registered weights sha256, folder, (mtime_ns, size) of its metadata and
        weights files). A change means: verify again. None when no version is active."""
        active = self.active()
        if active is None:
            return None
        files: list[tuple[int, int] | None] = []
        for name in (METADATA, WEIGHTS):
            try:
                st = (Path(active.path) / name).stat()
                files.append((st.st_mtime_ns, st.st_size))
            except OSError:
                files.append(None)
        return (active.version, active.weights_sha256, active.path, *files)

    def verified(self, version: ModelVersion) -> dict[str, Any]:
        """Metadata of the registry's copy of ``version`` after checking that it is that
        version with the registered weights; anything else raises :class:`RegistryError`."""
        copy = self.store_dir(version.weights_sha256, version.version)
        if not copy.is_dir():  # registered before packages were copied, or pruned: adopt the source
            # a source that is gone or changed is not adopted: verifying version.path below
            # then refuses it with the reason
            with contextlib.suppress(ModelPackageError, OSError, RegistryError):
                if verify(version.source).get("weights_sha256") == version.weights_sha256:
                    version = ModelVersion(**{**version.__dict__, "path": str(
                        self._copy_in(Path(version.source), version.weights_sha256, version.version))})
        try:
            meta = verify(version.path)
        except ModelPackageError as exc:
            raise RegistryError(f"the registry's copy of model {version.version} is unusable: {exc}") from exc
        if meta.get("weights_sha256") != version.weights_sha256 or str(meta.get("version")) != version.version:
            raise RegistryError(f"{version.path}: holds model {meta.get('version')} "
                                f"({str(meta.get('weights_sha256'))[:12]}...), not the registered "
                                f"{version.version} ({version.weights_sha256[:12]}...): refusing to run it")
        return meta

    def active_package(self) -> tuple[ModelVersion, Path, dict[str, Any]]:
        """(active version, its package folder, verified metadata) - the only model the app
        and the triage worker run; the recalibrated operating points of the gate report
        that promoted it (when there is one) replace the package's."""
        active = self.active()
        if active is None:
            raise RegistryError("no active model in the registry")
        meta = self.verified(active)
        active = self._must_get(active.version)  # its copy may just have been adopted
        points = self.operating_points(active.version)
        if points:
            meta = {**meta, "operating_points": points}
        return active, Path(active.path), meta

    def check_runs(self, folder: str | Path) -> dict[str, Any]:
        """Metadata of ``folder`` if it holds the active version's weights, else refuse."""
        active = self.active()
        meta = verify(folder)
        if active is None or meta.get("weights_sha256") != active.weights_sha256:
            raise RegistryError(f"{folder}: model {meta.get('version')} ({str(meta.get('weights_sha256'))[:12]}...) "
                                "is not the registry's active model"
                                + (f" v{active.version} ({active.weights_sha256[:12]}...)" if active else "")
                                + ": only the active model runs (register, validate and promote it first)")
        return meta

    def operating_points(self, version: str) -> dict[str, Any]:
        """Operating points recalibrated by the gate report of the last promotion of ``version``."""
        r = self.conn.execute("SELECT report FROM model_events WHERE version = ? AND action = 'promote' "
                              "AND report != '' ORDER BY id DESC LIMIT 1", (version,)).fetchone()
        if r is None:
            return {}
        try:
            return dict(json.loads(r[0]).get("operating_points") or {})
        except (json.JSONDecodeError, AttributeError):
            return {}

    def _log(self, version: str, action: str, who: str, reason: str, report: str = "") -> None:
        self.conn.execute("INSERT INTO model_events (at, version, action, who, reason, report) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (utc_now(), version, action, who, reason, report))


#: Why there is no model when the registry has no active version.
NO_MODEL = "no model registered (models/ has no verified package)"


@dataclass(frozen=True)
class ActivePackage:
    """The model to run, as :func:`active_package` found it: the registry's active
    version and its package folder with the package metadata, or why there is none."""

    version: ModelVersion | None
    folder: Path | None
    meta: dict[str, Any] | None
    notice: str = ""  # about a newly shipped version ("" when there is nothing to tell)
    error: str = ""  # why the active version cannot run ("" when it can, or when none is active)

    def __bool__(self) -> bool:
        return self.folder is not None

    @property
    def reason(self) -> str:
        """Why there is no model to run ("" when there is one)."""
        return "" if self else self.error or NO_MODEL


def active_package(archive_file: str | Path, model_dir: str | Path | None = None, *,
                   verified: bool = True) -> ActivePackage:
    """The one way to find the model to run: the registry's active version.

    The shipped package is registered first (:meth:`ModelRegistry.check_shipped`; what
    it has to tell is ``notice``). With ``verified`` (default) the folder is the
    registry's content-addressed copy, checked against the registered weights hash, and
    ``meta`` carries the operating points recalibrated by the gate report that promoted
    it (:meth:`ModelRegistry.active_package`); without it, ``meta`` is the copy's
    metadata file as it is, read without hashing the weights (listings, reports). An
    explicit ``model_dir`` is accepted only when it holds the active version's weights.
    A refusal never raises: it is ``error``.
    """
    notice, active = "", None
    try:
        with ModelRegistry(archive_file) as registry:
            notice = registry.check_shipped().message
            active = registry.active()
            if active is None:
                return ActivePackage(None, None, None, notice)
            if model_dir:
                return ActivePackage(active, Path(model_dir), registry.check_runs(model_dir), notice)
            if not verified:
                return ActivePackage(active, Path(active.path), read_metadata(active.path), notice)
            version, folder, meta = registry.active_package()
            return ActivePackage(version, folder, meta, notice)
    except (ModelPackageError, RegistryError) as exc:
        return ActivePackage(active, None, None, notice, str(exc))
