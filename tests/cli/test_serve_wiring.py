"""serve's triage side, wired in the composition root (cli.ServeTriageWiring)."""

from __future__ import annotations

import argparse

from mammotriage.cli import ServeTriageWiring, build_parser
from mammotriage.net.commands import ServeTriage
from mtsupport import minimal_package


def test_serve_is_wired_with_the_active_model_and_requeues(tmp_path, monkeypatch, capsys) -> None:
    from mammotriage.config import archive_path
    from mammotriage.store import Archive
    from mammotriage.triage import TriageQueue

    wiring = ServeTriageWiring()
    assert isinstance(wiring, ServeTriage)
    args = build_parser().parse_args(["serve", "--check"])
    assert isinstance(args.serve_triage, ServeTriageWiring)  # cli gives serve its triage side
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(tmp_path / "nowhere"))
    assert wiring.start(run_worker=True) == (None, None)
    assert "no active model" in capsys.readouterr().out
    monkeypatch.setenv("MAMMOTRIAGE_MODEL", str(minimal_package(tmp_path / "install", "1.0.0", b"one")))
    assert wiring.start(run_worker=False) == (None, "1.0.0")  # --no-triage: the version, no worker
    Archive(archive_path()).close()
    wiring.requeue(archive_path(), "exam-1", "1.0.0")
    with TriageQueue(archive_path()) as queue:
        assert queue.job("exam-1", "1.0.0") is not None


def test_the_node_alone_runs_without_a_triage_side() -> None:
    from mammotriage.net.commands import add_net_commands

    parser = argparse.ArgumentParser()
    add_net_commands(parser.add_subparsers())
    assert parser.parse_args(["serve", "--check"]).serve_triage is None
