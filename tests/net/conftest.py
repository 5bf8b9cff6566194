"""Fixtures for the network tests: phantom files and dcmtk peers on loopback.

Every peer listens on 127.0.0.1 only, on a port chosen free by the kernel; every wait
is bounded.  Helpers live in ``netsupport.py`` (this folder is put on ``sys.path``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netsupport import Storescp, free_port

from mtsupport import require_tool


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Storescp]:
    """dcmtk ``storescp`` as the PACS, AE title PACS, on a free loopback port."""
    require_tool("echoscu")
    peer = Storescp(free_port(), tmp_path / "pacs", "PACS")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="session")
def phantom_exams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list[Path]]]:
    """Three 4-view phantom exams: JPEG 2000 lossless, RLE and uncompressed.

    Returns ``{"jpeg2000" | "rle" | "explicit": (study_uid, [4 files])}``.
    """
    from mammotriage.phantom import generate_exam

    root = tmp_path_factory.mktemp("net-phantoms")
    exams = {}
    for seed, ts in ((101, "jpeg2000"), (102, "rle"), (103, "explicit")):
        exam = generate_exam(seed, rows=256, columns=192, transfer_syntax=ts, normal=False)
        paths = exam.save(root / ts)
        exams[ts] = (exam.study_uid, [paths[i.label] for i in exam.images])
    return exams
