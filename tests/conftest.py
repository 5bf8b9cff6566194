"""Shared fixtures: isolated data directory, real-data locations."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from mtsupport import require_shared

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display needed by any test
# One audit key for the whole session, never the user's own (module- and session-scoped
# fixtures open correction logs before the per-test MAMMOTRIAGE_HOME is set).
os.environ.setdefault("MAMMOTRIAGE_AUDIT_KEY",
                      os.path.join(tempfile.mkdtemp(prefix="mt-audit-key-"), "audit.key"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MAMMOTRIAGE_HOME: a user's real archive is never touched."""
    home = tmp_path_factory.mktemp("mt-home")
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    return home


@pytest.fixture
def dicom_data() -> Path:
    return require_shared("dicom")


@pytest.fixture(scope="session")
def learning_loop(tmp_path_factory: pytest.TempPathFactory):
    """The simulated-reader learning loop (``benchmarks/retrain_sim.py``), run once per
    session for the tests that ask for it: a parent model that never saw calcification
    clusters, reader corrections through a real archive, a snapshot, a candidate, a
    shuffled-label candidate, and the gate reports of both (about 5.5 CPU-minutes on one core)."""
    import json
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    from retrain_sim import LoopConfig, run_learning_loop

    mp = pytest.MonkeyPatch()
    mp.setenv("MAMMOTRIAGE_HOME", str(tmp_path_factory.mktemp("loop-home")))
    try:
        out = tmp_path_factory.mktemp("learning-loop")
        res = run_learning_loop(out, LoopConfig(), log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        mp.undo()
    print("\nsimulated-reader figures:\n" + json.dumps(res.figures, indent=1), file=sys.stderr)
    return res
