"""The site's round log location and its tolerant reader (torch-free: the Model panel reads it)."""

import json

from mammotriage.learning.fl_config import read_round_log, round_log_path


def test_round_log_lives_beside_the_archive(tmp_path):
    assert round_log_path(tmp_path / "archive.sqlite") == tmp_path / "federation" / "rounds.jsonl"


def test_missing_log_is_empty(tmp_path):
    assert read_round_log(tmp_path / "none.jsonl") == ([], 0)


def test_cut_and_forged_lines_are_counted_not_fatal(tmp_path):
    p = tmp_path / "rounds.jsonl"
    good = [{"round": 0, "sent": True}, {"round": 1, "sent": False, "reason": "opted out of this round"}]
    p.write_bytes((json.dumps(good[0]) + "\n" + "[1, 2]\n" + "\xff\xfe not json\n" + json.dumps(good[1]) + "\n"
                   + '{"round": 2, "se').encode("utf-8", "surrogateescape"))
    entries, bad = read_round_log(p)
    assert entries == good
    assert bad == 3


def test_limit_keeps_the_newest(tmp_path):
    p = tmp_path / "rounds.jsonl"
    p.write_text("".join(json.dumps({"round": i}) + "\n" for i in range(50)), encoding="utf-8")
    entries, bad = read_round_log(p, limit=5)
    assert [e["round"] for e in entries] == [45, 46, 47, 48, 49] and bad == 0
