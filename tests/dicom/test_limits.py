"""Address-space limits of the processes that decode untrusted files."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from mtsupport import REPO


def _child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "app"), **env})


def test_limit_makes_a_huge_allocation_fail_cleanly_in_that_process() -> None:
    code = ("from mammotriage.dicom.limits import limit_address_space\n"
            "assert limit_address_space(2 << 30)\n"
            "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])\n"
            "try:\n    b = bytearray(3 << 30)\nexcept MemoryError:\n    print('MemoryError')\n")
    r = _child(code)
    assert r.returncode == 0, r.stderr
    limit, outcome = r.stdout.split()
    assert int(limit) == 2 << 30 and outcome == "MemoryError"


def test_environment_overrides_and_zero_disables() -> None:
    code = ("from mammotriage.dicom.limits import limit_address_space\n"
            "import resource; print(limit_address_space(), resource.getrlimit(resource.RLIMIT_AS)[0])\n")
    assert _child(code, MAMMOTRIAGE_WORKER_MEMORY_GB="3").stdout.split() == ["True", str(3 << 30)]
    assert _child(code, MAMMOTRIAGE_WORKER_MEMORY_GB="0").stdout.split()[0] == "False"


def test_view_decode_workers_run_under_the_limit(tmp_path) -> None:
    from mammotriage.dicom.limits import DECODE_WORKER_LIMIT
    from mammotriage.viewer.loader import LoadError, ViewLoader, load_view

    loader = ViewLoader(workers=1)
    try:
        soft, _hard = loader._pool.submit(resource.getrlimit, resource.RLIMIT_AS).result(timeout=120)
        assert soft == DECODE_WORKER_LIMIT
        (tmp_path / "junk.dcm").write_bytes(b"junk")
        result = loader._pool.submit(load_view, str(tmp_path / "junk.dcm")).result(timeout=120)
        assert isinstance(result, LoadError) and result.code == "not-dicom"
    finally:
        loader.shutdown()
