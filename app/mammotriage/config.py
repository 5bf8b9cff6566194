"""Where Mammo Triage keeps its data.

``MAMMOTRIAGE_HOME`` overrides the platform data directory so that tests and scripts
never touch a user's real archive.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "MAMMOTRIAGE_HOME"


def data_dir(create: bool = True) -> Path:
    """Return the data directory (``$MAMMOTRIAGE_HOME`` or the platform default)."""
    env = os.environ.get(ENV_HOME)
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("mammotriage", appauthor=False))
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def archive_path() -> Path:
    """SQLite archive index inside the data directory."""
    return data_dir() / "archive.sqlite"


def demo_dir() -> Path:
    """Folder holding the built-in demo exams (generated on first launch)."""
    return data_dir() / "demo"
