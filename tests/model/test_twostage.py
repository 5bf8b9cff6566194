"""The second look's cross-validation, its folds and the exam-level operating points."""

import json

import numpy as np
import pytest
from scipy import ndimage

from mammotriage.model.calc import insert_cluster
from mammotriage.model.data import Sample


def _tissue(seed, rows=360, cols=280):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    inside = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.9)) ** 2 <= 1
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (rows, cols)), 5) * 30
    return np.clip(np.where(inside, 110 + tex + rng.normal(0, 2, (rows, cols)), 0), 0, 255).astype(np.uint8)


def _fold_records(tmp_path, k):
    """The dataset's samples, with each patient fold's stage-one records in ``tmp_path/fold<f>``."""
    from mammotriage.model.data import patient_folds

    samples, records = _dataset()
    fold_of = patient_folds(samples, k)
    for f in range(k):
        d = tmp_path / f"fold{f}"
        d.mkdir()
        recs = [r for r, g in zip(records, fold_of, strict=True) if g == f]
        d.joinpath("records.json").write_text(json.dumps({"info": {}, "records": recs}))
    return samples


def _dataset(n_patients=16):
    """Patients with two views; every second patient has a calcification cluster and a
    'mass' (bright blob) in the first view."""
    samples, records = [], []
    for p in range(n_patients):
        for v in range(2):
            img = _tissue(100 * p + v)
            circles, kinds, boxes = [], [], []
            if p % 2 == 0 and v == 0:
                img, (cx, cy, r) = insert_cluster(img, 0.2, (110.0, 150.0), np.random.default_rng(p),
                                                  contrast_per_mm=160.0)
                yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
                blob = np.exp(-((xx - 90) ** 2 + (yy - 260) ** 2) / (2 * 9.0 ** 2)) * 60
                img = np.clip(img + blob, 0, 255).astype(np.uint8)
                circles = [(cx, cy, r), (90.0, 260.0, 18.0)]
                kinds = ["calcification", "mass"]
                boxes = [(cx - r, cy - r, cx + r, cy + r), (72.0, 242.0, 108.0, 278.0)]
            key = f"syn:{p}:{v}"
            samples.append(Sample(key=key, group=f"syn:{p}", source="mias", abnormal=bool(kinds),
                                  boxes=np.array(boxes, float).reshape(-1, 4), kinds=kinds,
                                  load=(lambda im=img: im), circles=np.array(circles, float).reshape(-1, 3),
                                  spacing_mm=0.2))
            # stage-one candidates: the true mass (when there is one) and two false ones
            cand = [(200.0, 60.0, 230.0, 90.0), (40.0, 100.0, 70.0, 130.0)]
            sc = [0.6, 0.5]
            if kinds:
                cand.insert(0, (74.0, 244.0, 106.0, 276.0))
                sc.insert(0, 0.55)
            records.append({"key": key, "abnormal": bool(kinds), "circles": circles, "kinds": kinds,
                            "boxes": cand, "scores": sc, "finding_kinds": ["mass"] * len(cand),
                            "image_score": max(sc)})
    return samples, records


def test_second_look_cv_uses_only_other_folds_and_keeps_the_json_shape(tmp_path):
    from mammotriage.model.crossval import paired_bootstrap, second_look_cv

    k = 2
    samples = _fold_records(tmp_path, k)
    out = second_look_cv(samples, tmp_path, k)
    assert len(out["second_look"]) == len(samples)
    assert [r["key"] for r in out["second_look"]] == [s.key for s in samples]
    new, old = out["metrics"]["second_look"], out["metrics"]["stage_one"]
    for m in (new, old):
        assert set(m) >= {"image_auc", "froc", "per_kind"}
    # the calcification path finds the inserted clusters the stage-one candidates never had
    assert old["per_kind"]["calcification"]["sens@4"] == 0.0
    assert new["per_kind"]["calcification"]["sens@4"] >= 0.5
    # the final second look is fitted on every fold and can be stored
    arrays = out["final"].to_arrays()
    assert any(k.startswith("second_look.calc.") for k in arrays)
    assert any(k.startswith("second_look.stage2.") for k in arrays)
    boot = paired_bootstrap(out["stage_one"], out["second_look"], [s.group for s in samples], n=20)
    lo, hi = boot["sens_diff_ci"]
    assert lo <= hi


