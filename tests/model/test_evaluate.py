import numpy as np
import pytest

from mammotriage.model.evaluate import evaluate_predictions, froc_from, match_image, roc_auc


def test_roc_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_match_centre_inside_or_iou():
    circles = np.array([[100.0, 100.0, 20.0]])
    boxes = np.array([
        [90.0, 90.0, 110.0, 110.0],  # centre inside: hit
        [300.0, 300.0, 320.0, 320.0],  # far: FP
        [95.0, 95.0, 105.0, 105.0],  # hits the same lesion again, lower score: a duplicate
    ])
    fps, les = match_image(boxes, np.array([0.9, 0.8, 0.3]), circles)
    # the duplicate mark on an already-hit lesion counts as a false positive
    assert les.tolist() == [0.9] and fps.tolist() == [0.8, 0.3]
    # centre outside the circle but IoU with the circle's box >= 0.1
    fps, les = match_image(np.array([[105.0, 70.0, 135.0, 100.0]]), np.array([0.5]), circles)
    assert les.tolist() == [0.5] and fps.size == 0


def test_froc_operating_points():
    # 4 images, 2 lesions: one found at 0.9, one at 0.4; FPs at 0.8, 0.5, 0.3, 0.2
    fr, mean, _fps, _sens = froc_from(np.array([0.8, 0.5, 0.3, 0.2]), np.array([0.9, 0.4]), 4)
    # threshold 0.9: 0 FP -> 0.5; 0.8: 0.25 FP/img -> 0.5; 0.4: 0.5 FP/img -> 1.0
    assert fr["0.25"] == pytest.approx(0.5)
    assert fr["0.5"] == pytest.approx(1.0)
    assert fr["4"] == pytest.approx(1.0)
    assert 0 < mean <= 1


def test_missed_lesion_is_never_found():
    fr, *_ = froc_from(np.array([0.8]), np.array([0.0, 0.7]), 2)
    assert fr["4"] == pytest.approx(0.5)


def test_evaluate_predictions_json_shape():
    recs = [
        {"abnormal": True, "circles": np.array([[50.0, 50.0, 10.0]]), "kinds": ["mass"],
         "boxes": np.array([[45.0, 45.0, 55.0, 55.0]]), "scores": np.array([0.9]), "image_score": 0.9},
        {"abnormal": True, "circles": np.zeros((0, 3)), "kinds": [],  # no coordinates: image level only
         "boxes": np.zeros((0, 4)), "scores": np.zeros(0), "image_score": 0.2},
        {"abnormal": False, "circles": np.zeros((0, 3)), "kinds": [],
         "boxes": np.array([[1.0, 1.0, 5.0, 5.0]]), "scores": np.array([0.3]), "image_score": 0.3},
    ]
    r = evaluate_predictions(recs).to_json()
    assert r["n_images"] == 3 and r["n_lesions"] == 1 and r["n_abnormal"] == 2
    assert set(r["froc"]) == {"0.125", "0.25", "0.5", "1", "2", "4"}
    assert r["image_auc"] == pytest.approx(0.5)
    assert r["per_kind"]["mass"]["n"] == 1


def test_per_kind_hit_needs_the_matching_kind():
    circles = np.array([[100.0, 100.0, 20.0], [300.0, 300.0, 20.0]])
    boxes = np.array([[90.0, 90.0, 110.0, 110.0], [290.0, 290.0, 310.0, 310.0]])
    # a mass mark on the calcification cluster: a hit kind-blind, a false positive per kind
    fps, les = match_image(boxes, np.array([0.9, 0.8]), circles, ["mass", "mass"], ["mass", "calcification"])
    assert les.tolist() == [0.9, 0.0] and fps.tolist() == [0.8]
    fps, les = match_image(boxes, np.array([0.9, 0.8]), circles)
    assert les.tolist() == [0.9, 0.8] and fps.size == 0
    rec = {"abnormal": True, "circles": circles, "kinds": ["mass", "calcification"], "boxes": boxes,
           "scores": np.array([0.9, 0.8]), "finding_kinds": ["mass", "mass"], "image_score": 0.9}
    r = evaluate_predictions([rec]).to_json()
    assert r["froc"]["4"] == pytest.approx(1.0)
    assert r["per_kind"]["mass"]["sens@4"] == pytest.approx(1.0)
    assert r["per_kind"]["calcification"]["sens@4"] == pytest.approx(0.0)


def test_vectorised_froc_curve_is_monai_s():
    from monai.metrics import compute_froc_curve_data

    from mammotriage.model.evaluate import froc_curve, sensitivity_at

    rng = np.random.default_rng(4)
    fp = np.round(rng.random(300), 3)  # ties included
    tp = np.concatenate([np.round(rng.random(40), 3), np.zeros(5)])
    f1, s1 = compute_froc_curve_data(fp, tp, num_targets=len(tp), num_images=50)
    f2, s2 = froc_curve(fp, tp, 50)
    assert np.allclose(f1, f2) and np.allclose(s1, s2)
    fr, *_ = froc_from(fp, tp, 50)
    assert sensitivity_at(fp, tp, 50, 1.0) == pytest.approx(fr["1"])
