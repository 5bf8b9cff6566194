"""The automatic pipeline: the site setting, the correction counter, snapshot -> data
tests -> retrain -> validate, its recorded state, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from retrain_sim import build_tiny_site, import_phantom_exams, phantom_numbers, record_ground_truth

from mammotriage.learning.pipeline import PipelineError, run_pipeline, status, status_text


def test_pipeline_runs_when_due_and_records_its_outcome(tmp_path, capsys, monkeypatch):
    from mammotriage.learning.commands import main
    from mammotriage.learning.gate import GateParams
    from mammotriage.learning.retrain import RetrainParams
    from mammotriage.model.registry import ModelRegistry

    site = build_tiny_site(tmp_path, n_validation=1, n_training=2)
    st = status(site.archive)
    assert st["setting"] == 0 and not st["due"] and st["new_corrections"] >= 3
    assert status_text(st).startswith("automatic pipeline off")
    (site.archive.parent / "models.json").write_text(json.dumps({"propose_after_corrections": 2}))
    st = status(site.archive)
    assert st["setting"] == 2 and st["due"] and "due" in status_text(st)
    seen = []
    record = run_pipeline(site.archive, retrain_params=RetrainParams(threads=1, max_iterations=2),
                          gate_params=GateParams(n_boot=10, threads=1),
                          progress=lambda stage, done, total, note: seen.append(stage))
    assert {"snapshot", "train", "predict"} <= set(seen)
    assert record["candidate"].startswith("0.0.1-site.") and isinstance(record["passed"], bool)
    assert Path(record["report_path"]).is_file()
    with ModelRegistry(site.archive) as reg:
        assert reg.get(record["candidate"]) is not None and reg.active().version == "0.0.1"  # never promoted
    st = status(site.archive)
    assert st["new_corrections"] == 0 and not st["due"] and st["last"]["candidate"] == record["candidate"]
    assert record["candidate"] in status_text(st)
    # not due: the CLI says so and runs nothing
    assert main(["pipeline", "run", "--if-due", "--archive", str(site.archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] is False
    # more corrections make it due again
    more = import_phantom_exams(site.archive, tmp_path / "src-more", 21,
                                phantom_numbers(21, 1, 256, 208, start=50, need_kind="mass"), 256, 208)
    record_ground_truth(site.archive, more, reader="reader")
    assert status(site.archive)["due"]


def test_a_failing_run_is_recorded_with_its_reason(tmp_path):
    site = build_tiny_site(tmp_path, n_validation=1, n_training=2)
    (site.archive.parent / "models.json").write_text(json.dumps({"propose_after_corrections": 1}))
    victim = Path(site.training_exams[0].lesions[0]["sop_uid"])  # an image the readers labelled
    from mammotriage.store import Archive

    with Archive(site.archive) as archive:
        path = next(i.path for e in archive.exams() for i in e.images if i.sop_uid == str(victim))
    Path(path).unlink()  # the image went missing since it was labelled
    with pytest.raises(Exception, match="fails its data tests"):
        run_pipeline(site.archive)
    st = status(site.archive)
    assert "fails its data tests" in st["last"]["error"] and not st["due"]  # not retried at every start
    assert "failed" in status_text(st)


def test_a_bad_setting_names_the_file(tmp_path):
    archive = tmp_path / "archive.sqlite"
    (tmp_path / "models.json").write_text(json.dumps({"propose_after_corrections": "soon"}))
    with pytest.raises(PipelineError, match=r"models\.json: propose_after_corrections must be a whole number"):
        status(archive)
    (tmp_path / "models.json").write_text("{broken")
    with pytest.raises(PipelineError, match="unreadable site settings"):
        status(archive)