def test_exam_operating_points_meet_their_targets():
    from mammotriage.model.card import exam_operating_points

    rng = np.random.default_rng(0)
    records, groups = [], []
    for p in range(100):
        abnormal = p < 40
        for v in range(2):
            sick = abnormal and v == 0
            s = float(np.clip(rng.normal(0.7 if sick else 0.3, 0.15), 0, 1))
            records.append({"image_score": s, "abnormal": sick})
            groups.append(f"p{p}")
    ops = exam_operating_points(records, groups)
    assert ops["n_exams"] == 100 and ops["n_abnormal_exams"] == 40
    assert ops["likely_normal"]["sensitivity"] >= 0.97
    assert ops["suspicious"]["specificity"] >= 0.80
    assert ops["likely_normal"]["threshold"] <= ops["suspicious"]["threshold"]
    cal = ops["calibration"]
    assert 0 <= cal["brier"] <= 1 and sum(b["n"] for b in cal["reliability"]) == 100


def test_the_worklist_reads_exam_level_points():
    from mammotriage.triage.worklist import OperatingPoints

    ops = {"operating_points": {"likely_normal": {"threshold": 0.2}, "suspicious": {"threshold": 0.6}}}
    p = OperatingPoints.resolve(ops)
    assert p.category(0.1) == "likely normal" and p.category(0.7) == "suspicious"
    assert p.category(0.4) == "indeterminate"
    with pytest.raises(ValueError):
        OperatingPoints.resolve({"operating_points": {}})


def test_second_look_without_stage_two_keeps_the_candidates_scores(tmp_path):
    from mammotriage.model.crossval import second_look_cv

    k = 2
    samples = _fold_records(tmp_path, k)
    out = second_look_cv(samples, tmp_path, k, stage_two=False)
    final = out["final"]
    assert final.stage2 is None and final.calc is not None
    assert not any(k.startswith("second_look.stage2.") for k in final.to_arrays())
    # the metadata's rule says what runs: RetinaNet scores, no stage two
    rule = final.describe()["finding"]
    assert rule.startswith("RetinaNet candidate score") and "stage two" not in rule
    for old, new in zip(out["stage_one"], out["second_look"], strict=True):
        masses = [s for s, kind in zip(new["scores"], new["finding_kinds"], strict=True) if kind == "mass"]
        # every mass mark left is a stage-one candidate with its own score
        assert set(np.round(masses, 9)) <= set(np.round(old["scores"], 9))
    # the prior shift puts the cluster trees below their training rate's probabilities
    assert final.calc_offset < 0


