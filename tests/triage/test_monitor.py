"""Monitoring: scores per model and scanner, reader feedback, drift and unseen scanners."""

from __future__ import annotations

import json

import numpy as np

from mammotriage.cli import main
from mammotriage.dicom.voi import image_statistics
from mammotriage.store import Archive
from mammotriage.store.events import CorrectionLog
from mammotriage.triage import TriageQueue
from mammotriage.triage.monitor import monitor_report, write_plots
from mtsupport import make_mg_dataset


def _exam(folder, patient, uid, manufacturer, model):
    for lat in "RL":
        ds = make_mg_dataset(laterality=lat, view="CC", study_uid=uid, patient_id=patient)
        ds.Manufacturer, ds.ManufacturerModelName = manufacturer, model
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{patient}{lat}.dcm", enforce_file_format=True)


def test_monitor_report_per_scanner(tmp_path) -> None:
    _exam(tmp_path / "a", "P1", "1.2.1", "Mammo Triage phantom", "synthetic")
    _exam(tmp_path / "b", "P2", "1.2.2", "HOLOGIC, Inc.", "Selenia Dimensions")
    archive = Archive(tmp_path / "archive.sqlite")
    archive.import_paths([tmp_path / "a", tmp_path / "b"])
    queue = TriageQueue(archive.path)
    queue.sync("v1")
    brightness = {"1.2.1": 120.0, "1.2.2": 200.0}  # the new scanner's images are much brighter
    while (job := queue.claim_next("v1")) is not None:
        exam = archive.exam(job.exam_key)
        images = [{"sop_uid": i.sop_uid, "laterality": i.laterality.value, "score": 0.7 if job.exam_key == "1.2.2" else 0.1,
                   "findings": [{"box": [1, 1, 5, 5], "kind": "mass", "score": 0.7}],
                   "stats": {"mean": brightness[job.exam_key], "std": 20.0, "p05": 80.0, "p95": 230.0,
                             "breast_frac": 0.4}} for i in exam.images]
        queue.complete(job, "aa" * 32, images)
    sop = archive.exam("1.2.2").images[0].sop_uid
    with CorrectionLog(archive.path) as log:
        for action in ("reject", "accept"):
            log.append(reader="dr", exam_key="1.2.2", action=action, sop_uid=sop, pixel_sha256="bb" * 32,
                       model_version="v1", target="ai:v1:x:0")
        log.append(reader="dr", exam_key="1.2.2", action="add", sop_uid=sop, pixel_sha256="bb" * 32,
                   model_version="v1", kind="mass", geometry={"type": "box", "box": [1, 1, 9, 9]})
    meta = {"input_reference": {"mean": 118.0, "mean_sd": 15.0},
            "training_scanners": ["Mammo Triage phantom", "mini-MIAS (digitised film)"]}
    report = monitor_report(archive.path, meta, suspicious_threshold=0.5)
    scanners = report["model_versions"]["v1"]["scanners"]
    hologic = scanners["HOLOGIC, Inc. / Selenia Dimensions"]
    assert hologic["weeks"][0]["n"] == 1 and hologic["weeks"][0]["suspicious_fraction"] == 1.0
    assert hologic["marks"] == {"accepted": 1, "rejected": 1, "added": 1, "accept_rate": 0.5}
    drift = report["scanners"]["HOLOGIC, Inc. / Selenia Dimensions"]["drift"]
    assert drift["warning"] and drift["mean_smd"] > 5
    assert not report["scanners"]["Mammo Triage phantom / synthetic"]["drift"]["warning"]
    assert any("not seen in training: HOLOGIC" in w for w in report["warnings"])
    assert any("input drift on HOLOGIC" in w for w in report["warnings"])
    plots = write_plots(report, tmp_path / "plots")
    assert all(p.stat().st_size > 1000 for p in plots)


def test_image_statistics_use_the_breast_region() -> None:
    img = np.zeros((200, 160), np.uint8)
    img[20:180, :100] = 150
    img[30:40, 140:150] = 255  # a burned-in label outside the breast
    stats = image_statistics(img)
    assert abs(stats["mean"] - 150) < 1 and 0.4 < stats["breast_frac"] < 0.6


def test_monitor_cli_json(tmp_path, capsys) -> None:
    assert main(["monitor", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"model_versions", "scanners", "warnings"}
