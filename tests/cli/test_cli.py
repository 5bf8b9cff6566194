"""The command line: info, import, demo (in-process, plus the installed console script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mammotriage.cli import main
from mtsupport import require_shared, write_mg


def test_info_json_on_real_files(capsys) -> None:
    dicom = require_shared("dicom")
    files = [dicom / "cbis-ddsm" / "benign-P_00173" / "1-132.dcm", dicom / "wg04" / "MG1_J2KI.dcm",
             dicom / "wg04" / "MG1_JPLY.dcm", dicom / "vendor-headers" / "MG-RDSR-Hologic_2D.dcm",
             dicom / "wg04" / "RG1_J2KI.dcm"]
    rc = main(["info", "--json", *map(str, files)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1  # some files could not be read
    assert [o.get("laterality") for o in out[:2]] == ["R", "L"]
    assert [o.get("view") for o in out[:2]] == ["CC", "MLO"]
    assert out[1]["decoder"] == "pylibjpeg" and out[0]["decoder"] == "pydicom"
    assert out[2]["code"] == "cannot-decode" and "JPEG Extended" in out[2]["error"]
    assert out[3]["code"] == "not-an-image"
    assert out[4]["code"] == "not-a-mammogram"
    assert all("path" in o for o in out)


def test_info_text_for_vendor_presets(capsys) -> None:
    path = require_shared("dicom", "vendor-headers", "MG-Im-GE_Seno_1_ForPresentation.dcm")
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "LCC" in text and "NORMAL: C 2262 / W 380 SIGMOID" in text
    assert "at detector" in text and "FOR PRESENTATION" in text


def test_import_reports_rejections_and_exit_status(tmp_path: Path, capsys) -> None:
    good = tmp_path / "in"
    write_mg(good / "a.dcm", laterality="R", view="CC")
    write_mg(good / "b.dcm", laterality="L", view="CC")
    assert main(["import", str(good)]) == 0
    out = capsys.readouterr().out
    assert "REJECTED" not in out and "2 imported" in out
    (good / "notes.txt").write_text("hello")
    assert main(["import", str(good)]) == 1
    out = capsys.readouterr().out
    assert f"REJECTED {good / 'notes.txt'}: not a DICOM file" in out
    assert "2 duplicate" in out  # already present, not an error
    # the archive lives in MAMMOTRIAGE_HOME
    assert (Path(os.environ["MAMMOTRIAGE_HOME"]) / "archive.sqlite").exists()


def test_demo_writes_exams_and_ground_truth(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--exams", "3", "--seed", "5", "--rows", "256", "--columns", "208"]) == 0
    truth = json.loads((out / "ground_truth.json").read_text())
    current = [e for e in truth["exams"] if "prior_of" not in e]
    priors = [e for e in truth["exams"] if "prior_of" in e]
    assert len(current) == 3 and len(priors) == 2  # longitudinal patients by default
    for exam in truth["exams"]:
        assert exam["study_uid"]
        for lesion in exam["lesions"]:
            assert set(lesion) >= {"sop_uid", "box", "kind", "malignant"}
            x0, y0, x1, y1 = lesion["box"]
            assert 0 <= x0 < x1 <= 208 and 0 <= y0 < y1 <= 256
    assert len(list(out.rglob("*.dcm"))) == 20
    # the demo imports cleanly
    assert main(["import", str(out / "exam001"), str(out / "exam002"), str(out / "exam003")]) == 0
    for prior in priors:
        (cur,) = [e for e in current if e["study_uid"] == prior["prior_of"]]
        assert cur["patient_id"] == prior["patient_id"] and cur["prior_study_uids"] == [prior["study_uid"]]
        assert prior["years_before"] in (1, 2)
        assert len(prior["lesions"]) <= len(cur["lesions"])
        assert not cur["lesions"] or prior["lesions"] == [] or all(
            (p["box"][2] - p["box"][0]) < (c["box"][2] - c["box"][0])
            for p, c in zip(prior["lesions"], cur["lesions"], strict=False))


def test_worklist_lists_priors_of_the_demo_patients(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--exams", "3", "--seed", "5", "--rows", "256", "--columns", "208"]) == 0
    truth = json.loads((out / "ground_truth.json").read_text())
    assert main(["import", *(str(p) for p in sorted(out.iterdir()) if p.is_dir())]) == 0
    capsys.readouterr()
    assert main(["worklist", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {r["study_uid"]: r for r in listing["exams"]}
    assert len(rows) == 5
    for exam in truth["exams"]:
        row = rows[exam["study_uid"]]
        assert row["priors"] == len(exam.get("prior_study_uids", []))
        assert row["prior_study_uids"] == exam.get("prior_study_uids", [])
        assert row["read_state"] == "unread" and "ai_status" in row
    # blind mode (the site's policy) leaves AI category and score out
    (tmp_path / "home" / "reading_policy.json").write_text('{"reading_mode": "after read", "enforced": true}')
    assert main(["worklist", "--json"]) == 0
    blind = json.loads(capsys.readouterr().out)
    assert blind["blind"] and all("ai_score" not in r and "ai_category" not in r for r in blind["exams"])
    assert main(["worklist"]) == 0
    assert "hidden until your initial assessment" in capsys.readouterr().out


def test_worklist_json_gives_each_exam_its_eta(tmp_path: Path, capsys, monkeypatch) -> None:
    from mammotriage.config import archive_path
    from mammotriage.model.registry import ModelRegistry
    from mammotriage.triage.queue import TriageQueue

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--exams", "3", "--seed", "2", "--rows", "256", "--columns", "208",
                 "--priors", "0"]) == 0
    assert main(["import", *(str(p) for p in sorted(out.iterdir()) if p.is_dir())]) == 0
    capsys.readouterr()
    assert main(["worklist", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["exams"] and all(r["eta_s"] is None for r in before["exams"])  # not queued: no ETA
    with ModelRegistry(archive_path()) as registry:
        registry.ensure_shipped()
        active = registry.active()
    if active is None:
        pytest.skip("no shipped model in this checkout")
    with TriageQueue(archive_path()) as queue:
        assert queue.sync(active.version) == 3
        queue.record_time(active.weights_sha256, active.version, 4, 8.0)  # 2 s a view, measured
        done = queue.claim_next(active.version)
        queue.complete(done, active.weights_sha256, [])
    assert main(["worklist", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["exams"]
    assert {"ai_status", "read_state", "priors", "eta_s"} <= set(rows[0])  # existing keys kept
    eta = {r["exam_key"]: r["eta_s"] for r in rows}
    assert eta[done.exam_key] == 0.0
    waiting = sorted(v for k, v in eta.items() if k != done.exam_key)
    assert waiting == [8.0, 16.0]  # 4 views x 2 s each, one exam after the other
    assert main(["worklist"]) == 0
    assert "in ~8 s" in capsys.readouterr().out


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    exe = shutil.which("mammotriage", path=str(Path(sys.executable).parent))
    assert exe, "console script not installed"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("mammotriage ")
    module = subprocess.run([sys.executable, "-m", "mammotriage", "info", "--json", str(tmp_path / "missing.dcm")],
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 1
    assert json.loads(module.stdout)[0]["error"] == "no such file"


@pytest.mark.parametrize("argv", [["info"], ["import"], ["demo"]])
def test_usage_errors_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_audit_verify_reports_tampering(tmp_path, capsys) -> None:
    import sqlite3

    from mammotriage.config import archive_path
    from mammotriage.store.events import CorrectionLog

    with CorrectionLog(archive_path()) as log:
        for i in range(3):
            log.append(reader="dr_a", exam_key="E", action="note", payload={"text": f"n{i}"})
    assert main(["audit", "verify"]) == 0
    assert "3 correction events: chain verified" in capsys.readouterr().out
    conn = sqlite3.connect(archive_path())
    conn.execute("DROP TRIGGER correction_events_no_update")
    conn.execute("UPDATE correction_events SET payload = '{\"text\": \"forged\"}' WHERE seq = 2")
    conn.commit()
    conn.close()
    assert main(["audit", "verify", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and any("content changed" in p for p in out["problems"])


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`mammotriage info --json FILES | head -1`: the reader closes the pipe early; the
    command must end without a traceback (exit status 141, like other Unix tools)."""
    files = [str(tmp_path / f"missing-{i}.dcm") for i in range(4000)]  # far more than a pipe buffer
    proc = subprocess.Popen([sys.executable, "-m", "mammotriage", "info", "--json", *files],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # what `head` does after its first lines
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err
