"""Static types: mypy with the project's configuration (pyproject.toml [tool.mypy]).

dicom, store and model (and learning, viewer once they exist) are checked strictly, the
rest with mypy's defaults. The incremental cache lives in the temporary folder, so a
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

#: Modules whose errors are still being fixed (the reading-room window, being split into
#: a Qt-free reading session and its widgets); every other file must have none. Remove a
#: file from here once it is clean.
NOT_YET_CLEAN = frozenset({
    "app/mammotriage/ui/main_window.py",
})

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
    errors = [line for line in output.splitlines()
              if (m := ERROR.match(line)) and m.group("path") not in NOT_YET_CLEAN]
    assert errors == [], "\n".join(errors)


def test_files_still_being_fixed_exist() -> None:
    """A renamed or split module leaves this list, rather than being excused silently."""
    missing = sorted(p for p in NOT_YET_CLEAN if not (REPO / p).is_file())
    assert missing == [], f"{missing}: gone; remove them from NOT_YET_CLEAN"
