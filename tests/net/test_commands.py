"""serve / outbox / echo / selfcheck on the command line (wired through add_net_commands)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netsupport import Storescp, free_port, make_sr, storescu

from mammotriage.net.commands import add_net_commands
from mammotriage.net.settings import NetworkSettings, PeerSettings, save_settings
from mtsupport import REPO, require_tool

#: Runs the net sub-commands the way ``mammotriage`` will once cli.build_parser calls
#: add_net_commands (kept independent of cli.py, which other work owns).
RUNNER = (
    "import argparse, sys; from mammotriage.net.commands import add_net_commands; "
    "p = argparse.ArgumentParser(prog='mammotriage'); add_net_commands(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
)


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="mammotriage")
    add_net_commands(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_serve_check_prints_effective_settings(capsys) -> None:
    rc, out, err = run("serve", "--check", "--json", "--port", "4242", "--ae-title", "MT2", capsys=capsys)
    assert rc == 0, err
    data = json.loads(out)
    assert data["port"] == 4242 and data["ae_title"] == "MT2" and data["bind"] == "127.0.0.1"


def test_serve_refuses_other_interfaces_without_allow_lists(capsys) -> None:
    rc, _out, err = run("serve", "--bind", "0.0.0.0", "--port", "0", capsys=capsys)
    assert rc == 2
    assert "refusing to listen on 0.0.0.0" in err and "--allow-aet" in err and "--allow-host" in err
    rc, _out, err = run("serve", "--check", "--bind", "0.0.0.0", "--allow-aet", "PACS",
                       "--allow-host", "10.1.0.0/16", capsys=capsys)
    assert rc == 0, err


def test_bad_settings_exit_2_with_the_reason(capsys) -> None:
    rc, _, err = run("serve", "--check", "--ae-title", "WAY-TOO-LONG-AE-TITLE", capsys=capsys)
    assert rc == 2 and "longer than 16 characters" in err
    rc, _, err = run("serve", "--check", "--allow-host", "pacs.hospital", capsys=capsys)
    assert rc == 2 and "host names are not accepted" in err


def test_outbox_lists_queues_and_sends(tmp_path: Path, capsys, pacs: Storescp) -> None:
    rc, out, _ = run("outbox", "--json", capsys=capsys)
    assert rc == 0 and json.loads(out) == {
        "counts": {"pending": 0, "sending": 0, "sent": 0, "failed": 0}, "items": []}
    sr = make_sr(tmp_path / "sr.dcm")
    rc, out, err = run("outbox", "--add", str(sr), "--kind", "ai-sr", capsys=capsys)
    assert rc == 0 and "queued #1" in out and "1 pending" in out
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"nope")
    rc, out, err = run("outbox", "--add", str(junk), capsys=capsys)
    assert rc == 2 and "not a DICOM file" in err
    # No PACS configured: --send reports it and keeps the entry.
    rc, out, err = run("outbox", "--send", capsys=capsys)
    assert rc == 1 and "no PACS configured" in out
    save_settings(NetworkSettings(pacs=PeerSettings("PACS", "127.0.0.1", pacs.port)))
    rc, out, err = run("outbox", "--send", "--json", capsys=capsys)
    assert rc == 0, err
    data = json.loads(out)
    assert data["counts"]["sent"] == 1
    assert data["items"][0]["sop_class"] == "Comprehensive SR Storage"
    assert data["items"][0]["sent_to"] == f"PACS@127.0.0.1:{pacs.port}"
    rc, out, _ = run("outbox", "--status", "sent", capsys=capsys)
    assert "sent to PACS@127.0.0.1" in out


def test_echo_the_configured_pacs(capsys, pacs: Storescp) -> None:
    rc, _, err = run("echo", capsys=capsys)
    assert rc == 2 and "no PACS configured" in err
    save_settings(NetworkSettings(pacs=PeerSettings("PACS", "127.0.0.1", pacs.port)))
    rc, out, _ = run("echo", capsys=capsys)
    assert rc == 0 and f"-> PACS@127.0.0.1:{pacs.port}: OK" in out
    rc, out, _ = run("echo", "--port", str(free_port()), capsys=capsys)
    assert rc == 1 and "FAILED (no connection)" in out


def test_selfcheck_command(capsys) -> None:
    rc, out, _ = run("selfcheck", "--no-model", "--json", capsys=capsys)
    assert rc == 0
    report = json.loads(out)
    assert report["ok"] and {c["name"]: c["status"] for c in report["checks"]}["decode"] == "pass"


def test_serve_receives_until_sigterm(tmp_path: Path, phantom_exams) -> None:
    """The real command in its own process, fed by storescu, stopped by SIGTERM."""
    require_tool("storescu")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"))
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "serve", "--port", str(port), "--quiet-period", "0.5",
         "--allow-aet", "STORESCU", "--no-send"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                break
        assert any(f"listening on 127.0.0.1:{port}" in x for x in lines), "".join(lines)
        study, files = phantom_exams["jpeg2000"]
        r = storescu(port, files, extra=("-xv",))
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if f"study complete: {study} (" in line:
                break
        assert any(f"study complete: {study} (4 images)" in x for x in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        lines.append(out)
        assert proc.returncode == 0, "".join(lines)
        assert "stopped: 4 received, 4 imported, 0 duplicates, 0 rejected" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