def test_calc_example_cache_is_replaced_atomically(tmp_path, monkeypatch):
    """A run killed while it writes the cluster cache (or a second run that reads it at
    that moment) must find the previous cache whole, never half a file."""
    from mammotriage.model import crossval

    samples, _ = _dataset(n_patients=2)
    path = tmp_path / "calc_examples.npz"
    first = crossval.calc_example_cache(samples, [], path)
    before = path.read_bytes()

    def dies_half_way(file, **arrays):
        with open(file, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("killed")

    monkeypatch.setattr(crossval.np, "savez_compressed", dies_half_way)
    with pytest.raises(OSError):
        crossval.calc_example_cache(samples[:3], [], path)  # other keys: a rebuild
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    again = crossval.calc_example_cache(samples, [], path)  # reads the intact cache
    assert sorted(again) == sorted(first) and np.array_equal(again["keys"], first["keys"])


def test_fused_marks_average_the_models_and_keep_one_mark_per_lesion() -> None:
    """Weighted box fusion of three models' marks on one view: a lesion all three mark
    becomes one mark at the score-weighted mean box with the mean score; a mark only one
    model makes keeps a third of its score; kinds are never fused together."""
    from mammotriage.model.twostage import fuse_views

    a = (np.array([[10, 10, 30, 30], [100, 100, 120, 120]]), np.array([0.9, 0.6]), ["mass", "mass"])
    b = (np.array([[12, 12, 32, 32], [11, 11, 29, 29]]), np.array([0.6, 0.3]), ["mass", "calcification"])
    c = (np.array([[14, 10, 34, 30]]), np.array([0.3]), ["mass"])
    boxes, scores, kinds = fuse_views([a, b, c])
    assert kinds == ["mass", "mass", "calcification"]
    assert scores == pytest.approx([(0.9 + 0.6 + 0.3) / 3, 0.6 / 3, 0.3 / 3])
    w = np.array([0.9, 0.6, 0.3])
    expect = (np.array([[10, 10, 30, 30], [12, 12, 32, 32], [14, 10, 34, 30]]) * w[:, None]).sum(0) / w.sum()
    assert boxes[0] == pytest.approx(expect)
    assert boxes[1] == pytest.approx([100, 100, 120, 120])
    # a model's second box on the same lesion (nested) adds nothing: its best counts once
    nested = (np.array([[10, 10, 30, 30], [15, 15, 25, 25]]), np.array([0.8, 0.7]), ["mass", "mass"])
    _, scores, _ = fuse_views([nested, (np.zeros((0, 4)), np.zeros(0), [])])
    assert scores == pytest.approx([0.4])
    assert fuse_views([])[1].size == 0


def test_a_mark_joins_the_fused_mark_it_overlaps_most_and_zero_scores_keep_their_place() -> None:
    from mammotriage.model.twostage import fuse_views

    # A and B do not overlap enough to fuse; C overlaps A (IoU 0.33) but B far more (0.67)
    a = (np.array([[0.0, 0, 20, 20]]), np.array([0.9]), ["mass"])
    b = (np.array([[14.0, 0, 34, 20]]), np.array([0.8]), ["mass"])
    c = (np.array([[10.0, 0, 30, 20]]), np.array([0.5]), ["mass"])
    boxes, scores, _ = fuse_views([a, b, c])
    assert scores == pytest.approx([(0.8 + 0.5) / 3, 0.9 / 3])  # best first
    assert boxes[0] == pytest.approx([(14 * 0.8 + 10 * 0.5) / 1.3, 0, (34 * 0.8 + 30 * 0.5) / 1.3, 20])
    assert boxes[1] == pytest.approx([0, 0, 20, 20])
    zero = [(np.array([[100.0, 100, 120, 120]]), np.zeros(1), ["calcification"]),
            (np.array([[102.0, 100, 122, 120]]), np.zeros(1), ["calcification"])]
    boxes, scores, _ = fuse_views(zero)
    assert boxes[0] == pytest.approx([101, 100, 121, 120]) and scores == pytest.approx([0.0])


def test_platt_scaling_recovers_the_map_it_was_drawn_from() -> None:
    from mammotriage.model.twostage import fit_platt, platt

    rng = np.random.default_rng(5)
    s = rng.uniform(0.02, 0.98, 20000)
    y = rng.uniform(size=len(s)) < platt(s, 0.6, -2.0)  # scores far above the lesions' rate
    a, b = fit_platt(s, y.astype(int))
    assert abs(a - 0.6) < 0.1 and abs(b + 2.0) < 0.15
    p = platt(s, a, b)
    assert np.all(np.diff(p[np.argsort(s)]) >= 0)  # the order of the scores is kept
    assert abs(p.mean() - y.mean()) < 0.01
    assert fit_platt([0.2, 0.9], [1, 1]) == (1.0, 0.0)  # one label only: the identity
    np.testing.assert_allclose(platt([0.2, 0.9], 1.0, 0.0), [0.2, 0.9])
    with pytest.raises(ValueError):
        fit_platt([0.2, 0.9], [1])


def test_a_calibrated_stage_one_ranks_its_masses_with_the_clusters_and_is_stored(tmp_path):
    from mammotriage.model.crossval import second_look_cv
    from mammotriage.model.twostage import SecondLook, ViewCandidates, platt

    k = 2
    samples = _fold_records(tmp_path, k)
    out = second_look_cv(samples, tmp_path, k, stage_two=False, calibrate_stage_one=True)
    final = out["final"]
    assert final.stage2 is None and final.stage1_platt is not None
    a, b = final.stage1_platt
    # 1 of 3 candidates per abnormal image is a mass, none on normal ones: a precision of
    # 1/6 at scores 0.5-0.6, so the map pulls them far down
    assert platt([0.55], a, b)[0] < 0.35
    plain = second_look_cv(samples, tmp_path, k, stage_two=False)
    for cal, raw in zip(out["second_look"], plain["second_look"], strict=True):
        m_cal = [s for s, kk in zip(cal["scores"], cal["finding_kinds"], strict=True) if kk == "mass"]
        m_raw = [s for s, kk in zip(raw["scores"], raw["finding_kinds"], strict=True) if kk == "mass"]
        assert len(m_cal) == len(m_raw) and (not m_raw or max(m_cal) < max(m_raw))
    assert "Platt scaling" in final.describe()["finding"]
    again = SecondLook.from_package(final.to_arrays(), json.loads(json.dumps(final.to_json())))
    assert again.stage1_platt == final.stage1_platt
    cand = ViewCandidates(np.array([[0.0, 0, 10, 10], [20.0, 20, 40, 40]]), np.array([0.3, 0.8]), ["mass", "mass"])
    np.testing.assert_allclose(again.rescore(cand, None, None, None), platt([0.3, 0.8], a, b))  # type: ignore[arg-type]
    # packages before it carry no calibration and keep the raw scores
    meta = final.to_json()
    del meta["stage1_platt"]
    old = SecondLook.from_package(final.to_arrays(), meta)
    assert old.stage1_platt is None
    np.testing.assert_allclose(old.rescore(cand, None, None, None), [0.3, 0.8])  # type: ignore[arg-type]
