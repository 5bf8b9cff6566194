"""Offline bundle: build the wheelhouse from the lock file, install with no network, self-check."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtsupport import REPO

INSTALL_SH = REPO / "installer" / "install.sh"


def _load_build_bundle():
    spec = importlib.util.spec_from_file_location("build_bundle", REPO / "installer" / "build_bundle.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _base_python() -> str:
    """A Python of this version that can create a fresh venv (not this test venv's)."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path(sys.base_prefix) / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip(f"no base {name} found to create a fresh venv")


def _offline_prefix() -> tuple[list[str], dict[str, str]]:
    """Command prefix and environment that cut the network for what they run.

    ``unshare -n`` (a new network namespace with only a down loopback) when this user
    may create one; otherwise proxies that point nowhere (pip also gets --no-index).
    """
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"], {}
    dead = "http://127.0.0.1:9"
    return [], {"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
                "no_proxy": "", "NO_PROXY": ""}


def _fake_bundle(root: Path, python: str = "3.11") -> Path:
    """A bundle folder with no real wheels, to test install.sh's checks quickly."""
    bundle = root / "mammotriage-offline-0.0.0"
    (bundle / "wheelhouse").mkdir(parents=True)
    (bundle / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    shutil.copy2(INSTALL_SH, bundle / "install.sh")
    (bundle / "constraints.txt").write_text("")
    (bundle / "bundle.json").write_text(json.dumps(
        {"name": "mammotriage", "version": "0.0.0", "python": python, "min_glibc": "2.17",
         "default_model": None, "require_model": False}, indent=2) + "\n")
    lines = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(bundle).as_posix()}")
    (bundle / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return bundle


def _install(bundle: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
             prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), "bash", str(bundle / "install.sh"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_install_help_and_bad_options(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path)
    r = _install(bundle, "--help")
    assert r.returncode == 0 and "--no-desktop" in r.stdout and "--prefix" in r.stdout
    r = _install(bundle, "--frobnicate")
    assert r.returncode == 2 and "unknown option: --frobnicate" in r.stderr


def test_install_refuses_the_wrong_python(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, python="3.9")
    r = _install(bundle, "--python", _base_python(), "--prefix", str(tmp_path / "p"))
    assert r.returncode == 2
    assert "this bundle is for Python 3.9" in r.stderr
    assert not (tmp_path / "p").exists()


def test_install_refuses_a_damaged_bundle(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, python=f"{sys.version_info.major}.{sys.version_info.minor}")
    (bundle / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"tampered")
    (bundle / "wheelhouse" / "intruder-1.0-py3-none-any.whl").write_bytes(b"x")
    r = _install(bundle, "--python", _base_python(), "--prefix", str(tmp_path / "p"))
    assert r.returncode == 1
    assert "demo-1.0-py3-none-any.whl: checksum mismatch" in r.stderr
    assert "intruder-1.0-py3-none-any.whl: not part of the bundle" in r.stderr
    assert "the bundle is damaged" in r.stderr
    assert not (tmp_path / "p").exists()


def test_install_never_overwrites_a_foreign_folder(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, python=f"{sys.version_info.major}.{sys.version_info.minor}")
    foreign = tmp_path / "home-of-something-else"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    r = _install(bundle, "--python", _base_python(), "--prefix", str(foreign))
    assert r.returncode == 2 and "was not made by this installer" in r.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_min_glibc_from_wheel_tags() -> None:
    bb = _load_build_bundle()
    assert bb.min_glibc(["a-1-py3-none-any.whl"]) is None
    assert bb.min_glibc([
        "numpy-2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "x-1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "q-1-cp310-abi3-manylinux_2_34_x86_64.whl",
    ]) == "2.34"
    assert bb.project_version() == __import__("mammotriage").__version__


@pytest.mark.slow
def test_build_wheelhouse_and_install_offline_then_selfcheck(tmp_path: Path) -> None:
    """The real thing: wheelhouse from constraints.txt, fresh venv, no network for pip."""
    if not shutil.which("bash"):
        pytest.skip("bash not available")
    base_python = _base_python()
    out = tmp_path / "dist"
    prefix = tmp_path / "prefix"
    try:
        t0 = time.perf_counter()
        build = subprocess.run(
            [sys.executable, str(REPO / "installer" / "build_bundle.py"), "--out", str(out)],
            capture_output=True, text=True, timeout=1800,
        )
        build_s = time.perf_counter() - t0
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        bundle = out / f"mammotriage-offline-{__import__('mammotriage').__version__}"
        info = json.loads((bundle / "bundle.json").read_text())
        assert info["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
        wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in (bundle / "wheelhouse").glob("*.whl")}
        assert {"mammotriage", "torch", "pydicom", "pynetdicom", "monai", "pyside6-essentials"} <= wheels
        sums = (bundle / "SHA256SUMS").read_text()
        assert "wheelhouse/mammotriage-" in sums and "install.sh" in sums

        cut, env = _offline_prefix()
        xdg = tmp_path / "xdg"
        env.update(XDG_DATA_HOME=str(xdg), HOME=str(tmp_path / "home"),
                   MAMMOTRIAGE_HOME=str(tmp_path / "mt-home"), PIP_INDEX_URL="https://pypi.org/simple")
        t1 = time.perf_counter()
        r = _install(bundle, "--prefix", str(prefix), "--python", base_python, env=env,
                     timeout=1800, prefix=cut)
        install_s = time.perf_counter() - t1
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-5000:]
        assert "selfcheck: OK" in log
        for check in ("python", "packages", "compute", "decode", "archive"):
            assert any(line.startswith(f"PASS  {check}") for line in log.splitlines()), log[-3000:]
        assert f"installed in {prefix}" in log
        desktop = (xdg / "applications" / "mammotriage.desktop").read_text()
        assert f'Exec="{prefix}/bin/mammotriage" app' in desktop
        launcher = prefix / "bin" / "mammotriage"
        assert os.access(launcher, os.X_OK)
        # The installed program runs, offline too.
        v = subprocess.run([*cut, str(launcher), "--version"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, **env})
        assert v.returncode == 0 and "mammotriage" in v.stdout
        print(f"\noffline bundle: build {build_s:.0f} s, offline install + self-check {install_s:.0f} s "
              f"({'unshare -n' if cut else 'dead proxies'}), {info['wheels']} wheels")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(prefix, ignore_errors=True)


def _debian_release() -> str:
    if not (shutil.which("apt-get") and shutil.which("apt-cache") and shutil.which("dpkg-deb")):
        pytest.skip("apt and dpkg are needed for the site server's packages")
    return _load_build_bundle().os_release()


def _site_bundle(root: Path, debs: Path, release: str) -> Path:
    """A fake bundle (no real wheels) carrying the real site-debs/ folder."""
    bundle = _fake_bundle(root, python=f"{sys.version_info.major}.{sys.version_info.minor}")
    shutil.copytree(debs, bundle / "site-debs")
    info = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**info, "site_release": release}, indent=2) + "\n")
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(bundle).as_posix()}"
             for p in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "SHA256SUMS")]
    (bundle / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return bundle


@pytest.mark.slow
def test_the_site_server_packages_install_on_a_minimal_system_with_no_package_source(tmp_path: Path) -> None:
    """`build_bundle.py --site-server` carries Orthanc, its DICOMweb plugin, PostgreSQL and
    dcmtk with what a minimal system of the release lacks; `install.sh --site-server
    --simulate` on such a system (its dpkg status: the essential and required packages and
    their dependencies), with the network cut and no package source, finds every package
    among the files; without one of them it says apt finds no way."""
    release = _debian_release()
    bb = _load_build_bundle()
    try:
        listed = bb.site_debs(tmp_path / "debs")
    except bb.BuildError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Debian package source reachable here: {exc}")
    names = {d["package"] for d in listed}
    assert {"orthanc", "orthanc-dicomweb", "dcmtk", "libpq5"} <= names and any(
        n.startswith("postgresql-1") for n in names), sorted(names)
    assert all((tmp_path / "debs" / Path(d["file"]).name).is_file() for d in listed)
    base, status = bb.minimal_status()
    assert "libc6" in base and "dpkg" in base and "orthanc" not in base
    minimal = tmp_path / "status"
    minimal.write_text(status)
    apt_conf = tmp_path / "apt.conf"
    apt_conf.write_text(f'Dir::State::status "{minimal}";\n')  # what a minimal server has installed
    cut, env = _offline_prefix()
    env["APT_CONFIG"] = str(apt_conf)

    bundle = _site_bundle(tmp_path / "ok", tmp_path / "debs", release)
    r = _install(bundle, "--site-server", "--simulate", "--python", _base_python(), env=env, prefix=cut)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    installs = int(r.stdout.split("site server packages: ")[1].split()[0])
    assert installs >= len(listed) - 5, r.stdout  # nearly every carried file is new to a minimal system

    (tmp_path / "debs" / next(Path(d["file"]).name for d in listed if d["package"] == "libpq5")).unlink()
    lacking = _site_bundle(tmp_path / "lacking", tmp_path / "debs", release)
    r = _install(lacking, "--site-server", "--simulate", "--python", _base_python(), env=env, prefix=cut)
    assert r.returncode == 1 and "apt finds no way to install the site packages" in r.stderr, r.stderr[-2000:]
    assert "libpq5" in r.stderr

    other = _site_bundle(tmp_path / "other", tmp_path / "debs", "debian 99")
    r = _install(other, "--site-server", "--simulate", "--python", _base_python(), env=env, prefix=cut)
    assert r.returncode == 2 and "are for debian 99 but this system is" in r.stderr


def test_site_server_options_are_refused_where_they_cannot_work(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path, python=f"{sys.version_info.major}.{sys.version_info.minor}")
    r = _install(bundle, "--simulate", "--python", _base_python())
    assert r.returncode == 2 and "--simulate goes with --site-server" in r.stderr
    r = _install(bundle, "--site-server", "--python", _base_python(), "--prefix", str(tmp_path / "p"))
    assert r.returncode == 2 and "carries no site server packages" in r.stderr
    assert not (tmp_path / "p").exists()
