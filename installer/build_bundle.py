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
    site-debs/         with --site-server: the Debian packages of a site server (Orthanc,
                       its DICOMweb plugin, PostgreSQL, dcmtk) and every dependency a
                       minimal system of the same release lacks, for
                       ``install.sh --site-server`` (apt-get, from these files only)

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


#: What a site server needs from Debian (docs/hospital-it.md, "Site server").
SITE_DEBS = ("orthanc", "orthanc-dicomweb", "postgresql", "dcmtk")
_APT_DEPENDS = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances"]


def os_release(path: Path = Path("/etc/os-release")) -> str:
    """``ID VERSION_ID`` of this system (``debian 12``): the release the packages are for."""
    fields: dict[str, str] = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip().strip('"')
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    if not fields.get("ID") or not fields.get("VERSION_ID"):
        raise BuildError(f"{path} names no ID and VERSION_ID: not a release the site packages can be built for")
    return f"{fields['ID']} {fields['VERSION_ID']}"


def _stanzas(text: str) -> list[dict[str, str]]:
    """The fields of each stanza of a dpkg/apt control text (continuation lines dropped)."""
    out, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                out.append(current)
            current = {}
        elif not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        out.append(current)
    return out


def minimal_status(status: Path = Path("/var/lib/dpkg/status")) -> tuple[set[str], str]:
    """(names, dpkg status text) of a minimal system of this release: the installed
    packages every Debian system has (``Essential: yes`` or ``Priority: required``) and
    what they depend on, as installed here."""
    try:
        text = status.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BuildError(f"cannot read {status}: {exc.strerror}") from None
    installed: dict[str, tuple[dict[str, str], str]] = {}
    for block in text.split("\n\n"):
        fields = (_stanzas(block) or [{}])[0]
        if fields.get("Status", "").endswith(" installed") and fields.get("Package"):
            installed[fields["Package"]] = (fields, block.strip("\n"))
    todo = [n for n, (f, _) in installed.items() if f.get("Essential") == "yes" or f.get("Priority") == "required"]
    keep: set[str] = set()
    while todo:
        name = todo.pop()
        if name in keep or name not in installed:
            continue
        keep.add(name)
        fields = installed[name][0]
        for rel in ", ".join(v for k in ("Pre-Depends", "Depends") if (v := fields.get(k))).split(","):
            for alternative in rel.split("|"):
                dep = alternative.strip().split(" ")[0].split(":")[0]
                if dep:
                    todo.append(dep)
    return keep, "\n\n".join(installed[n][1] for n in sorted(keep)) + "\n"


def site_debs(folder: Path, packages: tuple[str, ...] = SITE_DEBS) -> list[dict[str, str]]:
    """Download ``packages`` and their dependency closure (without what a minimal system
    of this release has) into ``folder`` with apt; check that they install on such a
    system from these files alone (:func:`check_site_debs`, :func:`not_carried`); returns name, version, architecture and file of each."""
    for tool in ("apt-cache", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise BuildError(f"--site-server needs {tool} (a Debian or Ubuntu machine of the server's release)")
    closure = _run([*_APT_DEPENDS, *packages], what="resolving the site server's Debian packages")
    names = sorted({line.strip() for line in closure.splitlines()
                    if line and not line[0].isspace() and not line.startswith("<")})
    base, _status = minimal_status()
    wanted = [n for n in names if n not in base]
    folder.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {len(wanted)} Debian packages for the site server "
         f"({len(names) - len(wanted)} of the closure are on every system of this release)")
    _run(["apt-get", "download", *wanted], what="downloading them (a package source must be reachable)", cwd=folder)
    listed = _describe(folder)
    missing = sorted(set(wanted) - {d["package"] for d in listed})
    if missing:
        raise BuildError(f"apt downloaded no file for: {', '.join(missing)}")
    # a base package older here than what the others need (perl-base for a newer perl):
    # apt's plan on a minimal system names it; carry it too
    for _ in range(3):
        extra = not_carried(check_site_debs(folder))
        if not extra:
            break
        _say(f"also carrying {', '.join(extra)} (newer than this system's, needed by the others)")
        _run(["apt-get", "download", *extra], what="downloading them", cwd=folder)
        listed = _describe(folder)
    left = not_carried(check_site_debs(folder))
    if left:
        raise BuildError(f"on a minimal system the site packages would still fetch: {', '.join(left)}")
    return listed


