"""Child processes that end when their parent does.

A spawned worker (decode pool, triage worker, a retrain job started by the app) would
otherwise live on with parent PID 1 after the app is killed, holding memory and the
database.  :func:`die_with_parent`, called first thing in the child (a pool's
``initializer``, a process target, the CLI when :data:`ENV_PARENT_PID` is set):

* asks Linux to send the child SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)`` through ctypes); the kernel does it even when the parent
  was killed with SIGKILL;
* starts a watchdog thread that exits the child once its parent PID changes (other
  systems, and a parent that died before the ``prctl`` call).

The parent-death signal is tied to the *thread* that spawned the child: spawn workers
from a long-lived thread (the app spawns from its UI thread).  A child killed this way
in the middle of a triage job leaves the job ``running``; the queue puts it back to
``pending`` on the next start (:meth:`mammotriage.triage.queue.TriageQueue.recover`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

__all__ = ["ENV_PARENT_PID", "die_with_parent", "die_with_parent_from_env"]

LOG = logging.getLogger(__name__)

#: Set by a parent for a child it starts as a separate program (``QProcess``).
ENV_PARENT_PID = "MAMMOTRIAGE_PARENT_PID"
PR_SET_PDEATHSIG = 1
#: How often the watchdog looks at the parent PID.
POLL_S = 0.5


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            LOG.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:
        LOG.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
        return False
    return True


def _watch(parent_pid: int) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_S):
        if os.getppid() != parent_pid:
            os._exit(1)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this process exit when ``parent_pid`` (default: the current parent) ends.

    Safe to call more than once; returns at once (the watchdog is a daemon thread).
    """
    parent = int(parent_pid) if parent_pid else os.getppid()
    _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()


def die_with_parent_from_env() -> None:
    """:func:`die_with_parent` for the PID in :data:`ENV_PARENT_PID`, if set.

    The variable is removed, so that this process's own children are not tied to the
    grandparent.
    """
    value = os.environ.pop(ENV_PARENT_PID, "")
    if value.isdigit():
        die_with_parent(int(value))
