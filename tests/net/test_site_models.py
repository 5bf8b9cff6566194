"""Packages travelling through the site store: packing, and what unpacking refuses
(a tar from a forged or damaged row), and the gate report a site promotion needs."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from mammotriage.net.site_models import check_gate_report, pack_package, unpack_package  # noqa: E402
from mammotriage.store.pg.models import SiteModelError, SiteModelVersion  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retrain_sim import tiny_parent

    return tiny_parent(tmp_path_factory.mktemp("pkg") / "m", seed=11, version="7.0.0")


def _row(data: bytes, meta: dict) -> SiteModelVersion:
    return SiteModelVersion(str(meta["weights_sha256"]), str(meta["version"]), hashlib.sha256(data).hexdigest(),
                            len(data), meta, "lead", "now")


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, content in members:
            tar.addfile(info, None if content is None else io.BytesIO(content))
    return buf.getvalue()


def test_a_package_round_trips_byte_for_byte_and_the_same_folder_packs_the_same(package: Path,
                                                                               tmp_path: Path) -> None:
    data, meta = pack_package(package)
    assert pack_package(package)[0] == data            # owners and times zeroed: reproducible
    out = unpack_package(data, _row(data, meta), tmp_path / "models")
    assert out == tmp_path / "models" / meta["weights_sha256"] / "7.0.0"
    for f in package.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(package)).read_bytes() == f.read_bytes()
    assert unpack_package(data, _row(data, meta), tmp_path / "models") == out   # a verified copy is reused


def test_a_folder_with_a_link_or_changed_weights_is_not_published(package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    (copy / "extra").symlink_to("/etc/passwd")
    with pytest.raises(SiteModelError, match="not a regular file"):
        pack_package(copy)
    (copy / "extra").unlink()
    weights = next(p for p in copy.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(SiteModelError, match="sha256 mismatch"):
        pack_package(copy)


def test_unpacking_refuses_forged_tars_and_leaves_nothing(package: Path, tmp_path: Path) -> None:
    data, meta = pack_package(package)
    into = tmp_path / "models"
    # bytes that are not the recorded ones
    with pytest.raises(SiteModelError, match="recorded sha256"):
        unpack_package(data + b"\0", _row(data, meta), into)
    # a member leaving the folder, a link, a device: each refused, nothing written outside
    escape = tarfile.TarInfo("../escaped.txt")
    escape.size = 3
    link = tarfile.TarInfo("configs/metadata.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    for members, why in (([(escape, b"bad")], "not a file inside the package"),
                         ([(link, None)], "not a file inside the package"),
                         ([(fifo, None)], "not a file inside the package")):
        forged = _tar(members)
        with pytest.raises(SiteModelError, match=why):
            unpack_package(forged, _row(forged, meta), into)
    assert not (tmp_path / "escaped.txt").exists() and not (into.parent / "escaped.txt").exists()
    # a well-formed tar of another package under this row's name: the weights check refuses it
    from retrain_sim import tiny_parent

    other, _ = pack_package(tiny_parent(tmp_path / "other", seed=12, version="7.0.0"))
    with pytest.raises(SiteModelError, match=r"holds v7\.0\.0"):
        unpack_package(other, _row(other, meta), into)
    assert not (into / meta["weights_sha256"] / "7.0.0").exists()
    assert [p.name for p in (into / meta["weights_sha256"]).iterdir()] == []   # no half-unpacked folder


def test_the_gate_report_must_be_a_passed_comparison_with_the_site_model(package: Path) -> None:
    meta = json.loads((package / "configs" / "metadata.json").read_text())
    active = SiteModelVersion("ab" * 32, "6.0.0", "cd" * 32, 1, {}, "lead", "now")
    good = {"passed": True, "reasons": [], "candidate": {"version": "7.0.0", "weights_sha256": meta["weights_sha256"]},
            "parent": {"version": "6.0.0", "weights_sha256": "ab" * 32}}
    check_gate_report(good, meta, active)
    with pytest.raises(SiteModelError, match=r"not for v7\.0\.0"):
        check_gate_report({**good, "candidate": {"version": "5", "weights_sha256": "ef" * 32}}, meta, active)
    with pytest.raises(SiteModelError, match=r"gate refused this candidate: FROC lower"):
        check_gate_report({**good, "passed": False, "reasons": ["FROC lower"]}, meta, active)
    with pytest.raises(SiteModelError, match="not with the site's active model"):
        check_gate_report({**good, "parent": {"version": "5.0.0", "weights_sha256": "12" * 32}}, meta, active)
    with pytest.raises(SiteModelError, match="not a JSON object"):
        check_gate_report([good], meta, active)
    with pytest.raises(SiteModelError, match=r"names candidate v6\.9"):
        check_gate_report({**good, "candidate": {**good["candidate"], "version": "6.9"}}, meta, active)
    with pytest.raises(SiteModelError, match="not an object of numbers"):
        check_gate_report({**good, "operating_points": {"suspicious_at": [1]}}, meta, active)


def test_a_version_that_would_name_a_folder_elsewhere_is_refused_and_nothing_is_deleted(
        package: Path, tmp_path: Path) -> None:
    """Review finding: a published version of '../../target' made a second unpack delete
    <into>/../target and put the package there."""
    data, meta = pack_package(package)
    into = tmp_path / "a" / "models"
    decoy = tmp_path / "a" / "target"
    decoy.mkdir(parents=True)
    (decoy / "keep.txt").write_text("mine")
    row = SiteModelVersion(str(meta["weights_sha256"]), "../../target", hashlib.sha256(data).hexdigest(), len(data),
                           meta, "lead", "now")
    for _ in range(2):
        with pytest.raises(SiteModelError, match="not a plain version"):
            unpack_package(data, row, into)
    assert (decoy / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def cluster():
    sys.path.insert(0, str(REPO / "tests" / "store" / "pg"))
    from pgsupport import running_cluster

    with running_cluster() as c:
        yield c


def test_the_follower_hands_over_even_when_moving_the_queue_fails_and_retries_a_refusal(
        cluster, package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review findings: a failing queue move after the handover left the worker holding
    the old model forever; a refused package was never tried again."""
    from retrain_sim import tiny_parent

    from mammotriage.net.site_models import ModelFollower
    from mammotriage.store.pg.models import SiteModels

    def publish(folder: Path) -> str:
        data, meta = pack_package(folder)
        with SiteModels(cluster.dsn("mt_admin")) as models:
            models.publish(str(meta["weights_sha256"]), str(meta["version"]), data, meta, "lead")
            models.promote(str(meta["weights_sha256"]), "lead", "test", retriage=False)
        return str(meta["weights_sha256"])

    a = publish(package)
    fails = {"load": 1}

    class Held:
        def __init__(self, sha: str) -> None:
            self.weights_sha256 = sha

    def load(path: Path, version: SiteModelVersion, points: dict) -> Held:
        if version.weights_sha256 != a and fails["load"]:
            fails["load"] -= 1
            raise MemoryError("no room for the model just now")
        return Held(version.weights_sha256)

    said: list[str] = []
    follower = ModelFollower(cluster.dsn("mt_worker"), tmp_path / "f", load, every_s=0, say=said.append)
    assert follower.first().weights_sha256 == a
    b = publish(tiny_parent(tmp_path / "b", seed=13, version="7.1.0"))
    assert follower.poll() is None and follower.sha256 == a and follower.active_sha256 == b
    assert any("refused" in text and "trying again" in text for text in said)
    follower.retry_s = 0.0
    follower._refused = {k: 0.0 for k in follower._refused}   # the back-off has passed

    def broken(self, sha):
        raise psycopg.OperationalError("deadlock detected")

    import psycopg

    monkeypatch.setattr(SiteModels, "move_pending", broken)
    taken = follower.poll()
    assert taken is not None and taken.weights_sha256 == b and follower.sha256 == b
    assert any("not moved yet" in text for text in said)
