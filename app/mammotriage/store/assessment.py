"""Finishing a read: the per-breast assessment a reader signs, and the site's reading policy.

A signed read is a ``sign`` correction event whose payload is the assessment::

    {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": "4A", "density": "b"}},
     "recall": true}

BI-RADS categories are those of the ACR BI-RADS Atlas 5th edition (0, 1, 2, 3, 4A, 4B,
4C, 5, 6), density the ACR 5th-edition categories a-d. A signed exam changes only after
an ``amend`` event (payload ``{"reason": text}``) re-opens it; the next ``sign`` closes it
again. Both are appended like every correction, so the history of a read is kept.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: BI-RADS assessment categories (ACR BI-RADS Atlas, 5th edition) and their names.
BIRADS = {
    "0": "incomplete - need additional imaging",
    "1": "negative",
    "2": "benign",
    "3": "probably benign",
    "4A": "low suspicion for malignancy",
    "4B": "moderate suspicion for malignancy",
    "4C": "high suspicion for malignancy",
    "5": "highly suggestive of malignancy",
    "6": "known biopsy-proven malignancy",
}
#: Breast composition (ACR BI-RADS Atlas, 5th edition).
DENSITY = {
    "a": "almost entirely fatty",
    "b": "scattered areas of fibroglandular density",
    "c": "heterogeneously dense",
    "d": "extremely dense",
}
#: Categories that call the woman back from screening (the default recall decision).
RECALL_BIRADS = frozenset({"0", "4A", "4B", "4C", "5"})
BREASTS = ("R", "L")


class AssessmentError(ValueError):
    """An assessment that cannot be signed."""


def birads_text(code: str) -> str:
    """``"4A - low suspicion for malignancy"``."""
    return f"{code} - {BIRADS[code]}" if code in BIRADS else str(code)


def default_recall(breasts: dict[str, dict[str, str]]) -> bool:
    return any(b.get("birads") in RECALL_BIRADS for b in breasts.values())


def validate_assessment(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload of a ``sign`` event, checked; raises :class:`AssessmentError`."""
    if not isinstance(payload, dict):
        raise AssessmentError("an assessment is a mapping")
    breasts = payload.get("breasts")
    if not isinstance(breasts, dict) or not breasts or set(breasts) - set(BREASTS):
        raise AssessmentError("an assessment needs the breasts assessed (R and/or L)")
    clean: dict[str, dict[str, str]] = {}
    for side, value in breasts.items():
        if not isinstance(value, dict):
            raise AssessmentError(f"breast {side}: expected birads and density")
        birads = str(value.get("birads", ""))
        density = str(value.get("density", "")).lower()
        if birads not in BIRADS:
            raise AssessmentError(f"breast {side}: BI-RADS must be one of {', '.join(BIRADS)}, not {birads!r}")
        if density not in DENSITY:
            raise AssessmentError(f"breast {side}: density must be a, b, c or d, not {density!r}")
        clean[side] = {"birads": birads, "density": density}
    recall = payload.get("recall")
    if not isinstance(recall, bool):
        raise AssessmentError("an assessment needs a recall decision (true or false)")
    return {"breasts": clean, "recall": recall}


