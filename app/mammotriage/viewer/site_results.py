"""A site workstation takes the site AI workers' results instead of analysing the exams again.

At a site the AI workers triage every stable study of the site archive (the shared
queue, :mod:`mammotriage.triage.site_queue`) and store each result in ``triage_results``.
A workstation runs the same model (the site registry's active one), and before this it
analysed every exam a second time on its own CPU, for the same figures.

:class:`SiteResultsFeed` runs on a daemon thread with its own connections (one to the
site's PostgreSQL, one to the workstation's archive): every ``every_s`` seconds, and at
once after :meth:`poke` (a study arrived from the site archive), it takes the exams whose
triage job here is waiting or failed under the active model, asks the site for their
jobs under the same weights (sha256) and, where the site holds a result for the image
set its job is for now, and that set is exactly the one this workstation holds (the
digest of the SOP Instance UIDs, :func:`mammotriage.digest.image_set_digest`), stores it
as this workstation's result (:meth:`TriageQueue.adopt`, with the suspicion maps the
result carries, :mod:`mammotriage.triage.maps`) and marks the job done. An exam whose
images differ (a view not fetched yet, a study imported here only) or whose result the
site does not have yet waits; the workstation's own triage worker takes a job only
after ``site/local_triage_after_s`` (or at once when a reader opens the exam), so a site
without a running AI worker still gets its exams analysed, by the workstations.

A result that cannot be used (it names an image this workstation does not hold, a view
without a score, a map that does not decode) is said once, with its reason, and left:
the exam is analysed here in time. While the server is away (or refuses the reading)
nothing is taken, ``say`` tells the window once, with the reason, and again when the
results can be read again; the thread tries on each turn.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mammotriage.digest import image_set_digest
from mammotriage.store.archive import Archive
from mammotriage.triage.maps import MapError, unpack_map
from mammotriage.triage.queue import TriageQueue
from mammotriage.triage.site_queue import SiteQueue
from mammotriage.viewer.double_feed import PolledFeed

__all__ = ["DEFAULT_LOCAL_TRIAGE_AFTER_S", "SiteResultsFeed", "result_images"]

log = logging.getLogger(__name__)

#: how long a site workstation leaves an exam to the site's AI workers before analysing it itself
DEFAULT_LOCAL_TRIAGE_AFTER_S = 600.0
#: exams asked for in one query
BATCH = 200


class UnusableResult(ValueError):
    """A site result this workstation cannot store as its own; the message says why."""


def _number(value: Any, lo: float, hi: float) -> float | None:
    """``value`` as a float in [lo, hi], or None (not a number, a bool, NaN, out of range, too large)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        v = float(value)
    except OverflowError:
        return None
    return v if lo <= v <= hi else None


_STATS = ("mean", "std", "p05", "p95", "breast_frac")


def _finding(sop: str, f: Any) -> dict[str, Any]:
    if not isinstance(f, dict) or not isinstance(f.get("kind"), str):
        raise UnusableResult(f"image {sop}: a finding is not an object with a kind")
    box = f.get("box")
    coords = [_number(v, -1e7, 1e7) for v in box] if isinstance(box, list) and len(box) == 4 else [None]
    if any(c is None for c in coords):
        raise UnusableResult(f"image {sop}: a finding's box {box!r} is not four numbers")
    if _number(f.get("score"), 0.0, 1.0) is None:
        raise UnusableResult(f"image {sop}: a finding's score {f.get('score')!r} is not a number in [0, 1]")
    return f


def result_images(result: dict[str, Any], held: set[str]) -> list[dict[str, Any]]:
    """The per-view records of a site result, as :meth:`TriageQueue.adopt` stores them
    (suspicion maps unpacked). ``held``: the SOP Instance UIDs of the exam here; a result
    naming another image, a view without a usable score, laterality or findings, or a
    map that does not decode raises :class:`UnusableResult` (statistics that are not
    numbers are dropped: only monitoring reads them)."""
    views = result.get("images") if isinstance(result, dict) else None
    if not isinstance(views, list) or not views:
        raise UnusableResult("the result lists no analysed view")
    out = []
    for view in views:
        if not isinstance(view, dict) or not isinstance(view.get("sop_uid"), str):
            raise UnusableResult("a view of the result has no SOP Instance UID")
        sop = view["sop_uid"]
        if sop not in held:
            raise UnusableResult(f"the result names image {sop}, which this workstation does not hold")
        score = _number(view.get("score"), 0.0, 1.0)
        if score is None:
            raise UnusableResult(f"image {sop}: the score {view.get('score')!r} is not a number in [0, 1]")
        if view.get("laterality") not in ("L", "R") or not isinstance(view.get("view"), str):
            raise UnusableResult(f"image {sop}: laterality {view.get('laterality')!r} / view "
                                 f"{view.get('view')!r} is not a breast view")
        findings = view.get("findings")
        if not isinstance(findings, list):
            raise UnusableResult(f"image {sop}: the findings are not a list")
        stats = view.get("stats")
        numbers = [_number(stats.get(k), -1e9, 1e9) for k in _STATS] if isinstance(stats, dict) else [None]
        item = {"sop_uid": sop, "laterality": view["laterality"], "view": view["view"], "score": score,
                "findings": [_finding(sop, f) for f in findings],
                "stats": dict(zip(_STATS, numbers, strict=True)) if None not in numbers else None,
                "map_factor": _number(view.get("map_factor"), 1e-6, 1e6)}
        packed = view.get("suspicion_map")
        if packed is not None:
            try:
                item["suspicion"] = unpack_map(packed)
            except MapError as exc:
                raise UnusableResult(f"image {sop}: its suspicion map: {exc}") from exc
        out.append(item)
    return out


