"""Startup kits with mutual TLS from FLARE's provisioner, what a site enforces when it
starts from one, and the TLS probe the proof-of-concept uses (fast: no FLARE process;
the proof-of-concept itself is tests/learning/test_fl_poc.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from mammotriage.learning.federation import FederationError
from mammotriage.learning.fl_deploy import (
    SITE_RIGHTS,
    kit_command,
    prepare_kit,
    probe_tls,
    provision,
    read_kit,
    site_config_from_archive,
)


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    root = tmp_path_factory.mktemp("kits")
    ours = provision(root / "ours", ["site-a", "site-b"], fl_port=18102, admin_port=18103,
                     site_orgs={"site-a": "Hospital A"})
    other = provision(root / "other", ["site-x"], fl_port=18102, admin_port=18103, project="other")
    return ours, other


def test_kits_are_mutual_tls_with_one_root_ca(kits):
    ours, _ = kits
    server, admin = read_kit(ours.server), read_kit(ours.admin)
    a = read_kit(ours.sites["site-a"])
    assert (server.role, admin.role, a.role) == ("server", "admin", "site")
    assert a.name == "site-a" and a.org == "Hospital_A" and a.server == "localhost:18102"
    assert server.admin_port == 18103 and admin.server == "localhost:18103"
    assert {k.connection_security for k in (server, admin, a)} == {"mtls"}
    ca = {(p / "startup" / "rootCA.pem").read_bytes() for p in (ours.server, ours.admin, *ours.sites.values())}
    assert len(ca) == 1
    assert not (ours.server / "startup" / "rootCA.key").exists()  # the CA's key is not in any kit


def test_a_site_writes_its_own_policy_whatever_the_kit_says(kits, tmp_path):
    ours, _ = kits
    kit_dir = tmp_path / "site-a"
    shutil.copytree(ours.sites["site-a"], kit_dir)
    # a kit that arrived with a permissive policy
    (kit_dir / "local" / "authorization.json").write_text(json.dumps(
        {"format_version": "1.0", "permissions": {"project_admin": "any"}}), encoding="utf-8")
    (kit_dir / "local" / "resources.json").write_text(json.dumps(
        {"format_version": 2, "class_list_enforcement_mode": "disabled", "components": [{"id": "keep"}]}),
        encoding="utf-8")
    written = prepare_kit(read_kit(kit_dir))
    assert {p.name for p in written} == {"resources.json", "authorization.json"}
    auth = json.loads((kit_dir / "local" / "authorization.json").read_text(encoding="utf-8"))
    for role, rights in auth["permissions"].items():
        if isinstance(rights, dict) and role != "member":
            assert rights["byoc"] == "none" and rights["shell_commands"] == "none", role
    assert auth["permissions"]["project_admin"] == SITE_RIGHTS
    res = json.loads((kit_dir / "local" / "resources.json").read_text(encoding="utf-8"))
    assert res["class_list_enforcement_mode"] == "enforce"
    # a job can build the app's site executor and nothing else (FLARE's generic script
    # executor and its other components included); the PoC runs a job with this list
    assert res["class_allow_list"] == ["mammotriage.learning.fl_flare.SiteExecutor"]
    # the whole file is the site's own: the kit's components are not kept, the job
    # launcher is the one that refuses code, and no log streams to the server
    launcher = [c for c in res["components"] if c["id"] == "process_launcher"]
    assert launcher == [{"id": "process_launcher", "path": "mammotriage.learning.fl_flare.SiteJobLauncher",
                         "args": {}}]
    assert {"id": "keep"} not in res["components"] and res["allow_log_streaming"] is False


def test_the_server_allows_its_controller_not_the_sites_executor(kits, tmp_path):
    ours, _ = kits
    kit_dir = tmp_path / "server"
    shutil.copytree(ours.server, kit_dir)
    prepare_kit(read_kit(kit_dir))
    res = json.loads((kit_dir / "local" / "resources.json").read_text(encoding="utf-8"))
    assert "mammotriage.learning.fl_flare.FederationController" in res["class_allow_list"]
    assert "mammotriage.learning.fl_flare.SiteExecutor" not in res["class_allow_list"]
    assert res["components"]  # FLARE's default components came from resources.json.default


@pytest.mark.parametrize("where", ["startup", "local"])
def test_a_kit_with_configuration_flare_would_merge_in_is_refused(kits, tmp_path, where):
    ours, _ = kits
    kit_dir = _copy(ours.sites["site-a"], tmp_path / "a")
    (kit_dir / where / "relay__resources.json").write_text(json.dumps(
        {"relay_config": {"connection_security": "clear"}}), encoding="utf-8")
    with pytest.raises(FederationError, match=r"relay__resources\.json"):
        prepare_kit(read_kit(kit_dir))


def test_the_kit_names_its_ca_by_fingerprint(kits):
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ours, _ = kits
    kit = read_kit(ours.sites["site-a"])
    ca = x509.load_pem_x509_certificate((ours.sites["site-a"] / "startup" / "rootCA.pem").read_bytes())
    assert kit.ca_sha256 == hashlib.sha256(ca.public_bytes(Encoding.DER)).hexdigest()
    assert kit.not_after <= ca.not_valid_after_utc.isoformat()


def test_a_job_that_carries_code_is_not_launched_at_a_site(tmp_path):
    """What arrived decides, not what the server says about it (a server could claim a
    role that may bring code): the site's launcher does not offer itself for a job whose
    deployed app has a custom/ folder with files, so FLARE launches nothing."""
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.workspace import Workspace

    from mammotriage.learning.fl_flare import SiteJobLauncher, carried_code

    (tmp_path / "startup").mkdir()
    (tmp_path / "local").mkdir()
    ws = Workspace(str(tmp_path), site_name="site-a")
    app = tmp_path / "j1" / "app_site-a"
    (app / "custom").mkdir(parents=True)

    def launched(meta):
        ctx = FLContext()
        ctx.set_prop(FLContextKey.JOB_META, meta, private=True, sticky=False)
        ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, ws, private=True, sticky=False)
        SiteJobLauncher().handle_event(EventType.BEFORE_JOB_LAUNCH, ctx)
        return ctx.get_prop(FLContextKey.JOB_LAUNCHER)

    assert carried_code({"job_id": "j1"}, app) == ""  # an empty custom/ folder is no code
    assert len(launched({"job_id": "j1"})) == 1
    assert launched({"job_id": "j1", "byoc": True}) is None
    (app / "custom" / "pkg").mkdir()
    (app / "custom" / "pkg" / "payload.py").write_text("import os\n", encoding="utf-8")
    assert "1 file(s) of code" in carried_code({"job_id": "j1"}, app)
    assert launched({"job_id": "j1"}) is None
    assert "could not find" in carried_code({"job_id": "j1"}, None)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_kit_without_mutual_tls_is_refused(kits, tmp_path):
    ours, _ = kits
    kit_dir = _copy(ours.sites["site-b"], tmp_path / "b")
    conf_file = kit_dir / "startup" / "fed_client.json"
    conf = json.loads(conf_file.read_text(encoding="utf-8"))
    conf["client"]["connection_security"] = "clear"
    conf_file.write_text(json.dumps(conf), encoding="utf-8")
    with pytest.raises(FederationError, match="'clear', not mutual"):
        read_kit(kit_dir)


def test_a_certificate_from_another_ca_is_refused(kits, tmp_path):
    ours, other = kits
    kit_dir = _copy(ours.sites["site-b"], tmp_path / "b")
    shutil.copyfile(other.sites["site-x"] / "startup" / "rootCA.pem", kit_dir / "startup" / "rootCA.pem")
    with pytest.raises(FederationError, match=r"not signed by this kit's rootCA\.pem"):
        read_kit(kit_dir)


def test_an_incomplete_or_foreign_folder_is_refused_by_name(kits, tmp_path):
    ours, _ = kits
    kit_dir = _copy(ours.sites["site-b"], tmp_path / "b")
    (kit_dir / "startup" / "client.key").unlink()
    with pytest.raises(FederationError, match=r"client\.key is missing"):
        read_kit(kit_dir)
    (tmp_path / "empty" / "startup").mkdir(parents=True)
    with pytest.raises(FederationError, match="not a FLARE startup kit"):
        read_kit(tmp_path / "empty")
    bad = _copy(ours.sites["site-a"], tmp_path / "a")
    (bad / "startup" / "fed_client.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(FederationError, match=r"fed_client\.json: unreadable"):
        read_kit(bad)


def test_kit_command_runs_flare_with_this_python_and_the_kits_identity(kits):
    ours, _ = kits
    cmd = kit_command(read_kit(ours.sites["site-a"]))
    assert cmd[0] == sys.executable and "nvflare.private.fed.app.client.client_train" in cmd
    assert "uid=site-a" in cmd and "org=Hospital_A" in cmd and "secure_train=true" in cmd
    with pytest.raises(FederationError, match=r"submit jobs|not run as a process"):
        kit_command(read_kit(ours.admin))


def test_a_site_needs_an_active_model_and_a_training_snapshot(kits, tmp_path):
    ours, _ = kits
    archive = tmp_path / "archive.sqlite"
    with pytest.raises(FederationError, match=r"no active model|no training snapshot"):
        site_config_from_archive(read_kit(ours.sites["site-a"]), archive)


def test_the_cli_refuses_a_tampered_kit_with_the_reason(kits, tmp_path):
    ours, other = kits
    kit_dir = _copy(ours.sites["site-b"], tmp_path / "b")
    shutil.copyfile(other.sites["site-x"] / "startup" / "client.crt", kit_dir / "startup" / "client.crt")
    proc = subprocess.run([sys.executable, "-m", "mammotriage", "federate", "--kit", str(kit_dir)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MAMMOTRIAGE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2 and "not signed by this kit's rootCA.pem" in proc.stderr and str(kit_dir) in proc.stderr
    assert not proc.stdout


@pytest.fixture()
def mtls_server(kits):
    """A TLS server with the federation server's certificate that requires a client
    certificate signed by the project's root CA (what FLARE's server does with mTLS)."""
    ours, _ = kits
    st = ours.server / "startup"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(st / "server.crt"), str(st / "server.key"))
    ctx.load_verify_locations(str(st / "rootCA.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    srv.close()


def test_probe_tls_tells_a_site_certificate_from_a_foreign_one(kits, mtls_server):
    ours, other = kits
    ca = ours.server / "startup" / "rootCA.pem"
    own, bad = ours.sites["site-a"] / "startup", other.sites["site-x"] / "startup"
    ok, detail = probe_tls("localhost", mtls_server, ca, own / "client.crt", own / "client.key")
    assert ok and detail.startswith("HTTP/1.1 404"), detail
    ok, detail = probe_tls("localhost", mtls_server, ca, bad / "client.crt", bad / "client.key")
    assert not ok, detail
    ok, detail = probe_tls("localhost", mtls_server, ca)
    assert not ok, detail
    # and a server that is not ours is not trusted at all
    ok, detail = probe_tls("localhost", mtls_server, other.server / "startup" / "rootCA.pem",
                           bad / "client.crt", bad / "client.key")
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail


def test_a_real_site_trains_on_its_newest_snapshot_from_its_active_model(kits, tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
    from retrain_sim import build_tiny_site

    from mammotriage.learning.fl_config import round_log_path
    from mammotriage.learning.fl_sim import build_site_client
    from mammotriage.model.package import read_metadata

    ours, _ = kits
    site = build_tiny_site(tmp_path / "hospital", rows=128, columns=104)
    cfg = site_config_from_archive(read_kit(ours.sites["site-a"]), site.archive)
    assert cfg["data"] == {"type": "snapshot", "archive": str(site.archive), "snapshot": site.training}
    assert cfg["archive"] == str(site.archive) and cfg["log"] == str(round_log_path(site.archive))
    assert read_metadata(cfg["parent"])["weights_sha256"] == read_metadata(site.parent)["weights_sha256"]
    client, fault = build_site_client("site-a", cfg)
    assert fault is None
    # the training snapshot also holds the validation exams: they never train here
    assert client.engine.n_images == 2 * 4


def test_a_site_does_not_federate_a_snapshot_that_fails_its_data_tests(tmp_path):
    """The same data tests as a local retrain (they were skipped for a federation)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
    from pathlib import Path

    import pydicom
    from retrain_sim import build_tiny_site

    from mammotriage.dicom import read_image
    from mammotriage.learning.fl_sim import build_site_client
    from mammotriage.store.datasets import load_snapshot

    site = build_tiny_site(tmp_path / "hospital", rows=128, columns=104)
    val = {v["sop_uid"] for v in load_snapshot(site.validation, site.archive)["images"]}
    victim = Path(next(i["path"] for i in load_snapshot(site.training, site.archive)["images"]
                       if i["consensus"] and i["sop_uid"] not in val))
    ds = pydicom.dcmread(victim)
    arr = read_image(victim).pixels.copy()
    arr[:20, :20] = arr.max()  # changed after it was labelled
    ds.PixelData = arr.tobytes()
    ds.save_as(victim)
    cfg = {"parent": str(site.parent), "archive": str(site.archive), "log": str(tmp_path / "rounds.jsonl"),
           "data": {"type": "snapshot", "archive": str(site.archive), "snapshot": site.training}}
    with pytest.raises(FederationError, match=r"fails its data tests.*pixels changed since they were labelled"):
        build_site_client("site-a", cfg)


