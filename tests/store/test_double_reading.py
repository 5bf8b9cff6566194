"""Double reading in the store: the setting, the discordance rules, blinding in the log the
viewer reads through, readers' roles, arbitration events, soft locks with a lease."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from mammotriage.store import Archive
from mammotriage.store.assessment import read_states
from mammotriage.store.double_reading import (
    DoubleReading,
    DoubleReadingLog,
    DoubleReadingPolicy,
    ReadingLocks,
    discordance,
    exam_status,
)
from mammotriage.store.events import CorrectionError, CorrectionLog
from mammotriage.store.labels import fold

ON = DoubleReadingPolicy(enabled=True)
SHA = "cd" * 32
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def _assessment(r: str, l: str = "1", recall: bool | None = None) -> dict:  # noqa: E741
    from mammotriage.store.assessment import RECALL_BIRADS

    rec = recall if recall is not None else (r in RECALL_BIRADS or l in RECALL_BIRADS)
    return {"breasts": {"R": {"birads": r, "density": "b"}, "L": {"birads": l, "density": "b"}}, "recall": rec}


def _arbitration(r: str, first_seq: int, second_seq: int) -> dict:
    return {**_assessment(r), "reads": [{"reader": "ann", "seq": first_seq}, {"reader": "bob", "seq": second_seq}],
            "rule": "recall", "reasons": []}


@pytest.fixture
def exam(dicom, tmp_path: Path, archive_file: Path) -> tuple[str, str]:
    """One imported four-view exam: (exam key, one SOP Instance UID)."""
    dicom.exam(tmp_path / "exam")
    with Archive(archive_file) as archive:
        archive.import_paths([tmp_path / "exam"])
        e = archive.exams()[0]
        return e.exam_key, e.images[0].sop_uid


# --------------------------------------------------------------------------- policy and rule


def test_policy_off_by_default_and_read_from_the_data_directory(tmp_path: Path) -> None:
    assert DoubleReadingPolicy.load(tmp_path) == DoubleReadingPolicy()
    assert not DoubleReadingPolicy.load(tmp_path).enabled
    DoubleReadingPolicy(True, "birads", 120).save(tmp_path)
    loaded = DoubleReadingPolicy.load(tmp_path)
    assert (loaded.enabled, loaded.discordance, loaded.lease_s) == (True, "birads", 120)
    (tmp_path / DoubleReadingPolicy.FILE).write_text('{"enabled": true, "discordance": "loose"}')
    broken = DoubleReadingPolicy.load(tmp_path)  # broken: on, default rule, and says why
    assert broken.enabled and broken.discordance == "recall"
    assert DoubleReadingPolicy.FILE in broken.source and "loose" in broken.source
    (tmp_path / DoubleReadingPolicy.FILE).write_bytes(b"\xff\xfe{")
    assert DoubleReadingPolicy.load(tmp_path).enabled


def test_discordance_rules() -> None:
    normal, benign, suspicious = _assessment("1"), _assessment("2", "2"), _assessment("4A")
    assert discordance(normal, benign) == []  # no recall either way
    assert discordance(normal, suspicious) == ["recall: no recall vs recall"]
    # the stricter rule also compares each breast's category
    assert discordance(normal, benign, "birads") == ["R BI-RADS: 1 vs 2", "L BI-RADS: 1 vs 2"]
    assert discordance(_assessment("4A"), _assessment("4B"), "birads") == ["R BI-RADS: 4A vs 4B"]
    assert discordance(_assessment("4A"), _assessment("4B")) == []
    # BI-RADS 3 is not a recall by default (assessment.RECALL_BIRADS): short-term follow-up
    assert discordance(_assessment("3"), normal) == []
    assert discordance(_assessment("3"), normal, "birads") == ["R BI-RADS: 3 vs 1"]
    # the recall signed is what counts, even against the categories' default
    assert discordance(_assessment("3", recall=True), normal) == ["recall: recall vs no recall"]
    one_breast = {"breasts": {"R": {"birads": "1", "density": "b"}}, "recall": False}
    assert discordance(normal, one_breast, "birads") == ["L BI-RADS: 1 vs not assessed"]
    with pytest.raises(ValueError, match="unknown discordance rule"):
        discordance(normal, normal, "lenient")


# --------------------------------------------------------------------------- blinding and roles


def test_blinding_until_both_have_signed(exam, archive_file: Path) -> None:
    key, sop = exam
    with DoubleReadingLog(archive_file, "ann", ON) as a, DoubleReadingLog(archive_file, "bob", ON) as b, \
            CorrectionLog(archive_file) as plain:
        a.append(reader="ann", exam_key=key, action="add", sop_uid=sop, pixel_sha256=SHA, kind="mass",
                 geometry={"type": "box", "box": [1, 1, 9, 9]})
        a.append(reader="ann", exam_key=key, action="sign", payload=_assessment("4A"))
        b.append(reader="bob", exam_key=key, action="note", payload={"text": "looking"})
        # bob sees nothing of ann's read, through every query the viewer makes
        assert {e.reader for e in b.events(exam_key=key)} == {"bob"}
        assert {e.reader for e in b.events(sop_uid=sop)} == set()
        assert {e.reader for e in b.events()} == {"bob"}
        assert set(fold(b.events(exam_key=key))) == {"bob"}
        assert {e.reader for e in a.events(exam_key=key)} == {"ann"}
        assert b.status(key).state == "first read"
        # the plain log (audit, snapshots) holds everything
        assert {e.reader for e in plain.events(exam_key=key)} == {"ann", "bob"}
        b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("1"))
        assert {e.reader for e in b.events(exam_key=key)} == {"ann", "bob"}
        assert {e.reader for e in a.events(exam_key=key)} == {"ann", "bob"}
        status = b.status(key)
        assert status.state == "discordant" and status.readers == ("ann", "bob")
        assert status.reasons == ("recall: recall vs no recall",)


def test_roles_third_reader_only_arbitrates(exam, archive_file: Path) -> None:
    key, sop = exam
    with DoubleReadingLog(archive_file, "ann", ON) as a, DoubleReadingLog(archive_file, "bob", ON) as b, \
            DoubleReadingLog(archive_file, "cat", ON) as c:
        with pytest.raises(CorrectionError, match="records ann's reads"):
            a.append(reader="bob", exam_key=key, action="note", payload={"text": "x"})
        a.append(reader="ann", exam_key=key, action="sign", payload=_assessment("1"))
        with pytest.raises(CorrectionError, match="not discordant"):
            c.append(reader="cat", exam_key=key, action="arbitrate", payload=_arbitration("1", 1, 2))
        b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("1"))
        assert c.status(key).state == "concordant"
        with pytest.raises(CorrectionError, match="double-read by ann and bob"):
            c.append(reader="cat", exam_key=key, action="sign", payload=_assessment("1"))
        with pytest.raises(CorrectionError, match="nothing to record"):
            c.append(reader="cat", exam_key=key, action="add", sop_uid=sop, pixel_sha256=SHA, kind="mass",
                     geometry={"type": "box", "box": [1, 1, 9, 9]})
        # bob re-opens and signs a recall: now discordant
        b.append(reader="bob", exam_key=key, action="amend", payload={"reason": "second look"})
        assert c.status(key).state == "first read"
        b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("0"))
        status = c.status(key)
        assert status.state == "discordant"
        with pytest.raises(CorrectionError, match="a third reader arbitrates"):
            a.append(reader="ann", exam_key=key, action="arbitrate", payload=_arbitration("1", 1, 4))
        with pytest.raises(CorrectionError, match="two reads it arbitrates"):
            c.append(reader="cat", exam_key=key, action="arbitrate", payload=_assessment("1"))
        reads = [{"reader": r.reader, "seq": r.seq} for r in status.reads]
        with pytest.raises(CorrectionError, match="names the exam's two current reads"):
            c.append(reader="cat", exam_key=key, action="arbitrate",  # bob's first, re-opened read
                     payload={**_assessment("0"), "reads": [reads[0], {"reader": "bob", "seq": 2}]})
        event = c.append(reader="cat", exam_key=key, action="arbitrate",
                         payload={**_assessment("0"), "reads": reads, "rule": "recall",
                                  "reasons": list(status.reasons)})
        assert event.payload["role"] == "arbitration" and event.payload["reads"] == reads
        assert c.status(key).state == "arbitrated" and c.status(key).arbitrator == "cat"
        assert c.status(key).consensus() == _assessment("0")
        with pytest.raises(CorrectionError, match="arbitrated by cat already"):
            c.append(reader="cat", exam_key=key, action="arbitrate", payload=_arbitration("1", 1, 4))
        # the arbitrator's record is a signed read of the exam for the worklist and the fold
        assert read_states(c.conn, [key])[key].reader == "cat"
        assert fold(c.events(exam_key=key))["cat"].signed
        assert c.verify().ok


def test_policy_off_is_the_plain_log(exam, archive_file: Path) -> None:
    key, _ = exam
    off = DoubleReadingPolicy()
    with DoubleReadingLog(archive_file, "ann", off) as a, DoubleReadingLog(archive_file, "bob", off) as b:
        a.append(reader="ann", exam_key=key, action="sign", payload=_assessment("1"))
        assert {e.reader for e in b.events(exam_key=key)} == {"ann"}
        b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("1"))
        b.append(reader="cat", exam_key=key, action="sign", payload=_assessment("1"))  # unchecked as before


def test_arbitration_list_and_case_side_by_side(exam, archive_file: Path) -> None:
    key, sop = exam
    with DoubleReadingLog(archive_file, "ann", ON) as a, DoubleReadingLog(archive_file, "bob", ON) as b, \
            DoubleReading(archive_file, ON) as site:
        a.append(reader="ann", exam_key=key, action="add", sop_uid=sop, pixel_sha256=SHA, kind="mass",
                 geometry={"type": "box", "box": [1, 1, 9, 9]})
        a.append(reader="ann", exam_key=key, action="sign", payload=_assessment("4B"))
        assert site.arbitration_list() == []
        assert site.case(key).labels == {}  # blinded: nothing to show yet
        b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("2", "2"))
        assert [s.exam_key for s in site.arbitration_list()] == [key]
        case = site.case(key).to_json()
        assert [r["reader"] for r in case["reads"]] == ["ann", "bob"]
        assert [len(r["findings"]) for r in case["reads"]] == [1, 0]
        assert case["reads"][0]["assessment"]["recall"] and not case["reads"][1]["assessment"]["recall"]
        assert "RECALL" in case["reads"][0]["text"]


def test_exam_status_without_signatures() -> None:
    assert exam_status("k", []).state == "unread"


# --------------------------------------------------------------------------- soft locks


def test_lock_shows_the_holder_and_expires(archive_file: Path) -> None:
    with ReadingLocks(archive_file, "ws-1", lease_s=300) as one, ReadingLocks(archive_file, "ws-2") as two:
        assert one.take("exam-1", "ann", T0).granted
        refused = two.take("exam-1", "bob", T0 + dt.timedelta(seconds=60))
        assert not refused.granted and refused.lock is not None
        assert (refused.lock.reader, refused.lock.workstation) == ("ann", "ws-1")
        assert refused.lock.text == "being read by ann"
        assert two.holders(T0 + dt.timedelta(seconds=60))["exam-1"].reader == "ann"
        # renewing moves the expiry on
        assert one.take("exam-1", "ann", T0 + dt.timedelta(seconds=200)).granted
        assert two.holder("exam-1", T0 + dt.timedelta(seconds=400)).reader == "ann"
        # expired: free, and bob takes it
        later = T0 + dt.timedelta(seconds=200 + 300 + 1)
        assert two.holder("exam-1", later) is None and two.holders(later) == {}
        assert two.take("exam-1", "bob", later).granted
        assert not one.release("exam-1", "ann", later)  # not ann's any more
        assert one.holder("exam-1", later).reader == "bob"
        assert two.release("exam-1", "bob", later)
        assert one.holder("exam-1", later) is None
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            one.conn.execute("DELETE FROM reading_locks")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            one.conn.execute("UPDATE reading_locks SET reader = 'eve'")


def test_arbitrated_snapshot_rule_falls_back_to_union_until_settled(exam, archive_file: Path) -> None:
    from mammotriage.store.datasets import build_manifest

    key, sop = exam
    DoubleReadingPolicy(enabled=True).save(archive_file.parent)
    with DoubleReadingLog(archive_file, "ann", ON) as a, DoubleReadingLog(archive_file, "bob", ON) as b:
        a.append(reader="ann", exam_key=key, action="add", sop_uid=sop, pixel_sha256=SHA, kind="mass",
                 geometry={"type": "box", "box": [1, 1, 9, 9]})
        a.append(reader="ann", exam_key=key, action="sign", payload=_assessment("4A"))

        def snapshot() -> tuple[dict, set]:
            m = build_manifest(archive_file, rule="arbitrated")
            return m["exams"][0], {img["consensus_source"] for img in m["images"]}

        entry, sources = snapshot()
        assert entry["double_reading"]["state"] == "first read" and sources == {"union"}
        assert entry["consensus"]["recall"] is None and entry["consensus"]["assessment"] is None
        b.append(reader="bob", exam_key=key, action="sign", payload=_assessment("1"))
        entry, sources = snapshot()
        assert entry["double_reading"]["state"] == "discordant" and sources == {"awaiting-arbitration-union"}
        assert entry["double_reading"]["reasons"] == ["recall: recall vs no recall"]
        assert entry["consensus"]["recall"] is None  # not settled: no consensus recall yet


def test_export_readme_names_the_arbitrated_rule() -> None:
    from mammotriage.export.readme import _rule_text

    text = _rule_text({"rule": "arbitrated", "match_iou": 0.3, "discordance": "birads"})
    assert "**arbitrated**" in text and "discordance rule birads" in text and "adjudicator" not in text


def test_two_workstations_at_once_get_one_second_read_and_one_arbitration(dicom, tmp_path: Path,
                                                                          archive_file: Path) -> None:
    """The roles are checked inside the append's transaction: of two readers racing for the
    same place (second reader; arbitrator), exactly one gets it, every round."""
    import threading

    for n in range(4):
        dicom.exam(tmp_path / f"race{n}", patient_id=f"RACE{n}", accession=f"R{n}")
    with Archive(archive_file) as archive:
        archive.import_paths([tmp_path / f"race{n}" for n in range(4)])
        keys = [e.exam_key for e in archive.exams()]

    def race(logs: list[DoubleReadingLog], key: str, action: str, payload: dict) -> list[str]:
        barrier, outcome = threading.Barrier(len(logs)), []

        def go(log: DoubleReadingLog) -> None:
            barrier.wait()
            try:
                log.append(reader=log.reader, exam_key=key, action=action, payload=payload)
                outcome.append("ok")
            except CorrectionError as exc:
                outcome.append(str(exc))

        threads = [threading.Thread(target=go, args=(log,)) for log in logs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outcome

    names = ("ann", "bob", "cat", "dan")
    logs = {name: DoubleReadingLog(archive_file, name, ON) for name in names}
    try:
        for key in keys:
            logs["ann"].append(reader="ann", exam_key=key, action="sign", payload=_assessment("4A"))
            seconds = race([logs["bob"], logs["cat"]], key, "sign", _assessment("1"))
            assert seconds.count("ok") == 1, seconds
            status = logs["dan"].status(key)
            assert status.state == "discordant"
            third = next(n for n in names[1:3] if n not in status.readers)
            payload = {**_assessment("4A"), "rule": "recall", "reasons": list(status.reasons),
                       "reads": [{"reader": r.reader, "seq": r.seq} for r in status.reads]}
            arbitrations = race([logs[third], logs["dan"]], key, "arbitrate", payload)
            assert arbitrations.count("ok") == 1, arbitrations
        with CorrectionLog(archive_file) as plain:
            events = plain.events()
            assert sum(1 for e in events if e.action == "arbitrate") == len(keys)
            assert sum(1 for e in events if e.action == "sign") == 2 * len(keys)
            assert plain.verify().ok
    finally:
        for log in logs.values():
            log.close()


def test_status_index_follows_the_log_incrementally(dicom, tmp_path: Path, archive_file: Path) -> None:
    from mammotriage.store.double_reading import StatusIndex, exam_statuses

    for n in range(3):
        dicom.exam(tmp_path / f"ix{n}", patient_id=f"IX{n}", accession=f"I{n}")
    with Archive(archive_file) as archive:
        archive.import_paths([tmp_path / f"ix{n}" for n in range(3)])
        k1, k2, k3 = (e.exam_key for e in archive.exams())
    with DoubleReadingLog(archive_file, "ann", ON) as a, DoubleReadingLog(archive_file, "bob", ON) as b:
        index = StatusIndex("recall")
        assert index.update(a.conn) == set() and index.statuses == {}
        a.append(reader="ann", exam_key=k1, action="sign", payload=_assessment("4A"))
        a.append(reader="ann", exam_key=k2, action="sign", payload=_assessment("1"))
        assert index.update(a.conn) == {k1, k2}
        assert index.update(a.conn) == set()  # nothing new: nothing re-read
        b.append(reader="bob", exam_key=k1, action="sign", payload=_assessment("1"))
        b.append(reader="bob", exam_key=k3, action="note", payload={"text": "not a state event"})
        assert index.update(a.conn) == {k1}
        assert index.statuses == exam_statuses(a.conn, "recall")
        assert index.get([k1, k3]) == {k1: index.statuses[k1]} and index.statuses[k1].state == "discordant"


def test_pair_agreement_by_hand_and_undefined_kappa() -> None:
    from mammotriage.learning.monitor import reader_pair_agreement
    from mammotriage.store.double_reading import ExamStatus, Read

    def status(key: str, a: dict, b: dict, first: str = "bob") -> ExamStatus:
        reads = (Read(first, 1, "", a), Read("ann" if first == "bob" else "bob", 2, "", b))
        return ExamStatus(key, "concordant", tuple(r.reader for r in reads), reads)

    yes, no = _assessment("4A"), _assessment("1")
    # 4 exams, names in either order: (ann, bob) = (yes, yes), (yes, no), (no, no), (no, no)
    statuses = [status("1", yes, yes), status("2", no, yes), status("3", no, no, "ann"), status("4", no, no)]
    (pair,) = reader_pair_agreement(statuses)
    assert pair["readers"] == ["ann", "bob"] and pair["exams"] == 4
    # p_o = 3/4; ann yes 2/4, bob yes 1/4: p_e = .5 * .25 + .5 * .75 = .5; kappa = .25 / .5
    assert pair["recall_concordance"] == pytest.approx(0.75) and pair["recall_kappa"] == pytest.approx(0.5)
    # per breast: R all (1, 1); L (4A, 4A), (4A, 1), (1, 1), (1, 1): p_o = 7/8,
    # p_e = (6 * 7 + 2 * 1) / 64 = 0.6875, kappa = 0.1875 / 0.3125 = 0.6
    assert pair["birads_kappa"]["n"] == 8 and pair["birads_kappa"]["kappa"] == pytest.approx(0.6)
    (same,) = reader_pair_agreement([status("5", no, no), status("6", no, no)])
    assert same["recall_concordance"] == 1.0 and same["recall_kappa"] is None  # one category: undefined
