"""The registry's read side: ``active_package``, the one way to find the model to run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammotriage.model.registry import NO_MODEL, ModelRegistry, active_package
from mtsupport import minimal_package


def test_no_shipped_package_means_no_model_and_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(tmp_path / "nowhere"))
    found = active_package(tmp_path / "home" / "archive.sqlite")
    assert not found and found.version is None and found.folder is None and found.meta is None
    assert found.error == "" and found.reason == NO_MODEL


def test_the_first_shipped_package_is_registered_verified_and_run(tmp_path, monkeypatch) -> None:
    shipped = minimal_package(tmp_path / "install", "1.0.0", b"weights-one")
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(shipped))
    archive = tmp_path / "home" / "archive.sqlite"
    found = active_package(archive)
    assert found and found.version.version == found.meta["version"] == "1.0.0"
    assert found.folder != shipped and (found.folder / "configs" / "metadata.json").is_file()  # the copy
    with ModelRegistry(archive) as reg:
        assert reg.active().version == "1.0.0"
    quick = active_package(archive, verified=False)
    assert quick.folder == found.folder and quick.meta["version"] == "1.0.0"


def test_a_broken_copy_is_an_error_not_an_exception(tmp_path, monkeypatch) -> None:
    shipped = minimal_package(tmp_path / "install", "1.0.0", b"weights-one")
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(shipped))
    archive = tmp_path / "home" / "archive.sqlite"
    folder = active_package(archive).folder
    (folder / "models" / "model.safetensors").write_bytes(b"tampered")
    found = active_package(archive)
    assert not found and found.version.version == "1.0.0"
    assert "sha256 mismatch" in found.error and found.reason == found.error
    # the listing side reads the metadata without hashing the weights
    assert active_package(archive, verified=False).meta["version"] == "1.0.0"


def test_an_explicit_folder_runs_only_with_the_active_weights(tmp_path, monkeypatch) -> None:
    shipped = minimal_package(tmp_path / "install", "1.0.0", b"weights-one")
    other = minimal_package(tmp_path / "elsewhere", "2.0.0", b"weights-two")
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(shipped))
    archive = tmp_path / "home" / "archive.sqlite"
    assert active_package(archive, shipped).meta["version"] == "1.0.0"
    found = active_package(archive, other)
    assert not found and "not the registry's active model" in found.error


@pytest.mark.parametrize("policy_file", ["{not json", json.dumps({"shipped_models": "bogus"})])
def test_a_bad_site_policy_never_turns_the_model_off(tmp_path, monkeypatch, policy_file) -> None:
    shipped = minimal_package(tmp_path / "install", "1.0.0", b"weights-one")
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(shipped))
    archive = tmp_path / "home" / "archive.sqlite"
    assert active_package(archive)
    Path(archive.parent / "models.json").write_text(policy_file)
    found = active_package(archive)
    assert found and found.version.version == "1.0.0"