class _ScriptedClientAPI:
    """FLARE's Client API surface that :func:`fl_flare.run_site` uses (init, site name,
    receive, send), replaying given messages: the site's loop without a FLARE job."""

    def __init__(self, site, messages):
        self.site, self.messages, self.sent = site, list(messages), []

    def init(self):
        pass

    def get_site_name(self):
        return self.site

    def is_running(self):
        return bool(self.messages)

    def receive(self):
        return self.messages.pop(0) if self.messages else None

    def send(self, model):
        self.sent.append(model)


def test_a_site_that_cannot_train_refuses_every_round_with_the_reason(tmp_path, monkeypatch):
    from nvflare.app_common.abstract.fl_model import FLModel

    from mammotriage.learning import fl_flare
    from mammotriage.learning.fl_config import read_round_log

    log = tmp_path / "rounds.jsonl"
    cfg_file = tmp_path / "sites.json"
    cfg_file.write_text(json.dumps({"site-a": {"parent": str(tmp_path / "none"), "log": str(log),
                                               "data": {"type": "snapshot", "archive": str(tmp_path / "a.sqlite"),
                                                        "snapshot": "0" * 64}}}), encoding="utf-8")
    monkeypatch.setenv(fl_flare.SITES_ENV, str(cfg_file))
    msgs = [FLModel(params={}, current_round=r, meta={"job": "j", "versions": fl_flare.versions()}) for r in (0, 1)]
    msgs.append(FLModel(params={}, current_round=2, meta={"job": "j", "final": True, "versions": fl_flare.versions()}))
    api = _ScriptedClientAPI("site-a", msgs)
    fl_flare.run_site(api)
    assert len(api.sent) == 3 and all(not m.params and m.meta["refused"] for m in api.sent)
    entries, bad = read_round_log(log)
    assert bad == 0 and [e["round"] for e in entries] == [0, 1, "final"]
    assert all(not e["sent"] and e["reason"].startswith("this site cannot train: ") for e in entries)
