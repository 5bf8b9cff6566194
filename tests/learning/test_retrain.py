"""On-site fine-tuning: snapshot -> samples, the validation guard, replay, reproducibility, CLI.

A tiny site (three 256 x 208 phantom exams in a real archive, a randomly initialised
parent on a 128 x 96 canvas) keeps every retrain to a few iterations and seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from retrain_sim import build_tiny_site

from mammotriage.learning.snapshot_data import (
    SnapshotDataError,
    ValidationGuard,
    replay_pool,
    replay_sample,
    shuffle_labels,
    snapshot_samples,
    training_set,
)
from mammotriage.store.datasets import load_snapshot


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_tiny_site(tmp_path_factory.mktemp("tiny-site"))


def _params(**kw):
    from mammotriage.learning.retrain import RetrainParams

    base = dict(max_iterations=3, threads=1, patch_rows=128, warmup_iters=1, seed=11, replay_fraction=0.5)
    base.update(kw)
    return RetrainParams(**base)


# --------------------------------------------------------------------------- data


def test_snapshot_samples_use_consensus_labels_in_stored_pixels(site):
    manifest = load_snapshot(site.validation, site.archive)
    samples = snapshot_samples(manifest)
    assert [s.key for s in samples] == sorted(s.key for s in samples)
    truth = {les["sop_uid"]: les for e in site.validation_exams for les in e.lesions}
    for s in samples:
        sop = s.key.split(":", 1)[1]
        assert s.group.startswith("site:")
        if sop in truth:
            assert s.abnormal and s.kinds == [truth[sop]["kind"]]
            np.testing.assert_allclose(s.boxes[0], truth[sop]["box"])
        else:
            assert not s.abnormal and s.boxes.shape == (0, 4)
    img = samples[0].load()
    assert img.dtype == np.uint8 and img.shape == (256, 208)


def test_snapshot_samples_carry_the_stored_pixel_spacing(site):
    """The calcification path and the view geometry work in millimetres: a sample from a
    site snapshot carries its image's pixel size (it had none: 0.2 mm was assumed)."""
    import pydicom

    manifest = load_snapshot(site.validation, site.archive)
    img = manifest["images"][0]
    ds = pydicom.dcmread(img["path"], stop_before_pixels=True)
    header = float((ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))[0])
    assert img["spacing_mm"][0] == pytest.approx(header)
    samples = snapshot_samples(manifest)
    assert samples and all(s.spacing_mm == pytest.approx(header) for s in samples)
    # a manifest from before the field: the header says it
    old = {**manifest, "images": [{k: v for k, v in i.items() if k != "spacing_mm"} for i in manifest["images"]]}
    assert all(s.spacing_mm == pytest.approx(header) for s in snapshot_samples(old))


def test_validation_snapshot_is_never_trained_on(site):
    with pytest.raises(SnapshotDataError, match="never trained on"):
        training_set(site.validation, site.archive)
    ts = training_set(site.training, site.archive)
    val_sops = {img["sop_uid"] for img in load_snapshot(site.validation, site.archive)["images"]}
    used = {s.key.split(":", 1)[1] for s in ts.samples}
    assert used and not used & val_sops
    assert ts.excluded == {"image in the validation set": len(val_sops)}
    assert ts.describe()["validation_snapshots_excluded"] == [site.validation]


def test_guard_catches_copies_and_patients():
    g = ValidationGuard()
    g.add({"sha256": "v", "images": [{"sop_uid": "1.2", "sha256": "f" * 64, "pixel_sha256": "p" * 64,
                                       "exam_key": "E"}], "exams": [{"exam_key": "E", "patient_key": "pk"}]})
    assert g.why_excluded({"sop_uid": "9.9", "sha256": "f" * 64}, None) == "same file as a validation image"
    assert g.why_excluded({"sop_uid": "9.9", "pixel_sha256": "p" * 64}, None) == "same pixels as a validation image"
    assert g.why_excluded({"sop_uid": "9.9"}, "pk") == "patient has an exam in the validation set"
    assert g.why_excluded({"sop_uid": "9.9"}, "other") is None


