"""Correction events: append-only hash chain, audit verification, fold to labels."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mammotriage.store.events import CorrectionError, CorrectionLog
from mammotriage.store.labels import ai_target, fold

SHA = "ab" * 32


@pytest.fixture
def log(tmp_path):
    with CorrectionLog(tmp_path / "archive.sqlite", workstation="ws-test") as log:
        yield log


def _add(log, **kw):
    base = dict(reader="dr_a", exam_key="E1", study_uid="1.2", series_uid="1.2.1", sop_uid="1.2.1.1",
                pixel_sha256=SHA, model_version="v1")
    base.update(kw)
    return log.append(**base)


def test_events_are_chained_and_verify(log) -> None:
    e1 = _add(log, action="reject", target=ai_target("v1", "1.2.1.1", 0))
    e2 = _add(log, action="add", kind="mass", geometry={"type": "box", "box": [10, 20, 30, 40]},
              payload={"suspicion": 0.7})
    assert e2.prev_hash == e1.hash and e1.prev_hash == "0" * 64
    report = log.verify()
    assert report.ok and report.events == 2
    (stored,) = [e for e in log.events() if e.event_id == e2.event_id]
    assert stored.geometry == {"type": "box", "box": [10.0, 20.0, 30.0, 40.0]}
    assert stored.workstation == "ws-test" and stored.reader == "dr_a"


def test_updates_and_deletes_are_refused(log) -> None:
    _add(log, action="reject", target="ai:v1:x:0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        log.conn.execute("UPDATE correction_events SET kind = 'mass'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        log.conn.execute("DELETE FROM correction_events")


def _tamper(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER correction_events_no_update")
    conn.execute("DROP TRIGGER correction_events_no_delete")
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE correction_events SET kind = 'asymmetry' WHERE seq = 2", "content changed"),
    ("DELETE FROM correction_events WHERE seq = 2", "missing"),
    ("DELETE FROM correction_events WHERE seq = 3", "at the end are missing"),
    ("DELETE FROM correction_events", "all 3 events are missing"),
    ("UPDATE correction_events SET at = '2020-01-01T00:00:00+00:00' WHERE seq = 1", "content changed"),
])
def test_audit_detects_edits_and_deletions(tmp_path, sql, expected) -> None:
    path = tmp_path / "archive.sqlite"
    with CorrectionLog(path) as log:
        for i in range(3):
            _add(log, action="add", kind="mass", geometry={"type": "box", "box": [i, i, i + 5, i + 5]})
    _tamper(path, sql)
    with CorrectionLog(path) as log:
        report = log.verify()
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_invalid_events_are_refused(log) -> None:
    with pytest.raises(CorrectionError, match="unknown action"):
        _add(log, action="approve")
    with pytest.raises(CorrectionError, match="empty or outside"):
        _add(log, action="add", kind="mass", geometry={"type": "box", "box": [30, 20, 10, 40]})
    with pytest.raises(CorrectionError, match="kind"):
        _add(log, action="add", kind="tumour", geometry={"type": "box", "box": [1, 2, 3, 4]})
    with pytest.raises(CorrectionError, match="sha256"):
        _add(log, action="reject", target="t", pixel_sha256="")
    with pytest.raises(CorrectionError, match="BI-RADS"):
        log.append(reader="dr_a", exam_key="E1", action="birads", payload={"birads": 7})
    assert log.events() == []


def test_fold_accept_reject_adjust_add_undo_redo(log) -> None:
    sop = "1.2.1.1"
    marks = {sop: [{"box": [0, 0, 10, 10], "kind": "mass", "score": 0.9},
                   {"box": [50, 50, 60, 60], "kind": "calcification", "score": 0.6},
                   {"box": [80, 80, 90, 90], "kind": "mass", "score": 0.55}]}
    t0, t1, t2 = (ai_target("v1", sop, i) for i in range(3))
    _add(log, action="reject", target=t0)
    _add(log, action="adjust", target=t1, geometry={"type": "box", "box": [48, 49, 63, 61]})
    added = _add(log, action="add", kind="asymmetry", geometry={"type": "ellipse", "box": [5, 60, 25, 90]},
                 payload={"suspicion": 0.4})
    wrong = _add(log, action="change_kind", target=t2, kind="asymmetry")
    undo = _add(log, action="undo", target=wrong.event_id)
    log.append(reader="dr_a", exam_key="E1", action="birads", payload={"birads": 4})
    log.append(reader="dr_a", exam_key="E1", action="density", payload={"density": "C"})
    _add(log, reader="dr_b", action="accept", target=t0)
    labels = fold(log.events(exam_key="E1"), marks, "v1")
    a = labels["dr_a"]
    by_id = {lab.label_id: lab for lab in a.labels(sop)}
    assert by_id[t0].status == "rejected"
    assert by_id[t1].status == "accepted" and by_id[t1].geometry["box"] == [48, 49, 63, 61]
    assert by_id[t1].original_geometry["box"] == [50.0, 50.0, 60.0, 60.0]
    assert by_id[t2].kind == "mass" and by_id[t2].status == "unreviewed"  # the change was undone
    assert by_id[f"reader:{added.event_id}"].geometry["type"] == "ellipse"
    assert (a.birads, a.density) == (4, "C")
    # double reading: dr_b's labels stand side by side with dr_a's
    assert {lab.label_id: lab.status for lab in labels["dr_b"].labels(sop)}[t0] == "accepted"
    _add(log, action="redo", target=wrong.event_id)
    by_id = {lab.label_id: lab for lab in fold(log.events(), marks, "v1")["dr_a"].labels(sop)}
    assert by_id[t2].kind == "asymmetry"
    assert undo.target == wrong.event_id


WRITER = textwrap.dedent("""
    import sys
    from mammotriage.store.events import CorrectionLog
    log = CorrectionLog(sys.argv[1], workstation="kill-test")
    i = 0
    while True:
        e = log.append(reader="dr_k", exam_key="E", sop_uid="1.2.3", pixel_sha256="cd" * 32,
                       action="add", kind="mass", geometry={"type": "box", "box": [i, i, i + 3, i + 3]})
        print(e.event_id, flush=True)  # the acknowledgement the UI would get
        i += 1
""")


@pytest.mark.slow
def test_sigkill_never_loses_an_acknowledged_event(tmp_path) -> None:
    """Kill the writer with SIGKILL at random moments, >= 100 times: every acknowledged
    event is stored and the chain verifies after each kill."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "archive.sqlite"
    CorrectionLog(db).close()  # create the schema once
    rng = random.Random(20261127)
    acknowledged: list[str] = []
    kills = 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    while kills < 100:
        proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, env=env,
                                text=True)
        first = proc.stdout.readline()  # wait until it is writing
        if first:
            acknowledged.append(first.strip())
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged.extend(line.strip() for line in out.splitlines() if line.strip())
        kills += 1
        with CorrectionLog(db) as log:
            report = log.verify()
            assert report.ok, report.problems
    with CorrectionLog(db) as log:
        stored = {e.event_id for e in log.events()}
        report = log.verify()
    missing = [a for a in acknowledged if a not in stored]
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert report.ok and kills >= 100
    print(f"kill test: {kills} SIGKILLs, {len(acknowledged)} acknowledged events, {report.events} stored, "
          f"0 lost, chain verified")
