"""Double reading across workstations, on both stores: three headless reader sessions
(A, B, C, each its own workstation and connection) double-read 20 exams, 5 of them
discordant by construction. On the site's PostgreSQL this is the acceptance of site-mode
double reading: the other workstations see who holds an exam, blinding holds until both
have signed, exactly the 5 reach arbitration, C's consensus ``arbitrate`` events are in
the site store and its chain verifies. The same test runs on a SQLite archive file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammotriage.store.events import CorrectionError
from mammotriage.store.pg.cluster import DATABASE, PgCluster
from mammotriage.viewer.corrections import ImageInfo
from store.pg.drsupport import BACKENDS, ON, DoubleStore, double_store
from store.pg.pgsupport import running_cluster

N_EXAMS = 20
DISCORDANT = (2, 5, 10, 14, 20)  # B says "no recall" where A recalls
NORMAL = tuple(n for n in range(1, N_EXAMS + 1) if n % 3 == 0)
CONSENSUS_RECALL = {2: True, 5: True, 10: False, 14: True, 20: False}
BOX = {"type": "box", "box": [20.0, 20.0, 50.0, 50.0]}


@pytest.fixture(scope="module")
def site_cluster() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DoubleStore]:
    yield from double_store(request, tmp_path)


def _assessment(left: str, recall: bool) -> dict:
    return {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": left, "density": "b"}},
            "recall": recall}


def read_a(n: int) -> dict:
    return _assessment("1", False) if n in NORMAL else _assessment("4A", True)


def read_b(n: int) -> dict:
    if n in NORMAL:
        return _assessment("1", False)
    return _assessment("2", False) if n in DISCORDANT else _assessment("4A", True)


def _image(store: DoubleStore, n: int) -> ImageInfo:
    return ImageInfo(f"1.2.826.0.1.{n}.3", f"1.2.826.0.1.{n}", f"1.2.826.0.1.{n}.2", f"{n:02d}" * 32)


def _profile(store: DoubleStore, folder: Path) -> Path:
    """A workstation's site profile (mode 0600, as 'site profile' writes it) for the test cluster."""
    cluster = store.cluster
    assert cluster is not None
    path = folder / "workstation.json"
    data = {"format": "mammotriage-site-profile/1", "role": "workstation",
            "postgres": {"host": cluster.host, "port": cluster.port, "database": DATABASE, "user": "mt_workstation",
                         "password": cluster.password("mt_workstation")},
            "dicomweb": {"url": "http://127.0.0.1:9/dicom-web", "user": "unused", "password": "unused"}}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def _listing(store: DoubleStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             tmp_path: Path) -> dict:
    """``mammotriage double-reading --json`` (with ``--site PROFILE`` on the site store)."""
    from mammotriage.cli import main

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(store.home))
    site = ["--site", str(_profile(store, tmp_path) if not (tmp_path / "workstation.json").exists()
                          else tmp_path / "workstation.json")] if store.kind == "postgres" else []
    assert main(["double-reading", "--json", *site]) == 0
    listing = json.loads(capsys.readouterr().out)
    ours = [c for c in listing["arbitration"] if c["exam_key"].startswith(store.prefix)]
    return {**listing, "arbitration": ours}


