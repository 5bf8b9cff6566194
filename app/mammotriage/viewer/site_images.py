"""A site workstation reads the site archive's exams: their images come over DICOMweb.

In site mode the images live in the site's archive (Orthanc), not on the workstation.
The workstation's own archive index (:class:`~mammotriage.store.archive.Archive`) stays
what the worklist, the hanging, the triage and the corrections read; what changes is
where its files come from:

* :class:`SiteStudyFeed` (a daemon thread) follows the archive's stable studies
  (:class:`~mammotriage.net.dicomweb.StableStudyWatcher`), lists each study's images
  with QIDO-RS (results, i.e. SR/SEG/presentation states, left out), fetches those the
  index does not hold yet with WADO-RS into the byte-bounded
  :class:`~mammotriage.net.dicomweb.InstanceCache` and indexes each file as it arrives
  (``Archive.import_paths``: hashed, checked, a bad file rejected with its reason). A
  study is then reported to ``arrived`` like a study the DICOM node received: the window
  shows it and queues it for triage. A late view or a retake makes the study stable
  again; only its new images are fetched, and the window queues the exam for triage
  again. A study is reported once all its images are indexed: one whose images could
  not all be had (a refused or bad instance) is tried again later (``retry_s``, doubling,
  :data:`MAX_TRIES` times; kept in ``site-archive-retry.json``), then reported with what
  it has, the missing images named in the log. The first start of a workstation takes
  the ``backfill`` newest studies of the archive (by study date, the oldest of them
  first, so the newest stay in the cache), then only what becomes stable from then on;
  where it stands is kept in the data directory, so a restart goes on where it stopped
  (the feed's end is recorded before the backfill, which is marked done only after its
  last study: a kill during it takes it again from the same end).
* The cache is bounded: an indexed file it evicted is fetched again when it is wanted.
  :class:`SiteImageFetcher` is the loader's side of that (``ProgressiveLoader.fetcher``):
  a view whose file is missing from the cache folder is fetched on a thread (never the
  UI's) before it is decoded, so opening an exam and the prefetch of the next ones
  bring their images back; a fetch that fails is the view's load error, naming the
  archive's reason, and what is open and decoded stays readable.

The archive being away is said once (``say``) and tried again with a growing pause;
that it is back is said once too. The archive refusing the workstation (credentials,
TLS) and a local failure (the data folder) are said once each, in their own words. Here at ``viewer`` level because it joins ``net``
(the DICOMweb client) and ``store`` (the index).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammotriage.jsonio import write_atomic
from mammotriage.net.dicomweb import DicomWebArchive, DicomWebError, StableStudyWatcher
from mammotriage.net.site_io import DicomWebExamSource, is_away
from mammotriage.store.archive import Archive
from mammotriage.viewer.loader import LoadError

__all__ = ["BACKFILL_FILE", "CACHE_FOLDER", "CHANGES_FILE", "DEFAULT_BACKFILL", "DEFAULT_CACHE_MB", "MAX_TRIES",
           "RETRY_FILE", "SiteImageFetcher", "SiteStudyFeed", "StudyArrival"]

log = logging.getLogger(__name__)

#: in the data directory: the fetched instances, the watcher's place in the archive's
#: changes feed, and the mark that the first start's backfill is done
CACHE_FOLDER = "site-cache"
CHANGES_FILE = "site-archive-changes.json"
BACKFILL_FILE = "site-archive-backfill.json"
RETRY_FILE = "site-archive-retry.json"
#: the cache's default size (a few days of a site's screening views)
DEFAULT_CACHE_MB = 20 * 1024
#: studies the first start of a workstation takes from the archive (the newest)
DEFAULT_BACKFILL = 200
#: the longest pause between two tries while the archive is away
MAX_PAUSE_S = 30.0
#: tries of a study whose images could not all be had, and the first pause between them
MAX_TRIES = 5
RETRY_S = 30.0
#: a failed fetch older than this, asked for again, is tried again (not served as the error)
STALE_FAILURE_S = 5.0


def _read_state(path: Path, otherwise: str) -> Any:
    """A state file's JSON (None when it is missing or unreadable: said in the log)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); %s", path, exc, otherwise)
        return None


