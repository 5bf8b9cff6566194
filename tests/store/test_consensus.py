"""The consensus maths is pure: label dicts in, label dicts out, no database."""

from __future__ import annotations

import ast
from pathlib import Path

from mammotriage.store import consensus, datasets
from mammotriage.store.consensus import BIRADS_ORDER, ConsensusRule, agreement, exam_consensus


def test_consensus_imports_no_database_or_file_code() -> None:
    tree = ast.parse(Path(consensus.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith(("sqlite3", "mammotriage.store", "os", "tempfile"))}


def test_snapshots_use_the_consensus_module() -> None:
    # the old names stay importable from datasets: they are the same objects
    for name in ("MATCH_IOU", "RULES", "ConsensusRule", "DatasetError", "bbox", "iou", "match_count",
                 "cohen_kappa", "consensus_for_image"):
        assert getattr(datasets, name) is getattr(consensus, name)


def test_exam_consensus_and_agreement_on_plain_dicts() -> None:
    union, majority = ConsensusRule.parse("union"), ConsensusRule.parse("majority")
    assert exam_consensus({"a": 2, "b": 4, "c": None}, BIRADS_ORDER, union) == 4
    assert exam_consensus({"a": 2, "b": 2, "c": 4}, BIRADS_ORDER, majority) == 2
    assert exam_consensus({"a": None}, BIRADS_ORDER, union) is None
    lab = {"positive": True, "box": [0, 0, 10, 10]}
    images = [{"readers": {"a": [lab], "b": [lab, {"positive": True, "box": [50, 50, 60, 60]}]}}]
    exams = [{"readers": {"a": {"birads": 4, "density": "B"}, "b": {"birads": 4, "density": "C"}}}]
    out = agreement(exams, images)
    assert out["pairs"][0]["matched"] == 1 and out["overall_match_rate"] == round(2 / 3, 6)