def test_three_sessions_double_read_twenty_exams(store: DoubleStore, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a, b, c = store.session("A"), store.session("B"), store.session("C")
    number = {store.key(n): n for n in range(1, N_EXAMS + 1)}
    for key, n in number.items():
        info = _image(store, n)
        opened = a.open_for_reading(key)
        assert opened.granted and opened.role == "reader"
        refused = b.open_for_reading(key)  # A's workstation holds it: B's is told who
        assert not refused.granted and refused.text == "being read by A"
        assert b.holders()[key].workstation == "ws-A"
        a.corrections(key).set_image(info)
        if n not in NORMAL:
            a.corrections(key).add(info.sop_uid, "mass", BOX)
        assert a.sign(key, read_a(n)).state == "first read"
        assert key not in b.holders()

        # blinding across workstations: B's session sees nothing of A's read before B signed
        opened = b.open_for_reading(key)
        assert opened.granted and opened.role == "reader"
        seen = b.visible(key)
        assert seen.blinded and seen.others == {}
        assert {e.reader for e in b.log.events(exam_key=key)} <= {"B"}
        assert {e.reader for e in b.log.events(sop_uid=info.sop_uid)} <= {"B"}
        assert c.visible(key).blinded and c.visible(key).others == {}
        b.corrections(key).set_image(info)
        status = b.sign(key, read_b(n))
        assert status.state == ("discordant" if n in DISCORDANT else "concordant")
        with pytest.raises(CorrectionError, match="double-read by A and B"):  # no third read
            c.log.append(reader="C", exam_key=key, action="sign", payload=read_a(n))
        after = a.visible(key)  # both signed: everyone sees both reads
        assert not after.blinded and set(after.others) == {"B"}
        assert after.others["B"].assessment == read_b(n)

    # exactly the 5 discordant exams reach arbitration; A and B cannot arbitrate them
    queue = [s for s in c.arbitration_queue() if s.exam_key in number]
    assert sorted(number[s.exam_key] for s in queue) == sorted(DISCORDANT)
    assert [s for s in a.arbitration_queue() + b.arbitration_queue() if s.exam_key in number] == []
    listing = _listing(store, monkeypatch, capsys, tmp_path)
    assert listing["enabled"] and [x["exam_key"] for x in listing["arbitration"]] == [s.exam_key for s in queue]
    for status in queue:
        key, n = status.exam_key, number[status.exam_key]
        opened = c.open_for_reading(key)
        assert opened.granted and opened.role == "arbitrator"
        side = opened.case.to_json()  # both reads side by side
        assert [r["reader"] for r in side["reads"]] == ["A", "B"]
        assert [r["assessment"]["recall"] for r in side["reads"]] == [True, False]
        assert [len(r["findings"]) for r in side["reads"]] == [1, 0]
        c.corrections(key).set_image(_image(store, n))
        event = c.arbitrate(key, _assessment("4A" if CONSENSUS_RECALL[n] else "2", CONSENSUS_RECALL[n]))
        assert event.action == "arbitrate" and event.payload["role"] == "arbitration" and event.seq > 0
    assert [s for s in c.arbitration_queue() if s.exam_key in number] == []
    assert _listing(store, monkeypatch, capsys, tmp_path)["arbitration"] == []

    # C's consensus events are in the store (read unblinded), and the chain verifies
    arbitrations = [e for e in store.stored() if e.action == "arbitrate"]
    assert sorted(number[e.exam_key] for e in arbitrations) == sorted(DISCORDANT)
    assert {e.reader for e in arbitrations} == {"C"} and {e.workstation for e in arbitrations} == {"ws-C"}
    assert all([r["reader"] for r in e.payload["reads"]] == ["A", "B"] for e in arbitrations)
    assert {number[e.exam_key]: e.payload["recall"] for e in arbitrations} == CONSENSUS_RECALL
    states = {k: s.state for k, s in store.site().statuses(list(number)).items()}
    assert sorted(n for k, n in number.items() if states[k] == "arbitrated") == sorted(DISCORDANT)
    assert store.verify().ok


def test_an_abandoned_lock_expires_for_the_next_session(store: DoubleStore) -> None:
    import datetime as dt

    key = store.key("abandoned")
    t0 = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)
    e, f = store.session("E"), store.session("F")
    assert e.open_for_reading(key, now=t0).granted  # E's workstation opened it and went away
    refused = f.open_for_reading(key, now=t0 + dt.timedelta(seconds=ON.lease_s - 1))
    assert not refused.granted and refused.text == "being read by E"
    later = t0 + dt.timedelta(seconds=ON.lease_s + 1)
    opened = f.open_for_reading(key, now=later)
    assert opened.granted and opened.role == "reader"
    assert e.holders(later)[key].reader == "F"


def test_the_site_listing_names_the_profile_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``double-reading --site``: a missing profile and a site server that is not there are
    each a message naming the profile (exit 2, exit 1), never a traceback."""
    from mammotriage.cli import main
    from store.pg.pgsupport import free_port

    monkeypatch.setenv("MAMMOTRIAGE_HOME", str(tmp_path / "home"))
    missing = tmp_path / "none.json"
    assert main(["double-reading", "--site", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    profile = tmp_path / "away.json"
    profile.write_text(json.dumps({
        "format": "mammotriage-site-profile/1", "role": "workstation",
        "postgres": {"host": "127.0.0.1", "port": free_port(), "database": DATABASE, "user": "mt_workstation",
                     "password": "x"},
        "dicomweb": {"url": "http://127.0.0.1:9/dicom-web", "user": "unused", "password": "unused"}}))
    profile.chmod(0o600)
    assert main(["double-reading", "--json", "--site", str(profile)]) == 1
    err = capsys.readouterr().err
    assert str(profile) in err and "cannot be reached" in err
