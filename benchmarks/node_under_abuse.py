"""C-ECHO from the allowed PACS while other loopback addresses abuse the node.

Prints one figure per line: echoes answered out of those tried, and the median echo
time, with (1) 50 idle connections from a host off the allow-list (127.0.0.2) and (2)
connections from an allowed host (127.0.0.3) that send random bytes, opened again as
fast as the node closes them.  Loopback only; everything stops by itself.

Usage: python benchmarks/node_under_abuse.py [--echoes N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mammotriage.net.node import StorageNode
from mammotriage.net.settings import NetworkSettings
from mammotriage.store.archive import Archive


def _echo(port: int) -> float | None:
    t0 = time.perf_counter()
    r = subprocess.run(["echoscu", "-to", "5", "-ta", "5", "-aet", "PACS", "-aec", "MAMMOTRIAGE",
                        "127.0.0.1", str(port)], capture_output=True)
    return time.perf_counter() - t0 if r.returncode == 0 else None


def _connect(source: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def _garbage(port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            s = _connect("127.0.0.3", port)
            s.sendall(os.urandom(256))
            s.recv(64)
            s.close()
        except OSError:
            time.sleep(0.01)


def _report(name: str, times: list[float | None]) -> None:
    ok = [t for t in times if t is not None]
    print(f"{name}_echoes_answered {len(ok)}/{len(times)}")
    if ok:
        print(f"{name}_echo_median_s {statistics.median(ok):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echoes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MAMMOTRIAGE_HOME"] = str(Path(tmp) / "home")
        archive = Archive(Path(tmp) / "home" / "archive.sqlite")
        node = StorageNode(NetworkSettings(port=0, allowed_hosts=("127.0.0.1", "127.0.0.3"),
                                           allowed_calling_ae_titles=("PACS",)), archive)
        node.start()
        try:
            port = node.address[1]
            idle = [_connect("127.0.0.2", port) for _ in range(50)]
            _report("idle_off_list", [_echo(port) for _ in range(args.echoes)])
            for s in idle:
                s.close()
            stop = threading.Event()
            threads = [threading.Thread(target=_garbage, args=(port, stop)) for _ in range(8)]
            for t in threads:
                t.start()
            try:
                _report("garbage_allowed_host", [_echo(port) for _ in range(args.echoes)])
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=30)
            print(f"refused_connections {node.stats.refused_connections}")
        finally:
            node.stop()
            archive.close()


if __name__ == "__main__":
    main()
