"""``mammotriage selfcheck``: is this installation able to do its work, offline?

Run by the offline installer after installing, and by hospital IT at any time.
Each check passes, fails or is skipped *with a reason* — a skipped check is never
reported as passed:

``python``
    interpreter version and platform.
``packages``
    the decoding, network and UI libraries import (PySide6 without a display).
``compute``
    torch, torchvision and MONAI import (inside a network guard); which device
    inference would use (an NVIDIA GPU, or the CPU).  Not run with ``--no-model``.
``decode``
    a synthetic four-view exam is written in JPEG 2000 lossless and RLE, read back
    with the product's reader and compared pixel for pixel with what was written.
``archive``
    an archive in a temporary folder is created, migrated and the exam imported.
``model``
    the shipped model package is found, its weights' SHA-256 is verified against
    its metadata, the model is loaded and one inference runs on the synthetic exam
    — all inside a :class:`~mammotriage.net.guard.NetworkGuard`, so a library that
    tries to reach a model hub fails the check.  Skipped (with the reason) when the
    model subpackage or a model package is not there, unless the model is required.

Nothing here touches the user's archive: every file goes to a temporary folder.

It stays in ``net``, where its dependencies allow (the network guard here; model, store,
dicom and phantom below): the product's own modules are imported statically, inside the
checks. Only the third-party libraries it probes (PySide6, torch, MONAI, the decoders)
are imported by name, because whether they import is what is checked; no Qt object is
made.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CheckResult", "SelfCheckReport", "run_selfcheck"]

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class CheckResult:
    """One check: name, ``pass``/``fail``/``skip``, what was found, seconds taken."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            **({"data": self.data} if self.data else {}),
        }


