"""The reading window runs the registry's active model: its own copy, whatever happens
to the install folder (moved, reinstalled, metadata edited in place)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _window(qtbot, archive_file: Path):
    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    win = MainWindow(archive=Archive(archive_file), start_triage=False)
    qtbot.addWidget(win)
    return win


def test_moving_the_install_keeps_ai_on(qtbot, tmp_path, monkeypatch) -> None:
    from retrain_sim import tiny_parent

    install_a = tiny_parent(tmp_path / "install-a" / "models" / "mammotriage-detector", version="0.2.0")
    archive = tmp_path / "home" / "archive.sqlite"
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(install_a))
    win = _window(qtbot, archive)
    assert win.model_version == "0.2.0" and "AI off" not in win.model_label.text()
    sha = win.model_meta["weights_sha256"]
    win.close()
    # install again in folder B, then delete A
    install_b = tmp_path / "install-b" / "models" / "mammotriage-detector"
    shutil.copytree(install_a, install_b)
    shutil.rmtree(tmp_path / "install-a")
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(install_b))
    win = _window(qtbot, archive)
    assert win.model_version == "0.2.0", win.model_problem
    assert "AI off" not in win.model_label.text() and win.model_meta["weights_sha256"] == sha
    assert Path(win.model_dir).is_relative_to(archive.parent)  # the registry's own copy
    win.close()
    # and with B gone too
    shutil.rmtree(tmp_path / "install-b")
    win = _window(qtbot, archive)
    assert win.model_version == "0.2.0" and "AI off" not in win.model_label.text()
    win.close()


def test_a_package_edited_in_place_is_not_run_under_its_new_label(qtbot, tmp_path, monkeypatch) -> None:
    from retrain_sim import tiny_parent

    install = tiny_parent(tmp_path / "install" / "mammotriage-detector", version="0.2.0")
    archive = tmp_path / "home" / "archive.sqlite"
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(install))
    _window(qtbot, archive).close()
    meta_path = install / "configs" / "metadata.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": "9.9.9"}))
    win = _window(qtbot, archive)
    assert win.model_version == "0.2.0" and win.model_meta["version"] == "0.2.0"
    log = win.log.toPlainText()
    assert "model 9.9.9 shipped with this install is a candidate" in log  # said, not ignored
    panel = win.show_model_panel()
    assert "waiting for you: 9.9.9" in panel.shipped_label.text()  # proposed to the ML lead
    win.close()


def test_a_broken_registry_copy_turns_ai_off_with_the_reason(qtbot, tmp_path, monkeypatch) -> None:
    from retrain_sim import tiny_parent

    from mammotriage.learning.registry import ModelRegistry

    install = tiny_parent(tmp_path / "install" / "mammotriage-detector", version="0.2.0")
    archive = tmp_path / "home" / "archive.sqlite"
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(install))
    with ModelRegistry(archive) as reg:
        copy = Path(reg.ensure_shipped().path)
    (copy / "models" / "model.safetensors").write_bytes(b"tampered")
    win = _window(qtbot, archive)
    assert win.model_meta is None and "AI off: no verified model package" in win.model_label.text()
    assert "sha256 mismatch" in win.model_problem and "sha256 mismatch" in win.log.toPlainText()
    win.close()
