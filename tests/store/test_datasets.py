"""Dataset snapshots: consensus rules, agreement statistics, content addressing, diff."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from mammotriage.store import Archive
from mammotriage.store.datasets import (
    ConsensusRule,
    DatasetError,
    bbox,
    build_manifest,
    cohen_kappa,
    consensus_for_image,
    create_snapshot,
    datasets_dir,
    diff_snapshots,
    iou,
    list_snapshots,
    load_snapshot,
    match_count,
)
from mammotriage.store.events import CorrectionLog
from mammotriage.store.labels import ai_target
from mammotriage.triage import TriageQueue

SHA = "ab" * 32
MARKS = [{"box": [5.0, 5.0, 20.0, 20.0], "kind": "mass", "score": 0.9},
         {"box": [30.0, 40.0, 45.0, 60.0], "kind": "calcification", "score": 0.4}]


# --------------------------------------------------------------------------- pure functions


def test_geometry_helpers() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert bbox({"type": "polygon", "points": [[3, 4], [9, 1], [5, 8]]}) == (3, 1, 9, 8)
    assert bbox({"type": "ellipse", "box": [1, 2, 3, 4]}) == (1, 2, 3, 4)
    # one-to-one: two boxes on one lesion match once
    assert match_count([[0, 0, 10, 10], [1, 0, 11, 10]], [[0, 0, 10, 10]]) == 1
    assert match_count([[0, 0, 10, 10]], [[7, 0, 17, 10]]) == 0  # IoU 3/17 < 0.3
    assert match_count([], [[0, 0, 1, 1]]) == 0


def test_cohen_kappa_known_values() -> None:
    # 2x2 table yes/yes 20, yes/no 5, no/yes 10, no/no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4
    pairs = [(1, 1)] * 20 + [(1, 0)] * 5 + [(0, 1)] * 10 + [(0, 0)] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([(4, 4), (2, 2), (1, 1)]) == 1.0
    assert cohen_kappa([(4, 4), (4, 4)]) is None  # one category only: undefined
    assert cohen_kappa([]) is None
    assert cohen_kappa([(4, 3), (3, 4)]) == pytest.approx(-1.0)


def _lab(lid: str, box: list[float], kind: str = "mass", positive: bool = True, source: str = "reader",
         score: float | None = None) -> dict:
    return {"label_id": lid, "source": source, "status": "added" if positive else "rejected",
            "positive": positive, "kind": kind, "geometry": {"type": "box", "box": box},
            "box": box, "score": score}


def test_consensus_rules() -> None:
    readers = {
        "a": [_lab("ai:v1:s:0", [10, 10, 30, 30], source="ai"), _lab("reader:1", [50, 50, 60, 60], "asymmetry"),
              _lab("ai:v1:s:1", [0, 0, 5, 5], positive=False, source="ai")],
        "b": [_lab("ai:v1:s:0", [12, 10, 32, 30], "calcification", source="ai"),
              _lab("reader:2", [70, 5, 80, 15], score=0.7)],
        "c": [_lab("reader:3", [11, 11, 31, 31], "calcification")],
    }
    union, source = consensus_for_image(readers, ConsensusRule.parse("union"))
    assert source == "union" and len(union) == 3
    merged = next(lab for lab in union if len(lab["members"]) == 3)
    assert merged["box"] == [11.0, 10.333, 31.0, 30.333]
    assert merged["kind"] == "calcification"  # 2 of 3
    assert merged["readers"] == ["a", "b", "c"]
    assert next(lab for lab in union if lab["readers"] == ["b"])["suspicion"] == 0.7
    assert all(lab["label_id"].startswith("consensus:") for lab in union)
    again, _ = consensus_for_image(dict(reversed(list(readers.items()))), ConsensusRule.parse("union"))
    assert [lab["label_id"] for lab in again] == [lab["label_id"] for lab in union]  # stable ids

    majority, source = consensus_for_image(readers, ConsensusRule.parse("majority"))
    assert source == "majority" and [lab["label_id"] for lab in majority] == [merged["label_id"]]

    adjudicated, source = consensus_for_image(readers, ConsensusRule.parse("adjudicator:b"))
    assert source == "adjudicator:b"
    assert sorted(lab["box"] for lab in adjudicated) == [[12, 10, 32, 30], [70, 5, 80, 15]]

    fallback, source = consensus_for_image(readers, ConsensusRule.parse("adjudicator:z"))
    assert source == "majority" and len(fallback) == 1

    two = {"a": readers["a"], "b": []}  # one of two readers is not more than half
    assert consensus_for_image(two, ConsensusRule.parse("majority"))[0] == []


@pytest.mark.parametrize("text", ["vote", "adjudicator", "adjudicator:", "union:dr_a"])
def test_bad_rules_are_refused(text: str) -> None:
    with pytest.raises(DatasetError):
        ConsensusRule.parse(text)


# --------------------------------------------------------------------------- archive


@pytest.fixture
def labelled(tmp_path: Path, dicom, archive_file: Path) -> dict:
    """Two tiny four-view exams with AI marks (v1); no corrections yet."""
    dicom.exam(tmp_path / "e1", patient_id="P1", accession="A1", seed=0)
    dicom.exam(tmp_path / "e2", patient_id="P2", accession="A2", seed=10)
    with Archive(archive_file) as archive:
        assert len(archive.import_paths([tmp_path / "e1", tmp_path / "e2"]).imported) == 8
        exams = sorted(archive.exams(), key=lambda e: e.patient_id)
    with TriageQueue(archive_file) as queue:
        queue.sync("v1")
        while (job := queue.claim_next("v1")) is not None:
            exam = next(e for e in exams if e.exam_key == job.exam_key)
            queue.complete(job, SHA, [{"sop_uid": i.sop_uid, "laterality": i.laterality.value, "score": 0.9,
                                       "findings": MARKS} for i in exam.images])
    return {"archive": archive_file, "exams": exams,
            "images": {e.patient_id: {i.label: i for i in e.images} for e in exams}}


def _event(log: CorrectionLog, exam, image, reader: str, action: str, **kw):
    return log.append(reader=reader, exam_key=exam.exam_key, action=action, study_uid=image.study_uid,
                      series_uid=image.series_uid, sop_uid=image.sop_uid, pixel_sha256=SHA,
                      model_version="v1", **kw)


def _read_exam1(lab: dict) -> dict:
    exam = lab["exams"][0]
    rcc, lcc = lab["images"]["P1"]["RCC"], lab["images"]["P1"]["LCC"]
    with CorrectionLog(lab["archive"]) as log:
        _event(log, exam, rcc, "dr_a", "accept", target=ai_target("v1", rcc.sop_uid, 0))
        _event(log, exam, rcc, "dr_a", "reject", target=ai_target("v1", rcc.sop_uid, 1))
        added = _event(log, exam, lcc, "dr_a", "add", kind="asymmetry", payload={"suspicion": 0.5},
                       geometry={"type": "polygon", "points": [[20, 30], [40, 30], [30, 50]]})
        _event(log, exam, rcc, "dr_b", "adjust", target=ai_target("v1", rcc.sop_uid, 0),
               geometry={"type": "box", "box": [6, 5, 21, 20]})
        _event(log, exam, rcc, "dr_b", "reject", target=ai_target("v1", rcc.sop_uid, 1))
        for reader in ("dr_a", "dr_b"):
            log.append(reader=reader, exam_key=exam.exam_key, action="birads", payload={"birads": 4})
            log.append(reader=reader, exam_key=exam.exam_key, action="density",
                       payload={"density": "C" if reader == "dr_a" else "B"})
    return {"exam": exam, "rcc": rcc, "lcc": lcc, "added": added}


def test_manifest_holds_readers_original_consensus_and_agreement(labelled: dict) -> None:
    read = _read_exam1(labelled)
    manifest = build_manifest(labelled["archive"], rule="union")
    assert manifest["counts"]["exams"] == 1 and manifest["counts"]["images"] == 4  # exam 2: no events
    assert manifest["readers"] == ["dr_a", "dr_b"]
    images = {img["sop_uid"]: img for img in manifest["images"]}
    rcc = images[read["rcc"].sop_uid]
    assert rcc["sha256"] == read["rcc"].sha256 and rcc["pixel_sha256"] == SHA
    assert (rcc["rows"], rcc["columns"], rcc["laterality"], rcc["view"]) == (64, 48, "R", "CC")
    assert rcc["path"] == read["rcc"].path and rcc["exam_key"] == read["exam"].exam_key
    assert rcc["original"] == [{"model_version": "v1", "weights_sha256": SHA, "score": 0.9, "marks": [
        {"label_id": ai_target("v1", rcc["sop_uid"], i), "kind": m["kind"], "box": m["box"],
         "score": m["score"]} for i, m in enumerate(MARKS)]}]
    a = {lab["label_id"]: lab for lab in rcc["readers"]["dr_a"]}
    b = {lab["label_id"]: lab for lab in rcc["readers"]["dr_b"]}
    mark0, mark1 = ai_target("v1", rcc["sop_uid"], 0), ai_target("v1", rcc["sop_uid"], 1)
    assert a[mark0]["status"] == "accepted" and a[mark1]["status"] == "rejected"
    assert b[mark0]["geometry"] == {"type": "box", "box": [6.0, 5.0, 21.0, 20.0]}
    assert b[mark0]["original_geometry"] == {"type": "box", "box": [5.0, 5.0, 20.0, 20.0]}
    (merged,) = rcc["consensus"]
    assert merged["box"] == [5.5, 5.0, 20.5, 20.0] and merged["readers"] == ["dr_a", "dr_b"]
    lcc = images[read["lcc"].sop_uid]
    (added,) = lcc["consensus"]
    assert added["geometry"]["type"] == "polygon" and added["suspicion"] == 0.5
    assert lcc["pixel_sha256"] == SHA
    rmlo = next(img for img in manifest["images"] if img["view"] == "MLO" and img["laterality"] == "R")
    assert rmlo["pixel_sha256"] == "" and rmlo["consensus"] == []
    assert {lab["status"] for lab in rmlo["readers"]["dr_a"]} == {"unreviewed"}

    (exam,) = manifest["exams"]
    assert exam["readers"]["dr_a"] == {"birads": 4, "density": "C", "model_version": "v1"}
    assert exam["consensus"] == {"birads": 4, "density": "C"}  # union: the higher density
    assert exam["events"]["count"] == 9
    (pair,) = manifest["agreement"]["pairs"]
    assert pair["readers"] == ["dr_a", "dr_b"] and pair["images"] == 4
    assert pair["lesions"] == {"dr_a": 2, "dr_b": 1} and pair["matched"] == 1
    assert pair["match_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert pair["birads_kappa"] == {"n": 1, "kappa": None}  # one exam, one category: undefined
    assert pair["density_kappa"]["n"] == 1

    majority = build_manifest(labelled["archive"], rule="majority")
    by_sop = {img["sop_uid"]: img for img in majority["images"]}
    assert len(by_sop[read["rcc"].sop_uid]["consensus"]) == 1
    assert by_sop[read["lcc"].sop_uid]["consensus"] == []  # 1 of 2 readers
    adjudicated = build_manifest(labelled["archive"], rule="adjudicator:dr_b")
    by_sop = {img["sop_uid"]: img for img in adjudicated["images"]}
    assert by_sop[read["rcc"].sop_uid]["consensus"][0]["box"] == [6.0, 5.0, 21.0, 20.0]
    assert by_sop[read["lcc"].sop_uid]["consensus"] == []
    assert adjudicated["exams"][0]["consensus"]["density"] == "B"


def test_snapshot_is_content_addressed_read_only_and_recorded(labelled: dict) -> None:
    _read_exam1(labelled)
    rec = create_snapshot(labelled["archive"], name="first", description="two readers")
    assert rec.created and rec.path.parent == datasets_dir(labelled["archive"])
    data = rec.path.read_bytes()
    assert rec.path.name == f"{hashlib.sha256(data).hexdigest()}.json" == f"{rec.sha256}.json"
    assert not os.stat(rec.path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert json.loads(data)["name"] == "first"
    assert not list(rec.path.parent.glob(".*.tmp"))

    again = create_snapshot(labelled["archive"], name="first", description="two readers")
    assert again.sha256 == rec.sha256 and not again.created  # same labels, same hash
    assert [r.sha256 for r in list_snapshots(labelled["archive"])] == [rec.sha256]
    (row,) = list_snapshots(labelled["archive"])
    assert (row.role, row.consensus, row.exams, row.images, row.readers) == ("training", "union", 1, 4, 2)
    assert row.labels == 3 and row.consensus_labels == 2

    other = create_snapshot(labelled["archive"], name="first", role="validation")
    assert other.sha256 != rec.sha256 and other.role == "validation"

    loaded = load_snapshot(rec.sha256[:8], labelled["archive"])
    assert loaded["sha256"] == rec.sha256 and loaded["role"] == "training"
    with pytest.raises(DatasetError, match="ambiguous"):  # two snapshots are named "first"
        load_snapshot("first", labelled["archive"])

    conn = sqlite3.connect(labelled["archive"])
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        conn.execute("UPDATE dataset_snapshots SET role = 'validation' WHERE sha256 = ?", (rec.sha256,))
    conn.close()

    os.chmod(rec.path, stat.S_IRUSR | stat.S_IWUSR)
    rec.path.write_bytes(data.replace(b'"first"', b'"fiRst"'))
    with pytest.raises(DatasetError, match="does not match its name"):
        load_snapshot(rec.sha256, labelled["archive"])


def test_snapshot_references(labelled: dict) -> None:
    _read_exam1(labelled)
    a = create_snapshot(labelled["archive"], name="a")
    b = create_snapshot(labelled["archive"], name="b", role="validation")
    assert load_snapshot("a", labelled["archive"])["sha256"] == a.sha256
    assert load_snapshot(str(b.path), labelled["archive"])["sha256"] == b.sha256
    with pytest.raises(DatasetError, match="no snapshot"):
        load_snapshot("nothing-like-it", labelled["archive"])
    common = os.path.commonprefix([a.sha256, b.sha256])  # noqa: RUF071 - a common string prefix is meant
    if len(common) >= 6:
        with pytest.raises(DatasetError, match="ambiguous"):
            load_snapshot(common, labelled["archive"])


def test_diff_lists_added_removed_and_changed_labels(labelled: dict) -> None:
    read = _read_exam1(labelled)
    before = load_snapshot(create_snapshot(labelled["archive"]).sha256, labelled["archive"])
    exam, rcc, lcc = read["exam"], read["rcc"], read["lcc"]
    with CorrectionLog(labelled["archive"]) as log:
        _event(log, exam, rcc, "dr_b", "accept", target=ai_target("v1", rcc.sop_uid, 1))
        _event(log, exam, lcc, "dr_a", "delete", target=f"reader:{read['added'].event_id}")
        log.append(reader="dr_a", exam_key=exam.exam_key, action="birads", payload={"birads": 5})
    after = load_snapshot(create_snapshot(labelled["archive"]).sha256, labelled["archive"])
    assert after["sha256"] != before["sha256"]
    diff = diff_snapshots(before, after)
    changed = {(c["sop_uid"], c["owner"], c["label_id"]): c for c in diff.changed}
    mark1 = (rcc.sop_uid, "dr_b", ai_target("v1", rcc.sop_uid, 1))
    assert changed[mark1]["before"]["status"] == "rejected" and changed[mark1]["after"]["status"] == "accepted"
    removed = {(r["sop_uid"], r["owner"], r["label_id"]) for r in diff.removed}
    assert (lcc.sop_uid, "dr_a", f"reader:{read['added'].event_id}") in removed
    assert any(r["owner"] == "consensus" and r["sop_uid"] == lcc.sop_uid for r in diff.removed)
    assert any(a["owner"] == "consensus" and a["sop_uid"] == rcc.sop_uid for a in diff.added)
    assert [e["after"]["readers"]["dr_a"]["birads"] for e in diff.exams_changed] == [5]
    assert not diff.images_added and not diff.images_removed
    same = diff_snapshots(after, after)
    assert same.empty


def test_unreviewed_exams_only_on_request(labelled: dict) -> None:
    _read_exam1(labelled)
    manifest = build_manifest(labelled["archive"], include_unreviewed=True)
    assert manifest["counts"]["exams"] == 2 and manifest["counts"]["exams_reviewed"] == 1
    unreviewed = [img for img in manifest["images"] if not img["reviewed"]]
    assert len(unreviewed) == 4
    for img in unreviewed:
        assert img["readers"] == {} and img["consensus"] == [] and img["consensus_source"] is None
        assert [len(o["marks"]) for o in img["original"]] == [2]


def test_refusals(labelled: dict) -> None:
    with pytest.raises(DatasetError, match="nothing to snapshot"):
        build_manifest(labelled["archive"])
    _read_exam1(labelled)
    with pytest.raises(DatasetError, match="role"):
        build_manifest(labelled["archive"], role="test")
    with pytest.raises(DatasetError, match="has read none"):
        build_manifest(labelled["archive"], rule="adjudicator:dr_z")


def test_adjudicator_falls_back_to_majority_where_they_did_not_read(labelled: dict) -> None:
    _read_exam1(labelled)
    exam2 = labelled["exams"][1]
    rcc2 = labelled["images"]["P2"]["RCC"]
    with CorrectionLog(labelled["archive"]) as log:
        for reader in ("dr_b", "dr_c"):
            _event(log, exam2, rcc2, reader, "accept", target=ai_target("v1", rcc2.sop_uid, 0))
    manifest = build_manifest(labelled["archive"], rule="adjudicator:dr_a")
    sources = {img["exam_key"]: img["consensus_source"] for img in manifest["images"]}
    assert sources[labelled["exams"][0].exam_key] == "adjudicator:dr_a"
    assert sources[exam2.exam_key] == "majority"
    by_sop = {img["sop_uid"]: img for img in manifest["images"]}
    assert len(by_sop[rcc2.sop_uid]["consensus"]) == 1
    assert {tuple(p["readers"]) for p in manifest["agreement"]["pairs"]} == {("dr_a", "dr_b"), ("dr_b", "dr_c")}
