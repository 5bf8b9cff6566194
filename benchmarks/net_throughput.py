"""Receive throughput of the DICOM node vs dcmtk's storescp, under concurrent storescu load.

Prints one figure per line. Both receivers get the same files from the same number of
concurrent dcmtk ``storescu`` processes over loopback:
  ours     = mammotriage StorageNode: store as received (fsync, atomic rename), read the
             header with the product's reader, index in the SQLite archive (synchronous=FULL)
  baseline = dcmtk storescp --fork: store only, no index
Everything is checked afterwards: every image received, indexed, nothing lost.

Usage: python benchmarks/net_throughput.py [--senders N] [--images M] [--rows R]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phantoms(root: Path, senders: int, images: int, rows: int) -> list[list[Path]]:
    from mammotriage.phantom import generate_exam

    batches, number = [], 0
    columns = int(rows * 0.8125)
    for sender in range(senders):
        files: list[Path] = []
        while len(files) < images:
            number += 1
            exam = generate_exam(4242, exam_number=number, rows=rows, columns=columns)
            files += list(exam.save(root / f"s{sender:02d}" / f"e{number:05d}").values())[
                : images - len(files)
            ]
        batches.append(files)
    return batches


def _send(port: int, batches: list[list[Path]], called: str) -> float:
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-nh", "-aet", f"BENCH{i:02d}", "-aec", called, "127.0.0.1", str(port),
             *map(str, files)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i, files in enumerate(batches)
    ]
    codes = [p.wait(timeout=1800) for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"storescu failed: exit codes {codes}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--images", type=int, default=100, help="images per sender")
    parser.add_argument("--rows", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mt-net-bench-") as tmp:
        root = Path(tmp)
        os.environ["MAMMOTRIAGE_HOME"] = str(root / "home")
        from mammotriage.net.node import StorageNode
        from mammotriage.net.settings import NetworkSettings
        from mammotriage.store.archive import Archive

        batches = _phantoms(root / "in", args.senders, args.images, args.rows)
        total = sum(len(b) for b in batches)
        print(f"images {total}")
        print(f"senders {args.senders}")
        print(f"image_kb {batches[0][0].stat().st_size / 1024:.0f}")

        with Archive() as archive:
            node = StorageNode(
                NetworkSettings(port=0, quiet_period_s=1.0, max_associations=args.senders + 4),
                archive,
            )
            node.start()
            try:
                ours_s = _send(node.address[1], batches, "MAMMOTRIAGE")
            finally:
                node.stop()
            if archive.count() != total or node.stats.imported != total:
                raise SystemExit(f"lost images: {archive.count()} indexed of {total}")

        port = _free_port()
        out = root / "storescp"
        out.mkdir()
        scp = subprocess.Popen(
            ["storescp", "--fork", "+xa", "-aet", "STORESCP", "-od", str(out), str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while subprocess.run(["echoscu", "127.0.0.1", str(port)],
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit("storescp did not start")
                time.sleep(0.2)
            base_s = _send(port, batches, "STORESCP")
        finally:
            scp.terminate()
            scp.wait(timeout=30)
        if len(list(out.iterdir())) != total:
            raise SystemExit("storescp lost images")

        print(f"ours_images_per_s {total / ours_s:.1f}")
        print(f"storescp_images_per_s {total / base_s:.1f}")
        print(f"ratio_time_ours_over_storescp {ours_s / base_s:.2f}")


if __name__ == "__main__":
    main()