def test_replay_regenerates_phantoms_and_reports_missing_data(tmp_path):
    pool, report = replay_pool({"sources": [
        {"type": "phantom", "n_exams": 3, "seed": 5, "rows": 256, "columns": 208, "exclude_kinds": ["calcification"]},
        {"type": "mias", "path": str(tmp_path / "nowhere"), "sha256": "0" * 64}]})
    assert report[0]["available"] and not report[1]["available"]
    assert "not found" in report[1]["note"] or "differ" in report[1]["note"]
    assert all("calcification" not in s.kinds for s in pool)
    a = replay_sample(pool, 4, seed=3)
    assert a == replay_sample(pool, 4, seed=3)
    assert len({s.group for s in a}) * 4 >= len(a) >= 4  # whole patients (4 views each)
    shuffled = shuffle_labels(pool, seed=1)
    assert sorted(len(s.kinds) for s in shuffled) == sorted(len(s.kinds) for s in pool)


# --------------------------------------------------------------------------- retrain


def test_retrain_is_bit_reproducible_and_described(site, tmp_path):
    """Same parent, snapshot and seed -> the same weights file, here and in another process."""
    import os
    import subprocess

    from mammotriage.learning.retrain import RetrainParams, retrain
    from mammotriage.model.registry import ModelRegistry

    stages = []
    params = RetrainParams(max_iterations=3, threads=1, seed=11)  # the CLI's defaults otherwise
    a = retrain(site.training, archive_file=site.archive, params=params, out_dir=tmp_path / "a",
                progress=lambda stage, done, total, note: stages.append(stage))
    app = Path(__file__).resolve().parents[2] / "app"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(app), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "mammotriage.learning.commands", "retrain",
                          "--snapshot", site.training, "--archive", str(site.archive), "--max-iterations", "3",
                          "--threads", "1", "--seed", "11", "--no-register", "--out", str(tmp_path / "b"), "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    b = json.loads(out.stdout)
    assert a.weights_sha256 == b["weights_sha256"], "same parent, snapshot and seed must give the same weights"
    assert a.version == b["version"] and a.version.startswith("0.0.1-site.")
    assert {"load", "prepare", "train", "write"} <= set(stages)
    c = retrain(site.training, archive_file=site.archive, params=RetrainParams(max_iterations=3, threads=1, seed=12),
                out_dir=tmp_path / "c", register=False)
    assert c.weights_sha256 != a.weights_sha256 and c.version != a.version
    print(f"\nreproducibility: this process  {a.weights_sha256}\n                 other process {b['weights_sha256']}\n"
          f"                 seed 12       {c.weights_sha256}")

    meta = a.metadata
    ft = meta["fine_tuning"]
    parent_meta = json.loads((site.parent / "configs" / "metadata.json").read_text())
    assert meta["parent_version"] == "0.0.1"
    assert ft["parent"]["weights_sha256"] == parent_meta["weights_sha256"]
    assert ft["snapshot"]["sha256"] == site.training
    assert ft["snapshot"]["excluded"] == {"image in the validation set": 4}
    assert ft["replay"]["available"] and ft["replay"]["n_images"] > 0
    assert ft["params"]["seed"] == 11 and ft["params"]["max_iterations"] == 3
    assert meta["hyper_parameters"]["iterations"] == 3 and ft["finished"]
    assert ft["second_look"]["action"] == "none"  # the tiny parent is stage one only
    from mammotriage.model.package import verify

    assert verify(a.path)["weights_sha256"] == a.weights_sha256
    assert meta["training_data"]["sources"][-1] == {"type": "snapshot", "sha256": site.training,
                                                    "name": "tiny-corrections", "images": 8}
    assert (a.path / "docs" / "README.md").read_text().count(site.training) == 1
    with ModelRegistry(site.archive) as reg:
        v = reg.get(a.version)
        assert v is not None and v.origin == "site" and v.parent == "0.0.1"
        assert reg.active().version == "0.0.1"  # a candidate is never made active by retraining


