"""Time and peak memory to refuse decompression bombs, one process per file.

Prints one figure per line: for each bomb of the hostile corpus (tests/hostile.py),
the wall time (interpreter start included) of ``mammotriage info --json FILE`` in its own
process under a 4 GiB address-space limit, and that process's peak RSS (``ru_maxrss``
from ``os.wait4``).

Usage: python benchmarks/hostile_reads.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "dicom")]

from test_hostile import read_in_limited_process  # noqa: E402

from hostile import CASES, write_corpus  # noqa: E402

BOMBS = ("j2k-siz-46000.dcm", "jpeg-sof-46000.dcm", "jpegls-sof55-46000.dcm", "rle-claims-16000x7000.dcm",
         "deflate-bomb-1gib.dcm", "deflate-zero-flood.dcm", "deflated-valid.dcm")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        cases = write_corpus(Path(folder), tuple(c for c in CASES if c.name in BOMBS))
        for case in cases:
            start = time.monotonic()
            status, _out, _err, rss, _hung = read_in_limited_process(case.path)
            key = case.name.removesuffix(".dcm").replace("-", "_")
            print(f"{key}_refuse_s {time.monotonic() - start:.2f}" if status else
                  f"{key}_read_s {time.monotonic() - start:.2f}")
            print(f"{key}_peak_rss_mib {rss / 2**20:.0f}")


if __name__ == "__main__":
    main()
