"""When has a pushed study arrived completely?

DICOM C-STORE has no "end of study" message: a PACS or modality sends instances,
possibly over several associations.  The usual rule, used here, is a *quiet period*:
a study is complete once no instance of it has arrived for ``quiet_period_s``
seconds.  :class:`StudyCompletionTracker` implements that rule and calls the
registered callbacks with the Study Instance UID; the triage queue subscribes to it.

If more instances of a study arrive after it was reported complete, it is reported
again after the next quiet period (the subscriber decides whether to re-triage).
The tracker keeps its state in memory only: studies still inside their quiet period
when the program stops are not reported at the next start (the archive holds them,
so a start-up scan for untriaged studies finds them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["StudyCallback", "StudyCompletionTracker"]

LOG = logging.getLogger(__name__)

#: ``callback(study_uid)``: called once per completed study, on the tracker's thread.
StudyCallback = Callable[[str], None]


class StudyCompletionTracker:
    """Report studies once no instance arrived for a quiet period.

    Parameters
    ----------
    quiet_period_s
        Seconds without a new instance after which a study is complete (>= 0).
    clock
        Monotonic clock in seconds; replaceable for tests.
    start_thread
        Run a background thread that fires callbacks when quiet periods end.  With
        ``False``, call :meth:`poll` yourself (deterministic tests).

    Notes
    -----
    Callbacks run on the tracker's thread (or the thread calling :meth:`poll`), one
    at a time, never while the tracker's lock is held, so a callback may call
    :meth:`touch`.  An exception raised by a callback is logged and does not stop
    the other callbacks or later studies.

    Examples
    --------
    >>> fired = []
    >>> tracker = StudyCompletionTracker(5.0, clock=lambda: 0.0, start_thread=False)
    >>> tracker.add_callback(fired.append)
    >>> tracker.touch("1.2.3")
    >>> tracker.poll(now=4.9), tracker.poll(now=5.0), fired
    ([], ['1.2.3'], ['1.2.3'])
    """

    def __init__(
        self,
        quiet_period_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_thread: bool = True,
    ) -> None:
        if not quiet_period_s >= 0:
            raise ValueError(f"quiet_period_s must be >= 0, not {quiet_period_s!r}")
        self.quiet_period_s = float(quiet_period_s)
        self._clock = clock
        self._cond = threading.Condition()
        self._last_seen: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._callbacks: list[StudyCallback] = []
        self._closed = False
        self._fire_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(
                target=self._run, name="study-completion", daemon=True
            )
            self._thread.start()

    # -- subscription ----------------------------------------------------------

    def add_callback(self, callback: StudyCallback) -> None:
        """Call ``callback(study_uid)`` for every study that becomes complete."""
        with self._cond:
            self._callbacks.append(callback)

    def remove_callback(self, callback: StudyCallback) -> None:
        """Stop calling ``callback`` (no error if it was not registered)."""
        with self._cond:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    # -- input -------------------------------------------------------------------

    def touch(self, study_uid: str) -> None:
        """Record that an instance of ``study_uid`` arrived now (restarts its quiet period)."""
        if not study_uid:
            raise ValueError("study_uid is empty")
        with self._cond:
            if self._closed:
                return
            self._last_seen[study_uid] = self._clock()
            self._counts[study_uid] = self._counts.get(study_uid, 0) + 1
            self._cond.notify_all()

    def pending(self) -> dict[str, float]:
        """Studies still in their quiet period: UID -> seconds until complete."""
        now = self._clock()
        with self._cond:
            return {
                uid: max(0.0, seen + self.quiet_period_s - now)
                for uid, seen in self._last_seen.items()
            }

    def instances_seen(self, study_uid: str) -> int:
        """Instances recorded for a pending study since it was last reported (0 if none)."""
        with self._cond:
            return self._counts.get(study_uid, 0)

    # -- firing ----------------------------------------------------------------

    def _take_due(self, now: float) -> list[str]:
        due = [u for u, seen in self._last_seen.items() if now - seen >= self.quiet_period_s]
        due.sort(key=lambda u: self._last_seen[u])
        for uid in due:
            del self._last_seen[uid]
            self._counts.pop(uid, None)
        return due

    def _fire(self, studies: list[str]) -> None:
        if not studies:
            return
        with self._cond:
            callbacks = list(self._callbacks)
        with self._fire_lock:
            for uid in studies:
                LOG.info("study complete: %s", uid)
                for callback in callbacks:
                    try:
                        callback(uid)
                    except Exception:  # a subscriber must not stop the tracker
                        LOG.exception("study-complete callback %r failed for %s", callback, uid)

    def poll(self, now: float | None = None) -> list[str]:
        """Fire the callbacks for every study whose quiet period has ended.

        Parameters
        ----------
        now
            Clock value to use (default: the tracker's clock).

        Returns
        -------
        list of str
            Study Instance UIDs reported by this call, oldest first.
        """
        with self._cond:
            due = self._take_due(self._clock() if now is None else now)
        self._fire(due)
        return due

    def flush(self) -> list[str]:
        """Report every pending study now, without waiting for its quiet period."""
        with self._cond:
            due = sorted(self._last_seen, key=lambda u: self._last_seen[u])
            self._last_seen.clear()
            self._counts.clear()
        self._fire(due)
        return due

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    now = self._clock()
                    due = self._take_due(now)
                    if due:
                        break
                    if self._last_seen:
                        earliest = min(self._last_seen.values()) + self.quiet_period_s
                        # Re-check at least once a second in case the clock is not time.monotonic.
                        self._cond.wait(timeout=min(max(earliest - now, 0.001), 1.0))
                    else:
                        self._cond.wait()
                else:
                    return
            self._fire(due)

    def close(self, *, fire_pending: bool = False, timeout: float = 5.0) -> None:
        """Stop the background thread.

        Parameters
        ----------
        fire_pending
            Report the studies still in their quiet period before stopping.
        timeout
            Seconds to wait for the thread (and a running callback) to finish.
        """
        if fire_pending:
            self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> StudyCompletionTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
