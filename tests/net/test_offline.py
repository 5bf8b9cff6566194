"""Runtime: the app makes no network connection except to its configured DICOM peers.

The whole demo pipeline runs inside a :class:`NetworkGuard` that refuses every
connection but to the PACS (dcmtk ``storescp``) and our own node, and refuses DNS.

Adding a step (the lead: triage once the model lands): append a function taking the
:class:`Pipeline` to ``STEPS`` — it runs inside the guard, after the exams are in
the archive and before results go to the PACS.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from netsupport import Storescp, free_port, make_sr
from pynetdicom import AE

from mammotriage.net.guard import NetworkBlockedError, NetworkGuard, dicom_peers
from mammotriage.net.node import StorageNode
from mammotriage.net.outbox import Outbox, OutboxSender
from mammotriage.net.settings import NetworkSettings, PeerSettings
from mammotriage.store.archive import Archive


@dataclass
class Pipeline:
    """What the steps share."""

    root: Path
    settings: NetworkSettings
    archive: Archive
    node: StorageNode
    completed: list[str] = field(default_factory=list)
    study_done: threading.Event = field(default_factory=threading.Event)
    results_to_send: list[Path] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)


def step_demo_and_import(p: Pipeline) -> None:
    from mammotriage.phantom import write_demo_set

    gt = write_demo_set(p.root / "demo", n_exams=2, seed=5, rows=256, columns=192,
                        transfer_syntax="jpeg2000")
    report = p.archive.import_paths([gt.parent])
    assert len(report.imported) == 8, report.summary()
    assert [r.code for r in report.rejected] == ["not-dicom"]  # ground_truth.json


def step_decode_and_hang(p: Pipeline) -> None:
    from mammotriage.dicom.read import read_image

    for exam in p.archive.exams():
        assert [i.label for i in exam.images] == ["RCC", "LCC", "RMLO", "LMLO"]
        for record in exam.images:
            image = read_image(record.path)
            assert image.pixels.shape == (256, 192)


def step_receive_over_dicom(p: Pipeline) -> None:
    from mammotriage.phantom import generate_exam

    exam = generate_exam(77, rows=256, columns=192, transfer_syntax="jpeg2000")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.2", ["1.2.840.10008.1.2.4.90"])
    host, port = p.node.address
    assoc = ae.associate(host, port, ae_title=p.settings.ae_title)
    assert assoc.is_established
    try:
        for image in exam.images:
            status = assoc.send_c_store(image.dataset)
            assert status.Status == 0
    finally:
        assoc.release()
        ae.shutdown()
    assert p.study_done.wait(20)
    assert p.completed == [exam.study_uid]
    assert len(p.archive.images_for_study(exam.study_uid)) == 4
    p.notes["received_study"] = exam.study_uid


def step_triage_with_the_shipped_model(p: Pipeline) -> None:
    """Full triage of every exam (model load with hash check, inference, results as
    DICOM) inside the guard; the written SR/SEG objects are what goes to the PACS."""
    from mammotriage.model.package import default_model_dir
    from mammotriage.triage import TriageQueue
    from mammotriage.triage.worker import load_model, process_one

    model = load_model(default_model_dir(), threads=2)
    errors: list[str] = []
    with TriageQueue(p.archive.path) as queue:
        assert queue.sync(model.version) >= 3  # two demo exams + the received one
        while process_one(queue, p.archive, model, p.root / "ai_maps", results_dir=p.root / "results",
                          on_error=errors.append) is not None:
            pass
        counts = queue.counts(model.version)
    assert not errors and counts["failed"] == 0 and counts["done"] >= 3, (counts, errors)
    p.results_to_send.extend(sorted((p.root / "results").rglob("sr-*.dcm")))


def step_results_to_pacs(p: Pipeline) -> None:
    study = str(p.notes["received_study"])
    p.results_to_send.append(make_sr(p.root / "results" / "ai-sr.dcm", study_uid=study))
    with Outbox(p.archive.path) as outbox:
        for path in p.results_to_send:
            outbox.enqueue(path, kind="ai-sr")
        report = OutboxSender(outbox, p.settings).send_due()
    assert report.sent == len(p.results_to_send), report


#: Pipeline steps, in order.  The triage step goes before ``step_results_to_pacs``.
STEPS: list[Callable[[Pipeline], None]] = [
    step_demo_and_import,
    step_decode_and_hang,
    step_receive_over_dicom,
    step_triage_with_the_shipped_model,
    step_results_to_pacs,
]


def test_full_demo_pipeline_makes_no_connection_but_to_dicom_peers(tmp_path: Path) -> None:
    pacs = Storescp(free_port(), tmp_path / "pacs", "PACS")
    pacs.start()
    archive = Archive()
    settings = NetworkSettings(port=0, quiet_period_s=0.5,
                               pacs=PeerSettings("PACS", "127.0.0.1", pacs.port))
    node = StorageNode(settings, archive)
    pipeline = Pipeline(tmp_path, settings, archive, node)
    node.tracker.add_callback(pipeline.completed.append)
    node.tracker.add_callback(lambda uid: pipeline.study_done.set())
    try:
        node.start()
        peers = dicom_peers(settings, node_port=node.address[1])
        with NetworkGuard(peers) as guard:
            # The guard is live: anything else is refused before a packet leaves.
            with pytest.raises(NetworkBlockedError):
                socket.create_connection(("127.0.0.1", free_port()), timeout=1)
            blocked_probe = list(guard.blocked)
            guard.blocked.clear()
            for step in STEPS:
                step(pipeline)
        assert len(blocked_probe) == 1
        assert guard.blocked == [], f"unexpected network access: {guard.blocked}"
        used = set(guard.allowed_connections)
        assert used == {("127.0.0.1", pacs.port), ("127.0.0.1", node.address[1])}
        sent = pacs.received_sop_uids()
        assert sent == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                        for p in pipeline.results_to_send}
    finally:
        node.stop()
        archive.close()
        pacs.stop()
