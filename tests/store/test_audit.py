"""Audit anchoring: forgeries by someone who can write the database but not read the key.

Each test forges a real archive file the way an attacker with sqlite3 would (drop the
append-only triggers, edit, recompute the unkeyed hash chain, fix the AUTOINCREMENT
counter) and checks that ``verify`` (and ``mammotriage audit verify``) finds it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mammotriage.store.audit import AuditKey, AuditKeyError, FileAnchor, audit_key_path
from mammotriage.store.events import GENESIS, CorrectionLog, event_hash

SHA = "cd" * 32


def _fill(path: Path, n: int = 4) -> None:
    with CorrectionLog(path, workstation="ws-audit") as log:
        for i in range(n):
            log.append(reader="dr_a", exam_key=f"E{i}", action="birads", payload={"birads": 4})


def _attacker(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    conn.execute("DROP TRIGGER IF EXISTS correction_events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS correction_events_no_delete")
    return conn


def _rechain(conn: sqlite3.Connection) -> None:
    """Recompute every prev_hash/hash (the unkeyed chain) and the sequence counter."""
    prev = GENESIS
    for row in conn.execute("SELECT * FROM correction_events ORDER BY seq").fetchall():
        r = dict(row, prev_hash=prev)
        digest = event_hash(r)
        conn.execute("UPDATE correction_events SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (prev, digest, r["seq"]))
        prev = digest
    last = conn.execute("SELECT MAX(seq) FROM correction_events").fetchone()[0] or 0
    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'correction_events'", (last,))
    conn.commit()


def _verify(path: Path):
    with CorrectionLog(path) as log:
        return log.verify()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "archive.sqlite"
    _fill(path)
    report = _verify(path)
    assert report.ok and report.events == 4 and report.head["count"] == 4, report.problems
    return path


def test_the_key_lives_outside_the_data_folder_and_is_owner_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMMOTRIAGE_AUDIT_KEY", raising=False)
    home = tmp_path / "data"
    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(home))
    key = audit_key_path()
    assert key == tmp_path / "data-keys" / "audit.key"  # beside the data folder, not in it
    path = home / "archive.sqlite"
    _fill(path, 1)
    assert key.is_file() and home not in key.parents
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.read_text().strip().encode() not in path.read_bytes()
    assert _verify(path).ok


def test_edit_and_rechain_birads_4_to_1_is_found(archive: Path) -> None:
    conn = _attacker(archive)
    conn.execute("""UPDATE correction_events SET payload = '{"birads": 1}' WHERE seq = 2""")
    _rechain(conn)
    conn.close()
    report = _verify(archive)
    assert not report.ok
    assert any("event 2" in p and "MAC does not match" in p for p in report.problems), report.problems
    assert any("differs from the head record" in p for p in report.problems)


def test_deleting_the_tail_and_fixing_the_counter_is_found(archive: Path) -> None:
    conn = _attacker(archive)
    conn.execute("DELETE FROM correction_events WHERE seq >= 3")
    _rechain(conn)
    conn.close()
    report = _verify(archive)
    assert not report.ok and report.events == 2
    assert any("truncated" in p for p in report.problems), report.problems


def test_deleting_every_event_is_found(archive: Path) -> None:
    conn = _attacker(archive)
    conn.execute("DELETE FROM correction_events")
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'correction_events'")
    conn.commit()
    conn.close()
    report = _verify(archive)
    assert not report.ok and any("truncated" in p for p in report.problems), report.problems


def test_deleting_a_middle_event_and_rechaining_is_found(archive: Path) -> None:
    conn = _attacker(archive)
    conn.execute("DELETE FROM correction_events WHERE seq = 2")
    conn.execute("UPDATE correction_events SET seq = seq - 1 WHERE seq > 2")
    _rechain(conn)
    conn.close()
    report = _verify(archive)
    assert not report.ok
    assert any("MAC does not match" in p for p in report.problems), report.problems


def test_an_appended_event_without_the_key_is_found(archive: Path) -> None:
    conn = _attacker(archive)
    row = dict(conn.execute("SELECT * FROM correction_events ORDER BY seq DESC LIMIT 1").fetchone())
    row.update(seq=row["seq"] + 1, event_id="forged", prev_hash=row["hash"], payload='{"birads": 1}')
    row["hash"] = event_hash(row)
    row["mac"] = ""
    cols = ", ".join(row)
    conn.execute(f"INSERT INTO correction_events ({cols}) VALUES ({', '.join('?' * len(row))})",
                 tuple(row.values()))
    conn.commit()
    conn.close()
    report = _verify(archive)
    assert any("event 5" in p and "no MAC" in p for p in report.problems), report.problems


def test_a_forged_or_removed_head_file_is_found(archive: Path) -> None:
    with CorrectionLog(archive) as log:
        head_file = log.anchor.path
    lines = head_file.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged.update(count=2, last_seq=2)
    head_file.write_text("\n".join([*lines[:2], json.dumps(forged)]) + "\n")
    report = _verify(archive)
    assert any("wrong MAC" in p for p in report.problems), report.problems
    head_file.unlink()
    report = _verify(archive)
    assert any("no head record" in p for p in report.problems), report.problems


def test_a_dropped_table_gives_a_message_not_a_traceback(archive: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(archive)
    conn.execute("DROP TABLE correction_events")
    conn.commit()
    conn.close()
    report = _verify(archive)
    assert not report.ok and "table was dropped" in report.problems[0]
    home = tmp_path / "cli-home"
    home.mkdir()
    (home / "archive.sqlite").write_bytes(archive.read_bytes())
    env = dict(os.environ, MAMMOTRIAGE_HOME=str(home), PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "mammotriage", "audit", "verify", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "table was dropped" in json.loads(r.stdout)["problems"][0]


def test_events_from_before_the_key_are_anchored_once(tmp_path: Path) -> None:
    """An archive written before anchoring (mac '' everywhere, no head file)."""
    path = tmp_path / "old.sqlite"
    _fill(path, 3)
    conn = _attacker(path)
    conn.execute("UPDATE correction_events SET mac = ''")
    conn.commit()
    conn.close()
    with CorrectionLog(path) as log:
        log.anchor.path.unlink()
    with CorrectionLog(path) as log:  # first open after the upgrade: adopts the chain
        log.append(reader="dr_a", exam_key="E9", action="note", payload={"note": "after"})
        report = log.verify()
    assert report.ok and report.unkeyed == 3 and report.head["count"] == 4, report.problems


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = AuditKey.load(tmp_path / "k" / "audit.key")
    os.chmod(key.path, 0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        AuditKey.load(key.path)
    with pytest.raises(AuditKeyError, match="hex audit key"):
        bad = tmp_path / "bad.key"
        bad.write_text("not a key")
        os.chmod(bad, 0o600)
        AuditKey.load(bad)


def test_the_head_anchor_is_per_archive(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    _fill(a, 2)
    _fill(b, 1)
    with CorrectionLog(a) as la, CorrectionLog(b) as lb:
        assert isinstance(la.anchor, FileAnchor) and la.anchor.path != lb.anchor.path
        assert la.verify().head["count"] == 2 and lb.verify().head["count"] == 1


def test_a_snapshot_pins_the_chain_even_if_the_head_file_is_cut_back(archive: Path) -> None:
    """Truncate the events *and* the head file consistently: the snapshot's head still knows."""
    with CorrectionLog(archive) as log:
        record = log.signed_head().to_json()
        head_file = log.anchor.path
        folder = archive.parent / "datasets"
        folder.mkdir()
        (folder / ("ab" * 32 + ".json")).write_text(json.dumps({"audit_head": record}))
        log.conn.execute(
            "INSERT INTO dataset_snapshots (sha256, created_at, role, consensus, exams, images, readers,"
            " labels, consensus_labels, manifest) VALUES (?, 'now', 'training', 'union', 1, 1, 1, 1, 1, ?)",
            ("ab" * 32, f"datasets/{'ab' * 32}.json"))
        assert log.verify().ok
    conn = _attacker(archive)
    conn.execute("DELETE FROM correction_events WHERE seq = 4")
    _rechain(conn)
    conn.close()
    head_file.write_text("\n".join(head_file.read_text().splitlines()[:3]) + "\n")
    report = _verify(archive)
    assert [p for p in report.problems if "snapshot abababababab" in p and "no longer holds" in p], \
        report.problems


def test_a_bad_key_gives_a_message_from_any_command(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "audit.key"
    AuditKey.load(key)
    os.chmod(key, 0o640)
    env = dict(os.environ, MAMMOTRIAGE_HOME=str(tmp_path / "home"), MAMMOTRIAGE_AUDIT_KEY=str(key),
               PYTHONPATH=os.pathsep.join(sys.path))
    for args in (["audit", "verify"], ["dataset", "snapshot"]):
        r = subprocess.run([sys.executable, "-m", "mammotriage", *args], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "chmod 600" in r.stderr


def test_a_head_line_torn_by_a_killed_writer_is_not_tampering(archive: Path) -> None:
    with CorrectionLog(archive) as log:
        head_file = log.anchor.path
    with open(head_file, "a", encoding="utf-8") as fh:
        fh.write('{"archive": "x", "count": 5, "last_')  # killed mid-write
    assert _verify(archive).ok
    with CorrectionLog(archive) as log:
        log.append(reader="dr_a", exam_key="E7", action="birads", payload={"birads": 2})
        report = log.verify()
    assert report.ok and report.head["count"] == 5, report.problems
    assert head_file.read_text().splitlines()[-1].startswith("{")  # on a line of its own
