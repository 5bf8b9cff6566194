"""Kill the real app (SIGTERM, SIGKILL) while it triages: no child outlives it, and the
interrupted triage job is recovered by the next start.

The next start is the real app again: its worker puts the job back in the queue and
finishes it.  The app runs as its own program (offscreen Qt) on a data folder with two imported
phantom exams and the shipped model; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mammotriage.phantom import write_demo_set
from mammotriage.store import Archive
from mammotriage.triage import TriageQueue

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live, non-zombie process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry.name)] = (int(fields[1]), fields[19])
    return out


def _descendants(root: int) -> dict[int, str]:
    table = _proc_table()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _survivors(pids: dict[int, str], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        table = _proc_table()
        alive = [p for p, start in pids.items() if p in table and table[p][1] == start]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _job_status(db: Path, exam_key: str) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT status FROM triage_jobs WHERE exam_key = ? "
                               "ORDER BY enqueued_at DESC LIMIT 1", (exam_key,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _running_job(db: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT exam_key FROM triage_jobs WHERE status = 'running'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_the_app_leaves_no_child_and_the_job_is_recovered(tmp_path: Path, sig: int) -> None:
    home = tmp_path / "home"
    write_demo_set(tmp_path / "src", 2, 5, rows=1024, columns=832)
    with Archive(home / "archive.sqlite") as archive:
        assert len(archive.import_paths([tmp_path / "src"]).imported) == 8
    env = dict(os.environ, MAMMOTRIAGE_HOME=str(home), QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(sys.path))
    app = subprocess.Popen([sys.executable, "-m", "mammotriage", "app", "--no-demo", "--quit-after", "400"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        job = None
        while job is None and app.poll() is None and time.monotonic() < deadline:
            job = _running_job(home / "archive.sqlite")
            time.sleep(0.1)
        assert job is not None, "the app never started a triage job"
        children = _descendants(app.pid)
        assert len(children) >= 2, children  # at least the triage worker and the decode pool
        app.send_signal(sig)
        out, _ = app.communicate(timeout=120)
        if sig == signal.SIGTERM:
            assert app.returncode == 0, out  # a normal quit
            assert "SIGTERM: quitting" in out
        assert _survivors(children, timeout=10) == [], out
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)  # the group this test started
            app.wait(timeout=30)
    db = home / "archive.sqlite"
    with TriageQueue(db) as queue:
        status = queue.conn.execute("SELECT status FROM triage_jobs WHERE exam_key = ?", (job,)).fetchone()[0]
    if sig == signal.SIGKILL:
        assert status == "running"  # left behind by the killed worker
    # The next start: its worker puts the job back in the queue and analyses it.
    again = subprocess.Popen([sys.executable, "-m", "mammotriage", "app", "--no-demo", "--quit-after", "400"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while (_job_status(db, job) != "done" or not _descendants(again.pid)) and again.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _job_status(db, job) == "done"
        again.send_signal(signal.SIGTERM)  # it is up (it has spawned its workers): a normal quit
        assert again.wait(timeout=120) == 0
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
            again.wait(timeout=30)
