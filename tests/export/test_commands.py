"""The ``dataset snapshot|list|diff`` and ``export`` commands, on a parser of their own
(exactly what ``cli.build_parser`` gets from ``add_dataset_commands``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mammotriage.export.commands import add_dataset_commands
from mammotriage.store.events import CorrectionLog


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mammotriage")
    add_dataset_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_commands_snapshot_list_diff_export(labelled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(labelled.home))

    assert run(["dataset", "snapshot", "--rule", "majority", "--role", "validation", "--name", "cli-a",
                "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["created"] and first["role"] == "validation" and first["consensus"] == "majority"
    assert run(["dataset", "snapshot", "--rule", "majority", "--role", "validation", "--name", "cli-a"]) == 0
    assert capsys.readouterr().out.startswith(f"unchanged: snapshot {first['sha256']}")

    exam = labelled.snapshot["exams"][0]
    img = next(i for i in labelled.snapshot["images"] if i["sop_uid"] == exam["images"][0])
    with CorrectionLog(labelled.archive) as log:
        log.append(reader="dr_a", exam_key=exam["exam_key"], action="add", kind="mass",
                   study_uid=img["study_uid"], series_uid=img["series_uid"], sop_uid=img["sop_uid"],
                   pixel_sha256=img["pixel_sha256"], model_version="v1",
                   geometry={"type": "box", "box": [10, 100, 40, 130]})
    assert run(["dataset", "snapshot", "--rule", "majority", "--role", "validation", "--name", "cli-a"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("snapshot ") and "BI-RADS kappa" in out
    second = out.split()[1]
    assert second != first["sha256"]

    assert run(["dataset", "list", "--json"]) == 0
    listed = {r["sha256"] for r in json.loads(capsys.readouterr().out)}
    assert {first["sha256"], second} <= listed
    assert run(["dataset", "list"]) == 0
    assert first["sha256"][:12] in capsys.readouterr().out

    assert run(["dataset", "diff", first["sha256"][:10], second[:10]]) == 0
    text = capsys.readouterr().out
    assert f"+ {img['sop_uid']}  dr_a  reader:" in text
    assert run(["dataset", "diff", first["sha256"], second, "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert [(d["owner"], d["kind"]) for d in diff["added"] if d["owner"] == "dr_a"] == [("dr_a", "mass")]
    assert diff["removed"] == []

    assert run(["dataset", "diff", "0000000", second]) == 2
    assert "no snapshot" in capsys.readouterr().err

    key = tmp_path / "key.txt"
    key.write_text("site secret\n")
    out_dir = tmp_path / "exported"
    assert run(["export", second[:12], "--out", str(out_dir), "--key-file", str(key), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 8 and Path(report["out"]) == out_dir  # reviewed exams only
    datalist = json.loads((out_dir / "datalist.json").read_text())
    assert "validation" in datalist and "training" not in datalist
    assert run(["export", second[:12], "--out", str(out_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
