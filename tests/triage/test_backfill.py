"""Back-fill triage: a real ``mammotriage backfill`` process is killed mid-run, and the
next run finishes the archive without analysing a finished exam again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mammotriage.cli import main

APP = Path(__file__).resolve().parents[2] / "app"


def _done(archive: Path) -> dict[str, str]:
    """exam key -> created_at of its stored result (read-only, beside the running command)."""
    conn = sqlite3.connect(f"file:{archive}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT exam_key, created_at FROM ai_exam_results").fetchall())
    except sqlite3.OperationalError:  # tables not there yet
        return {}
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_backfill_resumes_after_a_kill_without_redoing_finished_exams(tmp_path: Path, capsys,
                                                                       monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    demo = tmp_path / "demo"
    assert main(["demo", "--out", str(demo), "--exams", "4", "--seed", "3", "--rows", "256", "--columns", "208",
                 "--priors", "0"]) == 0
    assert main(["import", *(str(p) for p in sorted(demo.iterdir()) if p.is_dir())]) == 0
    archive = home / "archive.sqlite"
    env = {**os.environ, "MAMMOTRIAGE_HOME": str(home), "PYTHONPATH": str(APP), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mammotriage", "backfill", "--workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not _done(archive) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # a real kill: no clean-up code runs
        proc.wait(30)
        for pid in workers:  # the pool's processes die with the command
            end = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            assert not _alive(pid), f"backfill worker {pid} outlived the killed command"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stderr.close()
    before = _done(archive)
    assert 1 <= len(before) < 4, "the kill should land while exams are still waiting"
    conn = sqlite3.connect(archive)
    statuses = dict(conn.execute("SELECT status, COUNT(*) FROM triage_jobs GROUP BY status").fetchall())
    conn.close()
    assert statuses.get("done") == len(before) and statuses.get("running", 0) <= 1  # the one being analysed

    capsys.readouterr()
    assert main(["backfill", "--workers", "1", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    # progress on stderr, with the ETA from the per-view times the killed run measured
    assert "backfill " in captured.err and "/4 exams" in captured.err and " left" in captured.err, captured.err
    assert report["done_before"] == len(before) and report["analysed"] == 4 - len(before)
    assert report["remaining"] == 0 and report["failed"] == 0
    after = _done(archive)
    assert len(after) == 4
    assert {k: after[k] for k in before} == before  # finished exams were not analysed again
    # a third run has nothing left to do
    assert main(["backfill", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["analysed"] == 0 and again["done_before"] == 4 and _done(archive) == after
