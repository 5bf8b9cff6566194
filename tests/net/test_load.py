"""Load: 10 concurrent storescu associations x 100 images; nothing lost, all indexed."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from netsupport import LOOPBACK, wait_until

from mammotriage.net.node import StorageNode
from mammotriage.net.settings import NetworkSettings
from mammotriage.store.archive import Archive
from mtsupport import require_tool

SENDERS = 10
IMAGES_PER_SENDER = 100


def _write_phantoms(root: Path) -> list[tuple[list[Path], set[str]]]:
    """Per sender: 100 files (25 four-view exams, 128 rows) and their study UIDs."""
    from mammotriage.phantom import generate_exam

    batches = []
    exam_number = 0
    for sender in range(SENDERS):
        files: list[Path] = []
        studies: set[str] = set()
        while len(files) < IMAGES_PER_SENDER:
            exam_number += 1
            exam = generate_exam(9000, exam_number=exam_number, rows=128, columns=104)
            files += exam.save(root / f"s{sender:02d}" / f"e{exam_number:04d}").values()
            studies.add(exam.study_uid)
        batches.append((files, studies))
    return batches


@pytest.mark.slow
def test_ten_concurrent_storescu_associations(tmp_path: Path) -> None:
    exe = require_tool("storescu")
    t0 = time.perf_counter()
    batches = _write_phantoms(tmp_path / "in")
    gen_s = time.perf_counter() - t0
    all_studies = set().union(*(s for _, s in batches))
    total = SENDERS * IMAGES_PER_SENDER
    assert len(all_studies) * 4 == total

    completed: list[str] = []
    lock = threading.Lock()

    def on_complete(uid: str) -> None:
        with lock:
            completed.append(uid)

    with Archive() as archive:
        node = StorageNode(NetworkSettings(port=0, quiet_period_s=2.0, max_associations=16), archive)
        node.tracker.add_callback(on_complete)
        node.start()
        try:
            port = node.address[1]
            start = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [exe, "-nh", "-aet", f"LOAD{i:02d}", "-aec", "MAMMOTRIAGE", LOOPBACK, str(port),
                     *map(str, files)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                for i, (files, _) in enumerate(batches)
            ]
            outputs = [p.communicate(timeout=240)[0] for p in procs]
            elapsed = time.perf_counter() - start
            assert [p.returncode for p in procs] == [0] * SENDERS, "\n".join(outputs)
            assert wait_until(lambda: len(completed) >= len(all_studies), timeout=60)
            stats = node.stats
        finally:
            node.stop()
        assert stats.received == total
        assert stats.imported == total and stats.rejected == 0 and stats.failed == 0
        assert archive.count() == total
        assert sorted(completed) == sorted(all_studies)  # each study reported exactly once
        assert archive.rejections() == []
    stored = list(node.store.root.glob("*/*.dcm"))
    assert len(stored) == total
    print(
        f"\nload: {SENDERS} concurrent storescu x {IMAGES_PER_SENDER} images (128 rows): "
        f"{total} received, {total} indexed, 0 lost in {elapsed:.1f} s = "
        f"{total / elapsed:.0f} images/s (phantoms generated in {gen_s:.1f} s)"
    )
