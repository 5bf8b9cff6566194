"""The learning loop's old import paths (before architecture v2) still work for one
release: each is the moved module itself, and importing it warns."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MOVED = [
    ("mammotriage.model.gate", "mammotriage.learning.gate"),
    ("mammotriage.model.retrain", "mammotriage.learning.retrain"),
    ("mammotriage.model.snapshot_data", "mammotriage.learning.snapshot_data"),
    ("mammotriage.model.pipeline", "mammotriage.learning.pipeline"),
    ("mammotriage.model.dataset_check", "mammotriage.learning.dataset_check"),
    ("mammotriage.model.learning_commands", "mammotriage.learning.commands"),
    ("mammotriage.triage.monitor", "mammotriage.learning.monitor"),
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
