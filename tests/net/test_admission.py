"""Connections that never associate cannot lock the PACS out (loopback only).

The node listens on 127.0.0.1; "other hosts" are other loopback addresses
(127.0.0.2, 127.0.0.3) used as the source address of a client socket, which Linux
routes to 127.0.0.1 like any loopback traffic.  Every loop and wait is bounded.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from netsupport import LOOPBACK, echo_ok, wait_until

from mammotriage.net.admission import Admission
from mammotriage.net.node import StorageNode
from mammotriage.net.security import AccessPolicy
from mammotriage.net.settings import NetworkConfigError, NetworkSettings
from mammotriage.store.archive import Archive
from mtsupport import require_tool


def _connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
    except OSError as exc:
        s.close()
        pytest.skip(f"cannot use {source} as a source address here: {exc}")
    s.settimeout(10)
    s.connect((LOOPBACK, port))
    return s


def _closed_by_peer(s: socket.socket, timeout: float = 20.0) -> bool:
    """True once the node closed the connection (EOF or reset) within ``timeout``.

    What the node sends first (an A-ABORT for garbage) is read and dropped.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv(1 << 16) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


@pytest.fixture
def node() -> Iterator:
    nodes: list[tuple[StorageNode, Archive]] = []

    def start(**overrides) -> StorageNode:
        archive = Archive()
        n = StorageNode(NetworkSettings(port=0, **overrides), archive)
        n.start()
        nodes.append((n, archive))
        return n

    yield start
    for n, archive in nodes:
        n.stop()
        archive.close()


def test_allowed_pacs_echoes_while_50_idle_connections_from_a_host_off_the_list_are_open(node) -> None:
    require_tool("echoscu")
    # A long ARTIM and few slots: only the accept-time check can keep the slots free.
    n = node(allowed_hosts=("127.0.0.1",), allowed_calling_ae_titles=("PACS",),
             max_associations=4, artim_timeout_s=60)
    port = n.address[1]
    with ExitStack() as stack:
        idle = [stack.enter_context(_connect_from("127.0.0.2", port)) for _ in range(50)]
        assert wait_until(lambda: n.stats.refused_connections >= 50, timeout=20)
        for _ in range(3):
            assert echo_ok(port, calling="PACS", called="MAMMOTRIAGE")
        assert n.stats.echoes == 3 and n.stats.associations == 3
        assert _closed_by_peer(idle[0]) and _closed_by_peer(idle[-1])
    assert n.stats.refused_connections == 50


def test_one_allowed_host_cannot_open_more_than_its_share(node) -> None:
    require_tool("echoscu")
    n = node(allowed_hosts=("127.0.0.1", "127.0.0.3"), allowed_calling_ae_titles=("PACS",),
             max_associations=2, max_connections_per_host=3, artim_timeout_s=8)
    port = n.address[1]
    with ExitStack() as stack:
        for _ in range(8):
            stack.enter_context(_connect_from("127.0.0.3", port))
        # three are admitted (the per-host limit), five are closed on accept
        assert wait_until(lambda: n.stats.refused_connections == 5, timeout=20)
        assert n.admission.counts()["pending"] <= 3
        # the admitted idle ones wait for A-ASSOCIATE-RQ and take no association slot
        assert echo_ok(port, calling="PACS", called="MAMMOTRIAGE")
        assert echo_ok(port, calling="PACS", called="MAMMOTRIAGE")


def test_the_artim_timer_closes_connections_that_never_associate(node) -> None:
    n = node(allowed_hosts=("127.0.0.3",), allowed_calling_ae_titles=("PACS",), artim_timeout_s=1.0)
    port = n.address[1]
    with ExitStack() as stack:
        idle = [stack.enter_context(_connect_from("127.0.0.3", port)) for _ in range(3)]
        assert all(_closed_by_peer(s) for s in idle)
    assert wait_until(lambda: n.admission.counts() == {"pending": 0, "associated": 0, "hosts": 0},
                      timeout=20)
    assert n.stats.refused_connections == 0 and n.stats.associations == 0


def test_garbage_bytes_are_closed_and_the_pacs_still_associates(node) -> None:
    require_tool("echoscu")
    n = node(allowed_hosts=("127.0.0.1", "127.0.0.3"), allowed_calling_ae_titles=("PACS",),
             max_associations=2, max_connections_per_host=4, artim_timeout_s=1.0)
    port = n.address[1]
    with ExitStack() as stack:
        noisy = []
        for _ in range(4):
            s = stack.enter_context(_connect_from("127.0.0.3", port))
            s.sendall(os.urandom(512))
            noisy.append(s)
        assert echo_ok(port, calling="PACS", called="MAMMOTRIAGE")
        assert all(_closed_by_peer(s) for s in noisy)
    assert n.stats.echoes == 1


def test_slots_are_counted_among_associations_not_connections(node) -> None:
    require_tool("echoscu")
    n = node(allowed_calling_ae_titles=("PACS",), max_associations=1, max_connections_per_host=4,
             artim_timeout_s=8)
    port = n.address[1]
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(_connect_from(LOOPBACK, port))
        assert wait_until(lambda: n.admission.counts()["pending"] == 3, timeout=20)
        # one slot, three idle connections open: the PACS still associates
        assert echo_ok(port, calling="PACS", called="MAMMOTRIAGE")
    assert n.stats.echoes == 1 and n.stats.refused_connections == 0


def test_admission_counts_and_the_slot_limit() -> None:
    a = Admission(AccessPolicy.from_lists((), ("127.0.0.0/30",)), max_associations=1,
                  max_connections_per_host=2)
    assert a.admit_connection("127.0.0.9", 1) == "host is not on the allow-list"
    assert a.admit_connection("127.0.0.1", 1) is None
    assert a.admit_connection("127.0.0.1", 2) is None
    assert "open connections" in (a.admit_connection("127.0.0.1", 3) or "")
    assert a.associate("127.0.0.1", 1) is True
    assert a.associate("127.0.0.1", 2) is False  # the one slot is taken
    assert a.counts() == {"pending": 0, "associated": 1, "hosts": 1}
    a.release("127.0.0.1", 1)
    a.release("127.0.0.1", 2)
    assert a.counts() == {"pending": 0, "associated": 0, "hosts": 0}
    assert a.refused == 2
    # the waiting pool: per-host limit + 2 x slots, over several hosts
    assert a.max_pending == 4
    assert [a.admit_connection(f"127.0.0.{h}", p) for h in (1, 2) for p in (5, 6)] == [None] * 4
    assert "waiting to associate" in (a.admit_connection("127.0.0.3", 7) or "")


@pytest.mark.parametrize(("key", "value"), [("max_connections_per_host", 0),
                                            ("max_connections_per_host", True),
                                            ("artim_timeout_s", 0), ("artim_timeout_s", 600)])
def test_admission_settings_are_validated(key: str, value: object) -> None:
    with pytest.raises(NetworkConfigError, match=key):
        NetworkSettings.from_json({key: value})
