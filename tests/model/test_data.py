import collections

import numpy as np
from PIL import Image

from mammotriage.model.data import patient_folds, read_mias
from mtsupport import require_shared


def _write_folder(tmp_path, make_breast):
    for i in range(1, 5):
        Image.fromarray(make_breast(chest_wall="right" if i % 2 else "left", seed=i)).save(tmp_path / f"mdb{i:03d}.png")
    (tmp_path / "labels.csv").write_text(
        "image,patient,background,cls,severity,x,y_top_left,radius\n"
        "mdb001,p001,G,CIRC,B,200,150,20\n"
        "mdb001,p001,G,CALC,M,180,120,8\n"
        "mdb002,p001,G,NORM,,,,\n"
        "mdb003,p002,F,ASYM,B,,,\n"
        "mdb004,p002,F,NORM,,,,\n")
    return tmp_path


def test_read_mias_folder(tmp_path, make_breast):
    samples = read_mias(_write_folder(tmp_path, make_breast))
    assert [s.key for s in samples] == ["mias:mdb001", "mias:mdb002", "mias:mdb003", "mias:mdb004"]
    s1 = samples[0]
    assert s1.abnormal and s1.kinds == ["mass", "calcification"]
    np.testing.assert_allclose(s1.boxes[0], [180, 130, 220, 170])
    assert s1.group == samples[1].group == "mias:p001"
    assert samples[2].abnormal and len(samples[2].boxes) == 0  # no coordinates: image label only
    assert not samples[3].abnormal
    assert s1.load().shape == (300, 240)


def test_real_mias_dev_patient_folds():
    folder = require_shared("mias", "dev")
    samples = read_mias(folder)
    assert len(samples) == 194
    assert sum(len(s.kinds) for s in samples) == 73
    folds = patient_folds(samples, 4)
    by_patient = collections.defaultdict(set)
    for s, f in zip(samples, folds, strict=True):
        by_patient[s.group].add(f)
    assert all(len(v) == 1 for v in by_patient.values())  # never split a patient
    counts = collections.Counter(folds)
    assert max(counts.values()) - min(counts.values()) <= 4


def test_manifest_with_phantoms_and_mias(tmp_path, make_breast):
    import json

    from mammotriage.model.data import load_manifest

    mias = tmp_path / "mias"
    mias.mkdir()
    _write_folder(mias, make_breast)
    man = tmp_path / "m.json"
    man.write_text(json.dumps({"sources": [
        {"type": "mias", "path": "mias"},
        {"type": "phantom", "n_exams": 1, "seed": 3, "rows": 256, "columns": 208}]}))
    samples, desc = load_manifest(man)
    assert len(samples) == 4 + 4
    assert desc["n_images"] == 8 and len(desc["sha256"]) == 64
    ph = [s for s in samples if s.source == "phantom"]
    assert len({s.group for s in ph}) == 1  # one exam = one patient
    assert ph[0].load().dtype == np.uint8
    _again, desc2 = load_manifest(man)
    assert desc2["sha256"] == desc["sha256"]


def test_input_reference_and_training_scanners_for_the_drift_monitor(tmp_path, make_breast):
    from mammotriage.dicom.voi import image_statistics
    from mammotriage.model.data import input_reference, phantom_samples, training_scanners

    samples = read_mias(_write_folder(tmp_path, make_breast)) + phantom_samples(1, seed=5, rows=256, columns=208)
    ref = input_reference(samples)
    means = [image_statistics(s.load())["mean"] for s in samples]
    assert ref["n_images"] == len(samples) == 8
    assert abs(ref["mean"] - np.mean(means)) < 1e-2
    assert abs(ref["mean_sd"] - np.std(means, ddof=1)) < 1e-2 and ref["mean_sd"] > 0
    assert training_scanners(samples) == ["Mammo Triage phantom", "mini-MIAS (digitised film)"]
    assert input_reference([]) == {}
