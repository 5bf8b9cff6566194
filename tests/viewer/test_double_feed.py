"""The site worklist's double-reading feed on a real PostgreSQL: states and locks read on
its own thread, kept while the server is away (locks dropped), and the window's calls
refused at once meanwhile."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mammotriage.store.double_reading import DoubleReadingPolicy, StoreUnreachable
from mammotriage.store.pg.cluster import PgCluster
from mammotriage.store.pg.double_reading import ServerWatch, SiteDoubleReadingLog, SiteReadingLocks
from mammotriage.viewer.double_feed import DoubleReadingFeed
from store.pg.pgsupport import running_cluster, wait_until

POLICY = DoubleReadingPolicy(enabled=True)
A, B = "1.2.826.0.1.3680043.10.994.1", "1.2.826.0.1.3680043.10.994.2"


@pytest.fixture
def site() -> Iterator[PgCluster]:
    with running_cluster() as cluster:
        yield cluster


def _assessment(recall: bool) -> dict:
    birads = "4A" if recall else "1"
    return {"breasts": {"R": {"birads": "1", "density": "b"}, "L": {"birads": birads, "density": "b"}},
            "recall": recall}


def test_the_feed_reads_states_and_locks_off_the_window_and_keeps_them_while_the_server_is_away(
        site: PgCluster) -> None:
    dsn = site.dsn("mt_workstation", connect_timeout=2)
    said: list[str] = []
    watch = ServerWatch()
    with SiteDoubleReadingLog(dsn, "ann", POLICY, "ws-ann") as ann, \
            SiteDoubleReadingLog(dsn, "bob", POLICY, "ws-bob") as bob, \
            SiteReadingLocks(dsn, "ws-bob") as bob_locks, \
            SiteReadingLocks(dsn, "ws-window", deadline_s=2, watch=watch) as window_locks:
        ann.append(reader="ann", exam_key=A, action="sign", payload=_assessment(True))
        bob.append(reader="bob", exam_key=A, action="sign", payload=_assessment(False))
        assert bob_locks.take(B, "bob").granted
        feed = DoubleReadingFeed(dsn, "recall", watch, workstation="ws-window", every_s=0.2, away_every_s=0.2,
                                 say=said.append).start()
        try:
            feed.want([A, B])
            assert wait_until(lambda: feed.holders([B]) and feed.states([A]), 30)
            assert feed.states([A])[A].state == "discordant" and feed.holders([A, B])[B].reader == "bob"
            assert [s.exam_key for s in feed.all_states()] == [A]
            seen = feed.generation
            ann.append(reader="ann", exam_key=B, action="sign", payload=_assessment(False))
            feed.poke()
            assert wait_until(lambda: B in feed.states([B]), 30) and feed.generation > seen

            site.stop()
            try:
                # (its first failure is on a connection the stop dropped; the reconnect that
                # fails marks the server away for the window's calls)
                assert wait_until(lambda: feed.away is not None and watch.away is not None, 30)
                assert feed.holders([B]) == {}  # a lock that cannot be confirmed is not shown
                assert set(feed.states([A, B])) == {A, B}  # the states last read stay
                assert any("the worklist shows the states last read" in text for text in said)
                t0 = time.monotonic()
                with pytest.raises(StoreUnreachable, match="is away since"):
                    window_locks.take(A, "ann")  # the window's own call: refused at once
                assert time.monotonic() - t0 < 0.5
            finally:
                site.start()
            assert wait_until(lambda: feed.away is None and feed.holders([B]), 60)
            assert watch.away is None and window_locks.take(A, "ann").granted
            assert any("answers again" in text for text in said)
        finally:
            feed.close()
        assert not feed._thread.is_alive()
