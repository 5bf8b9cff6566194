"""Batches with bad files in them: ``import`` of a 500-file mixed folder, odd names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from hostile import CASES, write_corpus
from mammotriage.cli import main
from mtsupport import REPO, write_mg


def _run(args: list[str | bytes], home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "app"), "MAMMOTRIAGE_HOME": str(home),
           "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "mammotriage", *args], capture_output=True,
                          text=True, errors="replace", env=env, timeout=600)


def test_import_of_a_500_file_mixed_folder_ends_with_a_summary(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    hostile = write_corpus(folder / "hostile", tuple(c for c in CASES if c.cheap))
    n_valid = 400
    for i in range(n_valid):
        write_mg(folder / "good" / f"{i:03d}.dcm", rows=32, columns=24, patient_id=f"P{i % 50:03d}")
    # fill up to 500 with copies of the damaged files (a copy of a link is a copy of its target)
    bad = [c for c in hostile if c.expect == "reject"]
    # distinct files (the link and its target are one file to import)
    n_files = len({p.resolve() for p in folder.rglob("*") if p.is_file()})
    (folder / "copies").mkdir()
    for i in range(500 - n_files):
        src = bad[i % len(bad)].path
        shutil.copyfile(src, folder / "copies" / f"{i:03d}-{src.name}")
    r = _run(["import", str(folder)], tmp_path / "home")
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert r.returncode == 1  # some files were rejected
    summary = [line for line in r.stdout.splitlines() if line.startswith("500 files: ")]
    assert summary, [line for line in r.stdout.splitlines() if "files: " in line]
    ok = sum(1 for c in hostile if c.expect == "ok")
    # every valid file is imported, except the one whose name the archive cannot record
    assert summary[0].startswith(f"500 files: {n_valid + ok - 1} imported, 0 duplicates, ")
    rejected = [line for line in r.stdout.splitlines() if line.startswith("REJECTED ")]
    assert len(rejected) == 500 - (n_valid + ok - 1)
    assert all(": " in line[len("REJECTED "):] for line in rejected)  # each names file and reason


def test_import_names_a_rejected_link_and_survives_a_non_utf8_name(tmp_path: Path, capsys) -> None:
    cases = {c.name: c for c in write_corpus(tmp_path / "in", tuple(
        c for c in CASES if c.name in ("link-to-garbage.dcm", "non-utf8-name")))}
    os.environ["MAMMOTRIAGE_HOME"] = str(tmp_path / "home")
    try:
        assert main(["import", str(tmp_path / "in")]) == 1
    finally:
        del os.environ["MAMMOTRIAGE_HOME"]
    out = capsys.readouterr().out
    link = cases["link-to-garbage.dcm"].path
    assert f"REJECTED {link}: not a DICOM file" in out  # the link's own name, and its target
    assert "(link to " in out
    assert "caf\\xe9-\\xff.dcm: file name is not valid UTF-8" in out
    assert "2 files: 0 imported, 0 duplicates, 2 rejected" in out  # the link and the odd name
