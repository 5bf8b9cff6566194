"""Model registry: immutable model versions, exactly one active, every change logged.

Versions are registered from verified packages (the shipped ones in ``models/`` and the
site's own candidates under ``<data dir>/models/``); a version's weights hash never
changes. Which version is active is a fold over the append-only ``model_events``
(``promote`` makes a version active, ``rollback`` returns to the one active before the
last promotion), so the history of what the site ran is never lost. Every AI result
keeps the version that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammotriage.model.package import ModelPackageError, default_model_dir, verify
from mammotriage.store import db


class RegistryError(RuntimeError):
    """A registry operation that is refused, with the reason."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: str
    weights_sha256: str
    parent: str | None
    origin: str
    registered_at: str


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class ModelRegistry(db.Connected):




    # ----------------------------------------------------------------- versions
    def register(self, package_dir: str | Path, origin: str = "site", who: str = "system") -> ModelVersion:
        """Register a verified package; registering the same version twice is a no-op,
        registering different weights under a used version number is refused."""
        package_dir = Path(package_dir).resolve()
        meta = verify(package_dir)
        version = str(meta.get("version") or "")
        if not version:
            raise RegistryError(f"{package_dir}: metadata has no version")
        existing = self.get(version)
        if existing is not None:
            if existing.weights_sha256 != meta["weights_sha256"]:
                raise RegistryError(f"version {version} is already registered with other weights "
                                    f"({existing.weights_sha256[:12]}...): versions are immutable")
            return existing
        row = ModelVersion(version, str(package_dir), str(meta["weights_sha256"]),
                           meta.get("parent_version") or None, origin, _now())
        with db.transaction(self.conn):
            self.conn.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?)",
                              (row.version, row.path, row.weights_sha256, row.parent, row.origin,
                               row.registered_at))
            self._log(version, "register", who, f"{origin} package at {package_dir}")
        return row

    def ensure_shipped(self, package_dir: str | Path | None = None) -> ModelVersion | None:
        """Register the shipped default package and make it active if nothing is."""
        folder = Path(package_dir) if package_dir else default_model_dir()
        try:
            version = self.register(folder, origin="shipped")
        except ModelPackageError:
            return None
        if self.active() is None:
            with db.transaction(self.conn):
                self._log(version.version, "promote", "system", "first shipped model")
        return version

    def get(self, version: str) -> ModelVersion | None:
        r = self.conn.execute("SELECT * FROM model_versions WHERE version = ?", (version,)).fetchone()
        return ModelVersion(*r) if r else None

    def versions(self) -> list[ModelVersion]:
        return [ModelVersion(*r) for r in self.conn.execute("SELECT * FROM model_versions ORDER BY registered_at")]

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

    def active(self) -> ModelVersion | None:
        stack = self._active_stack()
        return self.get(stack[-1]) if stack else None

    def promote(self, version: str, gate_report: dict[str, Any] | None, who: str, force_reason: str = "") -> None:
        """Make ``version`` active.

        A gate report (see :mod:`mammotriage.model.gate`) that did not pass, or that
        compared the candidate with another model than the active one, refuses the
        promotion, with its reasons, unless ``force_reason`` records why an
        administrator overrides it. Without any report the promotion is refused.
        """
        if self.get(version) is None:
            raise RegistryError(f"unknown model version {version}")
        active = self.active()
        if active is not None and active.version == version:
            raise RegistryError(f"{version} is already the active model")
        report_json = json.dumps(gate_report, sort_keys=True) if gate_report else ""
        if gate_report is None and not force_reason:
            raise RegistryError("no validation report: evaluate the candidate against the active model first")
        if gate_report is not None and not force_reason:
            compared = gate_report.get("parent") or {}
            stale = active is not None and compared.get("weights_sha256") != active.weights_sha256
            if stale and (compared or gate_report.get("passed")):
                raise RegistryError(f"the gate report compares {version} with v{compared.get('version')}, "
                                    f"not with the active model v{active.version}: validate again")
            if not gate_report.get("passed"):
                with db.transaction(self.conn):
                    self._log(version, "refuse", who, "; ".join(gate_report.get("reasons", [])), report_json)
                raise RegistryError("promotion refused: " + "; ".join(gate_report.get("reasons", ["gate failed"])))
        with db.transaction(self.conn):
            self._log(version, "promote", who, force_reason or "validation gate passed", report_json)

    def rollback(self, who: str, reason: str = "") -> ModelVersion:
        stack = self._active_stack()
        if len(stack) < 2:
            raise RegistryError("nothing to roll back to")
        with db.transaction(self.conn):
            self._log(stack[-1], "rollback", who, reason or f"back to {stack[-2]}")
        return self.get(stack[-2])

    def _log(self, version: str, action: str, who: str, reason: str, report: str = "") -> None:
        self.conn.execute("INSERT INTO model_events (at, version, action, who, reason, report) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (_now(), version, action, who, reason, report))
