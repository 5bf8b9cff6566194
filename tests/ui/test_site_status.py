"""Site mode in the window: the status bar's "site server unreachable" line, and a window
joined to a real PostgreSQL (from the settings' site profile) that stops and restarts."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammotriage.config import data_dir
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.events import SiteCorrectionLog
from mammotriage.viewer.site_log import BUFFER_FILE, SiteLog
from store.pg.pgsupport import running_cluster

UNREACHABLE = re.compile(r"^site server unreachable since \d\d:\d\d — (\d+) corrections? waiting"
                         r" — showing what this workstation has( \(as of \d\d:\d\d\))?$")


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _profile(site: PgCluster, path: Path, **extra: object) -> Path:
    data = {**extra, "format": "mammotriage-site-profile/1", "role": "workstation",
            "postgres": {"host": site.host, "port": site.port, "database": "mammotriage", "user": "mt_workstation",
                         "password": site.password("mt_workstation")},
            "dicomweb": {"url": "http://127.0.0.1:8042/dicom-web", "user": "mammotriage", "password": "unused"}}
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def _joined_window(qtbot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, profile: Path, *, seed: int,
                   reader: str, rows: int = 256, columns: int = 208, normal: bool = True):
    """A window on a one-exam archive, joined to the site by the settings' profile."""
    from PySide6.QtCore import QSettings

    from mammotriage.phantom import generate_exam
    from mammotriage.store import Archive
    from mtsupport import reading_window

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    settings = QSettings(str(home / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("site/profile", str(profile))
    settings.sync()
    exam = generate_exam(seed, exam_number=1, rows=rows, columns=columns, normal=normal)
    exam.save(tmp_path / f"exam-{profile.stem}")
    archive = Archive(tmp_path / f"archive-{profile.stem}.sqlite")
    archive.import_paths([tmp_path / f"exam-{profile.stem}"])
    return reading_window(qtbot, archive, reader=reader), archive


def test_the_label_says_when_the_server_is_away_and_clears_when_it_drained(qtbot, site: PgCluster,
                                                                          tmp_path: Path) -> None:
    from mammotriage.ui.site_status import SiteStatusLabel

    with SiteLog(site.dsn("mt_workstation"), tmp_path / BUFFER_FILE, "ws-ui", retry_s=0.2, probe_s=0.2) as log:
        from PySide6.QtWidgets import QStatusBar

        bar = QStatusBar()
        qtbot.addWidget(bar)
        label = SiteStatusLabel(log, "PostgreSQL test", interval_ms=100)
        bar.addPermanentWidget(label)
        bar.show()
        said: list[str] = []
        label.changed.connect(said.append)
        notes: list[str] = []
        label.noteworthy.connect(notes.append)
        assert label.text() == "" and not label.isVisible()
        site.stop()
        try:
            qtbot.waitUntil(lambda: UNREACHABLE.match(label.text()) is not None, timeout=60_000)
            assert label.isVisible() and UNREACHABLE.match(label.text()).group(1) == "0"
            for n in range(2):
                log.append(reader="dr_ui", exam_key="Exam-UI", action="note", payload={"text": str(n)})
            qtbot.waitUntil(lambda: "— 2 corrections waiting —" in label.text(), timeout=10_000)
            assert "last error" in label.toolTip() and str(log.buffered.buffer.path) in label.toolTip()
        finally:
            site.start()
        qtbot.waitUntil(lambda: label.text() == "", timeout=60_000)
        assert not label.isVisible() and said[-1] == ""
        assert any("— 2 corrections waiting —" in text for text in said)
        # the log gets the loss (with the reason) and the drained buffer, not every count between
        assert len(notes) == 2 and UNREACHABLE.match(notes[0].split(" (")[0]) and "every correction" in notes[1]
        label.timer.stop()
    with SiteCorrectionLog(site.dsn("mt_workstation")) as server:
        assert [e.payload["text"] for e in server.events(exam_key="Exam-UI")] == ["0", "1"]


def test_a_window_joined_from_the_settings_keeps_reading_through_a_server_restart(
        qtbot, site: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    win, archive = _joined_window(qtbot, monkeypatch, tmp_path, _profile(site, tmp_path / "ws.json"), seed=31,
                                  reader="dr_site", rows=512, columns=416, normal=False)
    try:
        assert isinstance(win.corrections_log, SiteLog) and win.site_label is not None
        assert "site mode: PostgreSQL" in win.log.toPlainText()
        log, label = win.corrections_log, win.site_label
        log.retry_s = log.probe_s = 0.2
        key = win.current.exam_key
        win.corrections.set_birads(2)
        qtbot.waitUntil(lambda: log.status().waiting == 0, timeout=60_000)
        # the same reader's note from another workstation reaches the open exam (the sender reads it)
        with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-elsewhere") as elsewhere:
            elsewhere.append(reader="dr_site", exam_key=key, action="note", payload={"text": "from elsewhere"})
        qtbot.waitUntil(lambda: win.corrections.mine().note == "from elsewhere", timeout=60_000)
        site.stop()
        try:
            qtbot.waitUntil(lambda: UNREACHABLE.match(label.text()) is not None, timeout=60_000)
            assert label.isVisible()
            # what is open stays editable: the events wait, what is shown includes them
            win.corrections.set_density("C")
            win.corrections.set_note("read while the server was away")
            assert win.corrections.mine().density == "C"
            qtbot.waitUntil(lambda: "— 2 corrections waiting —" in label.text(), timeout=10_000)
            assert "site server unreachable since" in win.log.toPlainText()
        finally:
            site.start()
        qtbot.waitUntil(lambda: label.text() == "", timeout=60_000)
        text = win.log.toPlainText()
        assert "every correction is stored" in text and text.count("site server unreachable since") == 1
        with SiteCorrectionLog(site.dsn("mt_workstation")) as server:
            assert [e.action for e in server.events(exam_key=key)] == ["birads", "note", "density", "note"]
        # File > Join a site: a bad profile is not taken (the file named); leaving forgets it
        said = win.set_site_profile(tmp_path / "nope.json")
        assert said.startswith("site profile not taken: ") and "nope.json" in said
        assert win.settings.value("site/profile") == str(tmp_path / "ws.json")
        win.set_site_profile(None)
        assert not win.settings.value("site/profile")
    finally:
        win.close()
        archive.close()
    assert not log._thread.is_alive()  # the window stopped its sender on closing


def test_a_workstation_sends_no_ai_results_to_the_pacs_when_the_site_archive_forwards_them(
        qtbot, site: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a site workstation's outbox sent its own AI results to the PACS while the
    site archive forwarded the workers' results of the same exams: the PACS got them twice."""
    for forwards in (True, False):
        profile = _profile(site, tmp_path / f"ws-{forwards}.json", results={"archive_forwards": forwards})
        win, archive = _joined_window(qtbot, monkeypatch, tmp_path, profile, seed=32, reader="dr_site")
        try:
            assert win.site is not None and win.site.archive_forwards_results is forwards
            sink = win.results_sink()
            said = "AI results go to the PACS through the site archive" in win.log.toPlainText()
            assert (sink is None) is forwards and said is forwards
        finally:
            win.close()
            archive.close()


def test_a_reader_signs_in_with_the_site_account_and_the_server_records_it(
        qtbot, site: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window's site sign-in runs off the UI thread; the reader's corrections then
    reach the store under their account (the server checks it)."""
    from mammotriage.store.pg.accounts import SiteAccounts
    from mammotriage.store.pg.cluster import DATABASE, SUPERUSER
    from mammotriage.store.pg.events import connect

    with SiteAccounts(site.dsn("mt_admin"), site.dsn(SUPERUSER)) as accounts:
        accounts.add("dr_account", "the password of dr account", "it", DATABASE)
    win, archive = _joined_window(qtbot, monkeypatch, tmp_path, _profile(site, tmp_path / "ws.json"), seed=33,
                                  reader="dr_plain")
    try:
        refused = win.site_sign_in("dr_account", "not the password at all")
        assert refused is not None
        qtbot.waitUntil(lambda: "site sign-in of dr_account refused: wrong name or password"
                        in win.log.toPlainText(), timeout=30_000)
        assert win.reader == "dr_plain"   # nobody else signed in
        win.site_sign_in("dr_account", "the password of dr account")
        qtbot.waitUntil(lambda: win.reader == "dr_account", timeout=30_000)
        assert "signed in with the site account: dr_account" in win.log.toPlainText()
        win.corrections.set_note("read under a site account")
        log = win.corrections_log
        qtbot.waitUntil(lambda: log.status().waiting == 0, timeout=60_000)
        with connect(site.dsn("mt_admin")) as conn:
            row = conn.execute("SELECT reader, account FROM correction_events WHERE exam_key = %s "
                               "AND action = 'note' ORDER BY seq DESC LIMIT 1", (win.current.exam_key,)).fetchone()
        assert dict(row) == {"reader": "dr_account", "account": "dr_account"}
        # by name only where the site requires accounts: refused before anything is made
        with SiteAccounts(site.dsn("mt_admin"), site.dsn(SUPERUSER)) as accounts:
            accounts.require(True, "it")
            try:
                win.site_sign_in("dr_nameonly", "")
                qtbot.waitUntil(lambda: "this site requires a site account" in win.log.toPlainText(),
                                timeout=30_000)
                assert win.reader == "dr_account"
            finally:
                accounts.require(False, "it")
    finally:
        win.close()
        archive.close()


def test_a_site_window_shows_the_sites_read_states_and_writes_the_signed_reads_sr(
        qtbot, site: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a site workstation's worklist read its read states from the workstation's
    own (empty) log: every exam stayed "unread" after it was signed, here or elsewhere, and
    the reader-findings SR of a signature failed ("has not signed")."""
    win, archive = _joined_window(qtbot, monkeypatch, tmp_path, _profile(site, tmp_path / "ws-reads.json"),
                                  seed=47, reader="dr_reads")
    try:
        key = win.current.exam_key
        assert win.worklist.read_state(win.worklist.entries[0]).state == "unread"
        assert win.worklist.rowCount() == 1 and win.worklist.entries[0].exam.exam_key == key
        assessment = {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": "2", "density": "b"}},
                      "recall": False}
        assert win.sign_exam(assessment)
        qtbot.waitUntil(lambda: "reader findings SR: 1 file(s)" in win.log.toPlainText(), timeout=60_000)
        assert "has not signed" not in win.log.toPlainText()
        written = sorted((data_dir() / "results" / "reader").rglob("reader-sr-*.dcm"))
        assert len(written) == 1  # one study, one SR, named by the signature (sent or not yet)
        qtbot.waitUntil(lambda: key in win.worklist.reads and win.worklist.reads[key].state == "signed",
                        timeout=60_000)
        assert win.worklist.reads[key].reader == "dr_reads"
        # another workstation reopens it: this worklist says so within seconds
        with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-elsewhere") as elsewhere:
            elsewhere.append(reader="dr_other", exam_key=key, action="amend", payload={"reason": "second look"})
        qtbot.waitUntil(lambda: win.worklist.reads[key].state == "reopened", timeout=60_000)
        assert win.worklist.reads[key].reader == "dr_other"
        # the server away: this reader re-opens and signs again, and the worklist says so at
        # once (the events wait in the buffer; before, the Read column kept the server's last word)
        win.site_reads.every_s = 3600.0  # no pull can move it meanwhile
        site.stop()
        try:
            assert win.amend("a second look here")
            assert (win.worklist.reads[key].state, win.worklist.reads[key].reader) == ("reopened", "dr_reads")
            assert win.sign_exam(assessment)
            assert (win.worklist.reads[key].state, win.worklist.reads[key].reader) == ("signed", "dr_reads")
            assert win.site_log.status().waiting >= 2
        finally:
            site.start()
    finally:
        win.close()
        archive.close()


def test_a_site_window_takes_the_site_workers_result_and_shows_its_marks_and_map(
        qtbot, site: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, a site workstation analysed every exam again with the same model, for the
    result the site's AI worker had stored; now it takes that result (marks, scores and
    map) and its own worker leaves the exam alone."""
    import numpy as np

    from mammotriage.digest import image_set_digest
    from mammotriage.triage.maps import pack_map
    from mammotriage.triage.site_queue import SiteQueue

    profile = _profile(site, tmp_path / "ws-results.json")
    win, archive = _joined_window(qtbot, monkeypatch, tmp_path, profile, seed=33, reader="dr_site")
    try:
        assert win.site_results is not None and win.local_triage_after_s() == 600.0
        sha = "5e" * 32
        win.pin_model("v-site", meta={**(win.model_meta or {}), "weights_sha256": sha})
        exam = win.current
        assert exam is not None
        win.queue.sync("v-site")
        assert win.queue.job(exam.exam_key, "v-site").status == "pending"
        images = archive.exam(exam.exam_key).images
        views = []
        for image in images:
            suspicion = np.zeros((32, 26), np.float32)
            suspicion[10:16, 8:14] = 0.9 if image.laterality.value == "L" else 0.05
            hot = image.laterality.value == "L"
            views.append({"sop_uid": image.sop_uid, "laterality": image.laterality.value,
                          "view": image.view.value, "score": 0.93 if hot else 0.04,
                          "findings": [{"box": [64, 80, 112, 128], "kind": "mass", "score": 0.93}] if hot else [],
                          "map_factor": 8.0, "suspicion_map": pack_map(suspicion)})
        with SiteQueue(site.dsn("mt_worker")) as queue:
            assert queue.enqueue(exam.exam_key, sha, images=image_set_digest(i.sop_uid for i in images))
            job = queue.claim("gpu-1", 60, sha)
            assert job is not None
            assert queue.complete(job, {"model_sha256": sha, "revision": 0, "images": views}).stored
        win.site_results.poke()
        qtbot.waitUntil(lambda: "from the site's AI worker gpu-1" in win.log.toPlainText(), timeout=20_000)
        assert win.queue.job(exam.exam_key, "v-site").status == "done"
        (result,) = win.queue.exam_results()[exam.exam_key]
        assert result.score == pytest.approx(0.93) and result.weights_sha256 == sha
        left = [p for slot, p in win.hanging.panes.items() if slot.startswith("L")]
        assert left and all(p.overlay is not None and p.overlay.findings for p in left)
        assert all(p.overlay.suspicion is not None and float(p.overlay.suspicion.max()) > 0.85 for p in left)
    finally:
        win.close()
        archive.close()


def test_a_lapsing_site_sign_in_is_said_and_a_change_after_it_is_refused_on_the_spot(
        qtbot, site: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the window kept a reader's changes after their 12-hour site sign-in had
    ended, the server refused them later into the buffer's ``refused`` table, and the
    reader was never told: their reading after that hour never reached the site."""
    from mammotriage.store.pg.accounts import SignIns, SiteAccounts
    from mammotriage.store.pg.cluster import DATABASE, SUPERUSER
    from mammotriage.store.pg.schema import SIGN_IN_HOURS
    from mammotriage.viewer.corrections import ExamCorrections

    with SiteAccounts(site.dsn("mt_admin"), site.dsn(SUPERUSER)) as accounts:
        accounts.add("dr_lapse", "the password of dr lapse", "it", DATABASE)
    win, archive = _joined_window(qtbot, monkeypatch, tmp_path, _profile(site, tmp_path / "ws-lapse.json"), seed=35,
                                  reader="dr_plain")
    try:
        win.site_sign_in("dr_lapse", "the password of dr lapse")
        qtbot.waitUntil(lambda: win.reader == "dr_lapse", timeout=30_000)
        assert re.search(r"signed in with the site account: dr_lapse \(until \d\d:\d\d\)", win.log.toPlainText())
        tokens = [t for t in (getattr(x, "sign_ins", None) for x in (win.site_log, win.corrections_log, win.locks))
                  if isinstance(t, SignIns)]
        assert tokens
        end = tokens[0].ends_at("dr_lapse")
        assert end is not None and abs(end - (time.time() + SIGN_IN_HOURS * 3600)) < 120

        def at(t: float) -> None:
            for x in tokens:
                x.clock = lambda t=t: t

        win.check_sign_in()
        assert "sign-in" not in win.model_label.text()
        at(end - 600)   # ten minutes before: said once, and shown beside the reader
        win.check_sign_in()
        win.check_sign_in()
        assert win.log.toPlainText().count("the site sign-in of dr_lapse ends soon") == 1
        assert re.search(r"reader dr_lapse \(sign-in ends \d\d:\d\d\) · model", win.model_label.text())
        assert win._record(ExamCorrections.set_note, "still within the sign-in")
        log = win.site_log
        qtbot.waitUntil(lambda: log.status().waiting == 0, timeout=60_000)
        at(end + 1)     # ended: said, and a change is refused here, not kept for the server to refuse
        win.check_sign_in()
        assert "the site sign-in of dr_lapse has ended: changes are not recorded" in win.log.toPlainText()
        assert re.search(r"reader dr_lapse \(sign-in ended \d\d:\d\d: Ctrl\+Shift\+R\) · model",
                         win.model_label.text())
        assert not win._record(ExamCorrections.set_note, "after the sign-in ended")
        assert win.status_label.text().startswith("not recorded: the site sign-in of dr_lapse ended at")
        assert log.buffered.buffer.count() == 0 and log.buffered.buffer.refused() == []
        for x in tokens:
            x.clock = time.time
        win.site_sign_in("dr_lapse", "the password of dr lapse")   # signing in again goes on
        qtbot.waitUntil(lambda: win.log.toPlainText().count("signed in with the site account: dr_lapse") == 2,
                        timeout=30_000)
        assert "sign-in" not in win.model_label.text()
        assert win._record(ExamCorrections.set_note, "after signing in again")
        qtbot.waitUntil(lambda: log.status().waiting == 0, timeout=60_000)
        assert log.buffered.buffer.refused() == []
    finally:
        win.close()
        archive.close()
    assert not win.sign_in_timer.isActive()  # before, it went on asking the queue every 30 s