_INST = re.compile(r"^Inst (\S+) .*$", re.MULTILINE)


def not_carried(plan: str) -> list[str]:
    """The packages apt's simulated plan installs from elsewhere than the given .deb files."""
    return sorted({m.group(1) for m in _INST.finditer(plan) if "local-deb" not in m.group(0)})


def _describe(folder: Path) -> list[dict[str, str]]:
    listed = []
    for deb in sorted(folder.glob("*.deb")):
        fields = _stanzas(subprocess.run(["dpkg-deb", "--field", str(deb), "Package", "Version", "Architecture"],
                                         capture_output=True, text=True, check=True).stdout)[0]
        listed.append({"package": fields["Package"], "version": fields["Version"],
                       "architecture": fields["Architecture"], "file": f"site-debs/{deb.name}"})
    return listed


def check_site_debs(folder: Path, status_text: str | None = None) -> str:
    """apt's simulated plan (``apt-get install --simulate``) for every .deb in ``folder``
    on a minimal system of this release (its dpkg status, :func:`minimal_status`); raises
    :class:`BuildError` when apt finds no plan. :func:`not_carried` names what the plan
    would fetch from a package source (nothing, for a complete set)."""
    with tempfile.TemporaryDirectory(prefix="mt-site-debs-") as tmp:
        status = Path(tmp) / "status"
        status.write_text(status_text if status_text is not None else minimal_status()[1], encoding="utf-8")
        debs = [str(p) for p in sorted(folder.resolve().glob("*.deb"))]
        return _run(["apt-get", "install", "--simulate", "--no-install-recommends", "-q",
                     "-o", f"Dir::State::status={status}", *debs],
                    what="checking the site packages install on a minimal system, offline")


def _say(message: str) -> None:
    print(f"[build_bundle] {message}", flush=True)


def project_version(repo: Path = REPO) -> str:
    """``project.version`` from pyproject.toml."""
    data = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["version"])


def _run(cmd: list[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    _say(f"{what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
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
    site_server: bool = False,
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
    debs = site_debs(work / "site-debs") if site_server else []
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
        "site_release": os_release() if site_server else None,
        "site_debs": debs,
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    (work / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
    (work / "README.txt").write_text(
        f"Mammo Triage {version} - offline installation bundle\n\n"
        "  ./install.sh                 install for this user, then run the self-check\n"
        "  ./install.sh --help          options (prefix, Python, no desktop entry)\n\n"
        f"Needs Python {info['version']} with venv on {info['platform']}"
        + (f" (glibc {bundle['min_glibc']} or newer)" if bundle["min_glibc"] else "")
        + ". No network access is used.\n"
        + (f"  sudo ./install.sh --site-server   also installs the site server's Debian packages ({bundle['site_release']})\n"
           if site_server else "")
        + "See HOSPITAL-IT.md.\n",
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
    parser.add_argument("--site-server", action="store_true",
                        help="also carry the Debian packages of a site server (Orthanc, PostgreSQL, dcmtk); "
                             "build on the server's Debian/Ubuntu release")
    args = parser.parse_args(argv)
    try:
        build(args.out, python=args.python, constraints=args.constraints,
              models=None if args.no_models else args.models, pip_args=args.pip_arg,
              force=args.force, tar=args.tar, site_server=args.site_server)
    except BuildError as exc:
        print(f"build_bundle: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