@dataclass
class SelfCheckReport:
    """All checks; :attr:`ok` is false when any check failed."""

    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not fail the report)."""
        return all(c.status != FAIL for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    def text(self) -> str:
        """One line per check, then the verdict."""
        lines = [
            f"{c.status.upper():4}  {c.name:9} {c.detail}  ({c.seconds:.1f} s)" for c in self.checks
        ]
        skipped = [c.name for c in self.checks if c.status == SKIP]
        verdict = "selfcheck: OK" if self.ok else "selfcheck: FAILED"
        if self.ok and skipped:
            verdict += f" (skipped: {', '.join(skipped)})"
        lines.append(verdict)
        return "\n".join(lines)


def _timed(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = CheckResult(name, FAIL, tail)
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- checks


def _check_python() -> CheckResult:
    ok = sys.version_info >= (3, 11)
    detail = f"Python {platform.python_version()} on {platform.system()} {platform.machine()}"
    return CheckResult("python", PASS if ok else FAIL, detail + ("" if ok else " (3.11+ needed)"))


def _check_packages() -> CheckResult:
    names = [
        "numpy", "pydicom", "pynetdicom", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls",
        "PySide6.QtCore",
    ]
    versions: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        versions[name] = str(getattr(module, "__version__", "") or "")
    if missing:
        return CheckResult("packages", FAIL, "cannot import " + "; ".join(missing), data=versions)
    return CheckResult("packages", PASS, f"{len(names)} libraries import", data=versions)


def _check_compute() -> CheckResult:
    """torch, torchvision and MONAI import; which device inference would use."""
    from mammotriage.net.guard import NetworkGuard

    with NetworkGuard() as guard:
        try:
            torch = importlib.import_module("torch")
            torchvision = importlib.import_module("torchvision")
            monai = importlib.import_module("monai")
        except Exception as exc:  # noqa: BLE001
            return CheckResult("compute", FAIL, f"cannot import the model libraries: "
                                                f"{type(exc).__name__}: {exc}")
        cuda = bool(torch.cuda.is_available())
        device = torch.cuda.get_device_name(0) if cuda else "CPU"
    if guard.blocked:
        return CheckResult("compute", FAIL, f"importing torch/MONAI reached for the network: "
                                            f"{guard.blocked}")
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return CheckResult(
        "compute",
        PASS,
        f"torch {torch.__version__} ({build}), torchvision {torchvision.__version__}, "
        f"MONAI {monai.__version__}; inference on {device}"
        + ("" if cuda or not torch.version.cuda else " (no usable NVIDIA GPU/driver: CPU is used)"),
        data={"cuda": cuda, "device": device},
    )


def _write_exam(folder: Path) -> dict[str, Any]:
    from mammotriage.phantom import generate_exam

    written: dict[str, Any] = {}
    for ts in ("jpeg2000", "rle"):
        exam = generate_exam(20240, rows=256, columns=192, transfer_syntax=ts, normal=False)
        paths = exam.save(folder / ts)
        for image in exam.images:
            written[str(paths[image.label])] = image.pixels
    return written


def _check_decode(folder: Path) -> CheckResult:
    import numpy as np

    from mammotriage.dicom.read import read_image

    written = _write_exam(folder)
    decoders = set()
    for path, pixels in written.items():
        image = read_image(path)
        if not np.array_equal(image.pixels, pixels):
            return CheckResult("decode", FAIL, f"{Path(path).name}: decoded pixels differ")
        decoders.add(image.meta.decoder)
    return CheckResult(
        "decode",
        PASS,
        f"{len(written)} images (JPEG 2000 lossless, RLE) decoded exactly "
        f"({', '.join(sorted(decoders))})",
    )


def _check_archive(folder: Path) -> CheckResult:
    from mammotriage.store.archive import Archive

    with Archive(folder / "archive.sqlite") as archive:
        report = archive.import_paths([folder / "jpeg2000"])
        exams = archive.exams()
    if report.rejected or len(report.imported) != 4 or len(exams) != 1:
        return CheckResult("archive", FAIL, report.summary())
    return CheckResult("archive", PASS, f"archive created, 4 images indexed as {exams[0].views}")


def _find_model(model_dir: str | Path | None) -> tuple[Path | None, str]:
    """(model package folder, how it was found) or (None, why not)."""
    candidates: list[tuple[Path, str]] = []
    if model_dir is not None:
        candidates.append((Path(model_dir), "--model"))
    elif os.environ.get("MAMMOTRIAGE_MODEL"):
        candidates.append((Path(os.environ["MAMMOTRIAGE_MODEL"]), "$MAMMOTRIAGE_MODEL"))
    else:
        try:
            from mammotriage.model.package import default_model_dir

            candidates.append((Path(default_model_dir()), "default model folder"))
        except Exception:  # noqa: BLE001 - reported by the caller
            pass
    for path, how in candidates:
        if (path / "configs" / "metadata.json").is_file():
            return path, how
    where = ", ".join(f"{p} ({how})" for p, how in candidates) or "nowhere"
    return None, f"no model package (configs/metadata.json) found at {where}"


def _check_model(folder: Path, model_dir: str | Path | None, required: bool) -> CheckResult:
    absent = FAIL if required else SKIP
    try:
        from mammotriage.model.package import verify
    except Exception as exc:  # noqa: BLE001
        return CheckResult(
            "model", absent, f"model subpackage not importable ({type(exc).__name__}: {exc})"
        )
    path, how = _find_model(model_dir)
    if path is None:
        return CheckResult("model", absent, how)
    from mammotriage.dicom.read import read_image
    from mammotriage.net.guard import NetworkGuard

    # Hash check first, with its own clear message.
    try:
        meta = verify(path)
    except Exception as exc:  # noqa: BLE001
        return CheckResult("model", FAIL, f"{path}: {exc}")
    images = [read_image(p) for p in sorted((folder / "jpeg2000").glob("*.dcm"))]
    with NetworkGuard() as guard:
        try:
            from mammotriage.model.infer import Engine

            engine = Engine.from_package(path, device=None, threads=2)
            start = time.perf_counter()
            results = engine.predict_images(images[:1])
            infer_s = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            blocked = f" (blocked network access: {guard.blocked})" if guard.blocked else ""
            return CheckResult("model", FAIL, f"{type(exc).__name__}: {exc}{blocked}")
    if guard.blocked:
        return CheckResult("model", FAIL, f"the model tried to reach the network: {guard.blocked}")
    if len(results) != 1:
        return CheckResult("model", FAIL, f"inference returned {len(results)} results for 1 image")
    device = str(getattr(engine, "device", "?"))
    score = float(getattr(results[0], "score", float("nan")))
    return CheckResult(
        "model",
        PASS,
        f"{meta.get('name', path.name)} {meta.get('version', '?')} ({how}), weights sha256 "
        f"verified, 1 inference on {device} in {infer_s:.2f} s (score {score:.3f})",
        data={"path": str(path), "version": meta.get("version"), "device": device},
    )


def run_selfcheck(
    *,
    model_dir: str | Path | None = None,
    require_model: bool = False,
    include_model: bool = True,
) -> SelfCheckReport:
    """Run every check (see the module docstring) and return the report.

    Parameters
    ----------
    model_dir
        Model package to check; default ``$MAMMOTRIAGE_MODEL`` or the model
        subpackage's default folder.
    require_model
        A missing model subpackage or package fails instead of being skipped
        (the installer sets it when the bundle ships a model).
    include_model
        ``False`` skips the model check (reason: "not requested").
    """
    report = SelfCheckReport()
    report.checks.append(_timed("python", _check_python))
    report.checks.append(_timed("packages", _check_packages))
    if include_model:
        report.checks.append(_timed("compute", _check_compute))
    with tempfile.TemporaryDirectory(prefix="mammotriage-selfcheck-") as tmp:
        folder = Path(tmp)
        decode = _timed("decode", lambda: _check_decode(folder))
        report.checks.append(decode)
        if decode.status == PASS:
            report.checks.append(_timed("archive", lambda: _check_archive(folder)))
        else:
            report.checks.append(CheckResult("archive", SKIP, "needs the decode check"))
        if not include_model:
            report.checks.append(CheckResult("model", SKIP, "not requested (--no-model)"))
        elif decode.status != PASS:
            report.checks.append(CheckResult("model", FAIL if require_model else SKIP,
                                             "needs the decode check"))
        else:
            report.checks.append(
                _timed("model", lambda: _check_model(folder, model_dir, require_model))
            )
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m mammotriage.net.selfcheck`` (same options as ``mammotriage selfcheck``).

    The offline installer calls this form, which does not depend on the command-line
    wiring of the ``mammotriage`` entry point.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="mammotriage selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--model", metavar="DIR", help="model package to check")
    parser.add_argument("--require-model", action="store_true",
                        help="fail (rather than skip) when no model package can be checked")
    parser.add_argument("--no-model", action="store_true", help="skip the model check")
    args = parser.parse_args(argv)
    report = run_selfcheck(model_dir=args.model, require_model=args.require_model,
                           include_model=not args.no_model)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
