"""Cheap structural checks of pixel data, made *before* anything is decoded.

A decoder trusts the codestream, not the DICOM header: a JPEG 2000 file whose header
says 256 x 192 but whose SIZ marker says 46000 x 46000 makes the decoder allocate for
the larger image.  These checks read a few hundred bytes of the first fragment and
compare the codestream's own description of the frame with Rows, Columns and Samples
per Pixel, so such a file is refused in milliseconds:

* the encapsulation: Basic Offset Table and fragment items inside the element, each
  item tag and length valid, the offsets inside the data;
* RLE Lossless: the 64-byte segment header (segment count = samples x bytes per
  sample, increasing offsets inside the frame, each segment large enough to expand to
  Rows x Columns bytes at RLE's maximum ratio of 128);
* JPEG (baseline, extended, lossless): the SOF marker's frame size and components;
* JPEG-LS: the SOF55 marker;
* JPEG 2000 and HTJ2K: the SIZ marker (image size less its offset, tile count,
  component count and precision).

Deflated data sets (Deflated Explicit VR Little Endian) are inflated here too, with a
hard limit on their inflated size and a walk of the element structure that stops at
the first impossible element (a run of zero bytes is not a data set), so a 1 MB file
cannot expand into gigabytes, nor into millions of empty elements.

Every problem raises :class:`~mammotriage.dicom.errors.CorruptPixelDataError` (or
:class:`~mammotriage.dicom.errors.NotDicomError` for a data set that is not one)
naming the file and what is wrong.
"""

from __future__ import annotations

import struct
import zlib
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

from pydicom import uid

from mammotriage.dicom.errors import CorruptPixelDataError, NotDicomError

__all__ = [
    "DEFLATED",
    "MAX_INFLATED_BYTES",
    "check_frame",
    "inflate_bounded",
    "walk_explicit_le",
]

DEFLATED = uid.DeflatedExplicitVRLittleEndian
RLE = uid.RLELossless
JPEG_FAMILY = {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1}
JPEG_LS = {uid.JPEGLSLossless, uid.JPEGLSNearLossless}
JPEG_2000 = {uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K}

#: the most a deflated data set may inflate to: the largest image the reader accepts
#: (120 M pixels of 16 bits) plus 64 MiB of other attributes
MAX_INFLATED_BYTES = 2 * 120_000_000 + (64 << 20)
#: the most elements (nested ones included) a data set may hold
MAX_ELEMENTS = 200_000
#: RLE: one replicate run (2 bytes) expands to at most 128 bytes (PS3.5 G.3.1)
_RLE_MAX_RATIO = 64
#: a JPEG 2000 image may have at most 65535 tiles (Isot is 16 bits, PS15444-1 A.4.2)
_MAX_TILES = 65535

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


# --------------------------------------------------------------------------- deflate

def _inflate(fh: BinaryIO, path: Path, limit: int, keep: bool) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    try:
        while not inflater.eof:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            while chunk:
                piece = inflater.decompress(chunk, min(limit + 1 - size, 4 << 20))
                size += len(piece)
                if size > limit:
                    raise CorruptPixelDataError(
                        f"deflated data set inflates to more than {limit // (1 << 20)} MiB "
                        "(a decompression bomb, or far larger than any mammogram)", path)
                if keep:
                    pieces.append(piece)
                chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
    except zlib.error as exc:
        raise NotDicomError(f"deflated data set cannot be inflated: {exc}", path) from None
    if not inflater.eof:
        raise CorruptPixelDataError("deflated data set is truncated (the deflate stream does not end)",
                                    path)
    return b"".join(pieces)


