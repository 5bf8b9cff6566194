"""Who may talk to the DICOM node.

Secure by default:

* the node listens on ``127.0.0.1`` unless told otherwise, so nothing outside this
  machine can reach it;
* listening on any other address requires **both** an allow-list of calling AE
  titles and an allow-list of peer hosts (:func:`check_bind_policy`); starting
  without them fails with a message saying what to configure;
* every association request is checked against the allow-lists
  (:class:`AccessPolicy`) and rejected (A-ASSOCIATE-RJ, PS3.8 9.3.4) when its calling
  AE title or its address is not on them.

AE titles are an identification, not an authentication: a peer can claim any title.
That is why the host allow-list is mandatory off loopback, and why the hospital
firewall should still restrict the port (see ``docs/hospital-it.md``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mammotriage.net.settings import NetworkSettings

__all__ = ["AccessPolicy", "InsecureBindError", "check_bind_policy", "is_loopback"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class InsecureBindError(RuntimeError):
    """Refused to listen beyond this machine without allow-lists."""


def _address(host: str) -> _IPAddress:
    addr = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone index
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_loopback(host: str) -> bool:
    """True for a loopback address (``127.0.0.0/8``, ``::1``)."""
    try:
        return _address(host).is_loopback
    except ValueError:
        return False


def check_bind_policy(settings: NetworkSettings) -> None:
    """Refuse a non-loopback listening address unless both allow-lists are set.

    Raises
    ------
    InsecureBindError
        ``settings.bind`` is not a loopback address and the calling AE title or host
        allow-list is empty.
    """
    if is_loopback(settings.bind):
        return
    missing = []
    if not settings.allowed_calling_ae_titles:
        missing.append("calling AE titles (--allow-aet, or allowed_calling_ae_titles in network.json)")
    hosts = [ipaddress.ip_network(h, strict=False) for h in settings.allowed_hosts]
    if not hosts:
        missing.append("hosts (--allow-host, or allowed_hosts in network.json)")
    elif any(net.prefixlen == 0 for net in hosts):
        everyone = ", ".join(str(net) for net in hosts if net.prefixlen == 0)
        missing.append(f"hosts that is not every address ({everyone} allows the whole internet)")
    if missing:
        raise InsecureBindError(
            f"refusing to listen on {settings.bind}: a DICOM node reachable from other "
            f"machines needs an allow-list of {' and of '.join(missing)}. "
            "Use --bind 127.0.0.1 (the default) to accept only local connections."
        )


@dataclass(frozen=True)
class AccessPolicy:
    """Allow-lists for incoming associations; an empty list allows everything.

    Parameters
    ----------
    calling_ae_titles
        Accepted calling AE titles (compared exactly, leading/trailing spaces ignored).
    hosts
        Accepted peer addresses or networks (``10.0.0.5``, ``10.0.0.0/24``);
        IPv4-mapped IPv6 peers (``::ffff:10.0.0.5``) match their IPv4 entries.
    """

    calling_ae_titles: frozenset[str] = frozenset()
    hosts: tuple[_IPNetwork, ...] = ()

    @classmethod
    def from_lists(cls, calling_ae_titles: Iterable[str], hosts: Iterable[str]) -> AccessPolicy:
        """Build from text entries (already validated by :class:`NetworkSettings`)."""
        return cls(
            frozenset(t.strip() for t in calling_ae_titles),
            tuple(ipaddress.ip_network(h, strict=False) for h in hosts),
        )

    @classmethod
    def from_settings(cls, settings: NetworkSettings) -> AccessPolicy:
        """The policy configured in ``settings``."""
        return cls.from_lists(settings.allowed_calling_ae_titles, settings.allowed_hosts)

    def host_allowed(self, host: str) -> bool:
        """Whether a peer address is on the host allow-list (or the list is empty)."""
        if not self.hosts:
            return True
        try:
            addr = _address(host)
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in self.hosts)

    def ae_title_allowed(self, calling_ae_title: str) -> bool:
        """Whether a calling AE title is on the allow-list (or the list is empty)."""
        return not self.calling_ae_titles or calling_ae_title.strip() in self.calling_ae_titles

    def check(self, calling_ae_title: str, host: str) -> str | None:
        """``None`` when the association may proceed, else the reason to reject it."""
        if not self.ae_title_allowed(calling_ae_title):
            return f"calling AE title {calling_ae_title.strip()!r} is not on the allow-list"
        if not self.host_allowed(host):
            return f"host {host} is not on the allow-list"
        return None
