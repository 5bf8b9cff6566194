"""The window says when its site profile is from before TLS (the link is not encrypted), and not otherwise."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from mammotriage.net.site_profile import load_profile
from mammotriage.net.tls import SiteTls


def _closed_port() -> int:
    with socket.socket() as s:  # nothing listens there once closed: the store is "away"
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _profile(path: Path, ca: str | None) -> Path:
    data: dict[str, Any] = {"format": "mammotriage-site-profile/1", "role": "workstation",
            "postgres": {"host": "127.0.0.1", "port": _closed_port(), "database": "mammotriage",
                         "user": "mt_workstation", "password": "pw"},
            "dicomweb": {"url": f"{'https' if ca else 'http'}://127.0.0.1:8042/dicom-web", "user": "mammotriage",
                         "password": "pw2"}}
    if ca:
        data["postgres"]["sslmode"] = "verify-full"
        data["tls"] = {"ca": ca}
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("encrypted", [False, True])
def test_the_log_warns_of_a_profile_from_before_tls(qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    encrypted: bool) -> None:
    from mammotriage.store import Archive
    from mammotriage.ui.main_window import MainWindow

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    ca = None
    if encrypted:
        material = SiteTls(tmp_path / "tls")
        material.generate()
        ca = material.ca_pem()
    profile = load_profile(_profile(tmp_path / "ws.json", ca))
    assert profile.encrypted is encrypted
    archive = Archive(tmp_path / "archive.sqlite")
    win = MainWindow(archive=archive, start_triage=False, site=profile)
    qtbot.addWidget(win)
    try:
        text = win.log.toPlainText()
        assert "site mode: PostgreSQL" in text
        assert ("not encrypted" in text) is (not encrypted)
        if not encrypted:
            assert "a new profile" in text and str(tmp_path / "ws.json") in text
    finally:
        win.close()
        archive.close()
