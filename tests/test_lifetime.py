"""Children die with their parent (real processes, bounded waits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mammotriage.lifetime import ENV_PARENT_PID

PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, sys, time
    from mammotriage.lifetime import die_with_parent

    def child(parent):
        die_with_parent(parent)
        time.sleep(600)

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        kids = [ctx.Process(target=child, args=(os.getpid(),)) for _ in range(2)]
        for k in kids:
            k.start()
        print(" ".join(str(k.pid) for k in kids), flush=True)
        time.sleep(600)
""")


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time): tells a process from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _gone(pids: dict[int, str | None], timeout: float) -> list[int]:
    """PIDs still alive (same start time, not a zombie) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p, t in pids.items() if t is not None and _start_time(p) == t]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_spawned_children_exit_when_the_parent_is_killed(tmp_path: Path, sig: int) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        kids = {int(p): None for p in proc.stdout.readline().split()}
        assert len(kids) == 2
        kids = {p: _start_time(p) for p in kids}
        assert all(kids.values())
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert _gone(kids, timeout=10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_the_parent_pid_variable_is_not_passed_on() -> None:
    code = ("import os; from mammotriage.lifetime import ENV_PARENT_PID, die_with_parent_from_env; "
            "die_with_parent_from_env(); print(ENV_PARENT_PID in os.environ)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **{ENV_PARENT_PID: str(os.getpid())})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
