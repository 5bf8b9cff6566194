"""The study-complete hook: quiet period, re-arming, isolation of failing callbacks."""

from __future__ import annotations

import threading
import time

import pytest

from mammotriage.net.completion import StudyCompletionTracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fires_once_after_the_quiet_period() -> None:
    clock = FakeClock()
    fired: list[str] = []
    tracker = StudyCompletionTracker(10.0, clock=clock, start_thread=False)
    tracker.add_callback(fired.append)
    tracker.touch("1.1")
    clock.now += 6
    tracker.touch("1.1")  # a new instance restarts the quiet period
    tracker.touch("2.2")
    clock.now += 9.9
    assert tracker.poll() == [] and fired == []
    assert tracker.instances_seen("1.1") == 2
    assert set(tracker.pending()) == {"1.1", "2.2"}
    clock.now += 0.1
    assert tracker.poll() == ["1.1", "2.2"]
    assert fired == ["1.1", "2.2"]
    assert tracker.poll() == [] and tracker.pending() == {}
    # More instances later: reported again after another quiet period.
    tracker.touch("1.1")
    clock.now += 10
    assert tracker.poll() == ["1.1"]
    assert fired == ["1.1", "2.2", "1.1"]


def test_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    seen: list[str] = []

    def broken(uid: str) -> None:
        raise RuntimeError("subscriber bug")

    tracker = StudyCompletionTracker(1.0, clock=clock, start_thread=False)
    tracker.add_callback(broken)
    tracker.add_callback(seen.append)
    tracker.touch("3.3")
    clock.now += 1
    assert tracker.poll() == ["3.3"]
    assert seen == ["3.3"]
    assert "subscriber bug" in caplog.text
    tracker.remove_callback(broken)
    tracker.remove_callback(broken)  # no error


def test_flush_and_close() -> None:
    fired: list[str] = []
    tracker = StudyCompletionTracker(3600.0, start_thread=True)
    tracker.add_callback(fired.append)
    tracker.touch("4.4")
    tracker.close(fire_pending=True)
    assert fired == ["4.4"]
    tracker.touch("5.5")  # ignored once closed
    assert tracker.pending() == {}


def test_background_thread_fires_with_real_time() -> None:
    done = threading.Event()
    fired: list[tuple[str, float]] = []
    start = time.monotonic()

    def on_complete(uid: str) -> None:
        fired.append((uid, time.monotonic() - start))
        done.set()

    with StudyCompletionTracker(0.3) as tracker:
        tracker.add_callback(on_complete)
        tracker.touch("6.6")
        assert done.wait(5.0)
    assert fired[0][0] == "6.6"
    assert 0.25 <= fired[0][1] < 4.0


def test_callback_may_touch_from_within() -> None:
    clock = FakeClock()
    tracker = StudyCompletionTracker(1.0, clock=clock, start_thread=False)
    tracker.add_callback(lambda uid: tracker.touch("next") if uid == "first" else None)
    tracker.touch("first")
    clock.now += 1
    assert tracker.poll() == ["first"]
    assert list(tracker.pending()) == ["next"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        StudyCompletionTracker(-1, start_thread=False)
    with pytest.raises(ValueError):
        StudyCompletionTracker(1, start_thread=False).touch("")
