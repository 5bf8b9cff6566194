"""Double reading end to end: three headless reader sessions (A, B, C) on one real SQLite
archive of 20 phantom exams; 5 discordant by construction reach arbitration, C's consensus
is in the store, blinding holds until both have signed, the soft lock shows its holder and
expires, the agreement figures match a hand computation, and the arbitrated snapshot rule
takes the consensus."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mammotriage.dicom import read_image
from mammotriage.dicom.image import pixel_sha256
from mammotriage.learning.monitor import monitor_report, report_text
from mammotriage.phantom import write_demo_set
from mammotriage.store import Archive
from mammotriage.store.datasets import build_manifest
from mammotriage.store.double_reading import DoubleReadingPolicy
from mammotriage.store.events import CorrectionError, CorrectionLog
from mammotriage.viewer.corrections import ImageInfo
from mammotriage.viewer.double_reading import DoubleReadingSession

N_EXAMS = 20
DISCORDANT = (2, 5, 10, 14, 20)  # exam numbers where B says "no recall" on a lesion exam
STRICTER = (4, 8)  # lesion exams where B says 4B, A 4A: concordant on recall, not on categories
NORMAL = tuple(n for n in range(1, N_EXAMS + 1) if n % 3 == 0)  # the phantom's normal exams
CONSENSUS_RECALL = {2: True, 5: True, 10: False, 14: True, 20: False}  # C's arbitration


def _assessment(r: str, l: str, recall: bool) -> dict:  # noqa: E741
    return {"breasts": {"R": {"birads": r, "density": "b"}, "L": {"birads": l, "density": "b"}}, "recall": recall}


def read_a(n: int) -> dict:
    return _assessment("1", "1", False) if n in NORMAL else _assessment("1", "4A", True)


def read_b(n: int) -> dict:
    if n in NORMAL:
        return _assessment("1", "1", False)
    if n in DISCORDANT:
        return _assessment("2", "2", False)
    return _assessment("1", "4B" if n in STRICTER else "4A", True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """20 phantom exams imported into a real archive; double reading switched on."""
    root = tmp_path_factory.mktemp("double-reading")
    write_demo_set(root / "exams", n_exams=N_EXAMS, seed=19, priors=0, rows=128, columns=104)
    home = root / "home"
    archive_file = home / "archive.sqlite"
    DoubleReadingPolicy(enabled=True, discordance="recall", lease_s=600).save(home)
    with Archive(archive_file) as archive:
        archive.import_paths([root / "exams"])
        exams = sorted(archive.exams(), key=lambda e: e.images[0].path)
    assert len(exams) == N_EXAMS
    numbers = {e.exam_key: int(Path(e.images[0].path).parent.name[4:]) for e in exams}
    return {"home": home, "archive": archive_file, "exams": exams, "numbers": numbers}


def _image_infos(exam) -> list[ImageInfo]:
    return [ImageInfo(i.sop_uid, i.study_uid, i.series_uid, pixel_sha256(read_image(i.path).pixels))
            for i in exam.images[:1]]


def _session(site: dict, reader: str) -> DoubleReadingSession:
    return DoubleReadingSession(site["archive"], site["home"], reader, workstation=f"ws-{reader}")


def _cli(site: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from mammotriage.cli import main

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(site["home"]))
    assert main(["double-reading", *args]) == 0
    return capsys.readouterr().out


def test_three_sessions_double_read_and_arbitrate(site: dict, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    exams, number = site["exams"], site["numbers"]
    box_a = {"type": "box", "box": [20.0, 20.0, 50.0, 50.0]}
    box_b = {"type": "box", "box": [22.0, 21.0, 52.0, 51.0]}
    box_c = {"type": "box", "box": [60.0, 60.0, 80.0, 90.0]}
    with _session(site, "A") as a, _session(site, "B") as b, _session(site, "C") as c:
        assert a.policy.enabled and a.policy.source.endswith(DoubleReadingPolicy.FILE)
        for exam in exams:
            key, n = exam.exam_key, number[exam.exam_key]
            opened = a.open_for_reading(key)
            assert opened.granted and opened.role == "reader"
            # while A reads, B's workstation sees who holds the exam
            refused = b.open_for_reading(key)
            assert not refused.granted and refused.text == "being read by A"
            assert b.holders()[key].workstation == "ws-A"
            info = _image_infos(exam)[0]
            corrections = a.corrections(key)
            corrections.set_image(info)
            if n not in NORMAL:
                corrections.add(info.sop_uid, "mass", box_a)
            assert a.sign(key, read_a(n)).state == "first read"
            assert key not in b.holders()  # signing leaves the exam: the lock is released

            # blinding: B sees nothing of A's read before B has signed
            opened = b.open_for_reading(key)
            assert opened.granted and opened.role == "reader"
            seen = b.visible(key)
            assert seen.blinded and seen.others == {}
            assert {e.reader for e in b.log.events(exam_key=key)} <= {"B"}
            assert {e.reader for e in b.log.events(sop_uid=info.sop_uid)} <= {"B"}
            assert c.visible(key).blinded and c.visible(key).others == {}
            b.corrections(key).set_image(info)
            if n == 1:
                b.corrections(key).add(info.sop_uid, "mass", box_b)
            status = b.sign(key, read_b(n))
            with pytest.raises(CorrectionError, match="double-read by A and B"):  # no third read
                c.log.append(reader="C", exam_key=key, action="sign", payload=read_a(n))
            assert status.state == ("discordant" if n in DISCORDANT else "concordant")
            # blinding lifts once both have signed
            after = a.visible(key)
            assert not after.blinded and set(after.others) == {"B"}
            assert after.others["B"].assessment == read_b(n)

        # exactly the 5 discordant exams reach arbitration; A and B cannot arbitrate them
        queue = c.arbitration_queue()
        assert sorted(number[s.exam_key] for s in queue) == sorted(DISCORDANT)
        assert a.arbitration_queue() == [] and b.arbitration_queue() == []
        assert all(s.reasons == ("recall: recall vs no recall",) for s in queue)
        listing = json.loads(_cli(site, monkeypatch, capsys, "--json"))
        assert listing["enabled"] and listing["states"] == {"concordant": 15, "discordant": 5}
        assert [c["exam_key"] for c in listing["arbitration"]] == [s.exam_key for s in queue]
        assert "arbitration: 5 exam(s)" in _cli(site, monkeypatch, capsys)
        for status in queue:
            key, n = status.exam_key, number[status.exam_key]
            mine = a.open_for_reading(key)  # A may look at (or amend) A's own signed read ...
            assert mine.granted and mine.role == "first reader" and mine.corrections.signed
            assert c.open_for_reading(key).text == "being read by A"  # ... holding the exam meanwhile
            a.close_exam(key)
            opened = c.open_for_reading(key)
            assert opened.granted and opened.role == "arbitrator"
            side = opened.case.to_json()
            assert [r["reader"] for r in side["reads"]] == ["A", "B"]
            assert [r["assessment"]["recall"] for r in side["reads"]] == [True, False]
            assert [len(r["findings"]) for r in side["reads"]] == [1, 0]
            info = _image_infos(next(e for e in site["exams"] if e.exam_key == key))[0]
            c.corrections(key).set_image(info)
            if CONSENSUS_RECALL[n]:
                c.corrections(key).add(info.sop_uid, "mass", box_c)
            event = c.arbitrate(key, _assessment("1", "4A" if CONSENSUS_RECALL[n] else "2",
                                                 CONSENSUS_RECALL[n]))
            assert event.action == "arbitrate" and event.payload["role"] == "arbitration"
        assert c.arbitration_queue() == []
        assert json.loads(_cli(site, monkeypatch, capsys, "--json"))["states"] == {"arbitrated": 5, "concordant": 15}

    # C's consensus events are in the store (the plain log), and the chain verifies
    with CorrectionLog(site["archive"]) as log:
        arbitrations = [e for e in log.events() if e.action == "arbitrate"]
        assert sorted(number[e.exam_key] for e in arbitrations) == sorted(DISCORDANT)
        assert {e.reader for e in arbitrations} == {"C"}
        assert all([r["reader"] for r in e.payload["reads"]] == ["A", "B"] for e in arbitrations)
        assert {number[e.exam_key]: e.payload["recall"] for e in arbitrations} == CONSENSUS_RECALL
        assert log.verify().ok

    # agreement figures (hand-computed in the comments)
    report = monitor_report(site["archive"])
    figures = report["double_reading"]
    assert (figures["exams_double_read"], figures["awaiting_arbitration"], figures["arbitrated"]) == (20, 0, 5)
    (pair,) = figures["pairs"]
    assert pair["readers"] == ["A", "B"] and pair["exams"] == 20
    assert (pair["discordant"], pair["arbitrated"]) == (5, 5)
    # recall A yes/B yes 9, yes/no 5, no/no 6: p_o = 15/20, p_e = .7 * .45 + .3 * .55 = .48
    assert pair["recall_concordance"] == pytest.approx(0.75)
    assert pair["recall_kappa"] == pytest.approx((0.75 - 0.48) / 0.52, abs=1e-5)
    # 40 breasts: R (1,1) x15, (1,2) x5; L (4A,4A) x7, (4A,4B) x2, (4A,2) x5, (1,1) x6
    # p_o = 28/40; p_e = (26 * 21 + 14 * 7) / 1600 = 0.4025
    assert pair["birads_kappa"]["n"] == 40
    assert pair["birads_kappa"]["kappa"] == pytest.approx((0.7 - 0.4025) / (1 - 0.4025), abs=1e-5)
    assert "double reading A / B: 20 exams, recall concordance 75%" in report_text(report)

    # the stricter rule sends the two 4A / 4B exams too (statuses recomputed, nothing rewritten)
    strict = DoubleReadingPolicy(enabled=True, discordance="birads")
    with DoubleReadingSession(site["archive"], site["home"], "D", policy=strict) as d:
        assert sorted(number[s.exam_key] for s in d.arbitration_queue()) == sorted(STRICTER)

    # the arbitrated snapshot rule uses the consensus
    manifest = build_manifest(site["archive"], rule="arbitrated")
    assert manifest["consensus"]["rule"] == "arbitrated" and manifest["consensus"]["discordance"] == "recall"
    by_number = {number[e["exam_key"]]: e for e in manifest["exams"]}
    assert sorted(by_number) == list(range(1, N_EXAMS + 1))
    for n, entry in by_number.items():
        if n in DISCORDANT:
            assert entry["double_reading"]["state"] == "arbitrated"
            assert entry["double_reading"]["arbitrator"] == "C"
            assert entry["consensus"]["recall"] is CONSENSUS_RECALL[n]
            assert entry["consensus"]["assessment"]["recall"] is CONSENSUS_RECALL[n]
            marked = [img for img in manifest["images"] if img["exam_key"] == entry["exam_key"] and img["consensus"]]
            assert all(img["consensus_source"] == "arbitration" for img in manifest["images"]
                       if img["exam_key"] == entry["exam_key"])
            # C's finding only (A's mark is not the consensus)
            assert [lab["readers"] for img in marked for lab in img["consensus"]] == (
                [["C"]] if CONSENSUS_RECALL[n] else [])
        else:
            assert entry["double_reading"]["state"] == "concordant"
            assert entry["consensus"]["recall"] is (n not in NORMAL)
            assert {img["consensus_source"] for img in manifest["images"]
                    if img["exam_key"] == entry["exam_key"]} == {"concordant-union"}
    # exam 1: A's and B's overlapping marks merge into one consensus finding (union)
    exam1 = [img for img in manifest["images"] if img["exam_key"] == by_number[1]["exam_key"] and img["consensus"]]
    assert [sorted(lab["readers"]) for img in exam1 for lab in img["consensus"]] == [["A", "B"]]
    # the existing rules are unchanged by the new one
    union = build_manifest(site["archive"], rule="union")
    assert "double_reading" not in union["exams"][0] and "discordance" not in union["consensus"]


def test_lock_expires_and_a_reader_can_take_an_abandoned_exam(site: dict) -> None:
    key = site["exams"][0].exam_key
    t0 = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)
    with _session(site, "E") as e, _session(site, "F") as f:
        assert e.locks.take(key, "E", t0).granted  # E's workstation opened it and went away
        refused = f.locks.take(key, "F", t0 + dt.timedelta(seconds=599))
        assert not refused.granted and refused.lock.text == "being read by E"
        assert e.locks.holder(key, t0 + dt.timedelta(seconds=601)) is None  # the lease ran out
        assert f.locks.take(key, "F", t0 + dt.timedelta(seconds=601)).granted
        assert e.holders(t0 + dt.timedelta(seconds=602))[key].reader == "F"


def test_closing_goes_on_past_a_lock_that_cannot_be_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A release refused (the reader's site sign-in ended, the server away) used to stop
    ``close`` at that exam: the other exams' locks stayed taken and the connections open."""
    write_demo_set(tmp_path / "exams", n_exams=2, seed=23, priors=0, rows=128, columns=104)
    home = tmp_path / "home"
    DoubleReadingPolicy(enabled=True, discordance="recall", lease_s=600).save(home)
    with Archive(home / "archive.sqlite") as archive:
        archive.import_paths([tmp_path / "exams"])
        first, second = sorted(e.exam_key for e in archive.exams())
    site = {"archive": home / "archive.sqlite", "home": home}
    session = _session(site, "G")
    assert session.open_for_reading(first).granted and session.open_for_reading(second).granted
    release = session.locks.release

    def refused(exam_key: str, reader: str, now: dt.datetime | None = None) -> None:
        if exam_key == first:
            raise CorrectionError("the site sign-in of G ended at 09:00: sign in again")
        release(exam_key, reader, now)

    monkeypatch.setattr(session.locks, "release", refused)
    closed: list[object] = []
    for part in (session.log, session.locks, session.site):
        monkeypatch.setattr(part, "close", lambda part=part, close=part.close: (closed.append(part), close()))
    with caplog.at_level("WARNING", logger="mammotriage.viewer.double_reading"):
        session.close()
    assert closed == [session.log, session.locks, session.site]
    assert f"soft lock on {first} not released" in caplog.text and "sign in again" in caplog.text
    with _session(site, "H") as other:
        held = other.holders()
        assert second not in held          # released
        assert held[first].reader == "G"   # left to its lease


