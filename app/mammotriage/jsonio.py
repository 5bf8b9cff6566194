"""Strictly valid JSON for every command's ``--json`` output, and atomic file writes.

JSON has no NaN or Infinity; Python's :func:`json.dumps` writes them unless told not to.
Every command prints through :func:`print_json`, which turns a float that is not finite
into ``null`` and then refuses anything else that is not JSON.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "print_json", "write_atomic"]


def json_safe(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def print_json(value: Any, **kwargs: Any) -> None:
    """Print ``value`` as strictly valid JSON (file names that are not UTF-8 are escaped)."""
    print(json.dumps(json_safe(value), allow_nan=False, **kwargs))


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (fsync, rename).

    The file has ``mode`` from its creation on, so a secret is never readable by others,
    not even for a moment. ``durable=False`` skips the fsync (a cache entry that is
    checked on use and can be fetched again): readers still see all or nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
