"""Main window: worklist, 4-up hanging, log panel, status bar, keyboard shortcuts."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import queue as _queue
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, ParamSpec, cast

from PySide6.QtCore import QByteArray, QRect, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QResizeEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDialog,
    QDockWidget,
    QFileDialog,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QSlider,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from mammotriage.config import archive_path, data_dir
from mammotriage.dicom.hanging import SCREENING_SLOTS
from mammotriage.dicom.vocab import breast_side, projection_family
from mammotriage.lifetime import die_with_parent
from mammotriage.net.outbox import OutboxSink
from mammotriage.net.site_profile import SiteProfile, SiteProfileError, load_profile
from mammotriage.store import Archive
from mammotriage.store.archive import ExamRecord
from mammotriage.store.assessment import (
    BIRADS,
    DENSITY,
    ReadingPolicy,
    assessment_text,
    birads_text,
)
from mammotriage.store.double_reading import (
    Backend,
    DoubleReadingLog,
    DoubleReadingPolicy,
    DoubleReadingRules,
    ExamStatus,
    ReadingLocks,
    SqliteBackend,
    StatusIndex,
    StoreUnreachable,
    arbitration_list,
)
from mammotriage.store.events import KINDS, CorrectionError, CorrectionLog
from mammotriage.store.priors import priors_in_archive
from mammotriage.store.reading import InitialReads, current_reader
from mammotriage.triage import OperatingPoints, TriageQueue
from mammotriage.triage.pages import WorklistQuery, position_of, worklist_rows
from mammotriage.triage.worklist import eta_text
from mammotriage.ui.double_reading import ArbitrationList
from mammotriage.ui.hanging_view import HangingView
from mammotriage.ui.overlay import AiOverlay
from mammotriage.ui.screen_windows import ScreenLayout
from mammotriage.ui.site_status import SiteStatusLabel
from mammotriage.ui.worklist import FILTERS, WORKLIST_ORDER, WorklistFilter, WorklistModel
from mammotriage.viewer.corrections import ExamCorrections, ImageInfo
from mammotriage.viewer.decode_pool import ProgressiveLoader
from mammotriage.viewer.loader import LoadedView, LoadError, ViewLoader
from mammotriage.viewer.prefetch import DEFAULT_EXAMS, prefetch_paths
from mammotriage.viewer.screens import LAYOUTS, worklist_split
from mammotriage.viewer.session import OpenedExam, ReadingSession
from mammotriage.viewer.site_images import (
    CACHE_FOLDER,
    DEFAULT_CACHE_MB,
    SiteImageFetcher,
    SiteStudyFeed,
)
from mammotriage.viewer.site_log import BUFFER_FILE, SiteLog, site_mode_problem
from mammotriage.viewer.site_model_sync import SiteModelSync
from mammotriage.viewer.site_reads import SiteReadsFeed
from mammotriage.viewer.site_results import DEFAULT_LOCAL_TRIAGE_AFTER_S, SiteResultsFeed

if TYPE_CHECKING:
    from mammotriage.net.service import NetworkService
    from mammotriage.store.pg.double_reading import SiteDoubleReadingLog, SiteReadingLocks
    from mammotriage.triage.worker import TriageService
    from mammotriage.ui.assessment_dialog import AssessmentDialog
    from mammotriage.ui.model_panel import ModelPanel
    from mammotriage.viewer.double_feed import DoubleReadingFeed

P = ParamSpec("P")  # the arguments of a correction (MainWindow._record)


def write_reader_sr(archive_file: str, exam_key: str, reader: str, home: str, sink: OutboxSink,
                    events: list | None = None) -> str:
    """Worker-process job: the reader-findings SR of a signed exam, queued in the outbox
    (``events``: the exam's, in site mode, where they are not in the archive's own log)."""
    from mammotriage.triage.reader_sr import write_signed_sr

    try:
        return write_signed_sr(Path(archive_file), exam_key, reader, Path(home), sink, events=events)
    finally:
        sink.close()


def _drained(queue: _queue.Queue[str]) -> Iterator[str]:
    """What another thread put on ``queue`` so far, without waiting."""
    while True:
        try:
            yield queue.get_nowait()
        except _queue.Empty:
            return


def import_in_background(paths: list[str], archive_file: str) -> tuple[int, int, list[tuple[str, str]]]:
    """Worker-process job: import paths into the archive; returns counts and rejections."""
    with Archive(archive_file) as archive:
        report = archive.import_paths([Path(p) for p in paths])
    return len(report.imported), len(report.duplicates), [(r.path, r.reason) for r in report.rejected]


def prepare_demo(demo_folder: str, archive_file: str) -> tuple[int, int, list[tuple[str, str]]]:
    """Worker-process job: write the built-in demo exams once, then import them."""
    from mammotriage.phantom import write_demo_set

    folder = Path(demo_folder)
    if not (folder / "ground_truth.json").exists():
        write_demo_set(folder, n_exams=6, seed=2026, priors=2, rows=1024, columns=832)
    exams = sorted(str(p) for p in folder.iterdir() if p.is_dir())  # not ground_truth.json
    return import_in_background(exams, archive_file)


class MainWindow(QMainWindow):
    """The reading workstation window."""

    exam_shown = Signal(str)  # exam key, once all panes have their content
    #: a site sign-in finished on its thread: (reader, token or "", what to say)
    site_signed_in = Signal(str, str, float, str)  # reader, token, when it ends (epoch), what to say

    def __init__(self, loader: ViewLoader | None = None, archive: Archive | None = None,
                 model_dir: str | Path | None = None, start_triage: bool = True, site: SiteProfile | None = None):
        super().__init__()
        self.setWindowTitle("Mammo Triage — research demonstration, not for clinical use")
        self.archive = archive or Archive(archive_path())
        self.loader = loader or ProgressiveLoader()
        self.jobs = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                           initializer=die_with_parent, initargs=(os.getpid(),))
        self._job: cf.Future | None = None
        self._job_done: Callable[[object], None] | None = None
        self._waiting_jobs: list[tuple[str, Callable, tuple, Callable[[object], None]]] = []
        self.settings = QSettings(str(data_dir() / "settings.ini"), QSettings.Format.IniFormat)
        self.queue = TriageQueue(self.archive.path)
        self.initial_reads = InitialReads(self.archive.path)
        self.reader = str(self.settings.value("reader/name", "") or current_reader())
        # double reading (a site setting): blinding and the readers' roles are the log's
        self.double_policy = DoubleReadingPolicy.load(data_dir())
        # site mode: corrections go to the site store through the local buffer (viewer.site_log);
        # without --site, the profile remembered in the settings (File > Join a site)
        self._site_notes: list[str] = []
        if site is None:
            site = self._site_from_settings()
        self.site = site
        if site is not None and (warning := site.warning()):
            self._site_notes.append(f"warning: {warning}")  # a profile from before TLS
        self.site_log = SiteLog(site.dsn(), data_dir() / BUFFER_FILE) if site is not None else None
        # site mode: the site's active model becomes this registry's (a daemon thread; the
        # session adopts it as it adopts any promotion)
        self._site_model_said: _queue.SimpleQueue[str] = _queue.SimpleQueue()
        self._sign_in_pool: cf.ThreadPoolExecutor | None = None
        self._sign_in_gen = 0
        self._sign_in_said = ""  # which warning about the reader's site sign-in was said last
        self._closing = False
        self.site_signed_in.connect(self._site_signed_in)  # queued: emitted on the sign-in thread
        self.site_models: SiteModelSync | None = None
        if site is not None:
            self.site_models = SiteModelSync(site.dsn(), self.archive.path, data_dir() / "site-models",
                                             say=self._site_model_said.put)
            self.site_models.start()
        double = self.double_policy.enabled
        self.corrections_log: CorrectionLog | SiteLog | SiteDoubleReadingLog
        self.locks: ReadingLocks | SiteReadingLocks | None = None
        self.double_store: Backend = SqliteBackend(lambda: self.queue.conn)  # the states' store
        self.double_feed: DoubleReadingFeed | None = None  # site double reading: states and locks off this thread
        self._feed_seen = -1  # the feed's generation last shown
        # the prior exams' reads are history: shown whoever made them (never blinded)
        self.history_log: CorrectionLog | SiteLog | SiteDoubleReadingLog
        if double and site is not None and self.site_log is not None:
            # double reading across the site's workstations: the same rules on the site store
            # (role-checked appends go to the server directly; store.pg.double_reading)
            # (role-checked appends go to the server directly; store.pg.double_reading); the
            # worklist's states and locks are read on the feed's thread, and a server that
            # stops answering costs a call of the window at most SITE_CALL_S, once
            from mammotriage.store.pg.double_reading import (
                SITE_CALL_S,
                ServerWatch,
                SiteDoubleReadingLog,
                SiteReadingLocks,
            )
            from mammotriage.viewer.double_feed import DoubleReadingFeed

            watch = ServerWatch()
            self.corrections_log = SiteDoubleReadingLog(site.dsn(), self.reader, self.double_policy,
                                                        deadline_s=SITE_CALL_S, watch=watch)
            self.locks = SiteReadingLocks(site.dsn(), lease_s=self.double_policy.lease_s, deadline_s=SITE_CALL_S,
                                          watch=watch)
            self.double_store = self.locks.backend
            self.double_feed = DoubleReadingFeed(site.dsn(), self.double_policy.discordance, watch,
                                                 workstation=self.locks.workstation,
                                                 say=self._site_model_said.put).start()
            self.history_log = self.site_log
        elif double:
            self.corrections_log = DoubleReadingLog(self.archive.path, self.reader, self.double_policy)
            self.locks = ReadingLocks(self.archive.path, lease_s=self.double_policy.lease_s)
            self.history_log = CorrectionLog(self.archive.path)
        else:
            self.corrections_log = self.site_log if self.site_log is not None else CorrectionLog(self.archive.path)
            self.history_log = self.corrections_log
        self.double_states = StatusIndex(self.double_policy.discordance)  # read on each refresh
        self.corrections: ExamCorrections | None = None
        self.corrections_log.add_reader(self.reader)
        self.session = ReadingSession(self.archive.path, data_dir(), self.queue, model_dir)
        self._model_check_tick = 0
        self._etas: dict[str, float] = {}  # exam key -> seconds until its result (the worklist's)
        self._screens_followed = False  # screens added or removed re-place the windows
        self.triage: TriageService | None = None
        self.site_results: SiteResultsFeed | None = None  # site mode: the site AI workers' results
        self._auto_triage = start_triage  # run the triage worker whenever a model is active
        self._triage_wanted = start_triage and self.model_meta is not None
        self.current: ExamRecord | None = None
        self.current_paths: dict[str, str] = {}  # slot -> path
        self._warned: set[str] = set()  # views whose read warnings were shown
        self.prior: ExamRecord | None = None  # most recent prior of the current exam
        self.prior_paths: dict[str, str] = {}
        self.prior_corrections: ExamCorrections | None = None  # the prior's reader findings, shown read-only
        self.extras: list = []
        self._extra_index = -1
        self._shown_emitted = False

        self.policy = ReadingPolicy.load(data_dir())
        self.priors: dict[str, list[ExamRecord]] = {}  # of the exam on screen and those prefetched
        self._resume_key = str(self.settings.value(f"reader/{self.reader}/last_exam", "") or "") or None
        self.worklist = WorklistModel(self._worklist_page, lambda q, key: position_of(self.queue.conn, q, key),
                                      double=self._double_page if self.locks is not None else None,
                                      reader=self.reader)
        if self.site_log is not None:
            self.worklist.local_reads = self.site_log.waiting_reads  # a signature not sent yet shows at once
        self.worklist_view = WorklistFilter(self.worklist)
        self._overlay_cache: dict[str, AiOverlay | None] = {}
        self.table = QTableView()
        self.table.setModel(self.worklist_view)
        self.table.setSortingEnabled(True)
        self.table.horizontalHeader().setSortIndicatorShown(False)
        self.table.horizontalHeader().sortIndicatorChanged.connect(
            lambda *_: self.table.horizontalHeader().setSortIndicatorShown(True))
        self.worklist_view.sort(-1)  # the triage order until a header is clicked
        header = self.table.horizontalHeader()
        for visual, logical in enumerate(WORKLIST_ORDER):  # read state and priors before the details
            header.moveSection(header.visualIndex(logical), visual)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().currentRowChanged.connect(lambda cur, _prev: self.open_row(cur.row()))
        self.worklist.modelReset.connect(self._reselect)  # a header sort or filter: the exam stays selected

        self.hanging = HangingView()
        self.hanging.status.connect(self.show_status)
        for pane in self.hanging.panes.values():
            pane.label_clicked.connect(self.hanging.state.select)
            pane.label_edited.connect(self.on_label_edited)
            pane.finding_drawn.connect(self.on_finding_drawn)
        self.search = QLineEdit()
        self.search.setPlaceholderText("search patient, ID or accession (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._search_changed)
        self.search.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # single-key shortcuts stay with the viewer
        self.search.returnPressed.connect(self.table.setFocus)
        self.filter_box = QComboBox()
        self.filter_box.addItems(list(FILTERS))
        self.filter_box.setToolTip("show only: unread, suspicious, likely normal, AI pending, has priors")
        self.filter_box.currentTextChanged.connect(self._filter_changed)
        self.filter_box.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(2)
        left_layout.addWidget(self.search)
        left_layout.addWidget(self.filter_box)
        left_layout.addWidget(self.table)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.hanging)
        self.splitter.setStretchFactor(1, 4)
        self.splitter.setSizes([480, 1200])
        self.setCentralWidget(self.splitter)
        self.table.setFocus()

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        dock = QDockWidget("Log", self)
        dock.setObjectName("log")
        dock.setWidget(self.log)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.log_dock = dock
        self.resizeDocks([dock], [110], Qt.Orientation.Vertical)
        self.arbitration = ArbitrationList()
        self.arbitration.open_requested.connect(self.open_exam_key)
        self.arbitration_dock = QDockWidget("Arbitration", self)
        self.arbitration_dock.setObjectName("arbitration")
        self.arbitration_dock.setWidget(self.arbitration)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.arbitration_dock)
        self.arbitration_dock.setVisible(self.locks is not None)

        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.status_label = QLabel("")
        self.decode_progress = QProgressBar()
        self.decode_progress.setMaximumWidth(160)
        self.decode_progress.setFormat("decoding %v/%m views")
        self.decode_progress.setVisible(False)
        self.model_label = QLabel("")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setMaximumWidth(120)
        self.opacity.setToolTip("Suspicion map opacity ([ and ])")
        self.opacity.valueChanged.connect(lambda v: self.hanging.state.set_map_opacity(v / 100))
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().addPermanentWidget(QLabel("map"))
        self.statusBar().addPermanentWidget(self.opacity)
        self.statusBar().addPermanentWidget(self.model_label)
        self.statusBar().addPermanentWidget(self.decode_progress)
        self.statusBar().addPermanentWidget(self.progress)
        self.site_label: SiteStatusLabel | None = None
        if self.site_log is not None and site is not None:
            self.site_label = SiteStatusLabel(self.site_log, site.where(), parent=self)
            self.site_label.noteworthy.connect(self.log_line)
            self.site_label.arrived.connect(self._site_events_arrived)
            self.statusBar().addPermanentWidget(self.site_label)
            self.log_line(f"site mode: {site.where()} (profile {site.path})")
        for note in self._site_notes:
            self.log_line(note)

        self.menu_actions: list[QAction] = []
        self._build_actions()
        self.screen_layout = ScreenLayout(self.hanging, self.menu_actions)  # one window, or spread over screens
        self.timer = QTimer(self)
        self.timer.setInterval(30)
        self.timer.timeout.connect(self._poll)
        self.timer.start()
        self._restore_settings()
        self.opacity.setValue(int(round(self.hanging.state.map_opacity * 100)))
        self._update_model_label()
        self.refresh_worklist()
        for line in (self.session.model.notice, self.model_problem):
            if line:
                self.log_line(line)  # a new shipped model, or why AI is off: never silent
        if self._triage_wanted:
            self.start_triage()
        self.network: NetworkService | None = None  # the DICOM node, when it runs inside the app
        self._network_archive: Archive | None = None
        self._completed_studies: _queue.Queue[str] = _queue.Queue()  # filled by the node's threads
        # site mode: the site archive's studies come into this index over DICOMweb (a feed
        # thread), and a view the byte-bounded cache evicted is fetched again before it is decoded
        self._site_studies: _queue.Queue[str] = _queue.Queue()  # filled by the site archive's feed
        self.site_images: SiteStudyFeed | None = None
        self.site_fetcher: SiteImageFetcher | None = None
        if site is not None:
            self._start_site_images(site)
        # site mode: the worklist's read states from a copy of the site's chain (a feed thread)
        self.site_reads: SiteReadsFeed | None = None
        self._reads_seen = 0
        if site is not None:
            self.site_reads = SiteReadsFeed(site.dsn(), self.archive.path, say=self._site_model_said.put).start()
            # the site's AI workers triage the same exams with the same model: their results are taken
            self.site_results = SiteResultsFeed(site.dsn(), self.archive.path, data_dir(),
                                                say=self._site_model_said.put)
            self._site_results_follow()
            self.site_results.start()
        self.model_panel: ModelPanel | None = None  # created on first use (Ctrl+Shift+M)
        self.pipeline_timer = QTimer(self)  # the automatic pipeline, when the site setting asks for it
        self.pipeline_timer.setInterval(5 * 60 * 1000)
        self.pipeline_timer.timeout.connect(self.check_pipeline)
        self.pipeline_timer.start()
        self.sign_in_timer = QTimer(self)  # a site sign-in lapses: said before and when it does
        self.sign_in_timer.setInterval(30 * 1000)
        self.sign_in_timer.timeout.connect(self.check_sign_in)
        self.sign_in_timer.start()
        self.monitor_view = None  # created on first use (Ctrl+Shift+O)
        self.network_label = QLabel("")
        self.statusBar().addPermanentWidget(self.network_label)
        if str(self.settings.value("network/run_in_app", "false")).lower() == "true":
            QTimer.singleShot(0, self.start_network)

    # ----------------------------------------------------------------- site mode
    def _site_from_settings(self) -> SiteProfile | None:
        """The site profile remembered in the settings, when it is still valid (else why not, in the log)."""
        path = str(self.settings.value("site/profile", "") or "")
        if not path:
            return None
        try:
            site = load_profile(path)
        except SiteProfileError as exc:
            self._site_notes.append(f"not joining the site (File > Join a site): {exc}")
            return None
        if problem := site_mode_problem(data_dir()):
            self._site_notes.append(f"not joining the site: {problem}")
            return None
        return site

    def _start_site_images(self, site: SiteProfile) -> None:
        try:
            cache_mb = int(str(self.settings.value("site/cache_mb", DEFAULT_CACHE_MB)))
        except ValueError:
            cache_mb = DEFAULT_CACHE_MB
        cache_mb = cache_mb if cache_mb > 0 else DEFAULT_CACHE_MB
        client = site.archive(data_dir() / CACHE_FOLDER, cache_mb * 1024 * 1024)
        self.site_fetcher = SiteImageFetcher(client, self.archive.path)
        if isinstance(self.loader, ProgressiveLoader):
            self.loader.fetcher = self.site_fetcher
        self.site_images = SiteStudyFeed(client.twin(), self.archive.path, data_dir(),
                                         arrived=self._site_studies.put,
                                         say=self._site_model_said.put).start()
        self.log_line(f"site archive {site.dicomweb_url}: its studies come in over DICOMweb "
                      f"(cache {cache_mb} MiB in {data_dir() / CACHE_FOLDER})")

    def set_site_profile(self, path: str | Path | None) -> str:
        """Remember a site profile for the next start (None: leave the site); returns what was said."""
        if path is None:
            self.settings.setValue("site/profile", "")
            text = "standalone from the next start (the site profile is forgotten)"
        else:
            try:
                site = load_profile(path)
            except SiteProfileError as exc:
                text = f"site profile not taken: {exc}"
                self.log_line(text)
                return text
            self.settings.setValue("site/profile", str(Path(path).absolute()))
            text = f"joins the site at the next start: {site.where()}"
        self.settings.sync()
        self.log_line(text)
        return text

    def join_site_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Site profile (from 'mammotriage site profile')", "",
                                              "Site profile (*.json);;All files (*)")
        if path:
            self.set_site_profile(path)

    # ----------------------------------------------------------------- the session's model
    @property
    def model_dir(self) -> Path | None:
        return self.session.model.folder

    @property
    def model_meta(self) -> dict | None:
        return self.session.model.meta

    @property
    def model_problem(self) -> str:
        return self.session.model.problem

    @property
    def model_version(self) -> str | None:
        return self.session.model.version

    @model_version.setter
    def model_version(self, version: str | None) -> None:
        self.pin_model(version)

    def pin_model(self, version: str | None, *, points: OperatingPoints | None = None,
                  meta: dict[str, Any] | None = None) -> None:
        """Read the results of ``version`` (one with no package of its own, e.g. results
        imported or made elsewhere), with its own worklist ``points`` and metadata when
        given (else the current model's), and never follow the registry's active model
        in this window: an explicit choice is not replaced by the periodic check."""
        model = self.session.model
        self.session.pin(dataclasses.replace(model, version=version, points=points or model.points,
                                             meta=model.meta if meta is None else meta))
        if meta is not None:  # a version pinned without its metadata has no weights to match
            self._site_results_follow()
        elif self.site_results is not None:
            self.site_results.set_model(None, None)
        self._update_model_label()

    def _site_results_follow(self) -> None:
        """Site mode: the site workers' results are taken for the model this window shows."""
        if self.site_results is not None:
            self.site_results.set_model(self.model_version, (self.model_meta or {}).get("weights_sha256"))

    @property
    def points(self) -> OperatingPoints | None:
        return self.session.model.points

    # ----------------------------------------------------------------- DICOM node in the app
    def start_network(self) -> bool:
        """Run the DICOM node (Storage SCP + results outbox) inside the app, with the
        settings of ``network.json`` (see ``mammotriage serve --check``). Studies that
        arrive are imported, shown in the worklist and triaged in the background."""
        from mammotriage.net.node import NodeStartError
        from mammotriage.net.security import InsecureBindError
        from mammotriage.net.service import NetworkService
        from mammotriage.net.settings import NetworkConfigError, load_settings

        if self.network is not None:
            return True
        try:
            settings = load_settings()
            archive = Archive(self.archive.path)
            service = NetworkService(settings, archive=archive, settings_loader=load_settings)
        except (NetworkConfigError, OSError) as exc:
            self._network_failed(f"DICOM node not started: {exc}")
            return False
        service.on_study_complete(self._completed_studies.put)
        try:
            service.start()
        except (InsecureBindError, NodeStartError, OSError) as exc:
            service.stop()
            archive.close()
            self._network_failed(f"DICOM node not started: {exc}")
            return False
        self.network = service
        self._network_archive = archive
        host, port = service.address
        self.network_label.setText(f"DICOM {settings.ae_title} @ {host}:{port}")
        self.network_label.setToolTip(f"receiving; PACS for results: {settings.pacs or 'none'}")
        self.log_line(f"DICOM node {settings.ae_title} listening on {host}:{port} "
                      f"(settings from {settings.source})")
        return True

    def _network_failed(self, text: str) -> None:
        self.log_line(text)
        self.show_status(text)
        self.network_label.setText("DICOM node: not running")

    def stop_network(self) -> None:
        if self.network is None:
            return
        status = self.network.status()
        self.network.stop()
        if self._network_archive is not None:
            self._network_archive.close()
            self._network_archive = None
        self.network = None
        self.network_label.setText("")
        self.log_line(f"DICOM node stopped: {status['received']} received, {status['imported']} imported, "
                      f"{status['rejected']} rejected")

    def toggle_network(self) -> None:
        """Start or stop receiving; the choice is remembered for the next start."""
        if self.network is None:
            running = self.start_network()
        else:
            self.stop_network()
            running = False
        self.settings.setValue("network/run_in_app", "true" if running else "false")

    def _poll_network(self) -> None:
        refresh = False
        for study_uid in _drained(self._completed_studies):
            n = len(self.archive.images_for_study(study_uid))
            self.log_line(f"received study {study_uid} ({n} images): queued for triage")
            refresh = True
        for study_uid in _drained(self._site_studies):  # complete in the index now: a new analysis
            n = len(self.archive.images_for_study(study_uid))
            exam_key = self.archive.exam_key_of(study_uid)
            if self.model_version and exam_key is not None:
                self.queue.requeue(exam_key, self.model_version)
            self.log_line(f"study {study_uid} from the site archive ({n} images): queued for triage")
            refresh = True
        if refresh:
            if self.model_version:
                self.queue.sync(self.model_version)  # shows as pending at once (the worker syncs every 2 s)
            if self.site_results is not None:
                self.site_results.poke()  # the site's worker may have its result already
            self.refresh_worklist()

    # ----------------------------------------------------------------- actions
    #: the F1 sheet's groups, by menu
    SHEET_GROUPS: ClassVar[dict[str, str]] = {"&File": "Files and the DICOM node", "&Exam": "Worklist: moving between exams",
                                               "&View": "Viewing: window, zoom, layout",
                                               "&AI": "AI marks, map and reading mode",
                                               "&Read": "Reading: corrections, assessment, signing",
                                               "&Help": "Help"}

    def _action(self, menu: QMenu, text: str, keys: list[str], slot: Callable[..., object]) -> QAction:
        action = QAction(text, self)
        action.setData(self.SHEET_GROUPS.get(menu.title(), menu.title().replace("&", "")))
        action.setShortcuts([QKeySequence(k) for k in keys])
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        self.addAction(action)
        self.menu_actions.append(action)
        return action

    def _build_actions(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "Import folder…", ["Ctrl+O"], self.import_folder_dialog)
        self._action(file_menu, "Receive from PACS / modalities (DICOM node) on/off", ["Ctrl+Shift+N"],
                     self.toggle_network)
        self._action(file_menu, "Join a site (site profile)…", [], self.join_site_dialog)
        self._action(file_menu, "Leave the site (standalone from the next start)", [],
                     lambda: self.set_site_profile(None))
        self._action(file_menu, "Quit", ["Ctrl+Q"], self.close)
        exam_menu = bar.addMenu("&Exam")
        self._action(exam_menu, "Next exam", ["N", "PgDown"], lambda: self.step_exam(1))
        self._action(exam_menu, "Previous exam", ["P", "PgUp"], lambda: self.step_exam(-1))
        self._action(exam_menu, "Search the worklist", ["Ctrl+F"], self._focus_search)
        self._action(exam_menu, "Worklist filter: next (all, unread, suspicious, ...)", ["Ctrl+Shift+F"],
                     self._cycle_filter)
        self._action(exam_menu, "Worklist back in triage order", ["Ctrl+Shift+T"], self._triage_order)
        view_menu = bar.addMenu("&View")
        for i in range(5):
            self._action(view_menu, f"Preset {i + 1} from the file", [str(i + 1)],
                         lambda _checked=False, i=i: self.hanging.apply_preset(i))
        self._action(view_menu, "Invert", ["I"], self._toggle_invert)
        self._action(view_menu, "Reset window, zoom, pan, rulers; back to the hanging", ["R", "Esc"], self.reset_view)
        self._action(view_menu, "Link zoom/pan: all / breast pair / none", ["L"], self._cycle_link)
        self._action(view_menu, "Show/hide corner text", ["T"], self._toggle_text)
        self._action(view_menu, "Magnifier lens on/off", ["M"], self.hanging.state.toggle_magnifier)
        self._action(view_menu, "Ruler tool / pan tool", ["D"], self._toggle_ruler)
        self._action(view_menu, "Compare with the prior exam (side by side, linked) on/off", ["C"],
                     self.toggle_compare)
        self._action(view_menu, "Next extra view (full-screen)", ["X"], self.show_next_extra)
        self._action(view_menu, "Full-screen the focused view", ["F", "Space"], self._toggle_fullscreen_focused)
        self._action(view_menu, "Hanging: in this window / spread over the image screens (5 MP displays)",
                     ["Ctrl+Shift+S"], self.toggle_screens)
        self._action(view_menu, "Show/hide log", ["Ctrl+L"], lambda: self.log_dock.setVisible(not self.log_dock.isVisible()))
        ai_menu = bar.addMenu("&AI")
        self._action(ai_menu, "Show/hide AI marks and map", ["A"], self.toggle_ai)
        self._action(ai_menu, "Record initial assessment (BI-RADS)", ["B"], self.record_initial_read)
        self._action(ai_menu, "Suspicion map on/off", ["S"], self._toggle_map)
        self._action(ai_menu, "Candidates (lower operating point, up to 10 a view) / marks above the operating point",
                     ["Shift+A"], self._toggle_candidates)
        self._action(ai_menu, "Map more transparent", ["["], lambda: self.opacity.setValue(self.opacity.value() - 10))
        self._action(ai_menu, "Map more opaque", ["]"], lambda: self.opacity.setValue(self.opacity.value() + 10))
        self._action(ai_menu, "Reading mode: AI on demand / AI after my read", ["Ctrl+M"], self.cycle_reading_mode)
        self._action(ai_menu, "Model versions, retrain, validation gate…", ["Ctrl+Shift+M"], self.show_model_panel)
        self._action(ai_menu, "Monitoring: scores, reader feedback, input drift…", ["Ctrl+Shift+O"],
                     self.show_monitor)
        read_menu = bar.addMenu("&Read")
        self._action(read_menu, "Accept the selected AI mark", ["Return", "Enter"], self.accept_selected)
        self._action(read_menu, "Reject the selected mark (false positive) / delete my finding", ["Delete", "Backspace"],
                     self.reject_selected)
        # triggered(bool) must not reach ``kind``: the dialog asks for it
        self._action(read_menu, "Change the kind of the selected mark", ["K"], lambda: self.change_kind_selected())
        self._action(read_menu, "Select the next mark in the focused view", ["Tab"], self.select_next)
        self._action(read_menu, "Draw a missed finding (box)", ["W"], lambda: self._draw_tool("box"))
        self._action(read_menu, "Draw a missed finding (ellipse)", ["Shift+W"], lambda: self._draw_tool("ellipse"))
        self._action(read_menu, "Undo", ["Ctrl+Z"], self.undo)
        self._action(read_menu, "Redo", ["Ctrl+Shift+Z", "Ctrl+Y"], self.redo)
        self._action(read_menu, "Final BI-RADS assessment…", ["Shift+B"], self.final_birads_dialog)
        self._action(read_menu, "Breast density…", ["Shift+D"], self.density_dialog)
        self._action(read_menu, "Note…", ["Shift+N"], self.note_dialog)
        self._action(read_menu, "Sign the assessment and open the next unread exam…", ["Ctrl+Return", "Ctrl+Enter"],
                     self.sign_and_next)
        self._action(read_menu, "Re-open a signed exam (amendment)…", ["Ctrl+Shift+E"], self.amend_dialog)
        self._action(read_menu, "Sign in as another reader…", ["Ctrl+Shift+R"], self.sign_in_dialog)
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "Keyboard shortcuts", ["F1", "?"], self.show_shortcuts)

    MOUSE: ClassVar[list[tuple[str, str]]] = [("Right-drag", "Window/level (horizontal = width, vertical = centre)"),
        ("Left-drag", "Pan; on a mark: move it (on a corner: resize it)"), ("Wheel", "Zoom to cursor"),
        ("Click", "Select the mark under the pointer"), ("Double-click", "Full-screen this view")]

    def shortcut_sheet(self) -> list[tuple[str, str]]:
        """(keys, action) pairs, for the visible shortcut sheet."""
        return [row for _group, rows in self.shortcut_groups() for row in rows]

    def shortcut_groups(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """The F1 sheet: (task, [(keys, action), ...]) in menu order, then the mouse."""
        groups: dict[str, list[tuple[str, str]]] = {}
        for action in self.menu_actions:
            keys = " / ".join(k.toString() for k in action.shortcuts())
            groups.setdefault(str(action.data()), []).append((keys, action.text()))
        return [*groups.items(), ("Mouse", list(self.MOUSE))]

    def show_shortcuts(self) -> None:
        from PySide6.QtWidgets import QTreeWidget, QTreeWidgetItem

        dialog = QDialog(self)
        dialog.setWindowTitle("Keyboard shortcuts")
        layout = QVBoxLayout(dialog)
        tree = QTreeWidget()
        tree.setColumnCount(2)
        tree.setHeaderLabels(["Keys", "Action"])
        tree.setRootIsDecorated(False)
        tree.setAlternatingRowColors(True)
        bold = tree.font()
        bold.setBold(True)
        for group, rows in self.shortcut_groups():
            head = QTreeWidgetItem([group, ""])
            head.setFont(0, bold)
            head.setFirstColumnSpanned(True)
            tree.addTopLevelItem(head)
            for keys, text in rows:
                head.addChild(QTreeWidgetItem([keys, text.replace("&", "")]))
            head.setExpanded(True)
        tree.resizeColumnToContents(0)
        layout.addWidget(tree)
        screen = (self.screen() or QApplication.primaryScreen()).availableGeometry()
        dialog.resize(min(860, int(screen.width() * 0.9)), min(900, int(screen.height() * 0.9)))
        dialog.show()
        self._shortcut_dialog = dialog
        self._shortcut_tree = tree

    def reset_view(self) -> None:
        if self._extra_index >= 0 and self.current is not None:
            self.open_exam(self.current)
        if self.hanging.state.fullscreen is not None:
            self.hanging.state.toggle_fullscreen(self.hanging.state.fullscreen)
        self.hanging.reset()

    def _toggle_ruler(self) -> None:
        self.hanging.state.set_tool("pan" if self.hanging.state.tool == "ruler" else "ruler")

    def show_next_extra(self) -> None:
        """Cycle the exam's extra views (spot, magnification, ML ...) full-screen."""
        if not self.extras:
            self.show_status("no extra views in this exam")
            return
        self._extra_index = (self._extra_index + 1) % len(self.extras)
        image = self.extras[self._extra_index]
        slot = breast_side(image.laterality) + ("CC" if projection_family(image.view) == "CC" else "MLO")
        self.current_paths[slot] = image.path
        self._shown_emitted = True
        view = self.loader.request(image.path)
        if view is None:
            self.hanging.set_loading(slot)
        else:
            self.hanging.set_view(slot, view)
        if self.hanging.state.fullscreen != slot:
            self.hanging.state.toggle_fullscreen(slot)
        self.show_status(f"extra view {self._extra_index + 1}/{len(self.extras)}: {image.label} "
                         f"{' '.join(image.view_modifiers)} (R or Esc returns to the hanging)")

    def _cycle_link(self) -> None:
        self.hanging.state.cycle_link()  # the hanging view reports the new mode

    def _toggle_invert(self) -> None:
        self.hanging.toggle_invert()
        inverted = all(s.invert for s in self.hanging.state.panes.values())
        self.show_status(f"invert {'on' if inverted else 'off'}")

    def _toggle_text(self) -> None:
        self.hanging.state.toggle_text()
        self.show_status(f"corner text {'on' if self.hanging.state.show_text else 'off'}")

    def _toggle_map(self) -> None:
        state = self.hanging.state
        state.toggle_map()
        extra = "" if state.ai_visible else " (shows with the AI marks: A)"
        self.show_status(f"suspicion map {'on' if state.show_map else 'off'}{extra}")

    def _toggle_candidates(self) -> None:
        state = self.hanging.state
        state.toggle_all_marks()
        if state.show_all_marks:
            self.show_status(f"AI candidates: marks >= {state.candidate_threshold:.2f} "
                             f"(at most {state.max_candidates} a view); Shift+A again for the operating point")
        else:
            self.show_status(f"AI marks above the operating point ({state.mark_threshold:.2f})")

    def _toggle_fullscreen_focused(self) -> None:
        focused = next((s for s, p in self.hanging.panes.items() if p.hasFocus()), None)
        if focused is None:
            focused = self.hanging.state.fullscreen or "RCC"
        self.hanging.state.toggle_fullscreen(focused)

    # ----------------------------------------------------------------- status/log
    def show_status(self, text: str) -> None:
        self.status_label.setText(text)

    def log_line(self, text: str) -> None:
        self.log.appendPlainText(time.strftime("%H:%M:%S ") + text)

    # ----------------------------------------------------------------- worklist
    def worklist_query(self) -> WorklistQuery:
        """What the worklist shows now: the session's model, the reader's search, filter
        and sort, and the blind policy (AI hidden until this reader's initial assessment
        in "AI after my read" mode)."""
        old = self.worklist.query
        blind = self.reader if self.hanging.state.reading_mode == "after read" else None
        return WorklistQuery(self.model_version, self.points, (self.model_meta or {}).get("weights_sha256"),
                             sort=old.sort if old else "triage", descending=old.descending if old else False,
                             filter=old.filter if old else "all", search=old.search if old else "",
                             blind_reader=blind, triage_order=self.policy.triage_order,
                             site_reads=self.site is not None,
                             double_reader=self.reader if self.double_policy.enabled else None)

    def _worklist_page(self, query: WorklistQuery, offset: int, limit: int) -> tuple[int, list]:
        return worklist_rows(self.queue.conn, query, offset, limit, self._etas)

    def _double_page(self, keys: list[str]) -> tuple[dict, dict]:
        """Double reading: the states of a worklist page's exams and the soft locks on them."""
        assert self.locks is not None
        if self.double_feed is not None:  # from memory: the feed reads the site (and now these too)
            self.double_feed.want(keys)
            return self.double_feed.states(keys), self.double_feed.holders(keys)
        try:
            self.double_states.update(self.double_store)
            holders = self.locks.holders(keys=keys)
        except StoreUnreachable as exc:  # the site server is away: the states last read, no locks
            self.show_status(str(exc))
            holders = {}
        return self.double_states.get(keys), holders

    def refresh_arbitration(self) -> None:
        """The arbitration list: discordant exams this reader did not read."""
        if self.locks is None:
            return
        statuses: Iterable[ExamStatus]
        if self.double_feed is not None:
            statuses = self.double_feed.all_states()
        else:
            try:
                self.double_states.update(self.double_store)
            except StoreUnreachable as exc:
                self.show_status(str(exc))
            statuses = self.double_states.statuses.values()
        cases = arbitration_list(statuses, self.reader)
        names = {}
        for case in cases:
            exam = self.archive.exam(case.exam_key)
            names[case.exam_key] = (f"{exam.patient_id} {exam.study_date or ''}".strip() if exam
                                    else case.exam_key)
        self.arbitration.set_cases(cases, names)

    def open_exam_key(self, exam_key: str) -> None:
        """Select (and so open) an exam in the worklist, fetching pages up to its row."""
        row = self.worklist.fetch_through(exam_key)
        if row is not None:
            self.table.selectRow(row)
        else:
            exam = self.archive.exam(exam_key)
            if exam is not None:
                self.open_exam(exam)

    def refresh_worklist(self) -> None:
        """Run the worklist's query again for the rows on screen (and the reader's row)
        plus one page, not every row the reader scrolled through. The exam the reader is
        on keeps its row: results that arrive re-order the others around it, never the
        row under the reader."""
        if self.double_feed is not None:  # the site's states and locks are read again too (its thread)
            self.double_feed.poke()
        key = self.current.exam_key if self.current else self._resume_key
        old_row = self.worklist_view.row_of(key) if key else None
        sha = (self.model_meta or {}).get("weights_sha256")
        self._etas = self.queue.etas(self.model_version or "", self.queue.per_view_p95(sha) if sha else None,
                                     hold_s=self.local_triage_after_s() if self.site is not None else 0.0)
        query = self.worklist_query()
        keep = None
        if old_row is not None and key and self.current is not None and query.sort == "triage" \
                and not query.search and query.filter == "all":
            keep = (key, old_row)
        self.table.blockSignals(True)
        self.table.selectionModel().blockSignals(True)
        self.worklist.set_query(query, keep=keep, rows=self.worklist.refresh_rows(
            self._last_visible_row(), keep[1] if keep is not None else None))
        self.table.resizeColumnsToContents()
        row = self.worklist.fetch_through(key) if key else None
        if row is not None:
            self.table.selectRow(row)
        self.table.selectionModel().blockSignals(False)
        self.table.blockSignals(False)
        self.refresh_arbitration()
        if row is not None and self.current is None:
            self.open_row(row)  # resume where this reader stopped
        elif row is None and self.worklist_view.rowCount() and self.current is None:
            self.table.selectRow(0)
        self._update_model_label()

    def _last_visible_row(self) -> int:
        """The worklist's last row on screen (the last row when they end above the bottom)."""
        row = self.table.rowAt(self.table.viewport().height() - 1)
        return row if row >= 0 else self.worklist.rowCount() - 1

    def priors_of(self, exams: list[ExamRecord]) -> dict[str, list[ExamRecord]]:
        """The linked priors of ``exams`` (:func:`link_priors`), from this patient's exams only."""
        return priors_in_archive(self.archive, exams)

    def _search_changed(self, text: str) -> None:
        self.worklist_view.set_search(text)
        self._reselect()

    def _filter_changed(self, name: str) -> None:
        self.worklist_view.set_filter(name)
        self._reselect()
        self.show_status(f"worklist: {name} ({self.worklist_view.rowCount()} exams)")

    def _reselect(self) -> None:
        row = self.worklist_view.row_of(self.current.exam_key) if self.current else None
        self.table.selectionModel().blockSignals(True)
        if row is not None:
            self.table.selectRow(row)
        self.table.selectionModel().blockSignals(False)

    def _focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    def _cycle_filter(self) -> None:
        self.filter_box.setCurrentIndex((self.filter_box.currentIndex() + 1) % self.filter_box.count())

    def _triage_order(self) -> None:
        self.worklist_view.sort(-1)
        self.table.horizontalHeader().setSortIndicatorShown(False)
        self.refresh_worklist()
        self.show_status("worklist in triage order")

    def step_exam(self, step: int) -> None:
        n = self.worklist_view.rowCount()
        if n == 0:
            return
        row = self.table.currentIndex().row()
        self.table.selectRow(min(max(row + step, 0), n - 1))

    def open_row(self, row: int) -> None:
        entry = self.worklist_view.entry(row)
        if entry is None:
            return
        self.open_exam(entry.exam)
        # decode the next unread exams (and their priors) ahead of time, within the cache
        ahead_keys = [e.exam.exam_key for e in self.worklist.entries[row + 1:]
                      if not self.worklist.read_state(e).is_read][:DEFAULT_EXAMS]
        ahead = [x for x in (self.archive.exam(k) for k in ahead_keys) if x is not None]
        if self.site_log is not None:  # and their corrections into the local copy (the sender reads them)
            self.site_log.watch(ahead_keys)
        self.priors.update(self.priors_of(ahead))
        paths = prefetch_paths(ahead, self.worklist.reads, self.priors, self.loader.cache)
        if hasattr(self.loader, "prefetch"):
            self.loader.prefetch(paths)
        else:
            for path in paths:
                self.loader.request(path)

    def open_exam(self, exam: ExamRecord) -> None:
        if not exam.images:  # a worklist row: the exam's records load when it opens
            exam = self.archive.exam(exam.exam_key) or exam
        self.priors = self.priors_of([exam])
        self._take_lock(exam.exam_key)
        opened = self.session.open_exam(exam, self.priors)  # and it is triaged next: a reader is waiting
        self.current = exam
        self._shown_emitted = False
        self.settings.setValue(f"reader/{self.reader}/last_exam", exam.exam_key)
        self.hanging.state.new_exam(self.initial_reads.latest(exam.exam_key, self.reader) is not None)
        self.hanging.state.select("", "")
        self.corrections = ExamCorrections(self.corrections_log, exam.exam_key, self.reader)
        self.corrections.changed.connect(self._corrections_changed)
        for pane in self.hanging.panes.values():
            pane.corrections = self.corrections
        extras = opened.extras
        self.extras, self._extra_index = list(extras), -1
        self.current_paths = dict(opened.paths)
        self.loader.on_screen = set(self.current_paths.values())  # decoded first, previews first
        self._set_prior(opened)
        self.loader.cache.pinned = set(self.current_paths.values()) | set(self.prior_paths.values())
        for state in self.hanging.state.panes.values():
            state.window = None
            state.set_invert(False)
            state.set_view(1.0, (0.0, 0.0))
        for slot in SCREENING_SLOTS:
            path = self.current_paths.get(slot)
            if path is None:
                self.hanging.set_missing(slot)
                continue
            view = self.loader.request(path)
            if view is None:
                self.hanging.set_loading(slot)
            else:
                self._show_view(slot, view)
        self.load_overlays()
        extra = f", {len(extras)} extra view(s)" if extras else ""
        mine = self.corrections.mine()
        read = ""
        if mine.assessment:
            read = f"  ·  {'signed' if mine.signed else 're-opened'}: {assessment_text(mine.assessment)}"
        elif mine.birads is not None or mine.density:
            read = f"  ·  BI-RADS {mine.birads if mine.birads is not None else '-'}, density {mine.density or '-'}"
        self.show_status(f"{exam.patient_id}  {exam.study_date or ''}  {' '.join(exam.views)}{extra}{read}")
        self._check_shown()

    def _poll(self) -> None:
        for result in self.loader.poll():
            slots = [s for s, p in self.current_paths.items() if p == result.path]
            if isinstance(result, LoadError):
                self.log_line(f"cannot display {result.path}: {result.reason}")
                for slot in slots:
                    self.hanging.set_error(slot, result.reason)
            elif isinstance(result, LoadedView):
                for slot in slots:
                    self._show_view(slot, result)
                if slots and result.path not in self._warned:
                    # what the reader set aside (a broken window, VOI LUT or rescale) is said,
                    # never silently changed
                    self._warned.add(result.path)
                    for w in result.meta.warnings:
                        self.log_line(f"{result.path}: {w}")
                    if result.meta.warnings:
                        self.show_status(f"{Path(result.path).name}: {result.meta.warnings[0]} (see the log)")
            if self.hanging.state.compare:
                for slot in (s for s, p in self.prior_paths.items() if p == result.path):
                    if isinstance(result, LoadedView):
                        self.hanging.set_prior_view(slot, result)
                    else:
                        self.hanging.prior_panes[slot].set_error(f"{slot} (prior): {result.reason}")
        self._check_shown()
        self._update_decode_progress()
        self._poll_job()
        if self.network is not None or self.site_images is not None:
            self._poll_network()
        self._poll_triage()

    def _show_view(self, slot: str, view: LoadedView) -> None:
        self.hanging.set_view(slot, view)
        if self.corrections is not None and not view.preview:  # events carry the full pixels' hash
            meta = view.meta
            self.corrections.set_image(ImageInfo(meta.sop_instance_uid, meta.study_instance_uid,
                                                 meta.series_instance_uid, view.pixel_sha256))

    # ----------------------------------------------------------------- corrections
    def _site_events_arrived(self, exam_keys: list) -> None:
        """Site mode: the sender read newer events of these exams (another workstation's): refold what is open."""
        if self.site_reads is not None:
            self.site_reads.poke()  # and the worklist's read states follow
        for corrections in (self.corrections, self.prior_corrections):
            if corrections is not None and (corrections.exam_key in exam_keys or None in exam_keys):
                corrections.reload()

    def _corrections_changed(self) -> None:
        for pane in self.hanging.panes.values():
            pane.update()

    def _selected(self):
        """(pane, label) of the selected mark, or None."""
        sel = self.hanging.state.selected
        if not sel:
            return None
        pane = self.hanging.panes.get(sel[0])
        if pane is None or pane.view is None:
            return None
        label = next((lab for _r, lab in pane.label_items() if lab.label_id == sel[1]), None)
        return (pane, label) if label is not None else None

    def _selected_or_say(self):
        """:meth:`_selected`, or None with a word in the status bar on how to select one."""
        sel = self._selected()
        if sel is None:
            self.show_status("select a mark first (click it, or Tab)")
        return sel

    def _take_lock(self, exam_key: str) -> None:
        """Double reading: leave the previous exam's soft lock and take this one's; while
        another reader holds it, say who (the lock is advisory: the exam still opens)."""
        if self.locks is None:
            return
        if self.current is not None and self.current.exam_key != exam_key:
            self._release_or_renew(self.current.exam_key)  # a refusal is said; the take goes on
        try:
            taken = self.locks.take(exam_key, self.reader)
        except CorrectionError as exc:  # the server away (StoreUnreachable) or refusing it (accounts)
            self.show_status(f"opened without the lock: {exc}")
            self.log_line(f"soft lock not taken: {exc}")
            return
        if not taken.granted and taken.lock is not None:
            text = f"{taken.lock.text} on {taken.lock.workstation}"
            self.show_status(text)
            self.log_line(f"{text}: opened without the lock")

    def _record(self, fn: Callable[Concatenate[ExamCorrections, P], object],
                *args: P.args, **kwargs: P.kwargs) -> bool:
        """Run a correction on the open exam's corrections (``fn(corrections, *args)``;
        False when no exam is open); a refused event is reported, never lost silently."""
        if self.corrections is None:
            return False
        try:
            fn(self.corrections, *args, **kwargs)
        except (CorrectionError, KeyError) as exc:
            self.show_status(f"not recorded: {exc}")
            self.log_line(f"correction refused: {exc}")
            return False
        if self.locks is not None and self.current is not None:  # reading goes on: renew the lease
            self._release_or_renew(self.current.exam_key, renew=True)
        return True

    def _release_or_renew(self, exam_key: str, renew: bool = False) -> None:
        """Double reading: give an exam's soft lock back (or renew it); a site server that
        is away is said in the status bar (the lease runs out by itself)."""
        if self.locks is None:
            return
        try:
            if renew:
                self.locks.take(exam_key, self.reader)
            else:
                self.locks.release(exam_key, self.reader)
        except CorrectionError as exc:  # the server away (StoreUnreachable) or refusing it (accounts)
            self.show_status(f"soft lock not {'renewed' if renew else 'released'}: {exc}")

    def accept_selected(self) -> None:
        sel = self._selected_or_say()
        if sel is None:
            return
        pane, label = sel
        if label.source != "ai":
            self.show_status("only AI marks are accepted; your own findings already count")
            return
        self._record(ExamCorrections.accept, pane.view.meta.sop_instance_uid, label.label_id)

    def reject_selected(self) -> None:
        sel = self._selected_or_say()
        if sel is None:
            return
        pane, label = sel
        fn = ExamCorrections.reject if label.source == "ai" else ExamCorrections.delete
        if self._record(fn, pane.view.meta.sop_instance_uid, label.label_id) and label.source == "reader":
            self.hanging.state.select("", "")

    def change_kind_selected(self, kind: str | None = None) -> None:
        sel = self._selected_or_say()
        if sel is None:
            return
        pane, label = sel
        if kind is None:
            kind, ok = QInputDialog.getItem(self, "Kind", "Finding kind:", list(KINDS),
                                            list(KINDS).index(label.kind) if label.kind in KINDS else 0, False)
            if not ok:
                return
        self._record(ExamCorrections.change_kind, pane.view.meta.sop_instance_uid, label.label_id, kind)

    def select_next(self) -> None:
        focused = next((s for s, p in self.hanging.panes.items() if p.hasFocus()), None)
        slots = [focused] if focused else list(self.hanging.panes)
        items = [(slot, lab.label_id) for slot in slots for _r, lab in self.hanging.panes[slot].label_items()]
        if not items:
            self.show_status("no marks to select")
            return
        current = self.hanging.state.selected
        index = (items.index(current) + 1) % len(items) if current in items else 0
        self.hanging.state.select(*items[index])

    def _draw_tool(self, shape: str) -> None:
        state = self.hanging.state
        if state.tool == "draw" and state.draw_shape == shape:
            state.set_tool("pan")
        else:
            state.draw_shape = shape
            state.set_tool("draw")

    def on_label_edited(self, slot: str, label_id: str, geometry: dict) -> None:
        pane = self.hanging.panes[slot]
        if pane.view is not None:
            self._record(ExamCorrections.adjust, pane.view.meta.sop_instance_uid, label_id, geometry)

    def on_finding_drawn(self, slot: str, geometry: dict) -> None:
        kind, ok = QInputDialog.getItem(self, "Missed finding", "Kind:", list(KINDS), 0, False)
        if not ok:
            return
        suspicion, ok = QInputDialog.getInt(self, "Missed finding", "Your suspicion (0-100):", 50, 0, 100)
        if ok:
            self.add_finding(slot, geometry, kind, suspicion / 100)

    def add_finding(self, slot: str, geometry: dict, kind: str, suspicion: float | None) -> None:
        pane = self.hanging.panes[slot]
        if pane.view is None:
            return
        if self._record(ExamCorrections.add, pane.view.meta.sop_instance_uid, kind, geometry, suspicion):
            self.hanging.state.set_tool("pan")

    def undo(self) -> None:
        self._record(self._undo_or_say, "undo")

    def redo(self) -> None:
        self._record(self._undo_or_say, "redo")

    def _undo_or_say(self, corrections: ExamCorrections, what: str) -> None:
        if (corrections.undo if what == "undo" else corrections.redo)() is None:
            self.show_status(f"nothing to {what}")

    # ----------------------------------------------------------------- finishing a read
    def _initial_assessment(self, exam: ExamRecord, corrections: ExamCorrections) -> dict[str, Any]:
        """What the sign dialog starts from: the last signed assessment, else the
        exam-level BI-RADS/density this reader recorded, else BI-RADS 1."""
        mine = corrections.mine()
        if mine.assessment:
            return mine.assessment
        breasts = {}
        birads = "1" if mine.birads is None else ("4A" if mine.birads == 4 else str(mine.birads))
        density = (mine.density or "b").lower()
        for side in sorted({i.laterality.value for i in exam.images} & {"R", "L"}) or ["R", "L"]:
            breasts[side] = {"birads": birads, "density": density}
        return {"breasts": breasts}

    def assessment_dialog(self) -> AssessmentDialog | None:
        """The sign dialog of the open exam (None when none is open)."""
        from mammotriage.ui.assessment_dialog import AssessmentDialog

        exam, corrections = self.current, self.corrections
        if exam is None or corrections is None:
            return None
        sides = tuple(s for s in ("R", "L") if s in {i.laterality.value for i in exam.images}) or ("R", "L")
        text = f"{exam.patient_name.replace('^', ' ')}  {exam.patient_id}  {exam.study_date or ''}"
        return AssessmentDialog(self, text, self._initial_assessment(exam, corrections), sides)

    def sign_and_next(self) -> None:
        """Ctrl+Enter: ask for the per-breast assessment, sign it, open the next unread exam."""
        if self.current is None or self.corrections is None:
            return
        if self.corrections.signed:
            self.show_status("already signed (Ctrl+Shift+E re-opens it with an amendment); next unread exam")
            self.open_next_unread()
            return
        dialog = self.assessment_dialog()
        if dialog is None or dialog.exec() != QDialog.DialogCode.Accepted:
            self.show_status("not signed")
            return
        if self.sign_exam(dialog.assessment()):
            self.open_next_unread()

    def sign_exam(self, assessment: dict) -> bool:
        """Record the signed assessment (a ``sign`` event) and queue the reader-findings
        SR of the exam for the PACS."""
        exam, corrections = self.current, self.corrections
        if exam is not None and corrections is not None and isinstance(self.corrections_log, DoubleReadingRules):
            try:
                status = self.corrections_log.status(exam.exam_key)
            except StoreUnreachable as exc:  # the site server is away: nothing signed
                self.show_status(f"not signed: {exc}")
                self.log_line(f"not signed: {exc}")
                return False
            if status.state == "discordant" and self.reader not in status.readers:
                return self.arbitrate_exam(assessment)
        if exam is None or corrections is None or not self._record(ExamCorrections.sign, assessment):
            return False
        text = assessment_text(corrections.mine().assessment or assessment)
        self.log_line(f"signed by {self.reader}: {exam.patient_id} {exam.study_date or ''}: {text}")
        # site mode: the exam's events as this window has them (the sign may still wait to be sent)
        events = corrections.known_events() if self.site is not None else None  # no server call here
        self.run_job("writing reader findings SR", write_reader_sr, str(self.archive.path), exam.exam_key,
                     self.reader, str(data_dir()), OutboxSink.from_settings(), events,
                     done=self._sr_done, wait=True)
        self.refresh_worklist()
        return True

    def arbitrate_exam(self, assessment: dict) -> bool:
        """Double reading: a third reader's signature on a discordant exam records the
        consensus (an ``arbitrate`` event naming both reads)."""
        exam, log = self.current, self.corrections_log
        if exam is None or not isinstance(log, DoubleReadingRules):
            return False
        try:
            status = log.status(exam.exam_key)
            payload = {**assessment, "rule": self.double_policy.discordance, "reasons": list(status.reasons),
                       "reads": [{"reader": r.reader, "seq": r.seq} for r in status.reads]}
            log.append(reader=self.reader, exam_key=exam.exam_key, action="arbitrate", payload=payload,
                       model_version=self.corrections.model_version if self.corrections else "")
        except CorrectionError as exc:
            self.show_status(f"not recorded: {exc}")
            self.log_line(f"arbitration refused: {exc}")
            return False
        self.log_line(f"arbitrated by {self.reader}: {exam.patient_id} {exam.study_date or ''}: "
                      f"{assessment_text(assessment)}")
        self._release_or_renew(exam.exam_key)
        self.open_exam(exam)  # its labels fold the arbitration: signed
        self.refresh_worklist()
        return True

    def _sr_done(self, result: object) -> None:
        self.log_line(str(result))

    def open_next_unread(self) -> bool:
        """Open the next exam in worklist order (after this one, wrapping) not yet signed."""
        here = self.worklist_view.row_of(self.current.exam_key) if self.current else None
        start = -1 if here is None else here
        step = 0
        while True:
            step += 1
            if start + step >= self.worklist.rowCount() and self.worklist.canFetchMore():
                self.worklist.fetchMore()  # the next page, before wrapping to the top
            n = self.worklist.rowCount()
            if n == 0 or step > n:
                break
            row = (start + step) % n
            entry = self.worklist_view.entry(row)
            if entry is not None and not self.worklist.is_done(entry) \
                    and (self.current is None or entry.exam.exam_key != self.current.exam_key):
                self.table.selectRow(row)
                return True
        self.show_status("no unread exams left")
        return False

    def amend_dialog(self) -> None:
        if self.corrections is None:
            return
        if not self.corrections.signed:
            self.show_status("this exam is not signed: nothing to amend")
            return
        reason, ok = QInputDialog.getText(self, "Amend signed exam", "Reason for re-opening this signed exam:")
        if ok and reason.strip():
            self.amend(reason.strip())

    def amend(self, reason: str) -> bool:
        if not self._record(ExamCorrections.amend, reason):
            return False
        self.log_line(f"re-opened by {self.reader} (amendment): {reason}")
        self.show_status("re-opened: corrections and a new signature are possible")
        self.refresh_worklist()
        return True

    def final_birads_dialog(self) -> None:
        if self.corrections is None:
            return
        items = [birads_text(str(i)) if str(i) in BIRADS and i != 4 else "4 - suspicious" for i in range(7)]
        value, ok = QInputDialog.getItem(self, "BI-RADS", "Final assessment (BI-RADS; per breast and 4A-4C "
                                         "when you sign, Ctrl+Enter):", items, 1, False)
        if ok:
            self._record(ExamCorrections.set_birads, int(value.split()[0]))

    def density_dialog(self) -> None:
        if self.corrections is None:
            return
        items = [f"{code.upper()} - {name}" for code, name in DENSITY.items()]
        value, ok = QInputDialog.getItem(self, "Breast density", "ACR density:", items, 1, False)
        if ok:
            self._record(ExamCorrections.set_density, value[:1].upper())

    def note_dialog(self) -> None:
        if self.corrections is None:
            return
        text, ok = QInputDialog.getMultiLineText(self, "Note", "Note on this exam:",
                                                 self.corrections.mine().note or "")
        if ok:
            self._record(ExamCorrections.set_note, text)

    def sign_in_dialog(self) -> None:
        readers = self.corrections_log.readers()
        name, ok = QInputDialog.getItem(self, "Reader", "Sign in as (type a new name to add one):",
                                        readers, readers.index(self.reader) if self.reader in readers else 0, True)
        if not (ok and name.strip()):
            return
        if self.site is None:
            self.sign_in(name.strip())
            return
        password, ok = QInputDialog.getText(
            self, "Site account", f"Password of {name.strip()}'s site account\n"
            "(empty: sign in without one, if the site allows it):", QLineEdit.EchoMode.Password)
        if ok:
            self.site_sign_in(name.strip(), password)

    def site_sign_in(self, name: str, password: str) -> cf.Future[None] | None:
        """Sign in with the reader's site account: checked by the site server on a thread
        (never the UI thread), then :meth:`sign_in`; their events carry the sign-in and the
        server accepts them as theirs. An empty password signs in by name only."""
        if self.site is None:
            self.sign_in(name)
            return None
        from mammotriage.store.pg.accounts import (
            AccountError,
            accounts_required,
            reader_role,
            sign_in,
        )

        site, workstation = self.site, socket.gethostname()
        self._sign_in_gen += 1
        gen = str(self._sign_in_gen)   # a reply to an earlier sign-in is dropped
        self.log_line(f"signing in {name}" + (" with the site account…" if password else " by name…"))

        def work() -> None:
            try:
                if not password:  # by name only: only where the site does not require accounts
                    if accounts_required(site.dsn()):
                        raise AccountError("this site requires a site account: enter the password")
                    self.site_signed_in.emit(name, "", 0.0, gen + " " + f"signed in by name (no site account): {name}")
                    return
                got = sign_in(site.dsn(user=reader_role(name), password=password), workstation)
                ends = time.strftime("%H:%M", time.localtime(got.expires_at))
                self.site_signed_in.emit(name, got.token, got.expires_at,
                                         gen + " " + f"signed in with the site account: {name} (until {ends})")
            except AccountError as exc:
                self.site_signed_in.emit("", "", 0.0, gen + " " + f"site sign-in of {name} refused: {exc}")
            except Exception as exc:  # noqa: BLE001 - the server away: said, nobody signed in
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.site_signed_in.emit("", "", 0.0, gen + " " + f"site sign-in of {name} failed: "
                                                             f"{type(exc).__name__}: {first}")

        if self._sign_in_pool is None:
            self._sign_in_pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="site-sign-in")
        return self._sign_in_pool.submit(work)

    def _site_signed_in(self, name: str, token: str, ends_at: float, said: str) -> None:
        from mammotriage.store.pg.accounts import SignIn, SignIns

        gen, _, said = said.partition(" ")
        if self._closing or gen != str(self._sign_in_gen):
            return  # the window closes, or a later sign-in was asked for
        self.log_line(said)
        if not name:
            return
        for log in (self.site_log, self.corrections_log, self.history_log, self.locks):
            tokens = getattr(log, "sign_ins", None)
            if isinstance(tokens, SignIns):
                if token:
                    tokens.put(SignIn(name, token, ends_at))
                else:
                    tokens.pop(name, None)
        self._sign_in_said = ""
        self.sign_in(name)

    #: how long before a site sign-in ends the reader is told to sign in again
    SIGN_IN_WARN_S = 15 * 60

    def sign_in_note(self) -> str:
        """What the status bar says about the reader's site sign-in ("" when nothing is due)."""
        if self.site is None:
            return ""
        from mammotriage.store.pg.accounts import SignIns

        tokens = getattr(self.site_log or self.corrections_log, "sign_ins", None)
        if not isinstance(tokens, SignIns):
            return ""
        end = tokens.ends_at(self.reader)
        if end is None or end == float("inf"):
            return ""
        left = end - tokens.clock()
        at = time.strftime("%H:%M", time.localtime(end))
        if left <= 0:
            return f"sign-in ended {at}: Ctrl+Shift+R"
        if left <= self.SIGN_IN_WARN_S:
            return f"sign-in ends {at}"
        return ""

    def check_sign_in(self) -> None:
        """Say once when the reader's site sign-in is about to end and once when it has
        ended (their changes are then refused until they sign in again, nothing is kept
        to be refused by the server later)."""
        note = self.sign_in_note()
        stage = note.split(" ", 2)[1] if note else ""   # "ends" or "ended"
        if stage and stage != self._sign_in_said:
            self._sign_in_said = stage
            if stage == "ended":
                line = (f"the site sign-in of {self.reader} has ended: changes are not recorded until "
                        f"{self.reader} signs in again (Ctrl+Shift+R)")
            else:
                line = f"the site sign-in of {self.reader} ends soon: sign in again (Ctrl+Shift+R) to go on reading"
            self.log_line(line)
            self.show_status(line)
        self._update_model_label()

    def sign_in(self, name: str) -> None:
        self.corrections_log.add_reader(name)
        if self.current is not None:
            self._release_or_renew(self.current.exam_key)
        if name != self.reader:
            self._sign_in_said = ""
        self.reader = name
        self.worklist.reader = name
        if isinstance(self.corrections_log, DoubleReadingRules):
            self.corrections_log.reader = name
            self.refresh_worklist()  # the states and locks are read for this reader
        self.settings.setValue("reader/name", name)
        self.log_line(f"signed in: {name}")
        if self.current is not None:
            self.open_exam(self.current)
        self._update_model_label()

    # ----------------------------------------------------------------- AI
    def results_sink(self) -> OutboxSink | None:
        """Where this workstation's AI results go: the outbox to the PACS, or nowhere when
        the site archive forwards the site workers' results (the PACS gets them one way)."""
        if self.site is not None and self.site.archive_forwards_results:
            self.log_line("AI results go to the PACS through the site archive (it forwards them), "
                          "not through this workstation's outbox")
            return None
        sink = OutboxSink.from_settings()
        if sink.problem:
            self.log_line(sink.problem)
        return sink

    def start_triage(self) -> None:
        from mammotriage.triage.worker import TriageService

        sha = (self.model_meta or {}).get("weights_sha256")
        sink = self.results_sink()
        hold_s = self.local_triage_after_s() if self.site is not None else 0.0
        self.triage = service = TriageService(self.archive.path, data_dir(), self.model_dir,
                                              expected_sha256=sha, sink=sink, hold_s=hold_s)
        service.start()
        if hold_s > 0:
            self.log_line(f"background triage started with model {self.model_version}: an exam the site's "
                          f"AI workers have not analysed within {hold_s:g} s is analysed here "
                          "(at once when opened)")
        else:
            self.log_line(f"background triage started with model {self.model_version}")

    def local_triage_after_s(self) -> float:
        """Site mode: how long an exam is left to the site's AI workers before this
        workstation analyses it itself (setting ``site/local_triage_after_s``; 0: at once)."""
        raw = self.settings.value("site/local_triage_after_s", DEFAULT_LOCAL_TRIAGE_AFTER_S)
        try:
            value = float(str(raw))
        except ValueError:
            return DEFAULT_LOCAL_TRIAGE_AFTER_S
        return value if math.isfinite(value) and value >= 0 else DEFAULT_LOCAL_TRIAGE_AFTER_S

    def show_model_panel(self):
        """The learning-loop panel (versions, retrain, validate, promote, rollback): one
        non-modal instance; a promotion or rollback there restarts triage here."""
        if self.model_panel is None:
            self._ensure_model_panel()
        else:
            self.model_panel.refresh()
        self.model_panel.show()
        self.model_panel.raise_()
        return self.model_panel

    def _ensure_model_panel(self):
        from mammotriage.ui.model_panel import ModelPanel

        if self.model_panel is None:
            self.model_panel = ModelPanel(self.archive.path, parent=self)
            self.model_panel.active_changed.connect(lambda _version: self.check_active_model())
            self.model_panel.job_finished.connect(
                lambda kind, code: self.log_line(f"model {kind} job finished with exit code {code}"))
        return self.model_panel

    def check_pipeline(self) -> bool:
        """Start the automatic pipeline (a Model panel job, low CPU priority) when the site
        setting's count of new corrections is reached. Returns True if it started."""
        from mammotriage.learning.pipeline import PipelineError, status

        try:
            st = status(self.archive.path)
        except PipelineError as exc:
            self.log_line(f"pipeline: {exc}")
            return False
        if not st["due"] or (self.model_panel is not None and self.model_panel.process is not None):
            return False
        if not self._ensure_model_panel().start_pipeline(if_due=True):
            return False
        self.log_line(f"pipeline: {st['new_corrections']} new corrections - snapshot, data tests, retrain and "
                      "validation running in the background (Model panel, Ctrl+Shift+M)")
        return True

    def show_monitor(self):
        """The monitoring view for the active model (computed off the UI thread); not while
        AI is hidden until the reader's own assessment (it shows AI scores)."""
        from mammotriage.ui.monitor_view import MonitorView

        if self.hanging.state.reading_mode == "after read":
            self.show_status("monitoring shows AI scores: not available in \"AI after my read\" mode")
            return None

        threshold = self.points.suspicious if self.points is not None else None
        view = self.monitor_view
        if view is None or view.model_meta is not self.model_meta:
            if view is not None:
                view.deleteLater()
            self.monitor_view = view = MonitorView(self.archive.path, self.model_meta, threshold, parent=self)
        else:
            view.refresh()
        view.show()
        view.raise_()
        return view

    def check_active_model(self) -> bool:
        """Follow a promotion or rollback made in this program (the Model panel) at once:
        restart the triage worker with the new active version. Returns True if the model
        changed. A change made elsewhere (the CLI) is seen by the periodic check, which
        verifies the package off the UI thread."""
        return self.session.follow_active_model() and self._model_changed()

    def _model_changed(self) -> bool:
        if self.triage is not None:
            self.triage.stop()
            self.triage = None
        model = self.session.model
        if model.meta is not None:
            self.hanging.state.mark_threshold = model.mark_threshold()
            self.hanging.state.candidate_point = model.candidate_point()
            if self._auto_triage:
                self.start_triage()
        self._site_results_follow()
        self.log_line(f"active model is now {model.version or 'none'}")
        self.refresh_worklist()
        self.load_overlays()
        return True

    def _poll_triage(self) -> None:
        self._model_check_tick += 1
        while not self._site_model_said.empty():
            self.log_line(self._site_model_said.get())
        if self._model_check_tick % 100 == 0 and self.session.poll_model():  # every ~3 s, no hashing
            self._model_changed()
        if self.site_reads is not None and self.site_reads.generation != self._reads_seen:
            self._reads_seen = self.site_reads.generation  # the site's read states moved
            self.refresh_worklist()
        if self.double_feed is not None:  # the site's states and locks: when the feed read something new
            if self.double_feed.generation != self._feed_seen:
                self._feed_seen = self.double_feed.generation
                self.worklist.refresh_double()
                self.refresh_arbitration()
        elif self.locks is not None and self._model_check_tick % 160 == 0:  # ~5 s: other workstations
            self.worklist.refresh_double()
            self.refresh_arbitration()
        refresh = False
        open_keys = (self.current.exam_key if self.current else None, self.prior.exam_key if self.prior else None)
        taken = self.site_results.take() if self.site_results is not None else []
        if taken:  # the site's AI workers analysed these exams: not analysed again here
            refresh = True
            if len(taken) <= 3:
                for exam_key, worker in taken:
                    self.log_line(f"AI result for exam {exam_key} from the site's AI worker {worker} "
                                  "(not analysed again here)")
            else:
                workers = ", ".join(sorted({w for _, w in taken}))
                self.log_line(f"AI results for {len(taken)} exams from the site's AI workers ({workers}): "
                              "not analysed again here")
            if any(k in open_keys for k, _ in taken):
                self.load_overlays()
        for message in self.triage.messages() if self.triage is not None else ():
            kind = message[0]
            if kind == "error":
                self.log_line(f"triage: {message[1]}")
            elif kind in ("done", "failed"):
                refresh = True
                if message[1] in open_keys:
                    self.load_overlays()
                if kind == "failed":
                    job = self.queue.job(message[1], self.model_version or "")
                    self.log_line(f"triage failed for {message[1]}: {job.reason if job else '?'}")
        if refresh:
            self.refresh_worklist()

    def _reader_text(self) -> str:
        note = self.sign_in_note()
        return f"reader {self.reader}" + (f" ({note})" if note else "")

    def _update_model_label(self) -> None:
        if self.model_meta is None:
            self.model_label.setText(f"{self._reader_text()} · AI off: no verified model package")
            self.model_label.setToolTip(self.model_problem)
            return
        counts = self.queue.counts(self.model_version or "")
        waiting = counts["pending"] + counts["running"]
        mode = self.hanging.state.reading_mode
        site = self.points is not None and self.points.reason is not None
        etas = self._etas
        last = f" (all done in ~{eta_text(max(etas.values())).removeprefix('result in ~')})" \
            if waiting and etas and max(etas.values()) >= 1.0 else ""
        self.model_label.setText(f"{self._reader_text()} · model {self.model_version} · {waiting} exam(s) waiting"
                                 f"{last} · AI {mode}" + (" · site thresholds" if site else ""))
        if self.points is not None and site:
            self.model_label.setToolTip(self.points.describe())

    def load_overlays(self) -> None:
        """AI results of the current exam's views (the active model's, else the newest),
        and of the prior's in the comparison hanging."""
        if self.current is None:
            return
        marks, shown_version = self._load_overlays(self.current, self.current_paths, self.hanging.panes)
        if self.corrections is not None:
            self.corrections.set_ai(shown_version, marks)
        if self.prior is not None and self.hanging.state.compare:
            prior_marks, prior_version = self._load_overlays(self.prior, self.prior_paths, self.hanging.prior_panes)
            if self.prior_corrections is not None:
                self.prior_corrections.set_ai(prior_version, prior_marks)

    def _load_overlays(self, exam: ExamRecord, paths: dict[str, str], panes: dict
                       ) -> tuple[dict[str, list[dict]], str]:
        shown = self.session.overlays(exam, paths)
        for line in shown.problems:
            self.log_line(line)
        for slot, data in shown.slots.items():
            panes[slot].set_overlay(AiOverlay.of(data) if data is not None else None)
        return shown.marks, shown.model_version

    # ----------------------------------------------------------------- prior exams
    def toggle_compare(self) -> None:
        """C: the comparison hanging (the most recent prior beside the current exam)."""
        state = self.hanging.state
        if state.compare:
            self.hanging.set_compare(False)
            self.show_status("comparison off")
            return
        if self.prior is None:
            self.show_status("no prior exam of this patient in the archive")
            return
        self.hanging.set_compare(True)
        self._show_prior()
        self.show_status(f"comparison with the prior of {self.prior.study_date or 'unknown date'} "
                         f"(window, zoom and pan linked; C to close)")

    def _show_prior(self) -> None:
        """Put the prior's views (loaded or loading) and its marks into the prior panes."""
        if self.prior is None:
            return
        for slot in SCREENING_SLOTS:
            path = self.prior_paths.get(slot)
            if path is None:
                self.hanging.set_prior_view(slot, None, f"{slot}: not in the prior")
                continue
            view = self.loader.request(path)
            self.hanging.set_prior_view(slot, view, "" if view is not None else "loading prior ...")
        for pane in self.hanging.prior_panes.values():
            pane.corrections = self.prior_corrections
        self.load_overlays()

    def _set_prior(self, opened: OpenedExam) -> None:
        """The most recent prior of the exam opened: prefetched with it, shown when comparing."""
        self.prior = opened.prior
        self.prior_paths = {}
        self.prior_corrections = None
        for pane in self.hanging.prior_panes.values():
            pane.set_view(None, "no prior exam")
            pane.set_overlay(None)
            pane.corrections = None
        if self.prior is None:
            if self.hanging.state.compare:
                self.hanging.set_compare(False)
            return
        self.prior_paths = dict(opened.prior_paths)
        self.prior_corrections = ExamCorrections(self.history_log, self.prior.exam_key, self.reader)
        for path in self.prior_paths.values():
            self.loader.request(path)  # prefetched with the current exam
        if self.hanging.state.compare:
            self.hanging.set_compare(True)
            self._show_prior()

    def toggle_ai(self) -> None:
        if not self.hanging.state.toggle_ai():
            self.show_status("AI is locked until you record your initial assessment (B)")
            return
        shown = self.hanging.state.ai_visible
        ready = any(p.overlay is not None for p in self.hanging.panes.values())
        self.show_status(f"AI marks and map {'shown' if shown else 'hidden'}"
                         + ("" if ready or not shown else " (no AI result for this exam yet)"))

    def record_initial_read(self) -> None:
        if self.current is None:
            return
        items = [f"{i}" for i in range(7)]
        value, ok = QInputDialog.getItem(self, "Initial assessment", "BI-RADS (before AI):", items, 1, False)
        if ok:
            self.record_initial_birads(int(value))

    def record_initial_birads(self, birads: int) -> None:
        assert self.current is not None
        self.initial_reads.record(self.current.exam_key, self.reader, birads)
        self.hanging.state.record_initial_read()
        self.log_line(f"initial assessment BI-RADS {birads} recorded by {self.reader}")
        self.refresh_worklist()  # this exam's AI result shows in the worklist now

    def cycle_reading_mode(self) -> None:
        if self.policy.enforced and self.policy.reading_mode:
            self.show_status(f"reading mode AI {self.hanging.state.reading_mode} is the site's policy "
                             f"({ReadingPolicy.FILE})")
            return
        modes = self.hanging.state.READING_MODES
        mode = modes[(modes.index(self.hanging.state.reading_mode) + 1) % len(modes)]
        self.hanging.state.set_reading_mode(mode)
        self.settings.setValue("ai/reading_mode", mode)
        self._update_model_label()
        self.refresh_worklist()  # blind mode hides the worklist's AI columns too
        self.show_status(f"reading mode: AI {mode}")

    def _update_decode_progress(self) -> None:
        total = len(self.current_paths)
        done = sum(1 for slot in self.current_paths
                   if self.hanging.panes[slot].view is not None or self.hanging.panes[slot].is_error)
        self.decode_progress.setVisible(done < total)
        if done < total:
            self.decode_progress.setRange(0, total)
            self.decode_progress.setValue(done)

    def _check_shown(self) -> None:
        if self.current is None or self._shown_emitted:
            return
        for slot in self.current_paths:
            pane = self.hanging.panes[slot]
            if pane.view is None and not pane.is_error:
                return
        self._shown_emitted = True
        self.exam_shown.emit(self.current.exam_key)

    # ----------------------------------------------------------------- background jobs
    def run_job(self, title: str, fn: Callable, *args: object, done: Callable[[object], None],
                wait: bool = False) -> None:
        """Run ``fn(*args)`` in the job process with a busy bar; ``done(result)`` after.
        With ``wait`` a job that finds another running starts when that one ends."""
        if self._job is not None:
            if wait:
                self._waiting_jobs.append((title, fn, args, done))
                return
            self.log_line(f"{title}: another job is running, try again when it ends")
            return
        self._job = self.jobs.submit(fn, *args)
        self._job_done = done
        self.progress.setRange(0, 0)
        self.progress.setFormat(title)
        self.progress.setVisible(True)
        self.show_status(title + " …")

    def _poll_job(self) -> None:
        if self._job is None or not self._job.done():
            return
        job, done = self._job, self._job_done
        self._job = self._job_done = None
        self.progress.setVisible(False)
        if self._waiting_jobs:
            title, fn, args, then = self._waiting_jobs.pop(0)
            self.run_job(title, fn, *args, done=then)
        try:
            result = job.result()
        except Exception as exc:  # noqa: BLE001 - reported, never fatal
            self.log_line(f"background job failed: {type(exc).__name__}: {exc}")
            return
        if done is not None:
            done(result)

    def _import_done(self, result: object) -> None:
        imported, duplicates, rejected = cast("tuple[int, int, list[tuple[str, str]]]", result)
        for path, reason in rejected:
            self.log_line(f"rejected {path}: {reason}")
        self.log_line(f"import: {imported} imported, {duplicates} already present, {len(rejected)} rejected")
        self.refresh_worklist()

    def import_paths(self, paths: list[str]) -> None:
        self.run_job("importing", import_in_background, paths, str(self.archive.path), done=self._import_done)

    def import_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import DICOM folder")
        if folder:
            self.import_paths([folder])

    def ensure_demo(self) -> None:
        """First run: write and import the demo exams in the background."""
        if self.archive.count() > 0:
            return
        self.log_line("first run: creating the built-in demo exams")
        self.run_job("creating demo exams", prepare_demo, str(data_dir() / "demo"), str(self.archive.path),
                     done=self._import_done)

    # ----------------------------------------------------------------- settings
    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        self.first_start = not isinstance(geometry, QByteArray)
        # a geometry Qt cannot restore (saved maximised on another screen setup, a damaged
        # setting) left the window at Qt's default 200 x 100: open as at first start
        if not self.first_start and not self.restoreGeometry(geometry):
            self.first_start = True
        if self.first_start:
            screen = (self.screen() or QApplication.primaryScreen()).availableGeometry()
            self.resize(min(1600, screen.width()), min(1000, screen.height()))
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        self.hanging.state.reading_mode = self.policy.mode_for(self.settings.value("ai/reading_mode"))
        with contextlib.suppress(ValueError):  # a hand-edited setting that is no number: the default stays
            self.hanging.state.map_opacity = float(str(self.settings.value("ai/map_opacity", 0.45)))
        if self.points is not None:
            self.hanging.state.mark_threshold = self.session.model.mark_threshold()
            self.hanging.state.candidate_point = self.session.model.candidate_point()
        layout = str(self.settings.value("view/layout", "single"))
        self.hanging_layout = layout if layout in LAYOUTS else "single"
        link = self.settings.value("view/link", "all")
        if link in self.hanging.state.LINK_MODES:
            self.hanging.state.link_mode = link

    def show_for_reading(self) -> None:
        """Show the window: maximised on its screen at first start; a remembered
        geometry that no longer fits the screens (a monitor gone, a smaller screen) is
        moved and shrunk onto one."""
        if self.first_start:
            # the screen's whole work area first: without a window manager, "maximised"
            # alone would leave the window at its default size
            screen = (self.screen() or QApplication.primaryScreen()).availableGeometry()
            self.setGeometry(screen)
            self.splitter.setSizes([max(360, int(screen.width() * 0.28)), int(screen.width() * 0.72)])
            if screen.height() < 900:
                self.log_dock.setVisible(False)  # a small screen keeps its height for the images (Ctrl+L)
            self.showMaximized()
            self._follow_screens()
            return
        if not self.isMaximized() and not self.isFullScreen():
            screens = [s.availableGeometry() for s in QApplication.screens()]
            fixed = fit_on_screens(self.frameGeometry(), screens)
            if fixed != self.frameGeometry():
                self.resize(fixed.size() - (self.frameGeometry().size() - self.size()))
                self.move(fixed.topLeft())
        self.show()
        self._follow_screens()

    def _follow_screens(self) -> None:
        """Apply the remembered layout now and again whenever a screen comes or goes."""
        app = QApplication.instance()
        if self.hanging_layout != "single":
            self.apply_screens()
        if not self._screens_followed and isinstance(app, QApplication):
            self._screens_followed = True
            app.screenAdded.connect(self._screens_changed)
            app.screenRemoved.connect(self._screens_changed)

    def _screens_changed(self, _screen) -> None:
        QTimer.singleShot(0, self.apply_screens)  # after Qt has moved windows off a lost screen

    def apply_screens(self, screens=None):
        """Lay the hanging out for the current setting on ``screens`` (default: Qt's);
        the worklist and status stay in this window. Returns the placement."""
        placement = self.screen_layout.apply(self.hanging_layout, self, screens)
        self.log_line(f"hanging: {placement.reason}")
        return placement

    def toggle_screens(self) -> None:
        """Ctrl+Shift+S: the hanging in this window, or spread over the image screens;
        remembered for the next start."""
        self.hanging_layout = "single" if self.hanging_layout == "span" else "span"
        self.settings.setValue("view/layout", self.hanging_layout)
        placement = self.apply_screens()
        self.show_status(f"hanging {'spread over the screens' if self.hanging_layout == 'span' else 'in this window'}"
                         f": {placement.reason}")

    def resizeEvent(self, event: QResizeEvent) -> None:  # Qt's name
        super().resizeEvent(event)
        # a portrait screen: the worklist above the hanging, so that the views stay wide
        side, share = worklist_split(self.width(), self.height())
        portrait = side == "top"
        want = Qt.Orientation.Vertical if portrait else Qt.Orientation.Horizontal
        if self.splitter.orientation() != want:
            self.splitter.setOrientation(want)
            total = self.height() if portrait else self.width()
            self.splitter.setSizes([int(total * share), int(total * (1 - share))])

    def closeEvent(self, event: QCloseEvent) -> None:  # Qt's name
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("view/link", self.hanging.state.link_mode)
        self.settings.setValue("view/layout", self.hanging_layout)
        self.screen_layout.close()
        self.settings.setValue("ai/map_opacity", self.hanging.state.map_opacity)
        self.settings.sync()
        self.timer.stop()
        self.sign_in_timer.stop()
        if self.locks is not None:
            if self.current is not None:
                self._release_or_renew(self.current.exam_key)
            self.locks.close()
        if self.double_feed is not None:
            self.double_feed.close()
        if self.history_log is not self.corrections_log and self.history_log is not self.site_log:
            self.history_log.close()
        if self.site_log is not None and self.corrections_log is not self.site_log:
            self.corrections_log.close()  # site double reading's own connection
        if self.site_label is not None:
            self.site_label.timer.stop()
        self._closing = True  # a sign-in still on its way is dropped
        if self._sign_in_pool is not None:
            self._sign_in_pool.shutdown(wait=False, cancel_futures=True)
        if self.site_reads is not None:
            self.site_reads.close(timeout=1.0)
        if self.site_results is not None:
            self.site_results.close(timeout=1.0)
        if self.site_images is not None:
            self.site_images.stop(timeout=1.0)  # a fetch on its way is left behind (a daemon)
        if self.site_fetcher is not None:
            self.site_fetcher.shutdown()
        if self.site_models is not None:
            self.site_models.stop(timeout=1.0)  # a sync stuck on the network is left behind (a daemon)
        if self.site_log is not None:
            self.site_log.close()  # what still waits stays in the buffer file for the next start
        if self.triage is not None:
            self.triage.stop()
        self.loader.shutdown()
        self.session.close()
        self.jobs.shutdown(wait=False, cancel_futures=True)
        self.stop_network()
        panel = self.model_panel
        if panel is not None and panel.process is not None:
            panel.cancel_job()  # a retrain/validate job does not outlive the app (its checkpoint does)
            panel.process.waitForFinished(5000)
        super().closeEvent(event)


def fit_on_screens(rect: QRect, screens: list[QRect]) -> QRect:
    """``rect`` moved and shrunk, when needed, to lie on the screen it overlaps most
    (the first screen when it overlaps none); unchanged when it already fits."""
    if not screens:
        return QRect(rect)
    if any(s.contains(rect) for s in screens):
        return QRect(rect)

    def overlap(s: QRect) -> int:
        inter = s.intersected(rect)
        return inter.width() * inter.height() if inter.isValid() else 0

    screen = max(screens, key=overlap) if any(overlap(s) for s in screens) else screens[0]
    width, height = min(rect.width(), screen.width()), min(rect.height(), screen.height())
    x = min(max(rect.x(), screen.left()), screen.left() + screen.width() - width)
    y = min(max(rect.y(), screen.top()), screen.top() + screen.height() - height)
    return QRect(x, y, width, height)
