"""Secure by default: loopback bind, allow-lists required elsewhere, association checks."""

from __future__ import annotations

import pytest

from mammotriage.net.node import StorageNode
from mammotriage.net.security import AccessPolicy, InsecureBindError, check_bind_policy, is_loopback
from mammotriage.net.settings import NetworkSettings
from mammotriage.store.archive import Archive


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1"])
def test_loopback_needs_no_allow_list(host: str) -> None:
    assert is_loopback(host)
    check_bind_policy(NetworkSettings(bind=host))


@pytest.mark.parametrize(
    ("aets", "hosts", "missing"),
    [
        ((), (), "calling AE titles"),
        (("PACS",), (), "hosts"),
        ((), ("10.0.0.0/8",), "calling AE titles"),
        (("PACS",), ("0.0.0.0/0",), "0.0.0.0/0 allows the whole internet"),
        (("PACS",), ("10.0.0.5", "::/0"), "::/0 allows the whole internet"),
    ],
)
def test_other_interfaces_need_both_allow_lists(aets: tuple, hosts: tuple, missing: str) -> None:
    with pytest.raises(InsecureBindError) as info:
        check_bind_policy(NetworkSettings(bind="0.0.0.0", allowed_calling_ae_titles=aets,
                                          allowed_hosts=hosts))
    message = str(info.value)
    assert "refusing to listen on 0.0.0.0" in message and missing in message
    assert "--bind 127.0.0.1" in message


def test_other_interfaces_with_both_allow_lists_are_accepted() -> None:
    check_bind_policy(NetworkSettings(bind="0.0.0.0", allowed_calling_ae_titles=("PACS",),
                                      allowed_hosts=("10.0.0.0/8",)))


def test_node_refuses_to_start_on_all_interfaces_without_allow_lists(tmp_path) -> None:
    with Archive(tmp_path / "a.sqlite") as archive:
        node = StorageNode(NetworkSettings(bind="0.0.0.0", port=0), archive,
                           received_dir=tmp_path / "received")
        with pytest.raises(InsecureBindError):
            node.start()
        assert not node.running
        node.stop()


def test_access_policy() -> None:
    policy = AccessPolicy.from_lists(["PACS", "MOD1"], ["10.1.2.0/24", "192.168.7.7", "::1"])
    assert policy.check("PACS", "10.1.2.99") is None
    assert policy.check("MOD1 ", "192.168.7.7") is None
    assert policy.check("PACS", "::ffff:10.1.2.3") is None  # IPv4-mapped peer
    assert policy.check("PACS", "::1") is None
    assert "calling AE title 'OTHER'" in policy.check("OTHER", "10.1.2.3")
    assert "host 10.1.3.1" in policy.check("PACS", "10.1.3.1")
    assert "host not-an-ip" in policy.check("PACS", "not-an-ip")
    assert policy.check("pacs", "10.1.2.3") is not None  # AE titles are case-sensitive
    anyone = AccessPolicy.from_lists([], [])
    assert anyone.check("WHOEVER", "127.0.0.1") is None
