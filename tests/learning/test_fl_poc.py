"""The proof-of-concept on loopback: ``mammotriage federate --poc 2`` provisions a server,
two sites and an admin with mutual TLS, runs each as its own ``federate --kit`` process,
submits the job through FLARE's admin API and shuts everything down (about 70 s on 2
cores). Tiny phantom sites and one round: it checks the deployment, not what is learned.
The command's stdout holds the JSON report alone (FLARE's processes log elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def poc(tmp_path_factory):
    root = tmp_path_factory.mktemp("poc")
    env = {**os.environ, "MAMMOTRIAGE_HOME": str(root / "home")}
    proc = subprocess.run([sys.executable, "-m", "mammotriage", "federate", "--poc", "2", "--quick", "--seeds", "0",
                           "--rounds", "1", "--local-iterations", "1", "--out", str(root / "fed"), "--json"],
                          capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc, root / "fed"


def test_the_job_completes_across_separate_processes(poc):
    report, _, _ = poc
    assert report["job"]["status"] == "FINISHED:COMPLETED"
    fed = report["federation"]
    assert fed["completed_rounds"] == 1 and fed["participants"] == ["site-1-calc", "site-2-mass"]
    assert report["exit_codes"] == {"server": 0, "site-1-calc": 0, "site-2-mass": 0}  # shut down cleanly
    for k in ("provision", "start_to_all_connected", "job", "shutdown", "total"):
        assert report["seconds"][k] >= 0


def test_only_certificates_of_the_project_are_let_in(poc):
    report, _, _ = poc
    p = report["mtls_probes"]
    assert p["site certificate"]["accepted"] and p["site certificate"]["detail"].startswith("HTTP/")
    for k in ("certificate from another CA", "no certificate", "admin port, certificate from another CA"):
        assert not p[k]["accepted"], (k, p[k])


def test_a_job_that_carries_code_is_refused_at_every_site(poc):
    report, _, _ = poc
    code = report["code_job"]
    assert code["refused_by"] == ["site-1-calc", "site-2-mass"] and code["job_processes_started"] == []
    assert code["job_id"] != report["job"]["id"]


def test_what_each_site_sent_is_what_the_server_counted(poc):
    report, _, _ = poc
    (h,) = report["federation"]["history"]
    received = {u["site"]: u["sha256"] for u in h["updates"]}
    for site in ("site-1-calc", "site-2-mass"):
        (sent,) = [e for e in report["site_logs"][site] if e["round"] == 0]
        assert sent["sent"] and sent["sha256"] == received[site]
        (final,) = [e for e in report["site_logs"][site] if e["round"] == "final"]
        assert final["sha256"] == report["federation"]["final_sha256"]


def test_each_site_ran_with_its_own_policy(poc):
    _, proc, out = poc
    for site in ("site-1-calc", "site-2-mass"):
        local = out / "seed0" / "kits" / "mammotriage" / "prod_00" / site / "local"
        auth = json.loads((local / "authorization.json").read_text(encoding="utf-8"))
        assert auth["permissions"]["project_admin"]["byoc"] == "none"
        res = json.loads((local / "resources.json").read_text(encoding="utf-8"))
        assert res["class_list_enforcement_mode"] == "enforce"
    assert "connected over mTLS" in proc.stderr
