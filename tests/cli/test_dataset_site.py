"""``dataset snapshot --site PROFILE`` on a real PostgreSQL: the snapshot of a site
workstation takes every workstation's corrections from the site's chain (before, it read
the workstation's own log, which holds none in site mode: "nothing to snapshot")."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "store" / "pg"))

from pgsupport import running_cluster  # noqa: E402

from mammotriage.cli import main  # noqa: E402
from mammotriage.config import archive_path  # noqa: E402
from mammotriage.phantom import generate_exam  # noqa: E402
from mammotriage.store import Archive  # noqa: E402
from mammotriage.store.datasets import load_snapshot  # noqa: E402
from mammotriage.store.pg.cluster import PgCluster  # noqa: E402
from mammotriage.store.pg.events import SiteCorrectionLog  # noqa: E402

SIGNED = {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": "4A", "density": "b"}}, "recall": True}


@pytest.fixture(scope="module")
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _profile(site: PgCluster, path: Path) -> Path:
    path.write_text(json.dumps({
        "format": "mammotriage-site-profile/1", "role": "workstation",
        "postgres": {"host": site.host, "port": site.port, "database": "mammotriage", "user": "mt_workstation",
                     "password": site.password("mt_workstation")},
        "dicomweb": {"url": "http://127.0.0.1:9/dicom-web", "user": "unused", "password": "unused"}}))
    path.chmod(0o600)
    return path


def test_a_site_snapshot_takes_every_workstations_corrections_from_the_sites_chain(
        site: PgCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exam = generate_exam(51, exam_number=1, rows=128, columns=96)
    exam.save(tmp_path / "exam")
    with Archive(archive_path()) as archive:  # this workstation's index (the site feed fills it)
        archive.import_paths([tmp_path / "exam"])
        (record,) = archive.exams()
    key, image = record.exam_key, record.images[0]
    with SiteCorrectionLog(site.dsn("mt_workstation"), "ws-a") as a, \
            SiteCorrectionLog(site.dsn("mt_workstation"), "ws-b") as b:
        a.append(reader="dr_a", exam_key=key, action="add", sop_uid=image.sop_uid, study_uid=image.study_uid,
                 series_uid=image.series_uid, pixel_sha256="a" * 64, kind="mass",
                 geometry={"type": "box", "box": [10.0, 10.0, 40.0, 40.0]})
        a.append(reader="dr_a", exam_key=key, action="sign", payload=SIGNED)
        b.append(reader="dr_b", exam_key=key, action="sign", payload=SIGNED)
        b.append(reader="dr_b", exam_key="not-on-this-workstation", action="note", payload={"text": "x"})
        head = a.head()

    # the workstation's own log holds nothing: before, this was all a site workstation had
    assert main(["dataset", "snapshot"]) == 2
    assert "nothing to snapshot" in capsys.readouterr().err
    profile = _profile(site, tmp_path / "ws.json")
    assert main(["dataset", "snapshot", "--site", str(profile), "--name", "site", "--json"]) == 0
    record_json = json.loads(capsys.readouterr().out)
    manifest = load_snapshot(record_json["path"])
    assert manifest["readers"] == ["dr_a", "dr_b"] and manifest["counts"]["exams"] == 1
    assert manifest["counts"]["labels"] == 1 and manifest["counts"]["exams_with_events_not_in_archive"] == 1
    assert manifest["store"]["kind"] == "site" and manifest["store"]["events"] == head.count
    assert manifest["audit_head"]["last_seq"] == head.last_seq and manifest["audit_head"]["mac"] == head.mac
    (entry,) = manifest["exams"]
    assert set(entry["readers"]) == {"dr_a", "dr_b"} and entry["events"]["count"] == 3

    # the workstation's own audit check is not confused by a snapshot of the site's chain
    # (before, it said "TAMPERED: its audit head has a wrong MAC" and exited 1)
    assert main(["audit", "verify"]) == 0, capsys.readouterr()
    capsys.readouterr()

    # the same chain again: the same snapshot; a profile that cannot be read is said, not a traceback
    assert main(["dataset", "snapshot", "--site", str(profile), "--name", "site"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unchanged: snapshot ") and "1 exam(s) with corrections in the site's chain" in out
    assert main(["dataset", "snapshot", "--site", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --site ") and "nope.json" in err
