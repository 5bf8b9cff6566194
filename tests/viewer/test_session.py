"""The reading session follows the active model without hashing on the UI thread: the
periodic tick looks at the registry and the package's file times only, and a change is
verified once, in a worker thread."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

import mammotriage.model.package as package
from mammotriage.learning.registry import ModelRegistry
from mammotriage.triage import TriageQueue
from mammotriage.viewer.session import ReadingSession
from mtsupport import minimal_package


@pytest.fixture
def hashes(monkeypatch):
    """Every weights hash, with whether it ran on the calling (UI) thread."""
    calls: list[bool] = []
    real = package.sha256_file

    def recording(path):
        calls.append(threading.current_thread() is threading.main_thread())
        return real(path)

    monkeypatch.setattr(package, "sha256_file", recording)
    return calls


def _settle(session: ReadingSession) -> bool:
    """Tick until the background verification is over; True if the model changed."""
    changed = session.poll_model()
    deadline = time.monotonic() + 120  # a bound against hanging, not a timing assertion
    while session.verifying and time.monotonic() < deadline:
        time.sleep(0.01)
    return session.poll_model() or changed


def test_the_periodic_tick_never_hashes_on_the_ui_thread(tmp_path, monkeypatch, hashes) -> None:
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(minimal_package(tmp_path / "install", "1.0.0", b"one")))
    archive, home = tmp_path / "home" / "archive.sqlite", tmp_path / "home"
    with TriageQueue(archive) as queue:
        session = ReadingSession(archive, home, queue)
        assert session.model.version == "1.0.0"
        hashes.clear()  # start-up verifies once, before the window shows
        for _ in range(50):  # nothing changed: no hash at all
            assert session.poll_model() is False
        assert hashes == []

        candidate = minimal_package(tmp_path / "site", "2.0.0", b"two")
        with ModelRegistry(archive) as reg:  # promoted elsewhere (the CLI)
            reg.register(candidate)
            reg.promote("2.0.0", None, who="test", force_reason="test")
        hashes.clear()
        assert _settle(session) is True and session.model.version == "2.0.0"
        assert hashes and not any(hashes), "the UI thread hashed the weights"
        hashes.clear()
        for _ in range(50):
            assert session.poll_model() is False
        assert hashes == []  # verified once per change

        weights = session.model.folder / "models" / "model.safetensors"
        weights.write_bytes(b"tampered")  # the registry's copy changed on disk
        assert _settle(session) is True
        assert session.model.version is None and "sha256 mismatch" in session.model.problem
        assert hashes and not any(hashes)
        session.close()


def test_a_change_made_here_is_followed_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(minimal_package(tmp_path / "install", "1.0.0", b"one")))
    archive, home = tmp_path / "home" / "archive.sqlite", tmp_path / "home"
    with TriageQueue(archive) as queue:
        session = ReadingSession(archive, home, queue)
        with ModelRegistry(archive) as reg:
            reg.register(minimal_package(tmp_path / "site", "2.0.0", b"two"))
            reg.promote("2.0.0", None, who="test", force_reason="test")
            assert session.follow_active_model() is True and session.model.version == "2.0.0"
            assert session.poll_model() is False  # already seen: nothing to verify again
            assert not session.verifying
            reg.rollback(who="test")
        assert session.follow_active_model() is True and session.model.version == "1.0.0"
        session.close()


def test_an_explicit_model_folder_is_never_swapped(tmp_path, monkeypatch) -> None:
    shipped = minimal_package(tmp_path / "install", "1.0.0", b"one")
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(shipped))
    archive, home = tmp_path / "home" / "archive.sqlite", tmp_path / "home"
    with TriageQueue(archive) as queue:
        session = ReadingSession(archive, home, queue, model_dir=shipped)
        assert session.model.version == "1.0.0"
        with ModelRegistry(archive) as reg:
            reg.register(minimal_package(tmp_path / "site", "2.0.0", b"two"))
            reg.promote("2.0.0", None, who="test", force_reason="test")
        assert session.poll_model() is False and session.follow_active_model() is False
        assert session.model.version == "1.0.0"
        session.close()


def test_a_pinned_model_is_never_replaced(tmp_path, monkeypatch) -> None:
    """A model chosen explicitly (the UI tests' own "v-test", whose results have no
    package) stays when the registry's active version changes: the periodic check once
    swapped it for the registry's model after ~3 s, so slow tests read no results."""
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(minimal_package(tmp_path / "install", "1.0.0", b"one")))
    archive, home = tmp_path / "home" / "archive.sqlite", tmp_path / "home"
    with TriageQueue(archive) as queue:
        session = ReadingSession(archive, home, queue)
        assert session.model.version == "1.0.0" and not session.pinned
        session.pin(dataclasses.replace(session.model, version="v-test"))
        with ModelRegistry(archive) as reg:
            reg.register(minimal_package(tmp_path / "site", "2.0.0", b"two"))
            reg.promote("2.0.0", None, who="test", force_reason="test")
        assert _settle(session) is False and session.model.version == "v-test"
        assert session.follow_active_model() is False and session.model.version == "v-test"
        assert not session.verifying
        session.close()
