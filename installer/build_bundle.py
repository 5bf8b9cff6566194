"""Build the offline installation bundle for a hospital machine without internet.

Run on a machine WITH internet (or a local package mirror), with the same Python
minor version, OS family and CPU architecture as the hospital workstation::

    python installer/build_bundle.py [--python python3.11] [--out installer/dist] [--tar]

It produces ``<out>/mammotriage-offline-<version>/``::

    install.sh         installs with no network at all (pip --no-index), see --help
    wheelhouse/        the project as a wheel + every dependency pinned by constraints.txt
    constraints.txt    the lock file the wheelhouse was built from
    models/            the shipped model packages (weights + metadata with their sha256)
    bundle.json        version, Python, platform, minimum glibc, models
    HOSPITAL-IT.md     system requirements, network and firewall notes
    SHA256SUMS         checksums of every file; install.sh verifies them first

Before finishing, the wheelhouse is checked to be complete by a dry-run resolution
with ``--no-index`` (what install.sh will do, without installing).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLER = Path(__file__).resolve().parent


class BuildError(RuntimeError):
    """The bundle could not be built; the message says why."""


def _say(message: str) -> None:
    print(f"[build_bundle] {message}", flush=True)


def project_version(repo: Path = REPO) -> str:
    """``project.version`` from pyproject.toml."""
    data = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["version"])


def _run(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> str:
    _say(f"{what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _python_info(python: str) -> dict[str, str]:
    code = (
        "import json, platform, sys, sysconfig, importlib.util as u; "
        "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
        "'full': platform.python_version(), 'platform': sysconfig.get_platform(), "
        "'machine': platform.machine(), 'setuptools': bool(u.find_spec('setuptools'))}))"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"cannot run the target Python {python!r}: {exc}") from None
    return json.loads(out)


def _stage_source(dest: Path) -> Path:
    """Copy what the wheel is built from (no caches, no egg-info, no tests)."""
    src = dest / "src"
    (src / "app").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "app" / "mammotriage",
        src / "app" / "mammotriage",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    return src


_GLIBC = re.compile(r"manylinux_(\d+)_(\d+)")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def min_glibc(wheel_names: list[str]) -> str | None:
    """The newest glibc any wheel needs (the lowest tag of each wheel counts)."""
    need: tuple[int, int] | None = None
    for name in wheel_names:
        platform_tag = name[:-4].split("-")[-1]
        versions = [(int(a), int(b)) for a, b in _GLIBC.findall(platform_tag)]
        versions += [v for k, v in _LEGACY.items() if k in platform_tag.split(".")]
        if versions:
            lowest = min(versions)
            need = lowest if need is None else max(need, lowest)
    return f"{need[0]}.{need[1]}" if need else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _model_packages(models: Path) -> list[str]:
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if (p / "configs" / "metadata.json").is_file())


def build(
    out: Path,
    *,
    python: str = sys.executable,
    constraints: Path = REPO / "constraints.txt",
    models: Path | None = REPO / "models",
    pip_args: list[str] | None = None,
    force: bool = False,
    tar: bool = False,
) -> Path:
    """Build the bundle and return its folder (see the module docstring).

    Raises
    ------
    BuildError
        A step failed; the message carries the tail of the tool's output.
    """
    start = time.perf_counter()
    version = project_version()
    info = _python_info(python)
    if not constraints.is_file():
        raise BuildError(f"lock file {constraints} not found")
    name = f"mammotriage-offline-{version}"
    final = out / name
    if final.exists():
        if not force:
            raise BuildError(f"{final} exists; use --force to replace it")
        shutil.rmtree(final)
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".{name}.partial"
    if work.exists():
        shutil.rmtree(work)
    wheelhouse = work / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    extra = list(pip_args or [])
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]

    with tempfile.TemporaryDirectory(prefix="mt-bundle-src-") as tmp:
        src = _stage_source(Path(tmp))
        # Build with the target's setuptools when it has one (no download needed).
        isolation = ["--no-build-isolation"] if info["setuptools"] else []
        _run([*pip, "wheel", "--no-deps", *isolation, *extra, "-w", str(wheelhouse), str(src)],
             what="building the project wheel")
    project_wheels = sorted(wheelhouse.glob("mammotriage-*.whl"))
    if len(project_wheels) != 1:
        raise BuildError(f"expected one mammotriage wheel, found {project_wheels}")
    project_wheel = project_wheels[0]

    _run([*pip, "download", "--only-binary=:all:", "-c", str(constraints), *extra,
          "-d", str(wheelhouse), str(project_wheel)],
         what="downloading the pinned dependencies")

    # Completeness: resolve exactly as install.sh will, without network and without installing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    _run([*pip, "install", "--dry-run", "--ignore-installed", "--no-index", "--find-links",
          str(wheelhouse), "-c", str(constraints), f"mammotriage=={version}"],
         what="checking the wheelhouse is complete (offline dry run)", env=env)

    shutil.copy2(constraints, work / "constraints.txt")
    shutil.copy2(INSTALLER / "install.sh", work / "install.sh")
    (work / "install.sh").chmod(0o755)
    it_doc = REPO / "docs" / "hospital-it.md"
    if it_doc.is_file():
        shutil.copy2(it_doc, work / "HOSPITAL-IT.md")
    packages = _model_packages(models) if models is not None else []
    if packages and models is not None:
        (work / "models").mkdir()
        for package in packages:
            shutil.copytree(models / package, work / "models" / package,
                            ignore=shutil.ignore_patterns(".*", "__pycache__"))
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    bundle = {
        "name": "mammotriage",
        "version": version,
        "python": info["version"],
        "python_built_with": info["full"],
        "platform": info["platform"],
        "machine": info["machine"],
        "min_glibc": min_glibc(wheels),
        "wheels": len(wheels),
        "models": packages,
        "default_model": packages[0] if packages else None,
        "require_model": bool(packages),
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (work / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
    (work / "README.txt").write_text(
        f"Mammo Triage {version} - offline installation bundle\n\n"
        "  ./install.sh                 install for this user, then run the self-check\n"
        "  ./install.sh --help          options (prefix, Python, no desktop entry)\n\n"
        f"Needs Python {info['version']} with venv on {info['platform']}"
        + (f" (glibc {bundle['min_glibc']} or newer)" if bundle["min_glibc"] else "")
        + ". No network access is used.\nSee HOSPITAL-IT.md.\n",
        encoding="utf-8",
    )
    _say("writing SHA256SUMS")
    files = sorted(p for p in work.rglob("*") if p.is_file())
    lines = [f"{_sha256(p)}  {p.relative_to(work).as_posix()}" for p in files]
    (work / "SHA256SUMS").write_text("\n".join(lines) + "\n", encoding="utf-8")
    work.rename(final)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    _say(f"bundle {final}: {len(wheels)} wheels, {len(packages)} model package(s), "
         f"{size / 1e9:.2f} GB, built in {time.perf_counter() - start:.0f} s")
    if tar:
        archive = out / f"{name}.tar"
        _say(f"writing {archive}")
        with tarfile.open(archive, "w") as tf:  # wheels are compressed already
            tf.add(final, arcname=name)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=INSTALLER / "dist",
                        help="output folder (default installer/dist)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python of the target version, used to pick wheels (default: this one)")
    parser.add_argument("--constraints", type=Path, default=REPO / "constraints.txt",
                        help="lock file (default constraints.txt)")
    parser.add_argument("--models", type=Path, default=REPO / "models",
                        help="folder of model packages to ship (default models/)")
    parser.add_argument("--no-models", action="store_true", help="ship no model")
    parser.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for pip wheel/download, e.g. --pip-arg=--index-url=URL")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    parser.add_argument("--tar", action="store_true", help="also write <bundle>.tar")
    args = parser.parse_args(argv)
    try:
        build(args.out, python=args.python, constraints=args.constraints,
              models=None if args.no_models else args.models, pip_args=args.pip_arg,
              force=args.force, tar=args.tar)
    except BuildError as exc:
        print(f"build_bundle: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
