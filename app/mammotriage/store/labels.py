"""Current labels as a fold over correction events (nothing is updated in place).

For each reader and image the fold starts from the AI marks that were on screen
("original") and applies the reader's events in order: accept / reject an AI mark,
adjust its geometry, change its kind, add a finding the AI missed, delete one's own
finding. ``undo`` removes an event from the fold, ``redo`` puts it back. Exam-level
events give each reader's latest BI-RADS, density and note.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mammotriage.store.events import Event


def ai_target(model_version: str, sop_uid: str, index: int) -> str:
    """Stable identifier of the ``index``-th AI mark of an image for one model version."""
    return f"ai:{model_version}:{sop_uid}:{index}"


@dataclass(frozen=True)
class Label:
    """One finding as a reader currently sees it."""

    label_id: str  # ai:<version>:<sop>:<i> or reader:<event id of the "add">
    sop_uid: str
    source: str  # "ai" or "reader"
    status: str  # ai: "unreviewed" | "accepted" | "rejected"; reader: "added"
    kind: str
    geometry: dict[str, Any]
    score: float | None = None  # AI score, or the reader's suspicion (0-1) for added findings
    original_kind: str | None = None
    original_geometry: dict[str, Any] | None = None

    @property
    def is_positive(self) -> bool:
        """Counts as a finding in the final labels (accepted AI mark or reader finding)."""
        return self.status in ("accepted", "added")


@dataclass
class ReaderLabels:
    reader: str
    images: dict[str, dict[str, Label]] = field(default_factory=dict)  # sop -> label id -> label
    birads: int | None = None
    density: str | None = None
    note: str | None = None
    assessment: dict[str, Any] | None = None  # the last signed assessment
    signed: bool = False  # signed, and not re-opened by an amendment since

    def labels(self, sop_uid: str | None = None) -> list[Label]:
        if sop_uid is not None:
            return list(self.images.get(sop_uid, {}).values())
        return [lab for per in self.images.values() for lab in per.values()]


@dataclass
class UndoHistory:
    """What undo and redo did to a list of events (see :func:`undo_history`)."""

    undone: set[str] = field(default_factory=set)  # ids of events whose last undo/redo is an undo
    done: dict[str, list[str]] = field(default_factory=dict)  # reader -> undoable ids, most recent last
    redoable: dict[str, list[str]] = field(default_factory=dict)  # reader -> redoable ids, most recent last


def undo_history(events: Iterable[Event]) -> UndoHistory:
    """The one reading of undo and redo, over events in order.

    An ``undo`` takes its target out of the labels and a ``redo`` puts it back. Per
    reader, the undo stack holds the reader's own actions; undoing moves the latest to the
    redo stack, a new action ends the redo chain, and a signature or an amendment closes
    both (what was signed is final).
    """
    history = UndoHistory()
    for e in events:
        done = history.done.setdefault(e.reader, [])
        redoable = history.redoable.setdefault(e.reader, [])
        if e.action == "undo":
            history.undone.add(e.target)
            if e.target in done:
                done.remove(e.target)
                redoable.append(e.target)
        elif e.action == "redo":
            history.undone.discard(e.target)
            if e.target in redoable:
                redoable.remove(e.target)
                done.append(e.target)
        elif e.action in ("sign", "amend", "arbitrate"):
            done.clear()
            redoable.clear()
        else:
            done.append(e.event_id)
            redoable.clear()
    return history


def effective_events(events: Iterable[Event]) -> list[Event]:
    """Events that count after undo/redo (undo and redo themselves excluded)."""
    events = list(events)
    undone = undo_history(events).undone
    return [e for e in events if e.action not in ("undo", "redo") and e.event_id not in undone]


def fold(events: Iterable[Event], ai_marks: Mapping[str, list[dict[str, Any]]] | None = None,
         model_version: str = "", readers: Iterable[str] = ()) -> dict[str, ReaderLabels]:
    """Current labels per reader.

    Parameters
    ----------
    events
        Correction events of one exam, in order.
    ai_marks
        ``sop_uid -> [{"box", "kind", "score"}, ...]``: the AI marks shown (the
        "original" labels); each reader starts from them, unreviewed.
    model_version
        The version that produced ``ai_marks`` (part of the mark identifiers).
    readers
        Readers to include even without events (they see the AI marks unreviewed).
    """
    ai_marks = ai_marks or {}
    out: dict[str, ReaderLabels] = {}

    def start(reader: str) -> ReaderLabels:
        if reader not in out:
            rl = ReaderLabels(reader)
            for sop, marks in ai_marks.items():
                per = rl.images.setdefault(sop, {})
                for i, mark in enumerate(marks):
                    lid = ai_target(model_version, sop, i)
                    geometry = {"type": "box", "box": [float(v) for v in mark["box"]]}
                    per[lid] = Label(lid, sop, "ai", "unreviewed", mark["kind"], geometry,
                                     float(mark["score"]), mark["kind"], geometry)
            out[reader] = rl
        return out[reader]

    for reader in readers:
        start(reader)
    for e in effective_events(events):
        rl = start(e.reader)
        if e.action == "birads":
            rl.birads = int(e.payload["birads"])
            continue
        if e.action == "density":
            rl.density = str(e.payload["density"])
            continue
        if e.action == "note":
            rl.note = str(e.payload.get("text", ""))
            continue
        if e.action in ("sign", "arbitrate"):  # an arbitration is the arbitrator's signed read
            rl.assessment, rl.signed = dict(e.payload), True
            continue
        if e.action == "amend":
            rl.signed = False
            continue
        per = rl.images.setdefault(e.sop_uid, {})
        if e.action == "add":
            lid = f"reader:{e.event_id}"
            per[lid] = Label(lid, e.sop_uid, "reader", "added", e.kind, e.geometry or {},
                             e.payload.get("suspicion"))
            continue
        label = per.get(e.target)
        if label is None:
            continue  # acting on a mark this fold does not know (another model version)
        if e.action == "accept":
            per[e.target] = replace(label, status="accepted")
        elif e.action == "reject":
            per[e.target] = replace(label, status="rejected")
        elif e.action == "adjust":
            per[e.target] = replace(label, geometry=e.geometry or label.geometry,
                                    status="accepted" if label.source == "ai" else label.status)
        elif e.action == "change_kind":
            per[e.target] = replace(label, kind=e.kind,
                                    status="accepted" if label.source == "ai" else label.status)
        elif e.action == "delete" and label.source == "reader":
            del per[e.target]
    return out
