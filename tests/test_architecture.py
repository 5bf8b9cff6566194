"""Layering contracts (import-linter, configured in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    result = subprocess.run([str(exe), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " kept, 0 broken." in result.stdout, result.stdout


def test_dicom_package_loads_without_torch_or_qt() -> None:
    code = ("import sys, mammotriage.dicom, mammotriage.dicom.hanging, mammotriage.dicom.voi; "
            "bad = [m for m in ('torch', 'PySide6', 'monai') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
