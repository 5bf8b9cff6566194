"""Validation gate: figures, paired bootstrap, decision, report, locked validation set, CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from retrain_sim import build_tiny_site

from mammotriage.learning.gate import (
    GateError,
    GateParams,
    froc_fast,
    gate_decision,
    kind_sensitivity,
    latest_report,
    paired_figures,
    report_text,
    validate,
)
from mammotriage.learning.snapshot_data import (
    SnapshotDataError,
    lock_validation,
    locked_validation,
    uid_digest,
)
from mammotriage.model.evaluate import froc_from

# --------------------------------------------------------------------------- pure figures


def test_froc_fast_equals_evaluate_froc_from():
    rng = np.random.default_rng(0)
    for trial in range(30):
        fp = rng.random(rng.integers(0, 40)).round(2)  # ties on purpose
        tp = np.where(rng.random(rng.integers(1, 15)) < 0.3, 0.0, rng.random(1)).round(2)
        n = int(rng.integers(1, 30))
        a, am, _, _ = froc_from(fp, tp, n)
        b, bm = froc_fast(fp, tp, n)
        assert a == pytest.approx(b, abs=1e-12) and am == pytest.approx(bm, abs=1e-12), trial
    assert np.isnan(froc_fast(np.ones(3), np.zeros(0), 5)[1])


def _records(n: int, hit: bool, seed: int = 0) -> list[dict]:
    """n images, every other one with a lesion (alternating kinds); the model finds the
    lesions (``hit``) or marks the wrong place, plus one weak false positive per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        abnormal = i % 2 == 0
        kind = "mass" if i % 4 == 0 else "calcification"
        circles = np.array([[100.0, 100.0, 10.0]]) if abnormal else np.zeros((0, 3))
        boxes = [[300.0, 300.0, 320.0, 320.0]]
        scores = [0.1 + 0.05 * rng.random()]
        kinds = ["mass"]
        if abnormal:
            boxes.append([92.0, 92.0, 108.0, 108.0] if hit else [400.0, 20.0, 420.0, 40.0])
            scores.append(0.8 + 0.1 * rng.random())
            kinds.append(kind)
        out.append({"key": f"img{i}", "abnormal": abnormal, "circles": circles,
                    "kinds": [kind] if abnormal else [], "boxes": np.array(boxes), "scores": np.array(scores),
                    "finding_kinds": kinds, "image_score": max(scores) if hit else 0.5 * rng.random()})
    return out