def inflate_bounded(fh: BinaryIO, path: Path, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """Inflate a raw deflate stream (PS3.5 A.5) from ``fh``, refusing to exceed ``limit`` bytes.

    A first pass only counts, so a bomb is refused without holding what it inflates to;
    the second pass keeps the data.
    """
    start = fh.tell()
    _inflate(fh, path, limit, keep=False)
    fh.seek(start)
    return _inflate(fh, path, limit, keep=True)


def walk_explicit_le(data: bytes, path: Path) -> None:
    """Check that ``data`` is a plausible Explicit VR Little Endian data set.

    Elements must be well formed, inside the data, and in ascending tag order within
    each data set (PS3.5 7.1); at most :data:`MAX_ELEMENTS` in all.  Runs in a few
    milliseconds for a real header: it reads tags and lengths and skips values.
    """
    count = [0]

    def fail(offset: int, what: str) -> NotDicomError:
        return NotDicomError(f"deflated data set damaged at byte {offset}: {what}", path)

    def walk(pos: int, end: int, until_item_end: bool) -> int:
        last = -1
        while pos < end:
            if pos + 8 > end:
                raise fail(pos, "element header cut short")
            group, elem = struct.unpack_from("<HH", data, pos)
            tag = (group << 16) | elem
            if tag == _ITEM_END and until_item_end:
                return pos + 8
            count[0] += 1
            if count[0] > MAX_ELEMENTS:
                raise fail(pos, f"more than {MAX_ELEMENTS} elements")
            if tag <= last:
                raise fail(pos, f"element ({group:04X},{elem:04X}) out of order or repeated")
            if group == 0x0000 or group == 0x0002:
                raise fail(pos, f"element ({group:04X},{elem:04X}) does not belong in a data set")
            last = tag
            vr = data[pos + 4:pos + 6]
            if not (vr.isalpha() and vr.isupper()):
                raise fail(pos, f"element ({group:04X},{elem:04X}) has no valid VR")
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise fail(pos, "element header cut short")
                (length,) = struct.unpack_from("<I", data, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                pos += 8
            if length == _UNDEFINED and vr == b"UN":
                return end  # an implicit VR sequence inside: left to the parser
            if length == _UNDEFINED:
                pos = walk_sequence(pos, end, encapsulated=vr != b"SQ")
            else:
                if pos + length > end:
                    raise fail(pos, f"element ({group:04X},{elem:04X}) of {length} bytes runs past the end")
                if vr == b"SQ":
                    walk_sequence(pos, pos + length, encapsulated=False)
                pos += length
        if until_item_end:
            raise fail(pos, "item without its delimiter")
        return pos

    def walk_sequence(pos: int, end: int, encapsulated: bool) -> int:
        while pos < end:
            if pos + 8 > end:
                raise fail(pos, "item header cut short")
            tag, length = struct.unpack_from("<II", data, pos)
            tag = ((tag & 0xFFFF) << 16) | (tag >> 16)
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise fail(pos - 8, "sequence holds something other than items")
            count[0] += 1
            if count[0] > MAX_ELEMENTS:
                raise fail(pos, f"more than {MAX_ELEMENTS} elements")
            if length == _UNDEFINED:
                if encapsulated:
                    raise fail(pos - 8, "pixel data fragment of undefined length")
                pos = walk(pos, end, until_item_end=True)
            else:
                if pos + length > end:
                    raise fail(pos - 8, f"item of {length} bytes runs past the end")
                if not encapsulated:
                    walk(pos, pos + length, until_item_end=False)
                pos += length
        return pos

    walk(0, len(data), until_item_end=False)


# --------------------------------------------------------------------------- frames

def _fragments(value: bytes, path: Path) -> tuple[list[int], list[memoryview]]:
    """(Basic Offset Table, fragments) of encapsulated pixel data, every length checked.

    The fragments are views into ``value``: nothing is copied.
    """
    pos, end = 0, len(value)
    view = memoryview(value)
    offsets: list[int] = []
    fragments: list[memoryview] = []
    first = True
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", value, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            break
        if tag != _ITEM:
            raise CorruptPixelDataError(
                f"encapsulated Pixel Data: item tag ({group:04X},{elem:04X}) at byte {pos - 8}, expected (FFFE,E000)",
                path)
        if length == _UNDEFINED or pos + length > end:
            raise CorruptPixelDataError(
                f"encapsulated Pixel Data: item at byte {pos - 8} claims {length} bytes, "
                f"{end - pos} remain", path)
        if first:
            if length % 4:
                raise CorruptPixelDataError(
                    f"encapsulated Pixel Data: Basic Offset Table of {length} bytes (not a multiple of 4)", path)
            offsets = list(struct.unpack_from(f"<{length // 4}I", value, pos))
            first = False
        else:
            fragments.append(view[pos:pos + length])
        pos += length
    if first or not fragments:
        raise CorruptPixelDataError("encapsulated Pixel Data holds no fragment", path)
    total = sum(len(f) + 8 for f in fragments)
    bad = [o for o in offsets if o >= total]
    if bad or offsets != sorted(offsets):
        raise CorruptPixelDataError(
            f"encapsulated Pixel Data: Basic Offset Table {offsets[:4]} points outside "
            f"its {total} bytes of fragments", path)
    return offsets, fragments


def _size_mismatch(kind: str, height: int, width: int, rows: int, cols: int, path: Path) -> CorruptPixelDataError:
    return CorruptPixelDataError(
        f"{kind} codestream is {height}x{width} (rows x columns) but the header says "
        f"{rows}x{cols}: refused before decoding", path)


def _check_rle(frame: memoryview | bytes, rows: int, cols: int, bits_alloc: int, spp: int, path: Path) -> None:
    if len(frame) < 64:
        raise CorruptPixelDataError(f"RLE frame of {len(frame)} bytes is shorter than its 64-byte header", path)
    header = struct.unpack_from("<16I", frame, 0)
    n = header[0]
    expected = spp * (bits_alloc // 8)
    if n != expected:
        raise CorruptPixelDataError(
            f"RLE header declares {n} segments, {expected} expected for {bits_alloc}-bit data", path)
    offsets = list(header[1:1 + n])
    if offsets[0] != 64 or any(b <= a for a, b in pairwise(offsets)) \
            or offsets[-1] >= len(frame):
        raise CorruptPixelDataError(
            f"RLE header segment offsets {offsets} are not increasing from 64 within the "
            f"{len(frame)}-byte frame", path)
    bounds = [*offsets, len(frame)]
    for i in range(n):
        length = bounds[i + 1] - bounds[i]
        if length * _RLE_MAX_RATIO < rows * cols:
            raise CorruptPixelDataError(
                f"RLE segment {i + 1} holds {length} bytes, too few to expand to {rows}x{cols} "
                "(rows x columns) pixels: the header's size does not match the data", path)


def _jpeg_sof(frame: memoryview | bytes, markers: set[int], kind: str, path: Path) -> tuple[int, int, int, int]:
    """(height, width, components, precision) from the first SOF marker."""
    if bytes(frame[:2]) != b"\xff\xd8":
        raise CorruptPixelDataError(f"{kind} frame does not start with an SOI marker", path)
    pos, end = 2, len(frame)
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            raise CorruptPixelDataError(f"{kind} frame: no marker at byte {pos}", path)
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if marker in markers:
            if length < 8 or pos + 2 + length > end:
                break
            precision, height, width, components = struct.unpack_from(">BHHB", frame, pos + 4)
            return height, width, components, precision
        if marker == 0xDA or length < 2:
            break
        pos += 2 + length
    raise CorruptPixelDataError(f"{kind} frame has no readable frame header (SOF) before its scan", path)


def _j2k_siz(frame: memoryview | bytes, path: Path) -> tuple[int, int, int, int, int]:
    """(height, width, components, max precision, tiles) from the SIZ marker."""
    start = bytes(frame[:4096]).find(b"\xff\x4f\xff\x51")
    if start < 0:
        raise CorruptPixelDataError("JPEG 2000 frame has no SOC/SIZ marker at its start", path)
    pos = start + 4
    if pos + 38 > len(frame):
        raise CorruptPixelDataError("JPEG 2000 SIZ marker cut short", path)
    (lsiz, _rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz) = struct.unpack_from(">HHIIIIIIIIH", frame, pos)
    if csiz == 0 or lsiz != 38 + 3 * csiz or pos + lsiz > len(frame):
        raise CorruptPixelDataError(f"JPEG 2000 SIZ marker is malformed ({csiz} components, length {lsiz})", path)
    if xsiz <= xo or ysiz <= yo or xt == 0 or yt == 0 or xto > xo or yto > yo:
        raise CorruptPixelDataError(
            f"JPEG 2000 SIZ marker describes an empty or inconsistent image ({ysiz}x{xsiz}, "
            f"offset {yo},{xo}, tiles {yt}x{xt})", path)
    precision = max((frame[pos + 38 + 3 * i] & 0x7F) + 1 for i in range(csiz))
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    return ysiz - yo, xsiz - xo, csiz, precision, tiles


def check_frame(value: bytes, ts: str, rows: int, cols: int, bits_alloc: int, spp: int,
                path: Path) -> None:
    """Check encapsulated Pixel Data ``value`` against the header (see the module doc)."""
    _offsets, fragments = _fragments(value, path)
    # one frame (multi-frame images are refused earlier): the frame is all fragments
    frame = fragments[0] if len(fragments) == 1 else memoryview(b"".join(fragments))
    if ts == RLE:
        _check_rle(frame, rows, cols, bits_alloc, spp, path)
        return
    if ts in JPEG_FAMILY or ts in JPEG_LS:
        kind = "JPEG-LS" if ts in JPEG_LS else "JPEG"
        sof = {0xF7} if ts in JPEG_LS else {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}
        height, width, components, precision = _jpeg_sof(frame, sof, kind, path)
        if height == 0:
            raise CorruptPixelDataError(f"{kind} frame height 0 (set later by DNL) is not accepted", path)
    elif ts in JPEG_2000:
        kind = "JPEG 2000"
        height, width, components, precision, tiles = _j2k_siz(frame, path)
        if (height, width) == (rows, cols) and tiles > _MAX_TILES:
            raise CorruptPixelDataError(f"JPEG 2000 codestream declares {tiles} tiles (at most {_MAX_TILES})",
                                        path)
    else:
        return  # another encapsulated syntax: the decoder's own checks apply
    if (height, width) != (rows, cols):
        raise _size_mismatch(kind, height, width, rows, cols, path)
    if components != spp:
        raise CorruptPixelDataError(
            f"{kind} codestream has {components} components, Samples per Pixel is {spp}", path)
    if precision > 16:
        raise CorruptPixelDataError(f"{kind} codestream precision {precision} bits (at most 16)", path)
