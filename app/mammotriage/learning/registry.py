"""The learning side of the model registry: gate reports, promotion, rollback, pruning.

The read side (which version is active, its verified package, registering packages)
is :mod:`mammotriage.model.registry`, which everything that runs a model uses; only the
learning loop (the ``models`` command, the gate, the Model panel) changes which version
is active. :class:`ModelRegistry` here is that registry with its promote/rollback side.

Promotion needs a gate report (:mod:`mammotriage.learning.gate`) that this installation
made and kept (``gate_reports``: a hand-written JSON cannot pass), for this version's
weights, compared with the active model, on the site's locked validation snapshot.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from typing import Any

from mammotriage.clock import utc_now
from mammotriage.model import registry as _read
from mammotriage.model.registry import (
    STORE,
    ModelVersion,
    RegistryError,
    ShippedNotice,
    canonical_report,
    report_digest,
    site_policy,
)
from mammotriage.store import db

__all__ = ["STORE", "ModelRegistry", "ModelVersion", "RegistryError", "ShippedNotice", "report_digest",
           "site_policy"]


class ModelRegistry(_read.ModelRegistry):
    """The registry with the learning loop's side: record gate reports, promote, roll back, prune."""

    # ----------------------------------------------------------------- gate reports
    def record_report(self, report: dict[str, Any]) -> str:
        """Keep a gate report in the store; returns its sha256 (recording twice is a no-op)."""
        digest = report_digest(report)
        cand, parent = report.get("candidate") or {}, report.get("parent") or {}
        with db.transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO gate_reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest, utc_now(), str(cand.get("version")), str(cand.get("weights_sha256")),
                 str(parent.get("weights_sha256")), str((report.get("validation") or {}).get("snapshot")),
                 int(bool(report.get("passed"))), canonical_report(report)))
        return digest

    def stored_report(self, digest: str) -> dict[str, Any] | None:
        r = self.conn.execute("SELECT report FROM gate_reports WHERE sha256 = ?", (digest,)).fetchone()
        return json.loads(r[0]) if r else None

    def after_gate(self, report: dict[str, Any]) -> str:
        """Record ``report``; under the ``promote-after-gate`` policy a passed report for a
        pending shipped version promotes it. Returns what happened ("" when nothing)."""
        self.record_report(report)
        version = str((report.get("candidate") or {}).get("version"))
        if not report.get("passed") or version not in self.pending_shipped():
            return ""
        try:
            if site_policy(self.data_dir) != "promote-after-gate":
                return ""
        except RegistryError as exc:
            return f"shipped model {version} not promoted: {exc}"
        try:
            self.promote(version, report, who="site policy")
        except RegistryError as exc:
            return f"shipped model {version} not promoted: {exc}"
        return f"shipped model {version} promoted by site policy: it passed the local gate"

    # ----------------------------------------------------------------- promotion
    def promote(self, version: str, gate_report: dict[str, Any] | None, who: str, force_reason: str = "") -> None:
        """Make ``version`` active.

        The gate report (see :mod:`mammotriage.learning.gate`) must be one this
        installation's gate made and kept, for ``version``'s registered weights, compared
        with the active model, on the site's locked validation snapshot, and it must have
        passed; otherwise the promotion is refused with the reasons, unless
        ``force_reason`` records why an administrator overrides it. Without any report
        the promotion is refused.
        """
        target = self.get(version)
        if target is None:
            raise RegistryError(f"unknown model version {version}")
        active = self.active()
        if active is not None and active.version == version:
            raise RegistryError(f"{version} is already the active model")
        report_json = canonical_report(gate_report) if gate_report else ""
        if gate_report is None and not force_reason:
            raise RegistryError("no validation report: evaluate the candidate against the active model first")
        self.verified(target)  # its package copy is there and intact
        if gate_report is not None and not force_reason:
            self._check_report(target, active, gate_report)
            if not gate_report.get("passed"):
                with db.transaction(self.conn):
                    self._log(version, "refuse", who, "; ".join(gate_report.get("reasons", [])), report_json)
                raise RegistryError("promotion refused: " + "; ".join(gate_report.get("reasons", ["gate failed"])))
        with db.transaction(self.conn):
            self._log(version, "promote", who, force_reason or "validation gate passed", report_json)

    def _check_report(self, target: ModelVersion, active: ModelVersion | None, report: dict[str, Any]) -> None:
        cand = report.get("candidate") or {}
        if cand.get("weights_sha256") != target.weights_sha256 or str(cand.get("version")) != target.version:
            raise RegistryError(f"the gate report is for candidate v{cand.get('version')} "
                                f"({str(cand.get('weights_sha256'))[:12]}...), not for v{target.version} "
                                f"({target.weights_sha256[:12]}...)")
        if self.stored_report(report_digest(report)) is None:
            raise RegistryError("the gate report was not made by this installation's validation gate "
                                f"(no stored report with sha256 {report_digest(report)[:12]}...): "
                                f"run `mammotriage validate {target.version}`")
        compared = report.get("parent") or {}
        if active is not None and compared.get("weights_sha256") != active.weights_sha256:
            raise RegistryError(f"the gate report compares {target.version} with v{compared.get('version')}, "
                                f"not with the active model v{active.version}: validate again")
        from mammotriage.learning.snapshot_data import locked_validation

        locked = locked_validation(self.path)
        used = (report.get("validation") or {}).get("snapshot")
        if locked is None or used != locked["sha256"]:
            raise RegistryError(f"the gate report validated on snapshot {str(used)[:12]}, not on the site's "
                                "locked validation set"
                                + (f" {locked['sha256'][:12]}" if locked else " (none is locked)")
                                + ": validate again")

    def rollback(self, who: str, reason: str = "") -> ModelVersion:
        stack = self._active_stack()
        if len(stack) < 2:
            raise RegistryError("nothing to roll back to")
        with db.transaction(self.conn):
            self._log(stack[-1], "rollback", who, reason or f"back to {stack[-2]}")
        return self._must_get(stack[-2])

    # ----------------------------------------------------------------- pruning
    def referenced(self, version: ModelVersion) -> list[str]:
        """Why a version's package copy must stay (empty: it may be pruned)."""
        why = []
        active = self.active()
        if active is not None and active.version == version.version:
            why.append("active")
        n = self.conn.execute("SELECT COUNT(*) FROM model_events WHERE version = ? AND action != 'register'",
                              (version.version,)).fetchone()[0]
        if n:
            why.append(f"{n} promotion/rollback/refusal event(s)")
        for table in ("ai_exam_results", "ai_image_results"):
            n = self.conn.execute(f"SELECT COUNT(*) FROM {table} WHERE model_version = ? OR weights_sha256 = ?",
                                  (version.version, version.weights_sha256)).fetchone()[0]
            if n:
                why.append(f"{n} row(s) in {table}")
        return why

    def prune(self, dry_run: bool = False) -> list[str]:
        """Delete the package copies that nothing refers to; returns the pruned versions.
        The registry rows stay (immutable); a pruned version can be registered again."""
        pruned = []
        for v in self.versions():
            copy = self.store_dir(v.weights_sha256, v.version)
            if copy.is_dir() and not self.referenced(v):
                if not dry_run:
                    shutil.rmtree(copy)
                    with contextlib.suppress(OSError):  # other versions share these weights
                        copy.parent.rmdir()
                pruned.append(v.version)
        return pruned
