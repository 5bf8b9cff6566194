"""``mammotriage triage``: headless triage of files, streamed one exam at a time."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from mammotriage.triage.commands import add_triage_command, triage_paths

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _parser():
    p = argparse.ArgumentParser(prog="mammotriage")
    add_triage_command(p.add_subparsers(dest="command"))
    return p


def test_command_registered_and_light():
    assert callable(_parser().parse_args(["triage", "a", "b", "--json"]).func)
    code = "import sys, mammotriage.triage.commands; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "app"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from retrain_sim import tiny_parent

    return tiny_parent(tmp_path_factory.mktemp("model") / "m", seed=2, version="9.9.9")


@pytest.fixture(scope="module")
def phantom_exam():
    from mammotriage.phantom import generate_exam

    return generate_exam(11, rows=320, columns=260, normal=False)


def test_triage_json(tiny_model, phantom_exam, tmp_path, capsys):
    folder = tmp_path / "in"
    phantom_exam.save(folder / "exam1")
    from mammotriage.phantom import generate_exam

    paths = generate_exam(12, rows=320, columns=260, normal=True).save(folder / "exam2")
    (folder / "junk.dcm").write_bytes(b"not dicom at all")
    # a poisoned view: RescaleSlope "nan" used to crash auto_window and lose the batch
    poisoned = pydicom.dcmread(paths["LCC"])
    poisoned.RescaleSlope, poisoned.RescaleIntercept = "nan", "0"
    poisoned.save_as(paths["LCC"])
    args = _parser().parse_args(["triage", str(folder), "--json", "--model", str(tiny_model),
                                 "--min-score", "0"])
    assert args.func(args) == 1  # a file was skipped: not a full run
    captured = capsys.readouterr()
    assert "junk.dcm" in captured.err
    assert "LCC.dcm: warning: Rescale Slope/Intercept" in captured.err
    out = json.loads(captured.out)
    assert out["skipped"] == [{"path": str(folder / "junk.dcm"), "code": "not-dicom",
                               "reason": out["skipped"][0]["reason"]}]
    assert "not a DICOM file" in out["skipped"][0]["reason"]
    exams = out["exams"]
    assert len(exams) == 2
    assert [e["n_images"] for e in exams] == [4, 4]
    assert any("identity rescale used" in w for e in exams for w in e["warnings"])
    assert exams[0]["score"] >= exams[1]["score"]
    uids = {i.sop_uid for i in phantom_exam.images}
    for e in exams:
        assert e["category"] is None  # this package has no operating points
        assert set(e["breasts"]) == {"L", "R"}
        assert e["score"] == pytest.approx(max(e["breasts"].values()))
        for f in e["findings"]:
            x0, y0, x1, y1 = f["box"]
            assert 0 <= x0 <= x1 <= 260 and 0 <= y0 <= y1 <= 320
            assert f["kind"] in ("mass", "calcification") and 0 <= f["score"] <= 1
    ex1 = next(e for e in exams if e["study_uid"] == phantom_exam.study_uid)
    assert all(f["sop_uid"] in uids for f in ex1["findings"])


def test_triage_of_readable_files_only_exits_zero(tiny_model, phantom_exam, tmp_path, capsys):
    phantom_exam.save(tmp_path / "exam1")
    args = _parser().parse_args(["triage", str(tmp_path), "--json", "--model", str(tiny_model)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["skipped"] == [] and len(out["exams"]) == 1


def test_files_are_decoded_one_exam_at_a_time(tiny_model, phantom_exam, tmp_path, monkeypatch):
    """Headers group the files; pixels of the next exam are decoded only after the model
    has seen the previous one (a large folder is never held in memory)."""
    import mammotriage.dicom as dicom
    from mammotriage.model.infer import Engine
    from mammotriage.phantom import generate_exam

    phantom_exam.save(tmp_path / "exam1")
    generate_exam(12, rows=320, columns=260, normal=True).save(tmp_path / "exam2")
    events: list[str] = []
    real_read = dicom.read_image

    def reading(path, *a, **kw):
        events.append("decode")
        return real_read(path, *a, **kw)

    monkeypatch.setattr(dicom, "read_image", reading)
    engine = Engine.from_package(tiny_model, device="cpu", threads=1)
    real_predict = engine.predict_images

    def predicting(images, **kw):
        events.append(f"predict {len(images)}")
        return real_predict(images, **kw)

    engine.predict_images = predicting
    exams = triage_paths([tmp_path], engine, min_score=0.0)
    assert [e["n_images"] for e in exams] == [4, 4]
    assert events == ["decode"] * 4 + ["predict 4"] + ["decode"] * 4 + ["predict 4"]


def test_triage_runs_the_active_model_and_warns_about_any_other(tiny_model, phantom_exam, tmp_path, capsys):
    """Without --model it ran the shipped package, not what the reading room runs; a
    package that is not the active one ran without a word."""
    from mammotriage.config import archive_path
    from mammotriage.learning.registry import ModelRegistry
    from mammotriage.model.package import default_model_dir, read_metadata

    phantom_exam.save(tmp_path / "exam1")
    with ModelRegistry(archive_path()) as reg:
        reg.ensure_shipped(tiny_model)  # this installation's active model
    args = _parser().parse_args(["triage", str(tmp_path / "exam1"), "--json"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["model_active"] is True and out["model_version"] == read_metadata(tiny_model)["version"]
    assert "not this installation's active model" not in captured.err
    args = _parser().parse_args(["triage", str(tmp_path / "exam1"), "--json", "--model", str(tiny_model)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model_active"] is True and "warning" not in captured.err
    shipped = default_model_dir()
    args = _parser().parse_args(["triage", str(tmp_path / "exam1"), "--json", "--model", str(shipped)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["model_active"] is False and out["model_version"] == read_metadata(shipped)["version"]
    assert f"is not this installation's active model ({read_metadata(tiny_model)['version']})" in captured.err
    assert str(shipped) in captured.err
