"""The hostile corpus (tests/hostile.py), each file read by ``mammotriage info --json`` in
its own process under a 4 GiB address-space limit.

For every file: no traceback, no hang (a generous timeout is the guard, not a speed
target), peak RSS under 1 GB (``ru_maxrss`` from ``os.wait4``), strictly valid JSON,
and either the expected rejection (naming the file, its code and reason) or a reading
with the expected warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from hostile import CASES, Case, write_corpus
from mtsupport import REPO

ADDRESS_SPACE = 4 << 30
HANG_GUARD_S = 180
MAX_RSS_BYTES = 1 << 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return {c.name: c for c in write_corpus(tmp_path_factory.mktemp("hostile"))}


#: A small launcher forks the reader and reports its ``ru_maxrss``.  Forking the reader
#: from the test process itself would count that (large) process's resident pages: on
#: Linux a child's peak RSS starts from its parent's at fork and survives ``exec``.
LAUNCHER = r"""
import json, os, resource, subprocess, sys
limit, result, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def lim():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
p = subprocess.Popen(cmd, preexec_fn=lim)
_pid, status, usage = os.wait4(p.pid, 0)
with open(result, "w") as fh:
    json.dump({"status": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, fh)
"""


def read_in_limited_process(path: Path) -> tuple[int, str, str, int, bool]:
    """(exit status, stdout, stderr, peak RSS in bytes, hung) of ``info --json path``."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "app"), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(ADDRESS_SPACE), str(result),
                                 sys.executable, "-m", "mammotriage", "info", "--json", os.fsencode(path)],
                                stdout=out, stderr=err, env=env, start_new_session=True)
        hung = threading.Event()

        def guard() -> None:
            hung.set()
            os.killpg(proc.pid, 9)  # the launcher and the reader

        timer = threading.Timer(HANG_GUARD_S, guard)
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        got = json.loads(result.read_text()) if result.exists() else {"status": proc.returncode, "maxrss_kib": 0}
        return (int(got["status"]), out.read().decode(), err.read().decode(errors="replace"),
                int(got["maxrss_kib"]) * 1024, hung.is_set())


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_hostile_file_is_rejected_or_read_in_bounded_memory(corpus: dict[str, Case], name: str) -> None:
    case = corpus[name]
    status, out, err, rss, hung = read_in_limited_process(case.path)
    assert not hung, f"{name}: no answer in {HANG_GUARD_S} s"
    assert "Traceback" not in err and "Traceback" not in out, err
    assert rss < MAX_RSS_BYTES, f"{name}: peak RSS {rss / 2**20:.0f} MiB"
    if name == "deflate-bomb-1gib.dcm":  # refused while counting, without holding what it inflates to
        assert rss < 256 << 20, f"{name}: peak RSS {rss / 2**20:.0f} MiB"
    [entry] = _strict(out)
    assert entry["path"] == str(case.path)  # the file is named (a link by its own name)
    if case.expect == "reject":
        assert status == 1
        assert entry["code"] == case.code, entry
        assert case.reason in entry["error"], entry
    else:
        assert status == 0, entry
        assert "error" not in entry
        assert entry["rows"] == 64 and entry["decoded"] is True
        if case.reason:
            assert any(case.reason in w for w in entry["warnings"]), entry["warnings"]
        assert all(p["type"] != "WINDOW" or p["explanation"] == "GOOD" for p in entry["presets"])
    if name == "charset-unknown.dcm":
        assert f"{case.path}: Unknown encoding 'ISO_IR 999'" in err  # pydicom's warning names the file


def test_bombs_are_refused_before_decoding(corpus: dict[str, Case]) -> None:
    """In process: the refusals come from the header checks, not from a decoder that ran."""
    from mammotriage.dicom import CorruptPixelDataError, read_metadata

    for name in ("j2k-siz-46000.dcm", "jpeg-sof-46000.dcm", "jpegls-sof55-46000.dcm", "rle-claims-16000x7000.dcm",
                 "deflate-bomb-1gib.dcm"):
        with pytest.raises(CorruptPixelDataError) as err:
            read_metadata(corpus[name].path)
        assert err.value.path == str(corpus[name].path)
