"""Progressive JPEG 2000 decoding: a reduced resolution first, then the full image.

A JPEG 2000 codestream is a wavelet pyramid: with *D* decomposition levels (COD
marker) the decoder can stop after any of them and return the image reduced by
``2**r`` (``r <= D``) at a fraction of the full decode's cost.  The pinned
pylibjpeg-openjpeg exposes neither that reduce factor nor openjpeg's threads, so this
module decodes through glymur (ctypes over the system's libopenjp2 >= 2.5, which also
decodes HTJ2K): ``Jp2k[::2**r, ::2**r]`` is openjpeg's ``cp_reduce`` and
``glymur.set_option("lib.num_threads", n)`` its thread pool.

pydicom's decoder stays the reference: a full-resolution decode here must equal
``pydicom``'s pixel array bit for bit (``tests/dicom/test_progressive.py``), and a
reduced level must match the reference downsampled by 2x2 means within a small
tolerance.  Anything this path cannot do exactly (several components, a signedness that
differs from Pixel Representation, a precision above 16 bits, glymur or libopenjp2
missing) makes :func:`j2k_plan` return ``None`` and the caller uses
:func:`~mammotriage.dicom.read.read_image`.

The safety checks are never skipped: the file is parsed and validated with the same
:func:`~mammotriage.dicom.read._parse` (header, encapsulation, the codestream's SIZ
against Rows/Columns, the tile count) before a single byte is decoded, and the decoded
shape is checked against the header again.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from mammotriage.dicom.codestream import JPEG_2000
from mammotriage.dicom.errors import CorruptPixelDataError, UnsupportedTransferSyntaxError
from mammotriage.dicom.image import MammoImage, MammoMetadata

__all__ = ["J2kPlan", "decomposition_levels", "j2k_plan", "preview_factor", "read_image_progressive"]

#: the preview is the first reduction whose longer side is at most this (a pane's height)
PREVIEW_SIDE = 640
_LOCK = threading.Lock()


@dataclass(frozen=True)
class J2kPlan:
    """What the progressive decoder knows about one file's codestream."""

    levels: int  # decomposition levels of the main header's COD (the most ``reduce`` can be)
    signed: bool
    precision: int


def decomposition_levels(codestream: bytes | memoryview) -> int | None:
    """Decomposition levels from the main header's COD marker (None when not found).

    Walks the main header's marker segments (SOC, SIZ, ... up to the first SOT); tile-part
    COD markers may use fewer levels, in which case openjpeg refuses the reduce and the
    caller decodes the full image instead.
    """
    data = bytes(codestream[:65536])
    start = data.find(b"\xff\x4f\xff\x51")
    if start < 0:
        return None
    pos = start + 2
    while pos + 4 <= len(data):
        marker, length = struct.unpack_from(">HH", data, pos)
        if marker == 0xFF52 and pos + 9 < len(data):  # COD: Lcod Scod SGcod(4) SPcod: levels
            return data[pos + 9]
        if marker in (0xFF90, 0xFF93) or length < 2:  # SOT / SOD: main header over
            return None
        pos += 2 + length
    return None


def _glymur() -> Any:
    try:
        import glymur
    except (ImportError, OSError):  # not installed, or no libopenjp2 on this machine
        return None
    if glymur.version.openjpeg_version < "2.5.0":
        return None  # older libopenjp2: no HTJ2K, slow threads
    return glymur


def _codestream(ds: Dataset) -> bytes:
    from pydicom.encaps import generate_frames

    return next(generate_frames(ds.PixelData, number_of_frames=1))


