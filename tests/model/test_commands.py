import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mammotriage.model.commands import add_model_commands


def _parser():
    p = argparse.ArgumentParser(prog="mammotriage")
    add_model_commands(p.add_subparsers(dest="command"))
    return p


def test_commands_registered_and_light():
    p = _parser()
    for cmd in (["train", "--mias", "x", "--out", "y"], ["evaluate", "--mias", "x", "--json"]):
        args = p.parse_args(cmd)
        assert callable(args.func)
    code = "import sys, mammotriage.model.commands; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_config, tiny_pp):
    import torch

    from mammotriage.model.network import build_detector
    from mammotriage.model.package import save_package

    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("model") / "m"
    save_package(out, build_detector(tiny_config, train_components=False), tiny_config, tiny_pp,
                 version="9.9.9", description="t", training={}, hyper_parameters={}, seed=2,
                 eval_metrics={}, operating_points={})
    return out


def test_evaluate_json(tiny_model, tmp_path, make_breast, capsys):
    for i in range(1, 5):
        Image.fromarray(make_breast(seed=i, chest_wall="right" if i % 2 else "left")).save(tmp_path / f"mdb{i:03d}.png")
    (tmp_path / "labels.csv").write_text(
        "image,patient,background,cls,severity,x,y_top_left,radius\n"
        "mdb001,p001,G,CIRC,B,200,150,20\nmdb002,p001,G,NORM,,,,\n"
        "mdb003,p002,F,CALC,M,60,150,10\nmdb004,p002,F,NORM,,,,\n")
    args = _parser().parse_args(["evaluate", "--mias", str(tmp_path), "--model", str(tiny_model),
                                 "--json", "--plots", str(tmp_path / "plots")])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 4 and out["n_lesions"] == 2
    assert set(out["froc"]) == {"0.125", "0.25", "0.5", "1", "2", "4"}
    assert 0 <= out["image_auc"] <= 1
    assert (tmp_path / "plots" / "froc.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 1000


def test_evaluate_plots_default_to_the_data_folder(tiny_model, tmp_path, make_breast, capsys,
                                                   monkeypatch):
    """Without --plots, evaluate writes into the data folder, never the working folder."""
    mias = tmp_path / "mias"
    mias.mkdir()
    for i in range(1, 3):
        Image.fromarray(make_breast(seed=i, chest_wall="left")).save(mias / f"mdb{i:03d}.png")
    (mias / "labels.csv").write_text(
        "image,patient,background,cls,severity,x,y_top_left,radius\n"
        "mdb001,p001,G,CIRC,B,200,150,20\nmdb002,p002,G,NORM,,,,\n")
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    args = _parser().parse_args(["evaluate", "--mias", str(mias), "--model", str(tiny_model), "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(work.iterdir()) == []
    plots = [Path(p) for p in out["plots"]]
    assert {p.name for p in plots} == {"froc.png", "roc.png"}
    assert all(p.is_relative_to(home / "evaluation") and p.stat().st_size > 1000 for p in plots)


def test_evaluate_refuses_bad_model(tmp_path, capsys):
    args = _parser().parse_args(["evaluate", "--mias", str(tmp_path), "--model", str(tmp_path), "--json"])
    assert args.func(args) == 2
    assert "not a model package" in capsys.readouterr().err


def test_train_describes_its_data_without_machine_paths(tmp_path, make_breast, monkeypatch):
    """The package names the mini-MIAS folder relative to where training ran."""
    from mammotriage.model.commands import _gather_samples

    data = tmp_path / "shared" / "data" / "mias" / "dev"
    data.mkdir(parents=True)
    Image.fromarray(make_breast(seed=1)).save(data / "mdb001.png")
    (data / "labels.csv").write_text("image,patient,background,cls,severity,x,y_top_left,radius\n"
                                     "mdb001,p001,G,NORM,,,,\n")
    work = tmp_path / "main"
    work.mkdir()
    monkeypatch.chdir(work)
    args = _parser().parse_args(["train", "--mias", str(data), "--phantoms", "1", "--out", "x"])
    real, extra, described = _gather_samples(args)
    assert len(real) == 1 and len(extra) == 4
    assert described["sources"][0]["path"] == "../shared/data/mias/dev"
    assert str(tmp_path) not in json.dumps(described)


def test_a_stage_one_calibration_without_a_second_look_is_refused_before_any_training(tmp_path, capsys):
    from mammotriage.model.commands import cmd_train

    for extra in ([], ["--second-look"]):
        args = _parser().parse_args(["train", "--phantoms", "1", "--out", str(tmp_path / "x"),
                                     "--calibrate-stage-one", *extra])
        with pytest.raises(SystemExit, match="--no-stage-two"):
            cmd_train(args)
    assert not (tmp_path / "x").exists()
