"""Model registry: immutable versions, one active, gate-controlled promotion, rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mammotriage.model.registry import ModelRegistry, RegistryError


def _package(root: Path, version: str, weights: bytes, parent: str | None = None) -> Path:
    """A minimal verified package layout (metadata + weights with their sha256)."""
    import hashlib

    folder = root / version
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "model.safetensors").write_bytes(weights)
    meta = {"version": version, "weights_sha256": hashlib.sha256(weights).hexdigest(), "parent_version": parent}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    return folder


def test_register_promote_rollback(tmp_path) -> None:
    a = _package(tmp_path, "1.0.0", b"weights-a")
    b = _package(tmp_path, "1.1.0", b"weights-b", parent="1.0.0")
    with ModelRegistry(tmp_path / "archive.sqlite") as reg:
        assert reg.ensure_shipped(a).version == "1.0.0"
        assert reg.active().version == "1.0.0"
        reg.register(b)
        with pytest.raises(RegistryError, match="no validation report"):
            reg.promote("1.1.0", None, who="admin")
        with pytest.raises(RegistryError, match="refused: worse on FROC"):
            reg.promote("1.1.0", {"passed": False, "reasons": ["worse on FROC"]}, who="admin")
        assert reg.active().version == "1.0.0"
        # a passed report counts only against the model that is active now
        other = {"version": "0.9.0", "weights_sha256": "0" * 64}
        with pytest.raises(RegistryError, match="compares 1.1.0 with v0.9.0, not with the active model v1.0.0"):
            reg.promote("1.1.0", {"passed": True, "reasons": [], "parent": other}, who="admin")
        active = {"version": "1.0.0", "weights_sha256": reg.active().weights_sha256}
        reg.promote("1.1.0", {"passed": True, "reasons": [], "parent": active}, who="admin")
        assert reg.active().version == "1.1.0"
        assert reg.rollback(who="admin", reason="reader complaints").version == "1.0.0"
        assert reg.active().version == "1.0.0"
        actions = [h["action"] for h in reg.history()]
        assert actions == ["register", "promote", "register", "refuse", "promote", "rollback"]
        with pytest.raises(RegistryError, match="nothing to roll back"):
            reg.rollback(who="admin")


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
