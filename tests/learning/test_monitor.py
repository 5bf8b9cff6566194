"""Monitoring: scores per model and scanner, reader feedback, drift and unseen scanners."""

from __future__ import annotations

import json

import numpy as np

from mammotriage.cli import main
from mammotriage.dicom.voi import image_statistics
from mammotriage.learning.monitor import monitor_report, write_plots
from mtsupport import monitor_archive


def test_monitor_report_per_scanner(tmp_path) -> None:
    archive = monitor_archive(tmp_path)
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
