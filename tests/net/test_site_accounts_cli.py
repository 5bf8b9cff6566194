"""`mammotriage site accounts` on a real site server (PostgreSQL with TLS, started here):
a reader added on the server signs in from a workstation's profile over TLS."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from netsupport import free_ports
from orthancsupport import require_orthanc

REPO = Path(__file__).resolve().parents[2]


def test_an_account_added_on_the_server_signs_in_from_a_workstation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_orthanc()
    from mammotriage.cli import main
    from mammotriage.net import site
    from mammotriage.net.site_profile import write_profile
    from mammotriage.store.pg.accounts import AccountError, reader_role, sign_in

    top = Path(tempfile.mkdtemp(prefix="mt-site-acc-"))   # the postgres account must reach the cluster
    top.chmod(0o755)
    folder = top / "server"
    pg_port, http_port, dicom_port = free_ports(3)
    try:
        site.init_site(folder, pg_port=pg_port, http_port=http_port, dicom_port=dicom_port)
        site.start_site(folder)
        try:
            capsys.readouterr()
            assert main(["site", "accounts", "add", str(folder), "Dr Ann Reader", "--who", "it"]) == 0
            out = capsys.readouterr().out
            password = out.split("give it to Dr Ann Reader only): ")[1].strip()
            assert len(password) >= 12
            secret = tmp_path / "pw"
            secret.write_text("x" * 20)
            secret.chmod(0o644)
            assert main(["site", "accounts", "password", str(folder), "Dr Ann Reader",
                         "--password-file", str(secret)]) == 2
            assert "readable by others" in capsys.readouterr().err
            profile = write_profile(folder, "workstation", tmp_path / "ws.json")
            assert profile.ca_file is not None   # TLS: the reader's role connects through hostssl
            got = sign_in(profile.dsn(user=reader_role("Dr Ann Reader"), password=password), "ws-1")
            assert got.reader == "Dr Ann Reader"
            with pytest.raises(AccountError, match="wrong name or password"):
                sign_in(profile.dsn(user=reader_role("Dr Ann Reader"), password="not it at all"), "ws-1")
            assert main(["site", "accounts", "require", str(folder), "on"]) == 0
            assert main(["site", "accounts", "disable", str(folder), "Dr Ann Reader"]) == 0
            capsys.readouterr()
            assert main(["site", "accounts", "list", str(folder), "--json"]) == 0
            listing = json.loads(capsys.readouterr().out)
            assert listing["required"] is True
            assert [(r["reader"], r["active"]) for r in listing["readers"]] == [("Dr Ann Reader", False)]
            assert main(["site", "accounts", "enable", str(folder), "Nobody"]) == 2
            assert "Nobody has no site account" in capsys.readouterr().err
        finally:
            site.stop_site(folder)
    finally:
        shutil.rmtree(top, ignore_errors=True)
