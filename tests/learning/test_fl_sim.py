"""The simulation's shared parent: reused from the work folder only when it was trained
with the same settings (a --quick parent was reused by a full run in the same --out)."""

from __future__ import annotations

from mammotriage.learning.fl_config import SimConfig
from mammotriage.learning.fl_sim import train_parent
from mammotriage.model.package import read_metadata


def _source(parent):
    return read_metadata(parent)["training_data"]["sources"][0]


def test_the_parent_is_reused_only_for_the_same_settings(tmp_path):
    quick = SimConfig(rows=128, columns=104, parent_exams=2, parent_epochs=0.25)
    said = []
    first = train_parent(tmp_path / "parent", quick, said.append)
    sha = read_metadata(first)["weights_sha256"]
    assert _source(first)["n_exams"] == 2 and len(said) == 1
    again = train_parent(tmp_path / "parent", quick, said.append)
    assert again == first and read_metadata(again)["weights_sha256"] == sha and len(said) == 1  # reused
    other = SimConfig(rows=128, columns=104, parent_exams=2, parent_epochs=1.0)
    third = train_parent(tmp_path / "parent", other, said.append)
    assert _source(third)["epochs"] == 1.0 and read_metadata(third)["weights_sha256"] != sha
    assert "a parent of other settings" in said[1]