def validate_arbitration(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload of an ``arbitrate`` event (double reading), checked: the consensus
    assessment (as for ``sign``) plus ``role`` ``"arbitration"``, the discordance ``rule``
    applied, its ``reasons`` and the two ``reads`` arbitrated (reader and the ``seq`` of
    their ``sign`` event); raises :class:`AssessmentError`."""
    if not isinstance(payload, dict):
        raise AssessmentError("an arbitration is a mapping")
    clean = validate_assessment(payload)
    reads = payload.get("reads")
    if not isinstance(reads, list) or len(reads) != 2 or not all(
            isinstance(r, dict) and str(r.get("reader", "")).strip() and isinstance(r.get("seq"), int)
            for r in reads):
        raise AssessmentError("an arbitration names the two reads it arbitrates (reader and sign event)")
    if reads[0]["reader"] == reads[1]["reader"]:
        raise AssessmentError("the two reads of an arbitration come from two readers")
    reasons = payload.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise AssessmentError("an arbitration's reasons are a list of texts")
    return {**clean, "role": "arbitration", "rule": str(payload.get("rule", "")),
            "reasons": list(reasons),
            "reads": [{"reader": str(r["reader"]), "seq": int(r["seq"])} for r in reads]}


def assessment_text(payload: dict[str, Any]) -> str:
    """One line: ``R 1 negative (b) · L 4A low suspicion ... (b) · RECALL``."""
    parts = [f"{side} {birads_text(b['birads'])} (density {b['density']})"
             for side, b in sorted(payload.get("breasts", {}).items(), reverse=True)]
    parts.append("RECALL" if payload.get("recall") else "no recall")
    return " · ".join(parts)


# --------------------------------------------------------------------------- read state


@dataclass(frozen=True)
class ReadState:
    """Where an exam stands: ``unread``, ``started`` (corrections, not signed),
    ``signed`` or ``reopened`` (amended after signing, not signed again)."""

    state: str
    reader: str = ""
    at: str = ""
    assessment: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        if self.state in ("signed", "reopened", "started") and self.reader:
            return f"{self.state} · {self.reader}"
        return self.state

    @property
    def is_read(self) -> bool:
        return self.state == "signed"


UNREAD = ReadState("unread")


#: the tables read states come from: the workstation's own log, the copy of the site's chain
READ_TABLES = ("correction_events", "site_events")


def read_states(conn: sqlite3.Connection, keys: Sequence[str] | None = None, *,
                table: str = "correction_events") -> dict[str, ReadState]:
    """Read state of every exam with events (or of the exams ``keys`` only), from the
    correction log (one query), or in site mode from ``table="site_events"``."""
    if table not in READ_TABLES:
        raise ValueError(f"read states come from {' or '.join(READ_TABLES)}, not {table!r}")
    out: dict[str, ReadState] = {}
    if keys is None:
        rows = conn.execute(
            f"SELECT exam_key, reader, action, at, payload FROM {table} ORDER BY seq").fetchall()
    else:
        rows = []
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            rows += conn.execute(
                f"SELECT exam_key, reader, action, at, payload, seq FROM {table} "
                f"WHERE exam_key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        rows = [r[:5] for r in sorted(rows, key=lambda r: r[5])]
    for exam_key, reader, action, at, payload in rows:
        out[exam_key] = next_read_state(out.get(exam_key), reader, action, at, payload)
    return out


def next_read_state(state: ReadState | None, reader: str, action: str, at: str, payload: str) -> ReadState:
    """An exam's read state after one more event (``state`` None: it had none)."""
    if action in ("sign", "arbitrate"):
        return ReadState("signed", reader, at, json.loads(payload) if payload else None)
    if action == "amend":
        return ReadState("reopened", reader, at, state.assessment if state else None)
    return state if state is not None and state.state != "unread" else ReadState("started", reader, at)


# --------------------------------------------------------------------------- policy


READING_MODES = ("on demand", "after read")


@dataclass(frozen=True)
class ReadingPolicy:
    """The site's reading policy, ``reading_policy.json`` in the data directory::

        {"reading_mode": "after read", "enforced": true, "triage_order": true}

    ``reading_mode`` is the mode readers start in; with ``enforced`` they cannot switch
    it (Ctrl+M is refused). ``triage_order`` false lists exams by date instead of by
    suspicion while AI is blind, so that the order does not give the AI away.
    """

    reading_mode: str | None = None
    enforced: bool = False
    triage_order: bool = True
    source: str = ""

    FILE = "reading_policy.json"

    @classmethod
    def load(cls, folder: Path) -> ReadingPolicy:
        """The policy of a data directory; a missing file is no policy. A broken file
        enforces blind reading (the safe side) and says why in ``source``."""
        path = Path(folder) / cls.FILE
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            mode = data.get("reading_mode")
            if mode is not None and mode not in READING_MODES:
                raise ValueError(f"reading_mode must be one of {READING_MODES}, not {mode!r}")
            return cls(mode, bool(data.get("enforced", False)), bool(data.get("triage_order", True)), str(path))
        except (OSError, ValueError, AttributeError, json.JSONDecodeError) as exc:
            return cls("after read", True, True, f"{path} unreadable ({exc}): blind reading enforced")

    def mode_for(self, preferred: str | None) -> str:
        """The mode a reader reads in, given the one they chose last."""
        if self.enforced and self.reading_mode:
            return self.reading_mode
        if preferred in READING_MODES:
            return preferred
        return self.reading_mode or "on demand"
