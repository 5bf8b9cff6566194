"""Helpers for the site-store tests: a real PostgreSQL cluster in a temporary folder.

Each test module starts its own cluster (``PgCluster``) on a free loopback port and
stops it at the end. Without the PostgreSQL server binaries the tests skip with the
package to install; under ``CI=true`` they fail instead (CI installs postgresql).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mammotriage.store.pg.cluster import PgCluster, PgMissingError, find_bindir

HERE = Path(__file__).resolve().parent
APP = HERE.parents[2] / "app"
PROCS = HERE / "pgprocs.py"


def require_postgres() -> Path:
    """The PostgreSQL binaries' folder, or skip (fail under CI=true)."""
    try:
        return find_bindir()
    except PgMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI must install the Debian package postgresql)")
        pytest.skip(f"{exc}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A fresh, started cluster (database, roles, schema) in a temporary folder.

    The folder is made with ``tempfile`` (not pytest's tmp_path, whose parent is
    private to the test user: a root test run hands the cluster to the ``postgres``
    account, which must be able to reach it).
    """
    require_postgres()
    folder = Path(tempfile.mkdtemp(prefix="mt-pg-"))
    cluster = PgCluster(folder, free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop(mode="fast")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def spawn(*args: str) -> subprocess.Popen[str]:
    """Run ``pgprocs.py`` with ``args`` in a child process (stdout: one JSON object a line)."""
    env = dict(os.environ, PYTHONPATH=str(APP), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(PROCS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 180.0) -> list[dict[str, Any]]:
    """Wait for a ``spawn``ed process; its JSON lines (it must exit 0)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}: {err[-3000:]}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]
