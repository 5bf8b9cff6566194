"""The one clock and the one file digest."""

from __future__ import annotations

import datetime as _dt
import hashlib

from mammotriage.clock import utc_datetime, utc_now
from mammotriage.digest import sha256_file, sha256_file_size


def test_utc_now_is_iso_utc_at_the_asked_precision() -> None:
    before = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    stamp = _dt.datetime.fromisoformat(utc_now())
    assert stamp.utcoffset() == _dt.timedelta(0) and stamp.microsecond == 0
    assert before - _dt.timedelta(minutes=5) <= stamp <= before + _dt.timedelta(minutes=5)
    assert len(utc_now("milliseconds").split("+")[0].split(".")[1]) == 3
    assert len(utc_now("microseconds").split("+")[0].split(".")[1]) == 6
    assert utc_datetime().tzinfo is _dt.UTC


def test_sha256_file_of_empty_small_and_multi_chunk_files(tmp_path) -> None:
    for size in (0, 5, (1 << 20) * 2 + 7):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()
        assert sha256_file_size(str(path)) == (hashlib.sha256(data).hexdigest(), len(data))
