"""The one wall clock: the current time in UTC, for every stored timestamp."""

from __future__ import annotations

import datetime as _dt

__all__ = ["utc_datetime", "utc_now"]


def utc_datetime() -> _dt.datetime:
    """The current time, timezone-aware in UTC."""
    return _dt.datetime.now(_dt.UTC)


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601 text, ``2026-01-01T09:30:00+00:00`` by default.

    ``timespec`` is :meth:`datetime.datetime.isoformat`'s: ``"seconds"``,
    ``"milliseconds"`` or ``"microseconds"`` where order within a second matters.
    """
    return utc_datetime().isoformat(timespec=timespec)