def test_retrain_without_original_data_says_so(site, tmp_path):
    from retrain_sim import tiny_parent

    from mammotriage.learning.retrain import retrain

    parent = tiny_parent(tmp_path / "p", version="0.0.2", training={
        "summary": "mini-MIAS", "sources": [{"type": "mias", "path": str(tmp_path / "gone"), "sha256": "0" * 64}]})
    r = retrain(site.training, archive_file=site.archive, parent=parent, params=_params(max_iterations=1),
                out_dir=tmp_path / "cand", register=False)
    replay = r.metadata["fine_tuning"]["replay"]
    assert not replay["available"] and replay["n_images"] == 0
    assert "unavailable" in replay["note"] and replay["sources"][0]["type"] == "mias"
    assert "original training data unavailable" in (r.path / "docs" / "README.md").read_text()


def test_cli_retrain(site, tmp_path, capsys):
    from mammotriage.learning.commands import main

    rc = main(["retrain", "--snapshot", site.training[:10], "--archive", str(site.archive), "--max-iterations", "1",
               "--threads", "1", "--epochs", "0.5", "--no-register", "--out", str(tmp_path / "cand"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["iterations"] == 1 and out["snapshot"] == site.training and not out["registered"]
    rc = main(["retrain", "--snapshot", site.validation, "--archive", str(site.archive), "--progress-json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 2 and lines[-1]["event"] == "error" and "never trained on" in lines[-1]["message"]


def test_safetensors_header_is_canonical(tmp_path):
    """safetensors writes its metadata in a per-process random order; candidates sort it."""
    import torch
    from safetensors.torch import load_file, save_file

    from mammotriage.model.package import canonicalize_safetensors

    f = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(3.0)}, str(f), metadata={"model_version": "x", "format": "pt", "b": "y"})
    canonicalize_safetensors(f)
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert list(json.loads(raw[8:8 + n])["__metadata__"]) == ["b", "format", "model_version"]
    assert torch.equal(load_file(str(f))["a"], torch.arange(3.0))
    assert canonicalize_safetensors(f) is False  # already canonical


def test_candidate_of_the_shipped_package_carries_its_second_look_and_says_why(site, tmp_path):
    """The shipped package holds calcification trees (``second_look.*``): a candidate
    written without a refit (``retrain`` refits them when the vendor's data is there:
    tests/learning/test_retrain_second_look.py) keeps them bit for bit, and its metadata
    and card say that, and why."""
    from safetensors.numpy import load_file

    from mammotriage.learning.retrain import (
        RetrainParams,
        fine_tune,
        second_look_policy,
        write_candidate,
    )
    from mammotriage.learning.snapshot_data import training_set
    from mammotriage.model.package import default_model_dir, read_metadata, verify

    shipped = default_model_dir()
    meta = verify(shipped)
    if "second_look" not in meta:
        pytest.skip(f"the package at {shipped} has no second look")
    params = RetrainParams(threads=1, patch_rows=128)
    ts = training_set(site.training, site.archive)
    result = fine_tune(shipped, ts.samples[:2], [], params, stop_at=0)  # no training step: only the writing
    replay = {"available": False, "n_images": 0, "sources": [], "note": "not used here"}
    _, folder, cmeta = write_candidate(tmp_path / "cand", result, shipped, params, ts.describe(), replay,
                                       ts.samples[:2], [])
    policy = cmeta["fine_tuning"]["second_look"]
    assert policy == second_look_policy(meta)
    assert policy["action"] == "carried" and policy["from"] == meta["version"]
    assert "not refitted" in policy["reason"]
    assert cmeta["second_look"] == meta["second_look"]
    parent_arrays = load_file(str(shipped / meta["weights_file"]))
    cand_arrays = load_file(str(folder / read_metadata(folder)["weights_file"]))
    trees = sorted(k for k in parent_arrays if k.startswith("second_look."))
    assert trees and trees == sorted(k for k in cand_arrays if k.startswith("second_look."))
    for k in trees:
        np.testing.assert_array_equal(cand_arrays[k], parent_arrays[k])
    assert "Second look: carried" in (folder / "docs" / "README.md").read_text()


def test_a_parent_without_second_look_is_recorded_as_such():
    from mammotriage.learning.retrain import second_look_policy

    assert second_look_policy({"version": "0.0.1"})["action"] == "none"
