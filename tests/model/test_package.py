import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory, tiny_config, tiny_pp):
    import torch

    from mammotriage.model.network import build_detector
    from mammotriage.model.package import save_package

    torch.manual_seed(1)
    det = build_detector(tiny_config, train_components=False)
    out = tmp_path_factory.mktemp("pkg") / "tiny"
    save_package(out, det, tiny_config, tiny_pp, version="0.0.1-test", description="test",
                 training={"sources": [], "sha256": "0" * 64}, hyper_parameters={"epochs": 0},
                 seed=1, eval_metrics={}, operating_points={}, licence="test", model_card="# test")
    return out


def test_layout_and_metadata(tiny_package):
    from mammotriage.model.package import INTENDED_USE, sha256_file

    for rel in ("configs/metadata.json", "models/model.safetensors", "LICENSE", "docs/README.md"):
        assert (tiny_package / rel).is_file(), rel
    meta = json.loads((tiny_package / "configs/metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "network_data_format",
                "eval_metrics", "intended_use", "parent_version", "weights_sha256", "preprocessing",
                "classes", "training_data", "seed", "hyper_parameters", "operating_points"):
        assert key in meta, key
    assert meta["intended_use"] == INTENDED_USE
    assert meta["weights_sha256"] == sha256_file(tiny_package / "models/model.safetensors")
    raw = (tiny_package / "models/model.safetensors").read_bytes()
    assert b"pickle" not in raw[:2000]


def test_load_round_trip_is_deterministic(tiny_package, make_breast):
    from mammotriage.model.infer import Engine

    e1 = Engine.from_package(tiny_package, device="cpu", threads=1)
    e2 = Engine.from_package(tiny_package, device="cpu", threads=1)
    assert e1.version == "0.0.1-test"
    img = make_breast(seed=9)
    a, b = e1.predict_displays([img])[0], e2.predict_displays([img])[0]
    assert [f.box for f in a.findings] == [f.box for f in b.findings]
    assert np.array_equal(a.suspicion, b.suspicion)
    w = e1.detector.network.feature_extractor.body.conv_stem.weight
    assert w.dtype.is_floating_point and str(w.dtype) == "torch.float32"  # fp16 storage, fp32 compute


def test_tampered_weights_are_refused(tiny_package, tmp_path):
    import shutil

    from mammotriage.model.infer import Engine
    from mammotriage.model.package import ModelPackageError

    bad = tmp_path / "bad"
    shutil.copytree(tiny_package, bad)
    w = bad / "models/model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="sha256 mismatch"):
        Engine.from_package(bad)


def test_missing_package_is_a_clear_error(tmp_path):
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import ModelPackageError

    with pytest.raises(ModelPackageError, match="not a model package"):
        Engine.from_package(tmp_path)


def test_shipped_model_verifies_if_present():
    from mammotriage.model.package import default_model_dir, verify

    d = default_model_dir()
    if not (d / "configs" / "metadata.json").exists():
        pytest.skip("no shipped model package in models/")
    meta = verify(d)
    assert meta["intended_use"] == "research demonstration, not for clinical use"
    size = (d / meta["weights_file"]).stat().st_size
    assert size < 10 * 1024 * 1024


def test_shipped_model_runs_deterministically(phantom_exam):
    from mammotriage.dicom.image import MammoImage
    from mammotriage.dicom.read import parse_metadata
    from mammotriage.model.infer import Engine
    from mammotriage.model.package import default_model_dir

    d = default_model_dir()
    if not (d / "configs" / "metadata.json").exists():
        pytest.skip("no shipped model package in models/")
    engine = Engine.from_package(d, device="cpu", threads=2, batch_size=1)
    img = phantom_exam.images[0]
    im = MammoImage(pixels=img.pixels, meta=parse_metadata(img.dataset))
    a, b = engine.predict_images([im])[0], engine.predict_images([im])[0]
    assert [(f.box, f.score, f.kind) for f in a.findings] == [(f.box, f.score, f.kind) for f in b.findings]
    assert np.array_equal(a.suspicion, b.suspicion)
    assert a.model_version == engine.version


def test_saved_weights_bytes_do_not_depend_on_the_process(tiny_package, tmp_path):
    """safetensors orders its header metadata per process; save_package sorts it, so the
    same tensors always give the same file and sha256 (here: saved from a fresh process)."""
    import subprocess
    import sys

    from mammotriage.model.package import read_metadata

    meta = read_metadata(tiny_package)
    raw = (tiny_package / "models/model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    code = (
        "import sys; from safetensors.torch import load_file, save_file;"
        "from mammotriage.model.package import canonicalize_safetensors, sha256_file;"
        "t = load_file(sys.argv[1]); save_file(t, sys.argv[2], metadata={'format': 'pt', 'model_version': sys.argv[3]});"
        "canonicalize_safetensors(sys.argv[2]); print(sha256_file(sys.argv[2]))")
    digests = {subprocess.run([sys.executable, "-c", code, str(tiny_package / "models/model.safetensors"),
                               str(tmp_path / f"w{i}.safetensors"), meta["version"]],
                              capture_output=True, text=True, check=True).stdout.strip() for i in range(3)}
    assert digests == {meta["weights_sha256"]}


def _tiny_second_look(seed=0):
    from mammotriage.model.calc import FEATURES, fit_trees
    from mammotriage.model.twostage import STAGE2_FEATURES, SecondLook

    rng = np.random.default_rng(seed)
    Xc = rng.normal(size=(200, len(FEATURES)))
    Xs = rng.normal(size=(200, len(STAGE2_FEATURES)))
    calc = fit_trees(Xc, (Xc[:, 3] > 0).astype(int), n_estimators=10)
    st2 = fit_trees(Xs, (Xs[:, 0] > 0).astype(int), n_estimators=10)
    return SecondLook(calc, st2, min_score=0.0, calc_offset=-1.25)


def test_second_look_travels_in_the_one_hashed_weights_file(tmp_path, tiny_config, tiny_pp, phantom_exam):
    import torch

    from mammotriage.dicom.image import MammoImage
    from mammotriage.dicom.read import parse_metadata
    from mammotriage.model.infer import Engine
    from mammotriage.model.network import build_detector
    from mammotriage.model.package import ModelPackageError, save_package, sha256_file

    torch.manual_seed(1)
    det = build_detector(tiny_config, train_components=False)
    sl = _tiny_second_look()
    out = save_package(tmp_path / "two", det, tiny_config, tiny_pp, version="0.0.2-test", description="t",
                       training={"sources": []}, hyper_parameters={}, seed=1, eval_metrics={},
                       operating_points={}, second_look=sl)
    meta = json.loads((out / "configs/metadata.json").read_text())
    assert meta["weights_sha256"] == sha256_file(out / "models/model.safetensors")
    # the metadata's rule is the code's own text
    assert meta["scores"]["suppression"] == sl.describe()["suppression"]
    assert "noisy-OR" in meta["scores"]["image"] and "mean of the breast's CC and MLO" in meta["scores"]["breast"]
    engine = Engine.from_package(out, device="cpu", threads=1)
    assert engine.second_look is not None
    X = np.random.default_rng(5).normal(size=(30, len(meta["second_look"]["stage2_features"])))
    assert np.allclose(engine.second_look.stage2.predict_proba(X), sl.stage2.predict_proba(X))
    # the cluster trees' prior shift travels with them
    Xc = np.random.default_rng(6).normal(size=(30, len(meta["second_look"]["calc_features"])))
    assert engine.second_look.calc_offset == -1.25
    assert np.allclose(engine.second_look.calc_proba(Xc), sl.calc.predict_proba(Xc, -1.25))
    images = [MammoImage(im.pixels, parse_metadata(im.dataset)) for im in phantom_exam.images]
    results = engine.predict_images(images, max_map_side=128)
    assert len(results) == 4
    for r in results:
        kinds = {f.kind for f in r.findings}
        assert kinds <= {"mass", "calcification"}
        # one mark per place: no box nested in another
        b = np.array([f.box for f in r.findings]).reshape(-1, 4)
        for i in range(len(b)):
            for j in range(len(b)):
                if i != j:
                    inside = (b[j, 0] >= b[i, 0]) & (b[j, 1] >= b[i, 1]) & (b[j, 2] <= b[i, 2]) & (b[j, 3] <= b[i, 3])
                    assert not inside
        assert 0.0 <= r.score <= 1.0
    # stage-two features of another program version are refused, not silently misread
    meta["second_look"]["stage2_features"] = ["something", "else"]
    (out / "configs/metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match="second look"):
        Engine.from_package(out, device="cpu", threads=1)

def test_malformed_safetensors_with_matching_sha256_is_a_clear_error(tiny_package, tmp_path):
    import shutil

    from mammotriage.model.infer import Engine
    from mammotriage.model.package import ModelPackageError, sha256_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_package, bad)
    w = bad / "models/model.safetensors"
    w.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    meta_path = bad / "configs/metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = sha256_file(w)  # the hash matches: only the format is wrong
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match="not a readable safetensors file"):
        Engine.from_package(bad)


def test_models_register_of_a_tampered_package_is_refused_without_traceback(tiny_package, tmp_path, capsys,
                                                                              monkeypatch):
    import shutil

    from mammotriage.cli import main

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_package, bad)
    w = bad / "models/model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    assert main(["models", "register", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refused: ") and "sha256 mismatch" in err
