"""NetworkService: node + completion hook + background outbox sender, as the app runs them."""

from __future__ import annotations

import threading
from pathlib import Path

from netsupport import Storescp, make_sr, wait_until
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation
from pynetdicom import AE

from mammotriage.net.outbox import queue_result
from mammotriage.net.service import NetworkService
from mammotriage.net.settings import NetworkSettings, PeerSettings, save_settings


def test_service_receives_reports_and_sends_back(tmp_path: Path, pacs: Storescp) -> None:
    from mammotriage.phantom import generate_exam

    save_settings(NetworkSettings(port=0, quiet_period_s=0.3, send_results=True,
                                  pacs=PeerSettings("PACS", "127.0.0.1", pacs.port)))
    done = threading.Event()
    completed: list[str] = []
    with NetworkService() as service:  # settings from network.json, reloaded by the sender
        service.on_study_complete(completed.append)
        service.on_study_complete(lambda uid: done.set())
        exam = generate_exam(55, rows=256, columns=192)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
        assoc = ae.associate(*service.address, ae_title="MAMMOTRIAGE")
        assert assoc.is_established
        assert all(assoc.send_c_store(i.dataset).Status == 0 for i in exam.images)
        assoc.release()
        ae.shutdown()
        assert done.wait(20) and completed == [exam.study_uid]
        # What the triage step will do with its result objects:
        item = queue_result(make_sr(tmp_path / "sr.dcm", study_uid=exam.study_uid), "ai-sr")
        assert item is not None
        assert wait_until(lambda: service.outbox.item(item.id).status == "sent", timeout=20)
        status = service.status()
    assert status["received"] == 4 and status["imported"] == 4
    assert status["outbox"]["sent"] == 1
    assert status["pacs"] == f"PACS@127.0.0.1:{pacs.port}"
    assert item.sop_uid in pacs.received_sop_uids()