def j2k_plan(meta: MammoMetadata, codestream: bytes) -> J2kPlan | None:
    """A plan when this file can be decoded progressively and exactly, else None."""
    if meta.transfer_syntax_uid not in JPEG_2000 or _glymur() is None:
        return None
    start = codestream[:4096].find(b"\xff\x4f\xff\x51")
    if start < 0 or len(codestream) < start + 4 + 41:
        return None
    csiz = struct.unpack_from(">H", codestream, start + 4 + 36)[0]
    if csiz != 1:
        return None
    ssiz = codestream[start + 4 + 38]
    signed, precision = bool(ssiz & 0x80), (ssiz & 0x7F) + 1
    if signed != (meta.pixel_representation == 1) or precision > meta.bits_allocated:
        return None  # pydicom reconciles these cases itself: leave them to it
    levels = decomposition_levels(codestream)
    return None if levels is None else J2kPlan(levels=levels, signed=signed, precision=precision)


def preview_factor(rows: int, columns: int, side: int = PREVIEW_SIDE) -> int:
    """The reduce factor ``r`` of a preview: the first whose longer side is <= ``side``."""
    longest = max(rows, columns)
    return max(0, math.ceil(math.log2(max(longest / side, 1.0))))


def decode_j2k(codestream: bytes, reduce: int, threads: int, path: Path | None = None) -> np.ndarray:
    """Decode ``codestream`` at ``1 / 2**reduce`` with ``threads`` openjpeg threads."""
    glymur = _glymur()
    if glymur is None:
        raise UnsupportedTransferSyntaxError("progressive JPEG 2000 decoding needs glymur and libopenjp2", path)
    # glymur reads files: the codestream goes to memory-backed storage where there is one
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, tmp = tempfile.mkstemp(suffix=".j2k", prefix="mammotriage-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(codestream)
        with _LOCK:  # the thread option is process-wide
            glymur.set_option("lib.num_threads", max(1, int(threads)))
            step = 2 ** reduce
            try:
                return np.asarray(glymur.Jp2k(tmp)[::step, ::step])
            except MemoryError:
                raise
            except Exception as exc:
                raise CorruptPixelDataError(f"JPEG 2000 decode failed: {type(exc).__name__}: {exc}", path) from exc
    finally:
        os.unlink(tmp)


def _dtype(meta: MammoMetadata) -> np.dtype:
    kind = "i" if meta.pixel_representation == 1 else "u"
    return np.dtype(f"{kind}{meta.bits_allocated // 8}")


def read_image_progressive(path: str | Path, reduce: int | None = 0, threads: int | None = None,
                           allow_non_breast: bool = False) -> tuple[MammoImage, int] | None:
    """Read ``path`` and decode it at ``1 / 2**reduce`` through openjpeg's reduce
    (``reduce=None``: the preview's factor, :func:`preview_factor`).

    Returns ``(image, reduce actually used)`` (the factor is capped at the codestream's
    decomposition levels; ``image.pixels`` then has ``ceil(rows / 2**r)`` rows), or
    ``None`` when the file is not one this path decodes exactly (see the module doc):
    then :func:`~mammotriage.dicom.read.read_image` is the way.  Raises a
    ``MammoReadError`` for files the reader refuses, as ``read_image`` does.
    """
    from dataclasses import replace

    from mammotriage.dicom.read import _named_warnings, _parse

    p = Path(path)
    with _named_warnings(p):
        ds, meta = _parse(p, allow_non_breast, True)  # every header and codestream check, before decoding
        try:
            codestream = _codestream(ds)
        except Exception:  # noqa: BLE001 - leave odd encapsulations to the reference reader
            return None
        plan = j2k_plan(meta, codestream)
        if plan is None:
            return None
        wanted = preview_factor(meta.rows, meta.columns) if reduce is None else int(reduce)
        r = max(0, min(wanted, plan.levels))
        pixels = decode_j2k(codestream, r, threads or os.cpu_count() or 1, p)
    step = 2 ** r
    expected = (-(-meta.rows // step), -(-meta.columns // step))
    if pixels.ndim != 2 or pixels.shape != expected:
        raise CorruptPixelDataError(
            f"JPEG 2000 decoded to {pixels.shape}, the header says {expected} at reduce {r}", p)
    pixels = pixels.astype(_dtype(meta), copy=False)
    return MammoImage(pixels=pixels, meta=replace(meta, decoder="glymur")), r
