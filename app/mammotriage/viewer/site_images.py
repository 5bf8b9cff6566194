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
  again; only its new images are fetched. The first start of a workstation takes the
  ``backfill`` newest studies of the archive (by study date), then only what becomes
  stable from then on; where it stands is kept in the data directory, so a restart
  goes on where it stopped (a study half fetched at a kill is taken again at the next
  start: the backfill is marked done only after its last study).
* The cache is bounded: an indexed file it evicted is fetched again when it is wanted.
  :class:`SiteImageFetcher` is the loader's side of that (``ProgressiveLoader.fetcher``):
  a view whose file is missing from the cache folder is fetched on a thread (never the
  UI's) before it is decoded, so opening an exam and the prefetch of the next ones
  bring their images back; a fetch that fails is the view's load error, naming the
  archive's reason, and what is open and decoded stays readable.

The archive being away is said once (``say``) and tried again with a growing pause;
that it is back is said once too. Here at ``viewer`` level because it joins ``net``
(the DICOMweb client) and ``store`` (the index).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mammotriage.jsonio import write_atomic
from mammotriage.net.dicomweb import DicomWebArchive, DicomWebError, StableStudyWatcher
from mammotriage.net.site_io import DicomWebExamSource
from mammotriage.store.archive import Archive
from mammotriage.viewer.loader import LoadError

__all__ = ["BACKFILL_FILE", "CACHE_FOLDER", "CHANGES_FILE", "DEFAULT_BACKFILL", "DEFAULT_CACHE_MB",
           "SiteImageFetcher", "SiteStudyFeed", "StudyArrival"]

log = logging.getLogger(__name__)

#: in the data directory: the fetched instances, the watcher's place in the archive's
#: changes feed, and the mark that the first start's backfill is done
CACHE_FOLDER = "site-cache"
CHANGES_FILE = "site-archive-changes.json"
BACKFILL_FILE = "site-archive-backfill.json"
#: the cache's default size (a few days of a site's screening views)
DEFAULT_CACHE_MB = 20 * 1024
#: studies the first start of a workstation takes from the archive (the newest)
DEFAULT_BACKFILL = 200
#: the longest pause between two tries while the archive is away
MAX_PAUSE_S = 30.0


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

    ``arrived(study_uid)`` is called for each study that got new images (on the feed's
    thread: a window queues it); ``say`` gets what a reader or the IT should know
    (the archive away and back, images that could not be had).
    """

    def __init__(self, archive: DicomWebArchive, index_file: str | Path, data_dir: str | Path, *,
                 backfill: int = DEFAULT_BACKFILL, every_s: float = 2.0,
                 arrived: Callable[[str], None] = lambda uid: None,
                 say: Callable[[str], None] = print) -> None:
        self.archive = archive
        self.source = DicomWebExamSource(archive)
        self.index_file = Path(index_file)
        self.data_dir = Path(data_dir)
        self.backfill = int(backfill)
        self.every_s = float(every_s)
        self.arrived = arrived
        self.say = say
        self.watcher: StableStudyWatcher | None = None
        self.away_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- one pass
    def sync_study(self, study_uid: str) -> StudyArrival:
        """Fetch and index the study's images the index does not hold yet.

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
                    if exc.code in ("timeout", "unreachable") or (exc.code == "http" and (exc.status or 0) >= 500):
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

    def _report(self, arrival: StudyArrival) -> None:
        for problem in arrival.problems:
            self.say(f"site archive: {problem}")
        if arrival.indexed:
            self.arrived(arrival.study_uid)

    def _start_watching(self) -> list[StudyArrival]:
        """The watcher, and on the first start the backfill (the newest studies)."""
        changes = self.data_dir / CHANGES_FILE
        mark = self.data_dir / BACKFILL_FILE
        since: int | None = None
        if mark.exists():
            try:
                since = int(json.loads(mark.read_text(encoding="utf-8"))["since"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable (%s); taking the backfill again", mark, exc)
        arrivals: list[StudyArrival] = []
        if since is None:
            # the feed's end first, then the studies so far: nothing falls in between
            end = StableStudyWatcher(self.archive, since=None)
            since = end.since
            end.close()
            studies = sorted(self.archive.find_studies(), key=lambda s: (s.study_date or "", s.study_uid),
                             reverse=True)[:max(self.backfill, 0)]
            for study in studies:
                if self._stop.is_set():
                    raise InterruptedError("stopped during the backfill")
                arrival = self.sync_study(study.study_uid)
                self._report(arrival)
                arrivals.append(arrival)
            write_atomic(mark, (json.dumps({"since": since, "studies": len(studies)}) + "\n").encode())
        self.watcher = StableStudyWatcher(self.archive, changes, since=since)
        return arrivals

    def run_once(self) -> list[StudyArrival]:
        """One pass: the backfill on the first start, then the studies stable since the last pass.

        Raises :class:`ConnectionError` or :class:`~mammotriage.net.dicomweb.DicomWebError`
        when the archive is away (the next pass goes on from there).
        """
        arrivals = self._start_watching() if self.watcher is None else []
        assert self.watcher is not None
        for study_uid in self.watcher.changes():
            if self._stop.is_set():
                break
            arrival = self.sync_study(study_uid)
            self._report(arrival)
            arrivals.append(arrival)
        return arrivals

    # ---------------------------------------------------------------- thread
    def _run(self) -> None:
        pause = self.every_s
        while not self._stop.is_set():
            try:
                self.run_once()
            except InterruptedError:  # stopped during the backfill (an OSError: caught first)
                return
            except (ConnectionError, DicomWebError, OSError) as exc:
                if self.away_since is None:
                    self.away_since = time.time()
                    self.say(f"site archive away ({exc}); its new studies come when it is back "
                             "(tried again in the background)")
                pause = min(max(pause * 2, self.every_s), MAX_PAUSE_S)
            except Exception as exc:  # the feed never dies silently
                log.exception("site archive feed")
                self.say(f"site archive feed: {type(exc).__name__}: {exc} (tried again in the background)")
                pause = MAX_PAUSE_S
            else:
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


class SiteImageFetcher:
    """Fetches again, on threads, the files of site images the cache evicted.

    :meth:`ready` is asked by the loader before it decodes a path: True when the file
    is there (or is not a site image: the decode reports it), False while its fetch
    runs (started on the first ask), a :class:`~mammotriage.viewer.loader.LoadError`
    when the fetch failed (asked again later, it is tried again).
    """

    def __init__(self, archive: DicomWebArchive, index_file: str | Path, workers: int = 2) -> None:
        self.archive = archive
        self.folder = Path(archive.cache.folder).absolute()
        self.index_file = Path(index_file)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="site-fetch")
        self._local = threading.local()
        self._fetches: dict[str, Future[None]] = {}
        #: fetches done so far (for the status and tests)
        self.fetched = 0

    def owns(self, path: str) -> bool:
        return Path(path).absolute().parent == self.folder

    def ready(self, path: str) -> bool | LoadError:
        future = self._fetches.get(path)
        if future is None:
            if os.path.exists(path) or not self.owns(path):
                return True
            self._fetches[path] = self._pool.submit(self._fetch, path)
            return False
        if not future.done():
            return False
        del self._fetches[path]
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - a failed fetch is the view's load error
            return LoadError(path, f"site archive: {exc}", "site-fetch")
        self.fetched += 1
        return True

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
        if record is None or Path(record.path).absolute() != Path(path).absolute():
            raise LookupError(f"{name} is not an indexed image of the site archive")
        got = self._client().fetch_instance(record.study_uid, record.series_uid, sop)
        if Path(got).absolute() != Path(path).absolute():
            raise DicomWebError(f"instance {sop} of study {record.study_uid}",
                                "the archive holds other bytes for it now than when it was indexed "
                                f"(sha256 {record.sha256[:12]}…)", "changed")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
