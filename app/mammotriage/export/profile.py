"""PS3.15 Table E.1-1, the Basic Application Level Confidentiality Profile, as data.

``ps3_15_e1_1.tsv`` beside this module holds every attribute of the table with its
Basic Profile action (its header names the edition and where it was taken from).
De-identification (:mod:`mammotriage.export.deid`), the export's PHI scan
(:mod:`mammotriage.export.phi`) and the completeness check (:func:`check_profile`) all
read it, so no attribute of the standard's list can be forgotten by a hand-written list.

Compound actions (X/Z, X/D, Z/D, X/Z/D) depend on whether the IOD makes the attribute
Type 1, 2 or 3; :func:`resolve` picks one that is always allowed and keeps the file
valid for the mammography and SR objects exported here:

* X alone: removed; otherwise Z (zero length: Type 2 attributes stay, empty) when
  allowed;
* otherwise dates, times and sequences are removed when X is allowed, else get a dummy
  (a dummy date; an empty sequence stands in for a dummy one);
* every other attribute gets a dummy value of its VR (:data:`DUMMY`), or the
  pseudonym dicognito makes for names, IDs and UIDs;
* X/Z/U* (Referenced and Source Image Sequences): the sequence is kept and everything
  inside it follows the table (UIDs replaced consistently).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

__all__ = [
    "DUMMY",
    "SUPPLEMENT",
    "TABLE_RESOURCE",
    "ProfileEntry",
    "check_profile",
    "dummy_value",
    "entry_for",
    "resolve",
    "table",
]

TABLE_RESOURCE = "ps3_15_e1_1.tsv"
#: A non-identifying dummy value per VR (action D).
DUMMY: dict[str, Any] = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "LO": "ANONYMIZED",
    "LT": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "UC": "ANONYMIZED",
    "UT": "ANONYMIZED", "UR": "ANONYMIZED", "PN": "ANONYMIZED", "US": 0, "SS": 0, "UL": 0,
    "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0, "OB": b"\0\0", "OW": b"\0\0",
    "OD": b"\0" * 8, "OF": b"\0" * 4, "OL": b"\0" * 4, "OV": b"\0" * 8, "UN": b"\0\0",
}
_DATE_VRS = ("DA", "DT", "TM")


@dataclass(frozen=True)
class ProfileEntry:
    """One row of Table E.1-1."""

    tag: str  # GGGGEEEE, or a pattern (50XXXXXX, 60XX3000, GGGGEEEE = private)
    keyword: str
    action: str  # X, Z, D, U, X/Z, X/D, Z/D, X/Z/D, X/Z/U*
    name: str

    @property
    def options(self) -> frozenset[str]:
        return frozenset(self.action.replace("*", "").split("/"))


@cache
def table() -> tuple[ProfileEntry, ...]:
    """Every row of the table, in tag order."""
    text = resources.files("mammotriage.export").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        tag, keyword, action, name = line.split("\t")
        rows.append(ProfileEntry(tag, keyword, action, name))
    return tuple(rows)


#: Attributes not in the table's 2024e edition that are treated the same way: free text
#: found holding names in exported files (kept apart so the table stays the standard's).
SUPPLEMENT: tuple[ProfileEntry, ...] = (
    ProfileEntry("00189423", "AcquisitionProtocolName", "X", "Acquisition Protocol Name"),
)


@cache
def _by_tag() -> dict[int, ProfileEntry]:
    rows = (*table(), *SUPPLEMENT)
    return {int(e.tag, 16): e for e in rows if all(c in "0123456789ABCDEF" for c in e.tag)}


@cache
def _patterns() -> dict[str, ProfileEntry]:
    return {e.tag: e for e in table() if not all(c in "0123456789ABCDEF" for c in e.tag)}


def entry_for(tag: int | BaseTag) -> ProfileEntry | None:
    """The table row governing ``tag`` (exact, then 50xx/60xx groups, then private)."""
    tag = int(tag)
    exact = _by_tag().get(tag)
    if exact is not None:
        return exact
    group, element = tag >> 16, tag & 0xFFFF
    patterns = _patterns()
    if group & 1:
        return patterns.get("GGGGEEEE")
    if group & 0xFF00 == 0x5000:
        return patterns.get("50XXXXXX")
    if group & 0xFF00 == 0x6000:
        return patterns.get(f"60XX{element:04X}")
    return None


def resolve(entry: ProfileEntry, vr: str) -> str:
    """The one action taken: ``X``, ``Z``, ``D``, ``U`` or ``U*`` (see the module docstring)."""
    if entry.action == "X/Z/U*":
        return "U*"
    opts = entry.options
    if opts == {"U"}:
        return "U"
    if opts == {"X"}:
        return "X"
    if "Z" in opts:
        return "Z"
    if (vr in _DATE_VRS or vr == "SQ") and "X" in opts:
        return "X"
    return "D" if "D" in opts else "X"


def dummy_value(vr: str) -> Any:
    """The dummy for a VR (an empty sequence for SQ)."""
    return [] if vr == "SQ" else DUMMY.get(vr, "ANONYMIZED")


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or (
        isinstance(value, (list, tuple, pydicom.multival.MultiValue, pydicom.sequence.Sequence))
        and len(value) == 0)


def _same(a: DataElement, b: DataElement) -> bool:
    if a.VR == "SQ":
        return False  # compared item by item when kept
    return str(a.value) == str(b.value)


def _check(source: Dataset, result: Dataset | None, where: str) -> Iterator[str]:
    for element in source:
        entry = entry_for(element.tag)
        if entry is None or _empty(element.value):
            if element.VR == "SQ" and result is not None and element.tag in result:
                yield from _check_items(element, result[element.tag], where)
            continue
        name = element.keyword or str(element.tag)
        out = result.get(element.tag) if result is not None else None
        opts = entry.options
        label = f"{where}{name} ({entry.action})"
        if out is None:
            if "X" not in opts:
                yield f"{label}: removed, but the profile keeps it"
            continue
        if entry.action == "X/Z/U*" and element.VR == "SQ":
            yield from _check_items(element, out, where)
            continue
        if _empty(out.value):
            if "Z" not in opts and not (element.VR == "SQ" and "D" in opts):
                yield f"{label}: emptied, but the profile asks for {entry.action}"
            continue
        if element.VR == "SQ":
            yield f"{label}: sequence kept with its items"
            continue
        if _same(element, out):
            yield f"{label}: still holds its source value"
        elif not opts & {"Z", "D", "U"}:
            yield f"{label}: replaced, but the profile removes it"


def _check_items(source: DataElement, result: DataElement, where: str) -> Iterator[str]:
    name = source.keyword or str(source.tag)
    if result.VR != "SQ" or len(result.value) != len(source.value):
        return
    for i, (a, b) in enumerate(zip(source.value, result.value, strict=True)):
        yield from _check(a, b, f"{where}{name}[{i}]/")


def check_profile(source: Dataset, result: Dataset) -> list[str]:
    """Every way ``result`` (the de-identified ``source``) breaks Table E.1-1.

    For each attribute of ``source`` that has a row in the table and a value: removed
    only where X is allowed, emptied only where Z is, replaced (never left with its
    source value) where Z, D or U is; kept sequences are checked item by item.  The
    file meta (Media Storage SOP Instance UID) is checked too.
    """
    problems = list(_check(source, result, ""))
    if hasattr(source, "file_meta") and hasattr(result, "file_meta"):
        problems += _check(source.file_meta, result.file_meta, "file meta/")
    return problems
