"""Double reading on a site: the worklist's states and soft locks, read off the UI thread.

A site workstation's worklist shows each exam's double-reading state and who is reading
it on another workstation. Both come from the site server, and the server may be slow,
restarting or gone: the window must never wait on it. :class:`DoubleReadingFeed` reads
them on a thread of its own, with its own connection:

- every ``every_s`` (and at once after :meth:`poke`: this workstation signed, or a new
  page of the worklist came in) it catches up with the log
  (:class:`~mammotriage.store.double_reading.StatusIndex`, incremental) and reads the
  locks of the exams the worklist asked for (:meth:`want`, the newest
  :data:`MAX_WANTED`);
- the window takes the last reading from memory (:meth:`states`, :meth:`holders`,
  :meth:`all_states`) and redraws when :attr:`generation` moves;
- while the server is away the states last read stay, the locks are dropped (a lock
  that cannot be confirmed is not shown), :attr:`away` says why, the thread tries again
  every ``away_every_s``, and the shared :class:`~mammotriage.store.pg.double_reading.ServerWatch`
  tells the window's own calls (signing, taking a lock) to refuse at once instead of
  waiting; the first reading that reaches the server again clears it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Self

from mammotriage.store.double_reading import ExamStatus, Lock, StatusIndex, StoreUnreachable
from mammotriage.store.pg.double_reading import ServerWatch, SiteReadingLocks
from mammotriage.store.pg.events import PgConnected

__all__ = ["MAX_WANTED", "DoubleReadingFeed", "PolledFeed", "close_feed"]

#: Exams whose locks the feed reads (the newest asked for): a long scroll stays bounded.
MAX_WANTED = 5000


def close_feed(thread: threading.Thread, stop: threading.Event, wake: threading.Event,
               client: PgConnected, timeout: float) -> None:
    """Stop a feed's thread and close its connection: a reading waiting on a server that
    does not answer is cut, so the join does not wait for TCP to give up."""
    stop.set()
    wake.set()
    if thread.is_alive():
        client.cut()
        thread.join(timeout)
    client.close()


class PolledFeed:
    """A site feed's thread: :meth:`pull_once` every ``every_s`` seconds and at once after
    :meth:`poke`, until :meth:`close` (which cuts a reading stuck on the server,
    :func:`close_feed`). Subclasses give ``pull_once`` and the connection, ``_client``."""

    _client: PgConnected

    def __init__(self, name: str, every_s: float) -> None:
        self.every_s = float(every_s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def poke(self) -> None:
        """Pull now (from any thread)."""
        self._wake.set()

    def pull_once(self) -> int:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.pull_once()
                self._wake.wait(self.every_s)
                self._wake.clear()
        finally:  # a connection the last turn opened after close() had closed the client
            self._client.close()

    def close(self, timeout: float = 2.0) -> None:
        close_feed(self._thread, self._stop, self._wake, self._client, timeout)


class DoubleReadingFeed:
    """The site's double-reading states and soft locks for one window (see the module docstring)."""

    def __init__(self, dsn: str, rule: str, watch: ServerWatch, *, workstation: str | None = None,
                 every_s: float = 5.0, away_every_s: float = 2.0, deadline_s: float = 10.0,
                 say: Callable[[str], None] | None = None):
        self.watch = watch
        self.every_s = every_s
        self.away_every_s = away_every_s
        self.say = say or (lambda _text: None)
        self._locks = SiteReadingLocks(dsn, workstation, deadline_s=deadline_s, watch=watch, probe=True)
        self._index = StatusIndex(rule)
        self._lock = threading.Lock()
        self._wanted: OrderedDict[str, None] = OrderedDict()
        self._states: dict[str, ExamStatus] = {}
        self._holders: dict[str, Lock] = {}
        #: moves each time a reading changed what the window shows (states, locks, away)
        self.generation = 0
        #: why the last reading failed (None: it reached the server)
        self.away: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="double-reading-feed", daemon=True)
        watch.add_listener(self.poke)  # a call of the window found the server away: read again now

    def start(self) -> DoubleReadingFeed:
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        close_feed(self._thread, self._stop, self._wake, self._locks, timeout)

    # ----------------------------------------------------------------- the window's side
    def want(self, keys: Iterable[str]) -> None:
        """The worklist shows these exams: read their locks too (from the next reading)."""
        fresh = False
        with self._lock:
            for key in keys:
                fresh = fresh or key not in self._wanted
                self._wanted[key] = None
                self._wanted.move_to_end(key)
            while len(self._wanted) > MAX_WANTED:
                self._wanted.popitem(last=False)
        if fresh:
            self._wake.set()

    def poke(self) -> None:
        """Read again now (this workstation signed, arbitrated, took or gave back a lock)."""
        self._wake.set()

    def states(self, keys: Iterable[str]) -> dict[str, ExamStatus]:
        with self._lock:
            return {k: self._states[k] for k in keys if k in self._states}

    def holders(self, keys: Iterable[str]) -> dict[str, Lock]:
        with self._lock:
            return {k: self._holders[k] for k in keys if k in self._holders}

    def all_states(self) -> list[ExamStatus]:
        with self._lock:
            return list(self._states.values())

    # ----------------------------------------------------------------- the thread
    def read_once(self) -> bool:
        """One reading (the thread's step; callable directly in tests). True when it
        reached the server."""
        with self._lock:
            wanted = list(self._wanted)
        try:
            changed = self._index.update(self._locks.backend)
            holders = self._locks.holders(keys=wanted) if wanted else {}
        except StoreUnreachable as exc:
            with self._lock:
                moved = self.away != str(exc) or bool(self._holders)
                if self.away is None:
                    self.say(f"double reading: {exc}; the worklist shows the states last read")
                self.away, self._holders = str(exc), {}
                if moved:
                    self.generation += 1
            return False
        with self._lock:
            moved = bool(changed) or self.away is not None or holders != self._holders
            if self.away is not None:
                self.say("double reading: the site server answers again")
            if changed:
                self._states = dict(self._index.statuses)
            self._holders, self.away = holders, None
            if moved:
                self.generation += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                ok = self.read_once()
            except Exception as exc:  # noqa: BLE001 - a bad answer must not end the feed
                ok = False
                with self._lock:
                    self.away = f"{type(exc).__name__}: {exc}"
                    self.generation += 1
            self._wake.wait(self.every_s if ok else self.away_every_s)