def _short(text: str, limit: int = 160) -> str:
    """The first line of a reason, at most ``limit`` characters (a log line, not a trace)."""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


class SiteResultsFeed(PolledFeed):
    """Takes the site workers' results for this workstation's waiting exams (see the module text)."""

    def __init__(self, dsn: str, archive_file: str | Path, data_dir: str | Path, *, every_s: float = 5.0,
                 say: Callable[[str], None] | None = None) -> None:
        super().__init__("site-results-feed", every_s)
        self.archive_file = Path(archive_file)
        self.maps_dir = Path(data_dir) / "ai_maps"
        self.say = say or (lambda _text: None)
        self._site = self._client = SiteQueue(dsn)
        self._model: tuple[str, str] | None = None
        self._taken: list[tuple[str, str]] = []
        self._said: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        #: why the last turn failed (None: it reached the server)
        self.away: str | None = None
        # the archive's connections, opened by the thread on its first turn and kept
        self._queue: TriageQueue | None = None
        self._archive: Archive | None = None

    def set_model(self, version: str | None, weights_sha256: str | None) -> None:
        """The model whose results are taken (the workstation's active one; None: none)."""
        with self._lock:
            self._model = (version, weights_sha256) if version and weights_sha256 else None
        self._wake.set()

    def take(self) -> list[tuple[str, str]]:
        """(exam key, worker) of each result stored since the last call (for the window)."""
        with self._lock:
            out, self._taken = self._taken, []
        return out

    def pull_once(self) -> int:
        """One turn: the number of site results stored here."""
        with self._lock:
            model = self._model
        if model is None:
            return 0
        version, sha = model
        try:
            taken = self._pull(version, sha)
        except Exception as exc:  # noqa: BLE001 - the server away, or a refused answer: next turn
            first = self.away is None
            self.away = f"{type(exc).__name__}: {exc}".strip()
            log.debug("site results not read: %s", self.away)
            if first and not self._stop.is_set():  # said once per spell, not every turn
                if isinstance(exc, sqlite3.Error | OSError):  # this workstation's archive or its map files
                    self.say(f"the site's AI results cannot be stored on this workstation "
                             f"({_short(self.away)}): its waiting exams are analysed here after their wait")
                else:
                    self.say(f"the site's AI results cannot be read ({_short(self.away)}): this workstation's "
                             "waiting exams are analysed here after their wait")
            return 0
        if self.away is not None:
            self.say("the site's AI results are read again")
        self.away = None
        return taken

    def _pull(self, version: str, sha: str) -> int:
        taken = 0
        if self._queue is None:
            self._queue = TriageQueue(self.archive_file)
        if self._archive is None:  # apart: a failing Archive() leaves the queue kept (and closed later)
            self._archive = Archive(self.archive_file)
        queue, archive = self._queue, self._archive
        waiting = [j.exam_key for j in queue.jobs(version, statuses=("pending", "failed"))]
        for start in range(0, len(waiting), BATCH):
            if self._stop.is_set():
                break
            for row in self._site.current(sha, waiting[start:start + BATCH]):
                if self._stop.is_set():  # closed: no more writes for a window that is gone
                    break
                if row.get("result") is None:
                    continue
                try:
                    taken += self._take(queue, archive, version, sha, row)
                except UnusableResult as exc:
                    self._say_once(str(row["exam_key"]), f"the site's AI result for exam {row['exam_key']} "
                                                         f"is not used: {exc}; it is analysed here")
        return taken

    def _run(self) -> None:
        try:
            super()._run()
        finally:  # the thread's own turn is over: nothing uses the archive's connections now
            self._close_local()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread; the archive's connections are closed by whichever ends last
        (a turn still running after ``timeout``, e.g. a large adopt, closes them itself
        when it stops; before, they were closed under it)."""
        super().close(timeout)
        if not self._thread.is_alive():
            self._close_local()

    def _close_local(self) -> None:
        with self._lock:
            local, self._queue, self._archive = (self._queue, self._archive), None, None
        for conn in local:
            if conn is not None:
                conn.close()

    def _take(self, queue: TriageQueue, archive: Archive, version: str, sha: str, row: dict[str, Any]) -> int:
        """Store one site result here (1) or leave it (0); :class:`UnusableResult` says why not."""
        exam = archive.exam(str(row["exam_key"]))
        if exam is None:
            return 0
        held = {i.sop_uid for i in exam.images}
        digest = image_set_digest(held)
        if row.get("images") is not None and row["images"] != digest:
            return 0  # the site analysed another image set: a view is missing here, or more came
        try:
            images = result_images(row["result"], held)
        except UnusableResult:
            raise
        except Exception as exc:  # whatever else the JSON holds: this result fails, not the feed
            raise UnusableResult(f"{type(exc).__name__}: {exc}") from exc
        if {i["sop_uid"] for i in images} != held:
            return 0  # only a result on every image here stands for the exam (the set may be unrecorded)
        if queue.adopt(exam.exam_key, version, sha, images, maps_dir=self.maps_dir, image_set=digest) is None:
            return 0  # taken by this workstation's worker meanwhile, or a view arrived
        with self._lock:
            self._taken.append((exam.exam_key, str(row.get("worker_id") or "a site worker")))
        return 1

    def _say_once(self, exam_key: str, text: str) -> None:

        if (exam_key, text) not in self._said:
            self._said.add((exam_key, text))
            log.warning("%s", text)
            self.say(text)
