"""The old import paths (before architecture v2) still work for one release: each moved
module's old name is the moved module itself, and importing it warns; the old
registry's promote/rollback methods reach the learning registry, and warn.
(``mammotriage.dicom.results``, a re-export of ``dicom.sr``/``dicom.seg``, is checked in
tests/dicom/test_results.py.)"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MOVED = [
    ("mammotriage.model.gate", "mammotriage.learning.gate"),
    ("mammotriage.model.retrain", "mammotriage.learning.retrain"),
    ("mammotriage.model.snapshot_data", "mammotriage.learning.snapshot_data"),
    ("mammotriage.model.pipeline", "mammotriage.learning.pipeline"),
    ("mammotriage.model.dataset_check", "mammotriage.learning.dataset_check"),
    ("mammotriage.model.learning_commands", "mammotriage.learning.commands"),
    ("mammotriage.triage.monitor", "mammotriage.learning.monitor"),
    ("mammotriage.ui.state", "mammotriage.viewer.state"),
    ("mammotriage.ui.corrections", "mammotriage.viewer.corrections"),
    ("mammotriage.ui.loader", "mammotriage.viewer.loader"),
]


@pytest.mark.parametrize(("old", "new"), MOVED)
def test_old_path_is_the_moved_module_and_warns(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_old_learning_commands_still_run_with_dash_m() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    out = subprocess.run([sys.executable, "-m", "mammotriage.model.learning_commands", "--help"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "retrain" in out.stdout


def test_the_old_registry_still_promotes_and_rolls_back_with_a_warning(tmp_path, monkeypatch) -> None:
    from mammotriage.model.registry import ModelRegistry
    from mtsupport import minimal_package

    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(minimal_package(tmp_path / "install", "1.0.0", b"one")))
    with ModelRegistry(tmp_path / "home" / "archive.sqlite") as reg:
        reg.check_shipped()
        reg.register(minimal_package(tmp_path / "site", "2.0.0", b"two"))
        with pytest.warns(DeprecationWarning, match="learning.registry"):
            reg.promote("2.0.0", None, who="test", force_reason="a script of the old release")
        assert reg.active().version == "2.0.0"
        with pytest.warns(DeprecationWarning, match="learning.registry"):
            assert reg.rollback(who="test").version == "1.0.0"
        assert reg.active().version == "1.0.0"
        with pytest.raises(AttributeError):
            reg.no_such_method  # noqa: B018 - only the moved methods are forwarded
