"""The one file digest: sha256 of a file's bytes, read in 1 MiB chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file", "sha256_file_size"]

_CHUNK = 1 << 20


def sha256_file_size(path: str | Path) -> tuple[str, int]:
    """``(hex sha256, size in bytes)`` of the file at ``path``, in one read."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    return sha256_file_size(path)[0]
