"""Results back to the PACS: persistent outbox, retries, dcmtk storescp as the peer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from netsupport import Storescp, free_port, make_sr, wait_until

from mammotriage.net.node import StorageNode
from mammotriage.net.outbox import Outbox, OutboxError, OutboxSender, _backoff, queue_result
from mammotriage.net.settings import NetworkSettings, PeerSettings
from mammotriage.store.archive import Archive


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _settings(port: int, ae_title: str = "PACS", **kw) -> NetworkSettings:
    return NetworkSettings(ae_title="MAMMOTRIAGE", pacs=PeerSettings(ae_title, "127.0.0.1", port),
                           retry_initial_s=5, retry_max_s=40, **kw)


def _srs(folder: Path, n: int) -> list[Path]:
    return [make_sr(folder / f"sr{i}.dcm") for i in range(n)]


def test_enqueue_copies_the_file_and_is_idempotent(tmp_path: Path) -> None:
    sr = make_sr(tmp_path / "sr.dcm")
    with Outbox() as outbox:
        item = outbox.enqueue(sr, kind="ai-sr")
        assert item.status == "pending" and item.kind == "ai-sr" and item.attempts == 0
        assert Path(item.path).parent == outbox.folder and Path(item.path).read_bytes() == sr.read_bytes()
        assert item.sop_class_name == "Comprehensive SR Storage"
        again = outbox.enqueue(sr, kind="ai-sr")
        assert again.id == item.id
        assert len(list(outbox.folder.iterdir())) == 1
        sr.unlink()  # the original may go away: the queued copy is what is sent
        assert Path(outbox.item(item.id).path).is_file()
        assert outbox.counts() == {"pending": 1, "sending": 0, "sent": 0, "failed": 0}


def test_enqueue_refuses_bad_input_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    with Outbox() as outbox:
        with pytest.raises(OutboxError, match="not a DICOM file"):
            outbox.enqueue(junk)
        with pytest.raises(OutboxError, match="no such file"):
            outbox.enqueue(tmp_path / "missing.dcm")
        with pytest.raises(OutboxError, match="unknown kind"):
            outbox.enqueue(make_sr(tmp_path / "sr.dcm"), kind="email")
        assert outbox.items() == []


def test_enqueue_refuses_a_deflate_bomb_without_inflating_it(tmp_path: Path) -> None:
    """``outbox --add`` of a Deflated file that inflates to 1 GiB is refused by the
    reader's bounded inflation, with the file and the reason named; nothing is queued.
    (It used to be read by plain pydicom, which inflates the whole stream, and queued.)"""
    from hostile import _deflate_bomb

    bomb = _deflate_bomb(tmp_path / "bomb.dcm")
    with Outbox() as outbox:
        with pytest.raises(OutboxError, match="inflates to more than") as refused:
            outbox.enqueue(bomb)
        assert str(bomb) in str(refused.value)
        assert outbox.items() == []
        assert list(outbox.folder.iterdir()) == []


def test_backoff_doubles_up_to_the_cap() -> None:
    s = _settings(104)
    assert [_backoff(s, n) for n in range(1, 6)] == [5, 10, 20, 40, 40]


def test_results_are_delivered_to_storescp(tmp_path: Path, pacs: Storescp) -> None:
    files = _srs(tmp_path / "out", 3)
    with Outbox() as outbox:
        items = [outbox.enqueue(f, kind="ai-sr") for f in files]
        report = OutboxSender(outbox, _settings(pacs.port)).send_due()
        assert (report.sent, report.retried, report.failed) == (3, 0, 0)
        assert {i.sop_uid for i in items} == pacs.received_sop_uids()
        sent = outbox.items("sent")
        assert len(sent) == 3 and all(i.sent_to == f"PACS@127.0.0.1:{pacs.port}" for i in sent)
        assert all(i.sent_at for i in sent)
        assert list(outbox.folder.iterdir()) == []  # copies deleted once stored


def test_pacs_down_then_up_nothing_lost_across_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    port = free_port()  # nothing listens there yet
    files = _srs(tmp_path / "out", 3)
    with Outbox(clock=clock) as outbox:
        uids = {outbox.enqueue(f).sop_uid for f in files}
        report = OutboxSender(outbox, _settings(port), timeout_s=5).send_due()
        assert (report.sent, report.retried) == (0, 3)
        assert "cannot connect" in report.error
        pending = outbox.items("pending")
        assert len(pending) == 3
        assert all(i.attempts == 1 and "PACS down or unreachable" in i.last_error for i in pending)
        assert all(i.next_attempt_at == clock.now + 5 for i in pending)
        # Not due yet: nothing is tried.
        assert OutboxSender(outbox, _settings(port)).send_due().attempted == 0
        clock.now += 5
        assert OutboxSender(outbox, _settings(port), timeout_s=5).send_due().retried == 3
        assert {i.attempts for i in outbox.items("pending")} == {2}
    # The program restarts; the PACS comes back.
    peer = Storescp(port, tmp_path / "pacs", "PACS")
    peer.start()
    try:
        clock.now += 10
        with Outbox(clock=clock) as outbox:
            report = OutboxSender(outbox, _settings(port)).send_due()
            assert (report.sent, report.retried, report.failed) == (3, 0, 0)
            assert outbox.counts()["sent"] == 3
        assert peer.received_sop_uids() == uids
    finally:
        peer.stop()


def test_entries_interrupted_mid_send_are_sent_after_restart(tmp_path: Path, pacs: Storescp) -> None:
    files = _srs(tmp_path / "out", 2)
    with Outbox() as outbox:
        for f in files:
            outbox.enqueue(f)
        claimed = outbox.claim_due()
        assert {i.status for i in claimed} == {"sending"}
    # crash: nobody marked them
    with Outbox() as outbox:
        assert outbox.counts()["sending"] == 2
        report = OutboxSender(outbox, _settings(pacs.port)).send_due()
        assert report.sent == 2
    assert len(pacs.received_sop_uids()) == 2


def test_aborted_association_is_retried(tmp_path: Path) -> None:
    port = free_port()
    peer = Storescp(port, tmp_path / "pacs", "PACS", extra=("--abort-after",))
    peer.start()
    clock = Clock()
    try:
        with Outbox(clock=clock) as outbox:
            outbox.enqueue(make_sr(tmp_path / "sr.dcm"))
            report = OutboxSender(outbox, _settings(port), timeout_s=5).send_due()
            assert report.sent == 0 and report.retried == 1
            item = outbox.items()[0]
            assert item.status == "pending" and item.last_error
    finally:
        peer.stop()


def _pacs_node(tmp_path: Path, **settings) -> tuple[StorageNode, Archive]:
    archive = Archive(tmp_path / "pacs.sqlite")
    node = StorageNode(NetworkSettings(port=0, ae_title="OTHERPACS", **settings), archive,
                       received_dir=tmp_path / "pacs-received")
    node.start()
    return node, archive


def test_pacs_that_does_not_know_us_rejects_the_association_and_we_retry(tmp_path: Path) -> None:
    node, archive = _pacs_node(tmp_path, allowed_calling_ae_titles=("SOMEONE",))
    try:
        with Outbox() as outbox:
            outbox.enqueue(make_sr(tmp_path / "sr.dcm"))
            report = OutboxSender(outbox, _settings(node.address[1], "OTHERPACS")).send_due()
            assert report.retried == 1
            assert "calling AE title not recognised" in report.error
            assert outbox.items()[0].status == "pending"
    finally:
        node.stop()
        archive.close()


def test_object_the_pacs_does_not_take_fails_with_reason_and_can_be_retried(tmp_path: Path) -> None:
    node, archive = _pacs_node(tmp_path)  # an image-only node: no SR storage
    try:
        with Outbox() as outbox:
            outbox.enqueue(make_sr(tmp_path / "sr.dcm"), kind="ai-sr")
            report = OutboxSender(outbox, _settings(node.address[1], "OTHERPACS")).send_due()
            assert report.failed == 1
            failed = outbox.items("failed")
            assert "does not accept Comprehensive SR Storage" in failed[0].last_error
            assert Path(failed[0].path).is_file()  # kept until it is sent
            assert outbox.retry_failed() == 1
            assert outbox.items()[0].status == "pending"
    finally:
        node.stop()
        archive.close()


def test_no_pacs_configured_keeps_entries_waiting(tmp_path: Path) -> None:
    with Outbox() as outbox:
        outbox.enqueue(make_sr(tmp_path / "sr.dcm"))
        report = OutboxSender(outbox, NetworkSettings()).send_due()
        assert report.retried == 1 and "no PACS configured" in report.error
        item = outbox.items()[0]
        assert item.status == "pending" and item.attempts == 0


def test_background_sender_delivers_what_is_queued(tmp_path: Path, pacs: Storescp) -> None:
    with Outbox() as outbox:
        sender = OutboxSender(outbox, _settings(pacs.port))
        sender.start()
        try:
            delivered = threading.Event()
            item = outbox.enqueue(make_sr(tmp_path / "sr.dcm"))
            assert wait_until(lambda: outbox.item(item.id).status == "sent", timeout=20)
            delivered.set()
        finally:
            sender.stop()
        assert item.sop_uid in pacs.received_sop_uids()


def test_queue_result_follows_send_results(tmp_path: Path) -> None:
    sr = make_sr(tmp_path / "sr.dcm")
    assert queue_result(sr, "ai-sr", settings=NetworkSettings(send_results=False)) is None
    item = queue_result(sr, "ai-sr", settings=NetworkSettings(send_results=True))
    assert item is not None and item.kind == "ai-sr" and item.status == "pending"
    with Outbox() as outbox:
        assert [i.id for i in outbox.items()] == [item.id]


def test_real_ai_sr_and_rle_seg_reach_the_pacs_unchanged(tmp_path: Path, pacs: Storescp, phantom_exams) -> None:
    """The project's own result objects (TID 1500 SR, RLE fractional SEG) through storescp."""
    import numpy as np
    import pydicom

    results = pytest.importorskip("mammotriage.dicom.sr")
    segs = pytest.importorskip("mammotriage.dicom.seg")
    _, files = phantom_exams["explicit"]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    algorithm = results.AlgorithmInfo("mammotriage-detector", "0.0.0-test", "0" * 64)
    finding = results.FindingRecord(str(header.SOPInstanceUID), (10.0, 20.0, 40.0, 60.0), "mass", 0.8)
    sr = results.save_dataset(results.write_findings_sr([header], [finding], algorithm), tmp_path / "sr.dcm")
    suspicion = np.zeros((int(header.Rows) // 4, int(header.Columns) // 4), dtype=np.float32)
    suspicion[5:15, 3:10] = 0.9
    seg = results.save_dataset(
        segs.write_suspicion_seg(header, suspicion, algorithm, map_factor=4.0,
                                 transfer_syntax_uid="1.2.840.10008.1.2.5"),
        tmp_path / "seg.dcm",
    )
    with Outbox() as outbox:
        queued = [outbox.enqueue(sr, kind="ai-sr"), outbox.enqueue(seg, kind="ai-seg")]
        assert queued[1].transfer_syntax == "1.2.840.10008.1.2.5"
        report = OutboxSender(outbox, _settings(pacs.port)).send_due()
        assert (report.sent, report.failed) == (2, 0), outbox.items()
    assert pacs.received_sop_uids() == {q.sop_uid for q in queued}
    stored_seg = next(p for p in pacs.folder.iterdir()
                      if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) == queued[1].sop_uid)
    assert pydicom.dcmread(stored_seg).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert pydicom.dcmread(stored_seg).PixelData == pydicom.dcmread(seg).PixelData


def test_the_outbox_sink_reads_the_settings_once_and_survives_a_spawn(tmp_path: Path) -> None:
    """The triage worker's result sink: network.json read when the sink is made, not per
    result; picklable (the worker is a spawned process); the outbox opened on first use."""
    import pickle

    from mammotriage.net.outbox import OutboxSink
    from mammotriage.net.settings import save_settings, settings_path
    from mammotriage.triage.sink import ResultSink

    save_settings(NetworkSettings(send_results=True))
    sink = OutboxSink.from_settings()
    assert isinstance(sink, ResultSink) and sink.problem == ""
    settings_path().write_text("{not json")  # later edits (even broken ones) do not matter to it
    copy = pickle.loads(pickle.dumps(sink))
    assert copy.queue(make_sr(tmp_path / "sr.dcm"), "ai-sr") is True
    assert sink.queue(make_sr(tmp_path / "sr2.dcm"), "ai-seg") is True
    copy.close()
    sink.close()
    with Outbox() as outbox:
        assert sorted(i.kind for i in outbox.items()) == ["ai-seg", "ai-sr"]
    broken = OutboxSink.from_settings()  # unreadable settings: nothing sent, and said why
    assert broken.queue(make_sr(tmp_path / "sr3.dcm"), "ai-sr") is False
    assert "not queued for the PACS" in broken.problem and "network.json" in broken.problem
    assert OutboxSink(send_results=False).queue(make_sr(tmp_path / "sr4.dcm"), "ai-sr") is False