def _write_state(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, sort_keys=True) + "\n").encode())


@dataclass
class StudyArrival:
    """What one pass over a study did."""

    study_uid: str
    #: images the archive holds (results left out)
    images: int = 0
    #: fetched now and indexed (not held before)
    indexed: int = 0
    #: "instance ...: reason" for each image that could not be fetched or indexed
    problems: list[str] = field(default_factory=list)


class SiteStudyFeed:
    """The site archive's studies into this workstation's index (see the module text).

    ``arrived(study_uid)`` is called for each study that got new images, once they are
    all indexed (on the feed's thread: a window queues it); ``say`` gets what a reader or
    the IT should know (the archive away and back, refusals, images that could not be had).
    """

    def __init__(self, archive: DicomWebArchive, index_file: str | Path, data_dir: str | Path, *,
                 backfill: int = DEFAULT_BACKFILL, every_s: float = 2.0, retry_s: float = RETRY_S,
                 arrived: Callable[[str], None] = lambda uid: None,
                 say: Callable[[str], None] = print) -> None:
        self.archive = archive
        self.source = DicomWebExamSource(archive)
        self.index_file = Path(index_file)
        self.data_dir = Path(data_dir)
        self.backfill = int(backfill)
        self.every_s = float(every_s)
        self.retry_s = float(retry_s)
        self.arrived = arrived
        self.say = say
        self.watcher: StableStudyWatcher | None = None
        self.away_since: float | None = None
        self._told: set[str] = set()
        self._retry: dict[str, dict[str, Any]] = self._load_retry()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- one study
    def sync_study(self, study_uid: str) -> StudyArrival:
        """Fetch and index the study's images the index does not hold yet (no report: see
        :meth:`take`).

        Raises :class:`ConnectionError` when the archive is away (nothing is lost: the
        study is taken again on the next pass, from what is indexed by then).
        """
        arrival = StudyArrival(study_uid)
        try:
            records = self.source.images(study_uid)
        except DicomWebError as exc:
            arrival.problems.append(str(exc))
            return arrival
        arrival.images = len(records)
        with Archive(self.index_file) as index:
            held = {img.sop_uid for img in index.images_for_study(study_uid)}
            for record in records:
                if record.sop_uid in held:
                    continue
                try:
                    path = self.archive.fetch_instance(record.study_uid, record.series_uid, record.sop_uid)
                except DicomWebError as exc:
                    if is_away(exc):
                        raise ConnectionError(str(exc)) from None
                    arrival.problems.append(str(exc))
                    continue
                report = index.import_paths([path])  # at once: a small cache may evict it next
                if report.imported or report.duplicates:
                    arrival.indexed += len(report.imported)
                    held.add(record.sop_uid)
                for rejected in report.rejected:
                    arrival.problems.append(f"instance {record.sop_uid} of study {study_uid}: {rejected.reason}")
        return arrival

    def take(self, study_uid: str) -> StudyArrival:
        """:meth:`sync_study`, then the report: ``arrived`` once the study is complete (or
        its tries are spent), a study with problems kept to be tried again."""
        arrival = self.sync_study(study_uid)
        earlier = self._retry.pop(study_uid, None)
        indexed = arrival.indexed + int(earlier["indexed"]) if earlier else arrival.indexed
        if arrival.problems:
            tries = int(earlier["tries"]) + 1 if earlier else 1
            if tries == 1:
                for problem in arrival.problems:
                    self.say(f"site archive: {problem} (tried again in {self.retry_s:.0f} s)")
            if tries < MAX_TRIES:
                self._retry[study_uid] = {"tries": tries, "indexed": indexed, "reason": arrival.problems[0],
                                          "next_at": time.time() + self.retry_s * 2 ** (tries - 1)}
            else:
                self.say(f"site archive: study {study_uid}: {len(arrival.problems)} image(s) could not be had "
                         f"after {tries} tries ({arrival.problems[0]}); the exam is shown with the "
                         f"{arrival.images - len(arrival.problems)} it has")
            self._save_retry()
            if study_uid in self._retry:
                return arrival
        elif earlier:
            self._save_retry()
        if indexed:
            self.arrived(study_uid)
        return arrival

    def _load_retry(self) -> dict[str, dict[str, Any]]:
        data = _read_state(self.data_dir / RETRY_FILE, "its studies come again when they are stable")
        ok = isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())
        return {str(k): v for k, v in data.items()} if ok else {}

    def _save_retry(self) -> None:
        _write_state(self.data_dir / RETRY_FILE, self._retry)

    # ---------------------------------------------------------------- passes
    def _start_watching(self) -> list[StudyArrival]:
        """The watcher, and on the first start the backfill (the newest studies)."""
        mark = self.data_dir / BACKFILL_FILE
        state = _read_state(mark, "taking the backfill again")
        if not isinstance(state, dict) or not isinstance(state.get("since"), int):
            # the feed's end first (kept before the backfill), then the studies so far
            end = StableStudyWatcher(self.archive, since=None)
            state = {"since": end.since, "done": False}
            end.close()
            _write_state(mark, state)
        arrivals: list[StudyArrival] = []
        if not state.get("done", True):
            try:
                studies = sorted(self.archive.find_studies(), key=lambda s: (s.study_date or "", s.study_uid),
                                 reverse=True)[:max(self.backfill, 0)]
            except DicomWebError as exc:
                if exc.code != "too-large":
                    raise
                self.say(f"site archive: no backfill ({exc}); its studies come as they become stable")
                studies = []
            for study in reversed(studies):  # the oldest of them first: the newest stay in the cache
                if self._stop.is_set():
                    raise InterruptedError("stopped during the backfill")
                arrivals.append(self.take(study.study_uid))
            state = {"since": int(state["since"]), "done": True, "studies": len(studies)}
            _write_state(mark, state)
        self.watcher = StableStudyWatcher(self.archive, self.data_dir / CHANGES_FILE, since=int(state["since"]))
        return arrivals

    def run_once(self) -> list[StudyArrival]:
        """One pass: studies due to be tried again, the backfill on the first start, then
        the studies stable since the last pass.

        Raises :class:`ConnectionError` or :class:`~mammotriage.net.dicomweb.DicomWebError`
        when the archive is away or refuses (the next pass goes on from there).
        """
        now = time.time()
        arrivals = [self.take(uid) for uid, entry in list(self._retry.items())
                    if float(entry.get("next_at", 0)) <= now]
        if self.watcher is None:
            arrivals += self._start_watching()
        assert self.watcher is not None
        for study_uid in self.watcher.changes():
            if self._stop.is_set():
                break
            arrivals.append(self.take(study_uid))
        return arrivals

    # ---------------------------------------------------------------- thread
    def _once(self, text: str) -> None:
        if text not in self._told:
            self._told.add(text)
            self.say(text)

    def _run(self) -> None:
        pause = self.every_s
        while not self._stop.is_set():
            try:
                self.run_once()
            except InterruptedError:  # stopped during the backfill (an OSError: caught first)
                return
            except (ConnectionError, DicomWebError) as exc:
                if isinstance(exc, DicomWebError) and not is_away(exc):
                    self._once(f"site archive refuses this workstation's requests ({exc}); check the site "
                               "profile (tried again in the background)")
                    pause = MAX_PAUSE_S
                else:
                    if self.away_since is None:
                        self.away_since = time.time()
                        self.say(f"site archive away ({exc}); its new studies come when it is back "
                                 "(tried again in the background)")
                    pause = min(max(pause * 2, self.every_s), MAX_PAUSE_S)
            except OSError as exc:  # this workstation's side: its data folder or disk
                self._once(f"site archive feed: {exc.strerror or exc}"
                           f"{f' ({exc.filename})' if exc.filename else ''} on this workstation "
                           "(tried again in the background)")
                pause = MAX_PAUSE_S
            except Exception as exc:  # the feed never dies silently
                log.exception("site archive feed")
                self._once(f"site archive feed: {type(exc).__name__}: {exc} (tried again in the background)")
                pause = MAX_PAUSE_S
            else:
                self._told.clear()
                if self.away_since is not None:
                    self.away_since = None
                    self.say("site archive back: its new studies come in again")
                pause = self.every_s
            self._stop.wait(pause)

    def start(self) -> SiteStudyFeed:
        self._thread = threading.Thread(target=self._run, name="site-archive-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (a fetch on its way is left to finish on the daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.watcher is not None and (self._thread is None or not self._thread.is_alive()):
            self.watcher.close()


class _DaemonPool:
    """A few daemon threads running submitted calls: a fetch stuck on the network never
    holds up the app's exit (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[None], Callable[[], None]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((future, fn))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - the caller reads it from the future
                future.set_exception(exc)
            else:
                future.set_result(None)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class SiteImageFetcher:
    """Fetches again, on threads, the files of site images the cache evicted.

    :meth:`ready` is asked by the loader before it decodes a path: True when the file
    is there (or is not a site image: the decode reports it), False while its fetch
    runs (started on the first ask), a :class:`~mammotriage.viewer.loader.LoadError`
    when the fetch failed (a failure older than :data:`STALE_FAILURE_S` is tried again
    instead). :meth:`cancel` drops a fetch not started yet (a prefetch no longer wanted).
    """

    def __init__(self, archive: DicomWebArchive, index_file: str | Path, workers: int = 2) -> None:
        self.archive = archive
        self.folder = Path(archive.cache.folder).resolve()  # the index keeps resolved paths
        self.index_file = Path(index_file)
        self._pool = _DaemonPool(workers, "site-fetch")
        self._local = threading.local()
        self._fetches: dict[str, tuple[Future[None], list[float]]] = {}
        #: fetches done so far (for the status and tests)
        self.fetched = 0

    def owns(self, path: str) -> bool:
        return Path(path).resolve().parent == self.folder

    def _submit(self, path: str) -> None:
        done_at: list[float] = []
        future = self._pool.submit(lambda: self._fetch(path))
        future.add_done_callback(lambda _f: done_at.append(time.monotonic()))
        self._fetches[path] = (future, done_at)

    def ready(self, path: str) -> bool | LoadError:
        entry = self._fetches.get(path)
        if entry is None:
            if os.path.exists(path) or not self.owns(path):
                return True
            self._submit(path)
            return False
        future, done_at = entry
        if not future.done():
            return False
        del self._fetches[path]
        error = future.exception() if not future.cancelled() else None
        if error is None and not future.cancelled():
            self.fetched += 1
            return True
        if future.cancelled() or (done_at and time.monotonic() - done_at[0] > STALE_FAILURE_S):
            return self.ready(path)  # an old failure (the archive may be back): try again
        return LoadError(path, f"site archive: {error}", "site-fetch")

    def cancel(self, path: str) -> None:
        entry = self._fetches.get(path)
        if entry is not None and entry[0].cancel():
            del self._fetches[path]

    @property
    def busy(self) -> bool:
        return bool(self._fetches)

    def _client(self) -> DicomWebArchive:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.archive.twin()  # a requests session per thread
        return client

    def _fetch(self, path: str) -> None:
        name = Path(path).name
        sop = ".".join(name.split(".")[:-2])
        with Archive(self.index_file) as index:
            record = index.image(sop)
        if record is None or Path(record.path).resolve() != Path(path).resolve():
            raise LookupError(f"{name} is not an indexed image of the site archive")
        got = self._client().fetch_instance(record.study_uid, record.series_uid, sop)
        if Path(got).resolve() != Path(path).resolve():
            raise DicomWebError(f"instance {sop} of study {record.study_uid}",
                                "the archive holds other bytes for it now than when it was indexed "
                                f"(sha256 {record.sha256[:12]}…)", "changed")

    def shutdown(self) -> None:
        self._pool.shutdown()
