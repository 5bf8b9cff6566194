"""Memory limits for the processes that decode untrusted files.

The header and codestream checks (:mod:`mammotriage.dicom.codestream`) refuse a
decompression bomb before any decoder runs; a limit on the address space of the
spawned decode and triage workers is the second line: a decoder that still tries to
allocate gigabytes gets a ``MemoryError`` inside that worker (reported as the file's
failure) instead of pushing the workstation into swap.

``RLIMIT_AS`` bounds virtual memory, not resident memory, so the limits are generous
multiples of what a worker needs for the largest image the reader accepts (120 M
pixels): a view decode worker peaks well under 2 GiB of address space, a triage
worker with torch on the CPU at about 4 GiB.  CUDA reserves huge address ranges, so no
limit is set in a worker that uses a GPU.  ``MAMMOTRIAGE_WORKER_MEMORY_GB`` overrides
both limits (``0`` = no limit).
"""

from __future__ import annotations

import os

__all__ = ["DECODE_WORKER_LIMIT", "TRIAGE_WORKER_LIMIT", "limit_address_space", "worker_limit"]

GIB = 1 << 30
#: address space of a view decode worker (UI pool)
DECODE_WORKER_LIMIT = 4 * GIB
#: address space of the triage worker when it runs the model on the CPU
TRIAGE_WORKER_LIMIT = 16 * GIB
ENV = "MAMMOTRIAGE_WORKER_MEMORY_GB"


def worker_limit(default: int) -> int:
    """The limit in bytes (``default`` unless ``MAMMOTRIAGE_WORKER_MEMORY_GB`` is set; 0 = none)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return default
    try:
        return max(0, int(float(value) * GIB))
    except ValueError:
        return default


def limit_address_space(limit: int = DECODE_WORKER_LIMIT) -> bool:
    """Lower this process's address-space limit to ``worker_limit(limit)`` bytes.

    Never raises the limit and never fails the caller: returns whether a limit is set
    (``False`` where the platform has no ``resource`` module or the limit is 0).
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return False
    wanted = worker_limit(limit)
    if wanted <= 0:
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft <= wanted:
        return True
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError):
        return False
    return True
