"""mammotriage selfcheck: real decode/archive checks; the model check never passes silently."""

from __future__ import annotations

import json
import socket
import sys
import types
from pathlib import Path

import pytest

from mammotriage.net import selfcheck
from mammotriage.net.selfcheck import CheckResult, run_selfcheck


def _by_name(report) -> dict:
    return {c.name: c for c in report.checks}


@pytest.fixture(scope="module")
def base_report():
    return run_selfcheck(include_model=False)


def test_decode_and_archive_checks_pass_offline(base_report) -> None:
    checks = _by_name(base_report)
    assert [c.name for c in base_report.checks] == ["python", "packages", "decode", "archive", "model"]
    for name in ("python", "packages", "decode", "archive"):
        assert checks[name].status == "pass", checks[name].detail
    assert "JPEG 2000" in checks["decode"].detail
    assert checks["model"].status == "skip" and "not requested" in checks["model"].detail
    assert base_report.ok
    text = base_report.text()
    assert "selfcheck: OK (skipped: model)" in text
    assert json.loads(json.dumps(base_report.to_json()))["ok"] is True


@pytest.fixture(autouse=True)
def _no_torch_import_per_test(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The compute check imports torch (seconds): tested once, stubbed elsewhere."""
    if request.node.name != "test_compute_check_imports_torch_inside_the_guard":
        monkeypatch.setattr(selfcheck, "_check_compute", lambda: CheckResult("compute", "pass", "stub"))


def test_compute_check_imports_torch_inside_the_guard() -> None:
    result = selfcheck._check_compute()
    assert result.status == "pass", result.detail
    assert "torch 2." in result.detail and "MONAI" in result.detail
    assert result.data["device"]


def _fake_model_package(monkeypatch: pytest.MonkeyPatch, *, verify=None, engine=None) -> None:
    module = types.ModuleType("mammotriage.model.package")
    module.default_model_dir = lambda: Path("/nonexistent/models/mammotriage-detector")
    module.verify = verify or (lambda path: {"name": "fake", "version": "0.0.1"})
    monkeypatch.setitem(sys.modules, "mammotriage.model.package", module)
    infer = types.ModuleType("mammotriage.model.infer")
    infer.Engine = types.SimpleNamespace(from_package=lambda path, device=None, threads=2: engine)
    monkeypatch.setitem(sys.modules, "mammotriage.model.infer", infer)


def _model_dir(tmp_path: Path) -> Path:
    (tmp_path / "pkg" / "configs").mkdir(parents=True)
    (tmp_path / "pkg" / "configs" / "metadata.json").write_text("{}")
    return tmp_path / "pkg"


def test_model_subpackage_missing_is_a_skip_with_reason_or_a_failure_when_required(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mammotriage.model.package", None)  # import fails
    model = _by_name(run_selfcheck())["model"]
    assert model.status == "skip" and "model subpackage not importable" in model.detail
    required = run_selfcheck(require_model=True)
    assert _by_name(required)["model"].status == "fail" and not required.ok


def test_no_model_package_is_a_skip_naming_where_it_looked(monkeypatch) -> None:
    _fake_model_package(monkeypatch)
    monkeypatch.delenv("MAMMOTRIAGE_MODEL", raising=False)
    model = _by_name(run_selfcheck())["model"]
    assert model.status == "skip"
    assert "no model package" in model.detail and "/nonexistent/models" in model.detail


def test_hash_mismatch_fails(monkeypatch, tmp_path: Path) -> None:
    def verify(path):
        raise RuntimeError("model.safetensors: sha256 mismatch; refusing to load")

    _fake_model_package(monkeypatch, verify=verify)
    report = run_selfcheck(model_dir=_model_dir(tmp_path))
    model = _by_name(report)["model"]
    assert model.status == "fail" and "sha256 mismatch" in model.detail
    assert not report.ok


class _Result:
    score = 0.25


class _Engine:
    device = "cpu"

    def __init__(self, phone_home: bool = False) -> None:
        self.phone_home = phone_home
        self.seen: list = []

    def predict_images(self, images):
        self.seen.extend(images)
        if self.phone_home:
            with socket.socket() as s:
                s.settimeout(1)
                s.connect_ex(("127.0.0.1", 9))  # a hub download would start like this
        return [_Result() for _ in images]


def test_model_loads_and_runs_one_inference(monkeypatch, tmp_path: Path) -> None:
    engine = _Engine()
    _fake_model_package(monkeypatch, engine=engine)
    model = _by_name(run_selfcheck(model_dir=_model_dir(tmp_path)))["model"]
    assert model.status == "pass", model.detail
    assert "weights sha256 verified" in model.detail and "1 inference on cpu" in model.detail
    assert len(engine.seen) == 1 and engine.seen[0].pixels.shape == (256, 192)


def test_model_reaching_for_the_network_fails(monkeypatch, tmp_path: Path) -> None:
    _fake_model_package(monkeypatch, engine=_Engine(phone_home=True))
    model = _by_name(run_selfcheck(model_dir=_model_dir(tmp_path)))["model"]
    assert model.status == "fail"
    assert "127.0.0.1" in model.detail and "network" in model.detail
