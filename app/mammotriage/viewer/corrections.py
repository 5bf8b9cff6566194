"""The reader's corrections of one exam: events in, labels out (no Qt).

Every method appends one event to the correction log (durable when the method returns):
the SQLite :class:`~mammotriage.store.events.CorrectionLog` standalone, the site store's
:class:`~mammotriage.viewer.site_log.SiteLog` in site mode (any :class:`CorrectionStore`), and recomputes the labels as a fold over the
exam's events, so what the viewer shows is always what the store holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mammotriage.store.events import CorrectionError, Event
from mammotriage.store.labels import Label, ReaderLabels, fold, undo_history
from mammotriage.viewer.state import Signal


class CorrectionStore(Protocol):
    """What the corrections code needs of a correction log (the backend stays unknown)."""

    def append(self, *, reader: str, exam_key: str, action: str, study_uid: str = "", series_uid: str = "",
               sop_uid: str = "", pixel_sha256: str = "", model_version: str = "", target: str = "",
               kind: str = "", geometry: dict[str, Any] | None = None,
               payload: dict[str, Any] | None = None) -> Event: ...

    def events(self, exam_key: str | None = None, sop_uid: str | None = None) -> list[Event]: ...


@dataclass(frozen=True)
class ImageInfo:
    sop_uid: str
    study_uid: str
    series_uid: str
    pixel_sha256: str


class ExamCorrections:
    """Corrections of one exam by one reader, against the AI marks on screen."""

    def __init__(self, log: CorrectionStore, exam_key: str, reader: str):
        self.log = log
        self.exam_key = exam_key
        self.reader = reader
        self.images: dict[str, ImageInfo] = {}
        self.ai_marks: dict[str, list[dict[str, Any]]] = {}
        self.model_version = ""
        self.changed = Signal()
        self._events: list[Event] = log.events(exam_key=exam_key)
        self.labels: dict[str, ReaderLabels] = {}
        self._refold()

    def known_events(self) -> list[Event]:
        """The exam's events as this reader has them now (their own as soon as made, sent
        or not; under double reading, what blinding lets them see)."""
        return list(self._events)

    def reload(self) -> None:
        """Read the exam's events from the log again (site mode: another workstation's
        corrections arrived) and refold."""
        self._events = self.log.events(exam_key=self.exam_key)
        self._refold()

    # ----------------------------------------------------------------- inputs
    def set_image(self, info: ImageInfo) -> None:
        self.images[info.sop_uid] = info

    def set_ai(self, model_version: str, marks: dict[str, list[dict[str, Any]]]) -> None:
        """The AI marks shown (per SOP Instance UID), from ``model_version``."""
        self.model_version = model_version
        self.ai_marks = {sop: list(m) for sop, m in marks.items()}
        self._refold()

    def _refold(self) -> None:
        self.labels = fold(self._events, self.ai_marks, self.model_version, readers=[self.reader])
        self.changed.emit()

    def mine(self) -> ReaderLabels:
        return self.labels[self.reader]

    @property
    def signed(self) -> bool:
        """This reader signed the exam (and did not amend it since)."""
        return self.labels[self.reader].signed

    def _check_open(self) -> None:
        if self.signed:
            raise CorrectionError("this exam is signed: re-open it with an amendment (Ctrl+Shift+E) first")

    def labels_for(self, sop_uid: str) -> list[Label]:
        """This reader's labels of one image (AI marks start unreviewed)."""
        return self.labels[self.reader].labels(sop_uid)

    # ----------------------------------------------------------------- events
    def _image_event(self, sop_uid: str, action: str, **kw: Any) -> Event:
        self._check_open()
        info = self.images.get(sop_uid)
        if info is None:
            raise KeyError(f"image {sop_uid} is not open")
        event = self.log.append(reader=self.reader, exam_key=self.exam_key, action=action,
                                study_uid=info.study_uid, series_uid=info.series_uid, sop_uid=sop_uid,
                                pixel_sha256=info.pixel_sha256, model_version=self.model_version, **kw)
        self._events.append(event)
        self._refold()
        return event

    def accept(self, sop_uid: str, label_id: str) -> Event:
        return self._image_event(sop_uid, "accept", target=label_id)

    def reject(self, sop_uid: str, label_id: str) -> Event:
        return self._image_event(sop_uid, "reject", target=label_id)

    def adjust(self, sop_uid: str, label_id: str, geometry: dict[str, Any]) -> Event:
        return self._image_event(sop_uid, "adjust", target=label_id, geometry=geometry)

    def change_kind(self, sop_uid: str, label_id: str, kind: str) -> Event:
        return self._image_event(sop_uid, "change_kind", target=label_id, kind=kind)

    def add(self, sop_uid: str, kind: str, geometry: dict[str, Any], suspicion: float | None = None) -> Event:
        payload = {} if suspicion is None else {"suspicion": round(float(suspicion), 3)}
        return self._image_event(sop_uid, "add", kind=kind, geometry=geometry, payload=payload)

    def delete(self, sop_uid: str, label_id: str) -> Event:
        return self._image_event(sop_uid, "delete", target=label_id)

    def _exam_event(self, action: str, payload: dict[str, Any]) -> Event:
        if action != "amend":
            self._check_open()
        event = self.log.append(reader=self.reader, exam_key=self.exam_key, action=action, payload=payload,
                                model_version=self.model_version)
        self._events.append(event)
        self._refold()
        return event

    def set_birads(self, value: int) -> Event:
        return self._exam_event("birads", {"birads": int(value)})

    def set_density(self, value: str) -> Event:
        return self._exam_event("density", {"density": value})

    def set_note(self, text: str) -> Event:
        return self._exam_event("note", {"text": text})

    def sign(self, assessment: dict[str, Any]) -> Event:
        """Sign the per-breast assessment (see :mod:`mammotriage.store.assessment`)."""
        return self._exam_event("sign", assessment)

    def amend(self, reason: str) -> Event:
        """Re-open a signed exam; the reason is part of the record."""
        if not self.signed:
            raise CorrectionError("this exam is not signed: nothing to amend")
        return self._exam_event("amend", {"reason": reason})

    # ----------------------------------------------------------------- undo / redo
    def _stacks(self) -> tuple[list[str], list[str]]:
        """(undoable event ids, redoable event ids) of this reader, most recent last."""
        history = undo_history(self._events)
        return history.done.get(self.reader, []), history.redoable.get(self.reader, [])

    def undo(self) -> Event | None:
        return self._step("undo")

    def redo(self) -> Event | None:
        return self._step("redo")

    def _step(self, action: str) -> Event | None:
        """Undo (or redo) this reader's most recent undoable (redoable) event; None: nothing to do."""
        self._check_open()
        done, undone = self._stacks()
        stack = done if action == "undo" else undone
        return self._exam_event_target(action, stack[-1]) if stack else None

    def _exam_event_target(self, action: str, target: str) -> Event:
        event = self.log.append(reader=self.reader, exam_key=self.exam_key, action=action, target=target,
                                model_version=self.model_version)
        self._events.append(event)
        self._refold()
        return event

