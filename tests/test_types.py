"""Static types: mypy with the project's configuration (pyproject.toml [tool.mypy]).

dicom, store, model, learning and viewer are checked strictly, the rest (ui included)
with mypy's defaults; no file is exempt. The incremental cache lives in the temporary folder, so a
second run re-checks only what changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):\d+(?::\d+)?: error: ", re.MULTILINE)


def test_mypy_reports_no_errors() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    cache = Path(tempfile.gettempdir()) / "mammotriage-mypy-cache"
    env = dict(os.environ, MYPY_FORCE_COLOR="0")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
         "--cache-dir", str(cache), "--no-pretty", "--no-error-summary"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), output  # 2: mypy could not run (configuration, crash)
    errors = [line for line in output.splitlines() if ERROR.match(line)]
    assert errors == [], "\n".join(errors)

