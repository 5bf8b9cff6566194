"""A corpus of hostile and damaged inputs, written on demand (no binaries in the repo).

:func:`write_corpus` writes one file per :class:`Case` into a folder and returns the
cases with their paths.  Every case says what the reader must do with it: read it
(``expect="ok"``, possibly with a warning that names what was set aside) or reject it
with a given code and a reason containing given words.  The classes covered:

* decompression bombs: a JPEG 2000 SIZ, a JPEG SOF and a JPEG-LS SOF55 that describe a
  46000 x 46000 image behind a small header; RLE that claims 16000 x 7000; a Deflated
  file of about 1 MB that inflates to 1 GiB; a Deflated data set that inflates into a
  flood of empty elements; a JPEG 2000 codestream with a million tiles;
* frame structure: an RLE segment header with the wrong count and with offsets past
  the data, fragments whose lengths run past the element, a Basic Offset Table that
  points outside the data;
* valid Deflated files (as ``dcmconv +td`` makes them);
* broken presentation attributes: NaN and infinite windows, a window outside the
  image's values, a VOI LUT declaring 4096 entries that holds 3, a VOI LUT Descriptor
  with 2 values, a constant VOI LUT, a Rescale Slope of NaN;
* files and names: a file name that is not UTF-8, an unknown character set, garbage,
  an empty file, a truncated file, a symbolic link to garbage.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from mtsupport import make_mg_dataset

ROWS, COLUMNS = 64, 48
BOMB_SIDE = 46000
#: the Deflated bomb inflates to this many bytes
DEFLATE_BOMB_BYTES = 1 << 30


@dataclass
class Case:
    """One corpus file and what the reader must make of it."""

    name: str
    write: Callable[[Path], Path]
    expect: str = "reject"  # "ok" or "reject"
    code: str = ""
    reason: str = ""  # words the rejection reason (or, for "ok", a warning) must contain
    #: usable for bulk copies (cheap to read, no bomb)
    cheap: bool = True
    path: Path | None = None


# --------------------------------------------------------------------------- helpers

def _pixels(rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:columns]
    return ((yy * 37 + xx * 11) % 4096).astype(np.uint16)


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _compressed(ts: str) -> Dataset:
    ds = make_mg_dataset(ROWS, COLUMNS, pixels=_pixels())
    ds.compress(ts, generate_instance_uid=False)
    return ds


def _frame(ds: Dataset) -> bytes:
    from pydicom.encaps import generate_frames

    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _with_frame(ds: Dataset, frame: bytes) -> Dataset:
    ds.PixelData = encapsulate([frame])
    return ds


def _patch_j2k_size(frame: bytes, height: int, width: int) -> bytes:
    at = frame.index(b"\xff\x4f\xff\x51") + 4
    out = bytearray(frame)
    struct.pack_into(">II", out, at + 4, width, height)  # Xsiz, Ysiz (offsets are 0)
    return bytes(out)


def _patch_sof(frame: bytes, marker: int, height: int, width: int) -> bytes:
    at = frame.index(bytes([0xFF, marker]))
    out = bytearray(frame)
    struct.pack_into(">HH", out, at + 5, height, width)
    return bytes(out)


def _lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)
    item.add_new(0x00283006, "OW", struct.pack(f"<{len(data)}H", *data))
    item.LUTExplanation = "BROKEN"
    return item


# --------------------------------------------------------------------------- writers

def _j2k_siz_bomb(path: Path) -> Path:
    ds = _compressed(JPEG2000Lossless)
    return _save(_with_frame(ds, _patch_j2k_size(_frame(ds), BOMB_SIDE, BOMB_SIDE)), path)


def _j2k_many_tiles(path: Path) -> Path:
    ds = _compressed(JPEG2000Lossless)
    frame = bytearray(_frame(ds))
    at = frame.index(b"\xff\x4f\xff\x51") + 4
    struct.pack_into(">IIII", frame, at + 4, 4096, 4096, 0, 0)
    struct.pack_into(">II", frame, at + 20, 1, 1)  # 1 x 1 tiles: 16 M of them
    ds.Rows, ds.Columns = 4096, 4096
    return _save(_with_frame(ds, bytes(frame)), path)


def _jpeg_sof_bomb(path: Path) -> Path:
    from PIL import Image

    ds = make_mg_dataset(ROWS, COLUMNS)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    buf = BytesIO()
    Image.fromarray((_pixels() % 256).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([_patch_sof(buf.getvalue(), 0xC0, BOMB_SIDE, BOMB_SIDE)])
    return _save(ds, path)


def _jpegls_sof_bomb(path: Path) -> Path:
    ds = _compressed(JPEGLSLossless)
    return _save(_with_frame(ds, _patch_sof(_frame(ds), 0xF7, BOMB_SIDE, BOMB_SIDE)), path)


def _rle_bad_count(path: Path) -> Path:
    ds = _compressed(RLELossless)
    frame = bytearray(_frame(ds))
    struct.pack_into("<I", frame, 0, 7)
    return _save(_with_frame(ds, bytes(frame)), path)


def _rle_offset_past_end(path: Path) -> Path:
    ds = _compressed(RLELossless)
    frame = bytearray(_frame(ds))
    struct.pack_into("<I", frame, 8, len(frame) + 1000)
    return _save(_with_frame(ds, bytes(frame)), path)


def _rle_claims_huge(path: Path) -> Path:
    ds = _compressed(RLELossless)
    ds.Rows, ds.Columns = 16000, 7000
    return _save(ds, path)


def _fragment_past_end(path: Path) -> Path:
    ds = _compressed(JPEG2000Lossless)
    value = bytearray(ds.PixelData)
    # the first fragment item follows the Basic Offset Table item
    (bot,) = struct.unpack_from("<I", value, 4)
    struct.pack_into("<I", value, 8 + bot + 4, len(value) * 4)
    ds.PixelData = bytes(value)
    return _save(ds, path)


def _offset_table_outside(path: Path) -> Path:
    ds = _compressed(RLELossless)
    frame = _frame(ds)
    ds.PixelData = encapsulate([frame], has_bot=True)
    value = bytearray(ds.PixelData)
    struct.pack_into("<I", value, 8, 10_000_000)
    ds.PixelData = bytes(value)
    return _save(ds, path)


def _deflated(path: Path) -> Path:
    ds = make_mg_dataset(ROWS, COLUMNS, pixels=_pixels())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _save(ds, path)


def _deflated_body(path: Path, body_tail: Callable[[zlib._Compress], bytes]) -> Path:
    """A Deflated file: a small valid data set, then ``body_tail`` compressed after it."""
    ds = make_mg_dataset(ROWS, COLUMNS, pixels=_pixels())
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    whole = buf.getvalue()
    meta_end = 132 + 12 + struct.unpack_from("<I", whole, 132 + 8)[0]
    body = whole[meta_end:]
    meta_ds = pydicom.dcmread(BytesIO(whole), stop_before_pixels=True).file_meta
    meta_ds.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta_buf = BytesIO()
    pydicom.filewriter.write_file_meta_info(meta_buf, meta_ds, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    compressed = deflater.compress(body) + body_tail(deflater) + deflater.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta_buf.getvalue() + compressed)
    return path


def _deflate_bomb(path: Path) -> Path:
    def tail(deflater: zlib._Compress) -> bytes:
        # a private OB element (after Pixel Data, in tag order) of 1 GiB of zeros
        head = struct.pack("<HH2sHI", 0x7FE1, 0x0010, b"OB", 0, DEFLATE_BOMB_BYTES)
        chunk = bytes(1 << 24)
        parts = [deflater.compress(head)]
        parts += [deflater.compress(chunk) for _ in range(DEFLATE_BOMB_BYTES // len(chunk))]
        return b"".join(parts)

    return _deflated_body(path, tail)


def _deflate_zero_flood(path: Path) -> Path:
    return _deflated_body(path, lambda d: d.compress(bytes(64 << 20)))


def _nan_window(path: Path) -> Path:
    ds = make_mg_dataset(ROWS, COLUMNS, windows=[(float("nan"), 400, "NAN"), (2000, float("inf"), "INF"),
                                                 (2000, 4000, "GOOD")])
    return _save(ds, path)


def _window_outside(path: Path) -> Path:
    return _save(make_mg_dataset(ROWS, COLUMNS, windows=[(1e9, 10, "FAR"), (2000, 4000, "GOOD")]), path)


def _voi_lut(descriptor: list[int], data: list[int]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        ds = make_mg_dataset(ROWS, COLUMNS)
        ds.VOILUTSequence = [_lut_item(descriptor, data)]
        return _save(ds, path)

    return write


def _nan_slope(path: Path) -> Path:
    ds = make_mg_dataset(ROWS, COLUMNS, windows=[(2000, 4000, "GOOD")])
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "nan", "0", "US"
    return _save(ds, path)


def _bad_charset(path: Path) -> Path:
    ds = make_mg_dataset(ROWS, COLUMNS)
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.PatientName = b"M\xfcller^Anna"
    return _save(ds, path)


def _valid(path: Path) -> Path:
    return _save(make_mg_dataset(ROWS, COLUMNS, pixels=_pixels()), path)


def _truncated(path: Path) -> Path:
    _valid(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


def _garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(15).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _non_utf8_name(path: Path) -> Path:
    target = Path(os.fsdecode(os.fsencode(path.parent) + b"/caf\xe9-\xff.dcm"))
    return _valid(target)


def _symlink_to_garbage(path: Path) -> Path:
    # the target lies outside the corpus folder: a folder import meets the link only
    target = _garbage(path.parent.parent / f"{path.parent.name}-link-targets" / "garbage-target.bin")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target.resolve())
    return path


CASES: tuple[Case, ...] = (
    Case("j2k-siz-46000.dcm", _j2k_siz_bomb, code="corrupt-pixel-data",
         reason="JPEG 2000 codestream is 46000x46000"),
    Case("j2k-million-tiles.dcm", _j2k_many_tiles, code="corrupt-pixel-data", reason="tiles"),
    Case("jpeg-sof-46000.dcm", _jpeg_sof_bomb, code="corrupt-pixel-data", reason="JPEG codestream is 46000x46000"),
    Case("jpegls-sof55-46000.dcm", _jpegls_sof_bomb, code="corrupt-pixel-data",
         reason="JPEG-LS codestream is 46000x46000"),
    Case("rle-segment-count.dcm", _rle_bad_count, code="corrupt-pixel-data", reason="RLE header declares 7 segments"),
    Case("rle-offset-past-end.dcm", _rle_offset_past_end, code="corrupt-pixel-data", reason="segment offsets"),
    Case("rle-claims-16000x7000.dcm", _rle_claims_huge, code="corrupt-pixel-data", reason="too few to expand"),
    Case("fragment-past-end.dcm", _fragment_past_end, code="corrupt-pixel-data", reason="claims"),
    Case("offset-table-outside.dcm", _offset_table_outside, code="corrupt-pixel-data",
         reason="Basic Offset Table"),
    Case("deflate-bomb-1gib.dcm", _deflate_bomb, code="corrupt-pixel-data", reason="inflates to more than",
         cheap=False),
    Case("deflate-zero-flood.dcm", _deflate_zero_flood, code="not-dicom", reason="deflated data set damaged",
         cheap=False),
    Case("deflated-valid.dcm", _deflated, expect="ok"),
    Case("window-nan-inf.dcm", _nan_window, expect="ok", reason="is not a finite number"),
    Case("window-outside-values.dcm", _window_outside, expect="ok", reason="lies outside the image's values"),
    Case("voi-lut-4096-holds-3.dcm", _voi_lut([4096, 0, 12], [0, 1, 2]), expect="ok",
         reason="declares 4096 entries but LUT Data holds 3"),
    Case("voi-lut-descriptor-2-values.dcm", _voi_lut([4096, 0], [0, 1, 2]), expect="ok",
         reason="LUT Descriptor has 2 values"),
    Case("voi-lut-constant.dcm", _voi_lut([16, 0, 12], [7] * 16), expect="ok", reason="every entry is 7"),
    Case("rescale-slope-nan.dcm", _nan_slope, expect="ok", reason="identity rescale used"),
    Case("charset-unknown.dcm", _bad_charset, expect="ok"),
    Case("non-utf8-name", _non_utf8_name, expect="ok"),
    Case("truncated.dcm", _truncated, code="corrupt-pixel-data", reason="truncated"),
    Case("garbage.bin", _garbage, code="not-dicom", reason="not a DICOM file"),
    Case("empty.dcm", _empty, code="not-dicom", reason="DICOM"),
    Case("link-to-garbage.dcm", _symlink_to_garbage, code="not-dicom", reason="not a DICOM file"),
)


def write_corpus(folder: Path, cases: tuple[Case, ...] = CASES) -> list[Case]:
    """Write every case under ``folder``; returns them with ``path`` set."""
    out = []
    for case in cases:
        written = case.write(folder / case.name)
        out.append(Case(case.name, case.write, case.expect, case.code, case.reason, case.cheap, written))
    return out
