"""The application's version is stated once for packaging and once at run time, and the
changelog has a section for it (README.md, "Versions")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import mammotriage

REPO = Path(__file__).resolve().parents[1]


def test_package_and_runtime_versions_agree() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == mammotriage.__version__


def test_changelog_has_a_section_for_the_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(mammotriage.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$",
                     changelog, re.MULTILINE), f"CHANGELOG.md: no section for {mammotriage.__version__}"
