"""A site workstation's registry follows the site's active model (a real PostgreSQL and a
real SQLite registry): before, a workstation joined to a site ran whatever its own
registry had, whatever the site had promoted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests" / "store" / "pg"))

from pgsupport import running_cluster  # noqa: E402

from mammotriage.learning.registry import ModelRegistry  # noqa: E402
from mammotriage.net.site_models import pack_package  # noqa: E402
from mammotriage.store.pg.models import SiteModels  # noqa: E402
from mammotriage.viewer.site_model_sync import SiteModelSync, sync_site_model  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with running_cluster() as c:
        yield c


def _promote(cluster, package: Path, reason: str, report: dict | None = None) -> str:
    data, meta = pack_package(package)
    sha = str(meta["weights_sha256"])
    with SiteModels(cluster.dsn("mt_admin")) as models:
        models.publish(sha, str(meta["version"]), data, meta, "lead")
        models.promote(sha, "lead", reason, report, retriage=False)
    return sha


def test_the_workstation_registry_takes_the_sites_model_with_its_operating_points(cluster, tmp_path: Path) -> None:
    from retrain_sim import tiny_parent

    archive = tmp_path / "home" / "archive.sqlite3"
    archive.parent.mkdir()
    dsn = cluster.dsn("mt_workstation")
    folder = tmp_path / "home" / "site-models"
    local = tiny_parent(tmp_path / "local", seed=20, version="1.0.0")
    with ModelRegistry(archive) as reg:
        reg.register(local, origin="shipped")
        reg.promote("1.0.0", None, "it", force_reason="the shipped model")
    assert sync_site_model(dsn, archive, folder) is None   # the site has no model yet: nothing changes

    sha_a = _promote(cluster, tiny_parent(tmp_path / "a", seed=21, version="2.0.0"), "the first site model",
                     {"passed": True, "operating_points": {"suspicious_at": 0.81}})
    said = sync_site_model(dsn, archive, folder)
    assert said == "the site's model v2.0.0 is active here now (was v1.0.0)"
    with ModelRegistry(archive) as reg:
        active = reg.active()
        assert active is not None and active.version == "2.0.0" and active.weights_sha256 == sha_a
        assert active.origin == "site"
        assert reg.operating_points("2.0.0") == {"suspicious_at": 0.81}   # the site gate's points
        assert "the site's active model (promote on the site server by lead: the first site model)" in \
            reg.history()[-1]["reason"]
        _, path, meta = reg.active_package()   # verified, from the registry's own copy
        assert meta["weights_sha256"] == sha_a and path.is_dir()
    assert sync_site_model(dsn, archive, folder) is None   # already active: nothing done

    # a later promotion on the site reaches the workstation through the thread
    _promote(cluster, tiny_parent(tmp_path / "b", seed=22, version="2.1.0"), "better on the validation set")
    messages: list[str] = []
    sync = SiteModelSync(dsn, archive, folder, every_s=3600, say=messages.append)
    assert sync.run_once() == "the site's model v2.1.0 is active here now (was v2.0.0)"
    with ModelRegistry(archive) as reg:
        assert reg.active().version == "2.1.0"


def test_a_site_model_the_workstation_refuses_is_said_once_and_its_model_stays(cluster, tmp_path: Path) -> None:
    from retrain_sim import tiny_parent

    archive = tmp_path / "home" / "archive.sqlite3"
    archive.parent.mkdir()
    with ModelRegistry(archive) as reg:   # a version number the site will use, with other weights
        reg.register(tiny_parent(tmp_path / "mine", seed=30, version="3.0.0"), origin="site")
        reg.promote("3.0.0", None, "it", force_reason="local")
    _promote(cluster, tiny_parent(tmp_path / "site", seed=31, version="3.0.0"), "same number, other weights")
    messages: list[str] = []
    sync = SiteModelSync(cluster.dsn("mt_workstation"), archive, tmp_path / "home" / "site-models",
                         every_s=0.05, say=messages.append)
    sync.start()
    try:
        import time

        deadline = time.monotonic() + 20
        while not messages and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)   # several more rounds
    finally:
        sync.stop()
    assert len(messages) == 1 and "versions are immutable" in messages[0]
    with ModelRegistry(archive) as reg:
        assert reg.active().weights_sha256 != SiteModels(cluster.dsn("mt_worker")).active_sha256()
