"""Model registry: immutable versions, one active, gate-controlled promotion, rollback,
content-addressed package copies, stored gate reports, append-only tables."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from mammotriage.learning.registry import ModelRegistry, RegistryError
from mtsupport import minimal_package as _package

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(scope="module")
def _tiny_site(tmp_path_factory):
    from retrain_sim import build_tiny_site

    from mammotriage.learning.snapshot_data import locked_validation

    site = build_tiny_site(tmp_path_factory.mktemp("registry-site"))
    assert locked_validation(site.archive)["sha256"] == site.validation  # locked on first use
    return site


@pytest.fixture
def site(_tiny_site, tmp_path):
    """A fresh copy of a tiny site: an archive with a locked validation snapshot, the tiny
    parent 0.0.1 active."""
    home = tmp_path / "home"
    shutil.copytree(_tiny_site.archive.parent, home)
    return home / "archive.sqlite", _tiny_site.validation


def _report(reg: ModelRegistry, version: str, passed: bool = True, reasons=(), *, parent=None,
            snapshot: str, record: bool = True, **extra) -> dict:
    """A gate report as the gate writes it (recorded in the store unless ``record`` is False)."""
    v, active = reg.get(version), reg.active()
    report = {"format": "mammotriage.gate/1", "passed": passed, "reasons": list(reasons),
              "candidate": {"version": version, "weights_sha256": v.weights_sha256},
              "parent": parent or {"version": active.version, "weights_sha256": active.weights_sha256},
              "validation": {"snapshot": snapshot}, **extra}
    if record:
        reg.record_report(report)
    return json.loads(json.dumps(report))  # as read back from the report file


def test_register_promote_rollback(site, tmp_path) -> None:
    archive, snap = site
    b = _package(tmp_path, "1.1.0", b"weights-b", parent="0.0.1")
    with ModelRegistry(archive) as reg:
        assert reg.active().version == "0.0.1"
        reg.register(b)
        with pytest.raises(RegistryError, match="no validation report"):
            reg.promote("1.1.0", None, who="admin")
        with pytest.raises(RegistryError, match="refused: worse on FROC"):
            reg.promote("1.1.0", _report(reg, "1.1.0", False, ["worse on FROC"], snapshot=snap), who="admin")
        assert reg.active().version == "0.0.1"
        # a passed report counts only against the model that is active now
        other = {"version": "0.9.0", "weights_sha256": "0" * 64}
        with pytest.raises(RegistryError, match=re.escape("compares 1.1.0 with v0.9.0, not with the active model v0.0.1")):
            reg.promote("1.1.0", _report(reg, "1.1.0", parent=other, snapshot=snap), who="admin")
        reg.promote("1.1.0", _report(reg, "1.1.0", snapshot=snap), who="admin")
        assert reg.active().version == "1.1.0"
        assert reg.rollback(who="admin", reason="reader complaints").version == "0.0.1"
        assert reg.active().version == "0.0.1"
        actions = [h["action"] for h in reg.history() if h["version"] == "1.1.0"]
        assert actions == ["register", "refuse", "promote", "rollback"]
        with pytest.raises(RegistryError, match="nothing to roll back"):
            reg.rollback(who="admin")


def test_promote_checks_whose_report_it_is(site, tmp_path) -> None:
    archive, snap = site
    b = _package(tmp_path, "1.1.0", b"weights-b")
    c = _package(tmp_path, "1.2.0", b"weights-c")
    with ModelRegistry(archive) as reg:
        reg.register(b)
        reg.register(c)
        for_b = _report(reg, "1.1.0", snapshot=snap)
        # a passed report for one candidate does not promote another
        with pytest.raises(RegistryError, match=r"report is for candidate v1\.1\.0 .*not for v1\.2\.0"):
            reg.promote("1.2.0", for_b, who="admin")
        # a report with the right version but other weights
        forged = json.loads(json.dumps(for_b))
        forged["candidate"]["version"] = "1.2.0"
        with pytest.raises(RegistryError, match=re.escape("not for v1.2.0")):
            reg.promote("1.2.0", forged, who="admin")
        # a hand-written report (never made by this installation's gate) cannot pass
        with pytest.raises(RegistryError, match="not made by this installation's validation gate"):
            reg.promote("1.2.0", _report(reg, "1.2.0", snapshot=snap, record=False), who="admin")
        # nor one edited after the gate wrote it
        edited = _report(reg, "1.2.0", False, ["worse"], snapshot=snap)
        edited.update(passed=True, reasons=[])
        with pytest.raises(RegistryError, match="not made by this installation's validation gate"):
            reg.promote("1.2.0", edited, who="admin")
        # validated on another snapshot than the locked one
        with pytest.raises(RegistryError, match="not on the site's locked validation set"):
            reg.promote("1.2.0", _report(reg, "1.2.0", snapshot="f" * 64), who="admin")
        assert reg.active().version == "0.0.1"
        reg.promote("1.2.0", None, who="admin", force_reason="vendor hotfix, validated offline")
        assert reg.active().version == "1.2.0"
        assert reg.history()[-1]["reason"] == "vendor hotfix, validated offline"


def test_registry_tables_are_append_only(site, tmp_path) -> None:
    archive, snap = site
    from mammotriage.store.reading import InitialReads

    with InitialReads(archive) as reads:
        reads.record("exam-1", "reader", 2)
    with ModelRegistry(archive) as reg:
        reg.register(_package(tmp_path, "1.1.0", b"weights-b"))
        _report(reg, "1.1.0", snapshot=snap)
        for sql in ("UPDATE model_events SET who = 'someone else'",
                    "DELETE FROM model_events WHERE action = 'promote'",
                    "UPDATE model_versions SET weights_sha256 = 'x'",
                    "DELETE FROM model_versions",
                    "UPDATE initial_reads SET birads = 1",
                    "DELETE FROM initial_reads",
                    "UPDATE gate_reports SET passed = 1",
                    "DELETE FROM gate_reports"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                reg.conn.execute(sql)
        assert reg.active().version == "0.0.1"


def test_packages_are_copied_so_moving_the_install_keeps_the_active_model(tmp_path) -> None:
    install_a = _package(tmp_path / "install-a" / "models", "0.2.0", b"shipped-weights")
    archive = tmp_path / "home" / "archive.sqlite"
    with ModelRegistry(archive) as reg:
        first = reg.ensure_shipped(install_a)
        assert first.version == "0.2.0" and reg.active().version == "0.2.0"
        copy = Path(first.path)
        assert copy == archive.parent / "models" / "packages" / first.weights_sha256 / "0.2.0"
        assert (copy / "models" / "model.safetensors").read_bytes() == b"shipped-weights"
        assert str(tmp_path / "install-a") not in json.dumps([tuple(r) for r in reg.conn.execute(
            "SELECT * FROM model_versions")])  # the registry names no install folder
    # install again elsewhere and delete the first install
    install_b = tmp_path / "install-b" / "models" / "0.2.0"
    shutil.copytree(install_a, install_b)
    shutil.rmtree(tmp_path / "install-a")
    with ModelRegistry(archive) as reg:
        notice = reg.check_shipped(install_b)
        assert notice.version.version == "0.2.0" and notice.message == ""
        active, folder, meta = reg.active_package()
        assert active.version == "0.2.0" and folder == copy and meta["version"] == "0.2.0"
        assert [v.version for v in reg.versions()] == ["0.2.0"]
    # and with no install at all, the registry's copy still runs
    shutil.rmtree(tmp_path / "install-b")
    with ModelRegistry(archive) as reg:
        assert reg.ensure_shipped(tmp_path / "nowhere") is None  # no shipped package at all
        assert reg.active_package()[2]["weights_sha256"] == first.weights_sha256


def test_a_version_registered_before_package_copies_is_adopted(tmp_path) -> None:
    """Archives from before the content-addressed store name the install folder: the
    first use copies that package in, after which the install folder may go."""
    install = _package(tmp_path / "old-install", "0.2.0", b"old-weights")
    archive = tmp_path / "home" / "archive.sqlite"
    with ModelRegistry(archive) as reg:
        sha = json.loads((install / "configs" / "metadata.json").read_text())["weights_sha256"]
        reg.conn.execute("INSERT INTO model_versions VALUES ('0.2.0', ?, ?, NULL, 'shipped', '2026-01-01')",
                         (str(install), sha))
        reg._log("0.2.0", "promote", "system", "first shipped model")
        assert reg.active().path == str(install)
        _active, folder, _meta = reg.active_package()
        assert folder == reg.store_dir(sha, "0.2.0") and folder.is_dir()
    shutil.rmtree(install)
    with ModelRegistry(archive) as reg:
        assert reg.active_package()[0].version == "0.2.0"


def test_only_the_active_weights_run(tmp_path) -> None:
    from mammotriage.model.package import ModelPackageError
    from mammotriage.triage.worker import load_model

    install = _package(tmp_path / "install", "0.2.0", b"shipped-weights")
    other = _package(tmp_path / "elsewhere", "0.3.0", b"never-promoted")
    archive = tmp_path / "home" / "archive.sqlite"
    with ModelRegistry(archive) as reg:
        reg.ensure_shipped(install)
        with pytest.raises(RegistryError, match=re.escape("not the registry's active model v0.2.0")):
            reg.check_runs(other)
        assert reg.check_runs(install)["version"] == "0.2.0"
        with pytest.raises(ModelPackageError, match="not the registry's active model"):
            load_model(other, expected_sha256=reg.active().weights_sha256)
    # the install's metadata edited in place: the registry's copy still runs, as 0.2.0
    meta_path = install / "configs" / "metadata.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": "9.9.9"}))
    with ModelRegistry(archive) as reg:
        notice = reg.check_shipped(install)
        assert "9.9.9" in notice.message and "candidate" in notice.message  # proposed, not run
        active, _folder, meta = reg.active_package()
        assert active.version == meta["version"] == "0.2.0"
        # the registry's own copy edited: refused with a message
        copy_meta = Path(active.path) / "configs" / "metadata.json"
        copy_meta.write_text(json.dumps({**json.loads(copy_meta.read_text()), "version": "9.9.9"}))
        with pytest.raises(RegistryError, match=re.escape("not the registered 0.2.0")):
            reg.active_package()


def test_a_new_shipped_version_is_proposed_or_promoted_by_policy(site, tmp_path) -> None:
    archive, snap = site
    shipped = _package(tmp_path / "install", "0.3.0", b"new-shipped")
    with ModelRegistry(archive) as reg:
        notice = reg.check_shipped(shipped)
        assert reg.active().version == "0.0.1"  # never made active behind the ML lead's back
        assert "model 0.3.0 shipped with this install is a candidate" in notice.message
        assert reg.pending_shipped() == ["0.3.0"]
        assert any("new shipped version" in h["reason"] and "proposed to the ML lead" in h["reason"]
                   for h in reg.history() if h["version"] == "0.3.0")
        assert reg.check_shipped(shipped).message == notice.message  # said again at every start
        # the default policy: a passed gate report does not promote by itself
        assert reg.after_gate(_report(reg, "0.3.0", snapshot=snap, record=False)) == ""
        assert reg.active().version == "0.0.1"
    (archive.parent / "models.json").write_text(json.dumps({"shipped_models": "promote-after-gate"}))
    with ModelRegistry(archive) as reg:
        assert "promotes it once it passes" in reg.check_shipped(shipped).message
        assert reg.after_gate(_report(reg, "0.3.0", False, ["worse"], snapshot=snap, record=False)) == ""
        assert reg.active().version == "0.0.1"
        said = reg.after_gate(_report(reg, "0.3.0", snapshot=snap, record=False))
        assert "promoted by site policy" in said and reg.active().version == "0.3.0"
        assert reg.history()[-1]["who"] == "site policy" and reg.pending_shipped() == []
    # a bad settings file is reported, never turns anything off, and promotes nothing
    (archive.parent / "models.json").write_text(json.dumps({"shipped_models": "always"}))
    with ModelRegistry(archive) as reg:
        notice = reg.check_shipped(_package(tmp_path / "install2", "0.4.0", b"newer"))
        assert "model 0.4.0 shipped with this install is a candidate" in notice.message
        assert "models.json: shipped_models must be one of propose, promote-after-gate" in notice.message
        assert "not promoted" in reg.after_gate(_report(reg, "0.4.0", snapshot=snap, record=False))
        assert reg.active().version == "0.3.0"


def test_recalibrated_operating_points_come_with_the_promotion(site, tmp_path) -> None:
    archive, snap = site
    with ModelRegistry(archive) as reg:
        reg.register(_package(tmp_path, "1.1.0", b"weights-b"))
        points = {"suspicious": {"threshold": 0.42}, "source": "validation gate predictions"}
        reg.promote("1.1.0", _report(reg, "1.1.0", snapshot=snap, operating_points=points), who="admin")
        assert reg.active_package()[2]["operating_points"] == points
        assert reg.operating_points("0.0.1") == {}


def test_prune_only_unreferenced_package_copies(site, tmp_path) -> None:
    archive, snap = site
    with ModelRegistry(archive) as reg:
        for v, w in (("1.1.0", b"b"), ("1.2.0", b"c"), ("1.3.0", b"d")):
            reg.register(_package(tmp_path, v, w))
        reg.promote("1.2.0", _report(reg, "1.2.0", snapshot=snap), who="admin")
        reg.rollback(who="admin")
        reg.conn.execute("INSERT INTO ai_exam_results VALUES ('exam', '1.3.0', ?, 0.5, NULL, NULL, 'now')",
                         (reg.get("1.3.0").weights_sha256,))
        assert reg.referenced(reg.get("0.0.1"))[0] == "active"
        assert reg.referenced(reg.get("1.3.0")) == ["1 row(s) in ai_exam_results"]
        assert reg.prune(dry_run=True) == ["1.1.0"]
        assert reg.prune() == ["1.1.0"]
        assert not Path(reg.get("1.1.0").path).joinpath("configs").exists()
        assert all(Path(reg.get(v).path).is_dir() for v in ("0.0.1", "1.2.0", "1.3.0"))
        assert sorted(v.version for v in reg.versions()) == ["0.0.1", "1.1.0", "1.2.0", "1.3.0"]  # rows stay
        # a pruned version comes back by registering its package again
        assert Path(reg.register(tmp_path / "1.1.0").path).is_dir()


def test_a_shipped_package_reusing_a_version_number_keeps_the_active_model(tmp_path) -> None:
    archive = tmp_path / "home" / "archive.sqlite"
    with ModelRegistry(archive) as reg:
        reg.ensure_shipped(_package(tmp_path / "a", "0.2.0", b"original"))
        notice = reg.check_shipped(_package(tmp_path / "b", "0.2.0", b"other weights, same number"))
        assert notice.version is None and "was not registered" in notice.message and "immutable" in notice.message
        assert reg.active_package()[2]["weights_sha256"] == reg.get("0.2.0").weights_sha256


def test_versions_are_immutable(tmp_path) -> None:
    a = _package(tmp_path / "x", "2.0.0", b"one")
    b = _package(tmp_path / "y", "2.0.0", b"two")
    with ModelRegistry(tmp_path / "archive.sqlite") as reg:
        reg.register(a)
        assert reg.register(a).version == "2.0.0"  # same weights: no-op
        with pytest.raises(RegistryError, match="immutable"):
            reg.register(b)


def test_tampered_package_cannot_be_registered(tmp_path) -> None:
    from mammotriage.model.package import ModelPackageError

    a = _package(tmp_path, "3.0.0", b"good")
    (a / "models" / "model.safetensors").write_bytes(b"evil")
    with ModelRegistry(tmp_path / "archive.sqlite") as reg, pytest.raises(ModelPackageError, match="sha256"):
        reg.register(a)
    shutil.rmtree(a)


def test_cli_promote_refuses_a_report_for_another_candidate(site, tmp_path, monkeypatch, capsys) -> None:
    from mammotriage.cli import main as cli_main

    archive, snap = site
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(archive.parent))
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(tmp_path / "no-shipped-model"))
    with ModelRegistry(archive) as reg:
        reg.register(_package(tmp_path, "1.1.0", b"weights-b"))
        reg.register(_package(tmp_path, "1.2.0", b"weights-c"))
        report = tmp_path / "gate-report.json"
        report.write_text(json.dumps(_report(reg, "1.1.0", snapshot=snap), indent=1))
    assert cli_main(["models", "promote", "1.2.0", "--report", str(report)]) == 1
    assert "report is for candidate v1.1.0" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert cli_main(["models", "promote", "1.2.0", "--report", str(broken)]) == 1
    assert "broken.json: not a readable gate report" in capsys.readouterr().err
    assert cli_main(["models", "promote", "1.1.0", "--report", str(report)]) == 0
    assert cli_main(["models", "prune", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith("would prune the package copies of: 1.2.0")
