"""Data tests before training: the validation report of a snapshot, retrain refusing a
failing one, and ``dataset check``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from retrain_sim import build_tiny_site

from mammotriage.learning.dataset_check import check_snapshot, report_text
from mammotriage.store.datasets import load_snapshot


@pytest.fixture(scope="module")
def _site(tmp_path_factory):
    return build_tiny_site(tmp_path_factory.mktemp("check-site"), n_validation=1, n_training=2)


@pytest.fixture
def site(_site):
    """The shared tiny site (tests that spoil files build their own)."""
    return _site, _site.archive


def _check(site, which: str = "training", **kw):
    tiny, archive = site
    sha = tiny.training if which == "training" else tiny.validation
    manifest = json.loads((archive.parent / "datasets" / f"{sha}.json").read_text())
    return check_snapshot({**manifest, "sha256": sha}, archive, **kw), manifest


def test_a_clean_training_snapshot_passes_with_its_counts(site):
    report, _manifest = _check(site)
    assert report["passed"], report["reasons"]
    names = {c["name"]: c for c in report["checks"]}
    assert set(names) == {"boxes_inside", "known_kinds", "no_validation_overlap", "pixels_unchanged"}
    overlap = names["no_validation_overlap"]
    # the training snapshot also holds the validation exam: its 4 images are excluded, not trained on
    assert overlap["excluded"] == {"image in the validation set": 4} and overlap["trainable"] == 8
    c = report["counts"]
    assert c["reviewed_images"] == 12 and c["exams"] == 3 and c["patients"] == 3
    assert c["per_kind"].get("mass", 0) >= 3
    assert sum(s["images"] for s in c["per_scanner"].values()) == 12
    assert Path(report["report_path"]).name == f"{report['snapshot']}.json"
    assert json.loads(Path(report["report_path"]).read_text())["passed"] is True
    text = report_text(report)
    assert "PASSED" in text and "labels per kind" in text and "per scanner" in text


def test_the_validation_snapshot_is_checked_too(site):
    report, _ = _check(site, "validation")
    assert report["passed"] and report["role"] == "validation"
    assert "no_validation_overlap" not in {c["name"] for c in report["checks"]}


def test_boxes_off_the_image_and_unknown_kinds_fail(site):
    tiny, archive = site
    _, manifest = _check(site)
    img = next(i for i in manifest["images"] if i["consensus"])
    img["consensus"] = [{**img["consensus"][0], "box": [-5.0, 10.0, 40.0, 50.0]},
                        {**img["consensus"][0], "kind": "tumour", "label_id": "x"},
                        {**img["consensus"][0], "box": [30.0, 30.0, 30.0, 60.0], "label_id": "y"}]
    report = check_snapshot({**manifest, "sha256": tiny.training}, archive, pixels=False, write=False)
    assert not report["passed"]
    assert any(r.startswith("boxes_inside: 2 label box(es) off the image") for r in report["reasons"])
    assert any("kind 'tumour'" in r for r in report["reasons"])
    assert "pixels not checked (pixels=False)" in report["warnings"]


def test_changed_pixels_fail_and_retrain_refuses_the_snapshot(tmp_path):
    from mammotriage.dicom import read_image
    from mammotriage.learning.retrain import RetrainError, RetrainParams, retrain

    tiny = build_tiny_site(tmp_path / "s", n_validation=1, n_training=2)
    site = tiny, tiny.archive
    archive = tiny.archive
    _, manifest = _check(site)
    labelled = [i for i in manifest["images"] if i["consensus"] and i["sop_uid"] not in
                {v["sop_uid"] for v in load_snapshot(tiny.validation, archive)["images"]}]
    victim = Path(labelled[0]["path"])
    import pydicom

    ds = pydicom.dcmread(victim)
    arr = read_image(victim).pixels.copy()
    arr[:20, :20] = arr.max()  # somebody "fixed" the image after it was labelled
    ds.PixelData = arr.astype(arr.dtype).tobytes()
    ds.save_as(victim)
    missing = Path(labelled[1]["path"])
    missing.unlink()
    report, _ = _check(site)
    assert not report["passed"]
    reason = next(r for r in report["reasons"] if r.startswith("pixels_unchanged"))
    assert "2 image(s) whose pixels are not those labelled" in reason
    problems = next(c for c in report["checks"] if c["name"] == "pixels_unchanged")["problems"]
    assert any(str(victim) in p and "pixels changed since they were labelled" in p for p in problems)
    assert any(str(missing) in p and "cannot be read any more" in p for p in problems)
    with pytest.raises(RetrainError, match=r"fails its data tests.*pixels changed since they were labelled"):
        retrain(tiny.training, archive_file=archive, params=RetrainParams(threads=1, max_iterations=1),
                out_dir=tmp_path / "cand")
    assert not (tmp_path / "cand").exists()


def test_a_training_snapshot_of_validation_images_only_fails(tmp_path):
    from retrain_sim import import_phantom_exams, phantom_numbers, record_ground_truth

    from mammotriage.store.datasets import create_snapshot

    archive = tmp_path / "home" / "archive.sqlite"
    exams = import_phantom_exams(archive, tmp_path / "src", 21, phantom_numbers(21, 1, 256, 208), 256, 208)
    record_ground_truth(archive, exams, reader="validator")
    create_snapshot(archive, role="validation", name="validation")
    only = create_snapshot(archive, role="training", name="nothing new")
    report = check_snapshot(only.sha256, archive, pixels=False)
    assert not report["passed"]
    assert "no reviewed image is left to train on" in report["reasons"][0]


def test_cli_dataset_check(site, capsys, monkeypatch):
    from mammotriage.cli import main

    tiny, archive = site
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(archive.parent))
    assert main(["dataset", "check", tiny.training[:12], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is True and out["snapshot"] == tiny.training
    assert main(["dataset", "check", "no-such-snapshot"]) == 2
    assert "no-such-snapshot" in capsys.readouterr().err