def test_paired_bootstrap_and_decision():
    good, bad = _records(24, True), _records(24, False)
    same = paired_figures(good, good, n_boot=50, seed=1)
    assert same["difference"]["froc_mean"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert same["lesions_per_kind"] == {"calcification": 6, "mass": 6}
    lo, hi = same["parent"]["froc_mean"]["ci95"]
    assert lo <= same["parent"]["froc_mean"]["value"] <= hi
    checks, _ = gate_decision(same, None, GateParams(min_kind_lesions=5))
    assert all(c["passed"] for c in checks) and len(checks) == 6  # FROC, AUC, 2 kinds x (any, labelled)

    worse = paired_figures(good, bad, n_boot=50, seed=1)
    assert worse["difference"]["froc_mean"]["value"] < -0.5
    assert worse["difference"]["froc_mean"]["ci95"][1] < 0
    checks, _ = gate_decision(worse, None, GateParams(min_kind_lesions=5))
    failing = [c["message"] for c in checks if c["passed"] is False]
    assert any(m.startswith("worse beyond tolerance: validation FROC mean:") for m in failing)
    assert any("image AUC" in m for m in failing)
    # a small loss within the tolerance passes
    good, bad = _records(48, True), _records(48, False)
    slight = paired_figures(good, good[:-2] + bad[-2:], n_boot=20)  # one of 24 lesions missed
    assert -0.05 <= slight["difference"]["froc_mean"]["value"] < 0
    checks, _ = gate_decision(slight, None, GateParams(tolerance_froc=0.05, tolerance_auc=0.2,
                                                       min_kind_lesions=100))
    assert all(c["passed"] for c in checks)


def test_corrections_are_gated_on_the_readers_kind():
    """The parent finds the corrected calcifications but calls them masses (any-finding
    FROC at its ceiling); the candidate labels them right and adds a few confident false
    positives. The corrections gate counts the kind: it passes, and the any-finding loss
    on the trained-on images is reported as a warning, not a reason."""
    parent = _records(48, True)
    for r in parent:
        r["finding_kinds"] = ["mass"] * len(r["finding_kinds"])
    cand = _records(48, True)
    for i, r in enumerate(cand):
        if i % 2 == 0 and i % 4:  # an extra confident mark beside half the calcification images
            r["boxes"] = np.vstack([r["boxes"], [[500.0, 500.0, 520.0, 520.0]]])
            r["scores"] = np.append(r["scores"], 0.95)
            r["finding_kinds"] = [*r["finding_kinds"], "calcification"]
    figs = paired_figures(parent, cand, n_boot=50, seed=3)
    assert figs["parent"]["labelled_froc_mean"]["value"] < 0.6 < figs["candidate"]["labelled_froc_mean"]["value"]
    assert figs["difference"]["froc_mean"]["value"] < -0.05  # any finding: worse beyond tolerance
    checks, warnings = gate_decision(figs, figs, GateParams(min_kind_lesions=100))
    corr = [c for c in checks if c["set"] == "corrections"]
    assert len(corr) == 1 and corr[0]["metric"] == "labelled_froc_mean" and corr[0]["passed"] is True
    assert any(w.startswith("lower beyond tolerance (not gated on trained-on images): FROC mean on the new "
                            "corrections (any finding)") for w in warnings)
    # a candidate that forgot the corrections is refused on them
    checks, _ = gate_decision(figs, paired_figures(cand, parent, n_boot=50, seed=3), GateParams(min_kind_lesions=100))
    assert [c["passed"] for c in checks if c["set"] == "corrections"] == [False]


def test_a_candidate_must_learn_its_own_corrections():
    """A fine-tune on shuffled labels of a weak parent can beat the parent on the
    validation set by seeing more of the site's images (loop_real at full size: the
    control passed every no-worse check). Checked on its own training snapshot, a
    candidate must show a gain whose 95 % interval lies above 0."""
    parent = _records(48, True)
    for r in parent:
        r["finding_kinds"] = ["mass"] * len(r["finding_kinds"])
    learned = paired_figures(parent, _records(48, True), n_boot=50, seed=3)
    assert learned["difference"]["labelled_froc_mean"]["ci95"][0] > 0
    unchanged = paired_figures(parent, parent, n_boot=50, seed=3)
    params = GateParams(min_kind_lesions=100)
    checks, _ = gate_decision(learned, learned, params, own_corrections=True)
    assert [c["passed"] for c in checks if c["set"] == "corrections"] == [True, True]
    checks, _ = gate_decision(learned, unchanged, params, own_corrections=True)
    failing = [c["message"] for c in checks if c["passed"] is False]
    assert len(failing) == 1 and failing[0].startswith("not learned: the new corrections were learned")
    # no worse on the corrections is enough for corrections it was not trained on, or when the site says so
    for own, p in ((False, params), (True, GateParams(min_kind_lesions=100, require_learning=False))):
        checks, _ = gate_decision(learned, unchanged, p, own_corrections=own)
        assert all(c["passed"] for c in checks)


def test_no_gain_is_required_where_the_current_model_had_nothing_left_to_learn():
    """100 phantom exams through the pipeline with the shipped parent: it already found
    the corrected lesions (0.971), the candidate reached 0.992 and was refused as "not
    learned" (interval [+0.000, +0.048]). Where the readers confirmed what the current
    model finds, no gain is required; the no-worse check still refuses a candidate that
    forgot them."""
    perfect = _records(48, True)  # every lesion found by a finding of its kind
    parent = _records(48, True)
    parent[0]["finding_kinds"][-1] = "calcification"  # one of 24 lesions (a mass) called a calcification
    figs = paired_figures(parent, perfect, n_boot=50, seed=3)
    assert 0.95 <= figs["parent"]["labelled_froc_mean"]["value"] < 1.0
    assert figs["difference"]["labelled_froc_mean"]["ci95"][0] <= 0  # no significant gain
    params = GateParams(min_kind_lesions=100)
    checks, _ = gate_decision(figs, figs, params, own_corrections=True)
    learned = [c for c in checks if c["name"].startswith("the new corrections were learned")]
    assert len(learned) == 1 and learned[0]["passed"] is True
    assert "no gain required" in learned[0]["message"]
    assert all(c["passed"] for c in checks)
    # with no headroom allowance the old rule refuses it
    checks, _ = gate_decision(figs, figs, GateParams(min_kind_lesions=100, learning_headroom=0.0),
                              own_corrections=True)
    assert [c["passed"] for c in checks if c["set"] == "corrections"] == [True, False]
    # a candidate that forgot what the parent found is still refused on the corrections
    forgot = _records(48, True)
    for r in forgot:
        r["finding_kinds"] = ["mass"] * len(r["finding_kinds"])
    checks, _ = gate_decision(figs, paired_figures(parent, forgot, n_boot=50, seed=3), params, own_corrections=True)
    assert [c["passed"] for c in checks if c["set"] == "corrections"] == [False, True]


def test_any_mark_loss_of_a_kind_the_current_model_never_labelled_is_reported_not_gated():
    """The phantom proof under oneDNN AVX2: the parent marks the calcification clusters but
    calls them masses (labelled FROC 0, any mark 0.96); the candidate labels them right
    but some of its calcification marks score below its weakest false marks, so the
    any-mark figure for the kind falls at the low-FP end. That figure is a ceiling of
    mislabelled hits: reported, not gated; the labelled figure, the pooled FROC and the
    AUC gate. A parent that labels the kind keeps the any-mark check."""
    parent = _records(48, True)
    for r in parent:
        r["finding_kinds"] = ["mass"] * len(r["finding_kinds"])
    cand = _records(48, True)
    calc = [r for r in cand if r["kinds"] == ["calcification"]]
    for r in calc[:4]:  # four of twelve clusters scored below every false mark
        r["scores"][-1] = 0.05
    params = GateParams(min_kind_lesions=10, tolerance_kind=0.05, tolerance_froc=0.15)
    figs = paired_figures(parent, cand, n_boot=200, seed=3)
    assert figs["parent"]["labelled_froc_mean:calcification"]["value"] == 0.0
    assert figs["difference"]["froc_mean:calcification"]["value"] < -0.05
    assert figs["difference"]["froc_mean:calcification"]["ci95"][1] < 0
    checks, warnings = gate_decision(figs, None, params)
    assert all(c["passed"] for c in checks), [c["message"] for c in checks if not c["passed"]]
    assert not any(c["metric"] == "froc_mean:calcification" for c in checks)
    assert any(w.startswith("lower beyond tolerance (not gated: the current model finds calcification only "
                            "under another kind)") for w in warnings)
    # the old rule (every kind's any-mark figure gated) refuses it
    checks, _ = gate_decision(figs, None, GateParams(min_kind_lesions=10, tolerance_kind=0.05, tolerance_froc=0.15,
                                                     relabel_ratio=0.0))
    assert [c["metric"] for c in checks if c["passed"] is False] == ["froc_mean:calcification"]
    # a current model that labels the kind: the same loss is gated
    labelled_parent = _records(48, True)
    figs = paired_figures(labelled_parent, cand, n_boot=200, seed=3)
    checks, _ = gate_decision(figs, None, params)
    assert "froc_mean:calcification" in [c["metric"] for c in checks if c["passed"] is False]


def test_kind_sensitivity_counts_only_labelled_findings():
    recs = _records(8, True)
    for r in recs:  # the model marks every lesion, always as a mass
        r["finding_kinds"] = ["mass"] * len(r["finding_kinds"])
    assert kind_sensitivity(recs, "calcification", 1.0, labelled=False) == 1.0
    assert kind_sensitivity(recs, "calcification", 1.0, labelled=True) == 0.0
    assert kind_sensitivity(recs, "mass", 1.0, labelled=True) == 1.0


# --------------------------------------------------------------------------- with a site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_tiny_site(tmp_path_factory.mktemp("gate-site"))


def _copy_package(src: Path, dst: Path, version: str, **meta_changes) -> Path:
    shutil.copytree(src, dst)
    path = dst / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(version=version, parent_version="0.0.1", **meta_changes)
    path.write_text(json.dumps(meta))
    return dst


def test_locked_validation_set(site, tmp_path):
    locked = locked_validation(site.archive)  # the first validation snapshot is locked on first use
    assert locked["sha256"] == site.validation and locked["role"] == "validation"
    with pytest.raises(SnapshotDataError, match="only a validation snapshot"):
        lock_validation(site.archive, site.training)
    assert lock_validation(site.archive, site.validation)["sha256"] == site.validation  # no-op


def test_same_weights_pass_and_the_report_promotes(site, tmp_path):
    from mammotriage.learning.registry import ModelRegistry, report_digest

    cand = _copy_package(site.parent, tmp_path / "same", "0.0.1-site.same")
    with ModelRegistry(site.archive) as reg:
        reg.register(cand)
    seen = []
    report = validate("0.0.1-site.same", archive_file=site.archive, params=GateParams(n_boot=30, threads=1),
                      progress=lambda stage, done, total, note: seen.append(stage))
    assert report["passed"] is True and report["reasons"] == [] and {"predict", "bootstrap"} <= set(seen)
    assert report["parent"]["version"] == "0.0.1" and report["validation"]["snapshot"] == site.validation
    assert report["validation"]["figures"]["difference"]["froc_mean"]["value"] in (0.0, None)
    saved = json.loads(Path(report["report_path"]).read_text())
    assert saved["passed"] is True and isinstance(saved["reasons"], list)
    assert {Path(p).name for p in report["plots"]} == {"froc_compare.png", "roc_compare.png", "figures_compare.png"}
    assert all(Path(p).stat().st_size > 1000 for p in report["plots"])
    assert latest_report(site.archive, "0.0.1-site.same")["created"] == report["created"]
    assert "PASSED" in report_text(report)
    # recalibrated operating points from the candidate's validation predictions
    assert report["operating_points"]["source"].startswith("validation gate predictions")
    assert {"suspicious", "likely_normal", "marks"} <= set(report["operating_points"])
    with ModelRegistry(site.archive) as reg:
        assert reg.stored_report(report_digest(saved)) == saved  # the gate kept its report
        reg.promote("0.0.1-site.same", saved, who="admin")
        assert reg.active().version == "0.0.1-site.same"
        assert reg.active_package()[2]["operating_points"] == report["operating_points"]
        reg.rollback(who="admin")
        assert reg.active().version == "0.0.1"


def test_gate_refuses_a_candidate_trained_on_validation_images(site, tmp_path):
    from mammotriage.store.datasets import load_snapshot

    sop = load_snapshot(site.validation, site.archive)["images"][0]["sop_uid"]
    cand = _copy_package(site.parent, tmp_path / "leaky", "0.0.1-site.leaky",
                         fine_tuning={"site_images": [uid_digest(sop)], "finished": True})
    report = validate(cand, archive_file=site.archive, params=GateParams(n_boot=10, threads=1),
                      out_dir=tmp_path / "gate")
    assert report["passed"] is False
    assert report["reasons"][0] == "the candidate was trained on 1 image(s) of the validation set"


def test_gate_needs_a_validation_set(tmp_path):
    from retrain_sim import tiny_parent

    parent = tiny_parent(tmp_path / "p")
    with pytest.raises(GateError, match="no validation snapshot"):
        validate(parent, parent=parent, archive_file=tmp_path / "empty" / "archive.sqlite")


def test_cli_validate_then_promote(site, tmp_path, capsys, monkeypatch):
    from mammotriage.cli import main as cli_main
    from mammotriage.learning.commands import main

    cand = _copy_package(site.parent, tmp_path / "cli", "0.0.1-site.cli")
    out = tmp_path / "report.json"
    rc = main(["validate", str(cand), "--archive", str(site.archive), "--bootstrap", "20", "--threads", "1",
               "--report", str(out), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and printed["passed"] is True
    assert json.loads(out.read_text())["passed"] is True
    # the lead's `models promote --report` takes it
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(site.archive.parent))
    assert cli_main(["models", "register", str(cand)]) == 0
    assert cli_main(["models", "promote", "0.0.1-site.cli", "--report", str(out)]) == 0
    assert cli_main(["models", "rollback"]) == 0
    capsys.readouterr()
    rc = main(["validate", "--archive", str(site.archive)])
    assert rc == 2
