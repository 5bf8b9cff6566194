"""Shared fixtures: isolated data directory, real-data locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtsupport import require_shared


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MAMMOTRIAGE_HOME: a user's real archive is never touched."""
    home = tmp_path_factory.mktemp("mt-home")
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    return home


@pytest.fixture
def dicom_data() -> Path:
    return require_shared("dicom")
