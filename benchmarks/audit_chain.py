"""Cost of the anchored audit chain: append (event + keyed head record) and verify.

Prints one figure per line. Uses a fresh archive and audit key in a temporary folder.

Usage: python benchmarks/audit_chain.py [--events N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAMMOTRIAGE_HOME"] = str(Path(tmp) / "home")
        os.environ["MAMMOTRIAGE_AUDIT_KEY"] = str(Path(tmp) / "keys" / "audit.key")
        from mammotriage.store.events import CorrectionLog

        with CorrectionLog(Path(tmp) / "home" / "archive.sqlite", workstation="bench") as log:
            t0 = time.perf_counter()
            for i in range(args.events):
                log.append(reader="dr_bench", exam_key=f"E{i % 50}", action="birads",
                           payload={"birads": i % 7})
            append_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = log.verify()
            verify_s = time.perf_counter() - t0
        if not report.ok:
            raise SystemExit(f"chain did not verify: {report.problems[:3]}")
        print(f"append_ms_per_event {1000 * append_s / args.events:.2f}")
        print(f"verify_s_{args.events}_events {verify_s:.2f}")


if __name__ == "__main__":
    main()
