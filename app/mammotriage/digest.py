"""The one file digest: sha256 of a file's bytes, read in 1 MiB chunks; and the digest
of a study's image set (its SOP Instance UIDs)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["image_set_digest", "sha256_file", "sha256_file_size"]

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


def image_set_digest(sop_instance_uids: Iterable[str]) -> str:
    """Hex sha256 of an image set: its SOP Instance UIDs, each once, sorted, one per line
    (the same set in any order, from any source, gives the same digest)."""
    return hashlib.sha256("\n".join(sorted(set(sop_instance_uids))).encode("ascii", "replace")).hexdigest()