def test_closing_tries_no_more_releases_once_the_server_is_away_and_raises_a_real_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: each open exam waited for its own connection timeout when the server
    was away, and a programming error was logged as a lock left to its lease."""
    from mammotriage.store.double_reading import StoreUnreachable

    write_demo_set(tmp_path / "exams", n_exams=3, seed=29, priors=0, rows=128, columns=104)
    home = tmp_path / "home"
    DoubleReadingPolicy(enabled=True, discordance="recall", lease_s=600).save(home)
    with Archive(home / "archive.sqlite") as archive:
        archive.import_paths([tmp_path / "exams"])
        keys = sorted(e.exam_key for e in archive.exams())
    site = {"archive": home / "archive.sqlite", "home": home}
    session = _session(site, "J")
    for key in keys:
        assert session.open_for_reading(key).granted
    tried: list[str] = []

    def away(exam_key: str, reader: str, now: dt.datetime | None = None) -> None:
        tried.append(exam_key)
        raise StoreUnreachable("the site's server cannot be reached")

    monkeypatch.setattr(session.locks, "release", away)
    session.close()
    assert tried == keys[:1]   # one try, not one timeout per open exam
    with _session(site, "K") as other:
        assert not any(other.open_for_reading(k).granted for k in keys)  # J's locks are left to their lease

    def broken(exam_key: str, reader: str, now: dt.datetime | None = None) -> None:
        raise TypeError("a bug")

    session = _session(site, "J")
    assert session.open_for_reading(keys[0]).granted
    monkeypatch.setattr(session.locks, "release", broken)
    closed: list[object] = []
    monkeypatch.setattr(session.site, "close", lambda close=session.site.close: (closed.append(1), close()))
    with pytest.raises(TypeError, match="a bug"):
        session.close()
    assert closed == [1]
