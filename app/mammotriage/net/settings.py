"""Network settings of the DICOM node: ``network.json`` in the data directory.

The file is optional; every field has a safe default (listen on 127.0.0.1 only, no
PACS peer, results not sent).  Example::

    {
      "ae_title": "MAMMOTRIAGE",
      "require_called_ae_title": true,
      "port": 11112,
      "bind": "0.0.0.0",
      "allowed_calling_ae_titles": ["MODALITY1", "PACS"],
      "allowed_hosts": ["10.20.0.0/24", "10.20.1.5"],
      "quiet_period_s": 30,
      "pacs": {"ae_title": "PACS", "host": "10.20.1.5", "port": 104},
      "send_results": true
    }

Addresses are IP literals (or ``localhost``), never host names: resolving a name
would make the workstation contact a DNS server, and it contacts nothing but its
DICOM peers.  Unknown keys are an error, so that a typo ("alowed_hosts") cannot
silently open the node to everyone.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mammotriage.config import data_dir
from mammotriage.jsonio import write_atomic

__all__ = [
    "DEFAULT_AE_TITLE",
    "DEFAULT_PORT",
    "SETTINGS_NAME",
    "NetworkConfigError",
    "NetworkSettings",
    "PeerSettings",
    "load_settings",
    "normalise_host",
    "save_settings",
    "settings_path",
    "validate_ae_title",
]

SETTINGS_NAME = "network.json"
DEFAULT_AE_TITLE = "MAMMOTRIAGE"
#: The registered DICOM port is 104, which needs root; 11112 is the customary alternative.
DEFAULT_PORT = 11112


class NetworkConfigError(ValueError):
    """Network settings that cannot be used, with a message saying what to fix."""


def settings_path() -> Path:
    """``network.json`` in the data directory (``$MAMMOTRIAGE_HOME`` honoured)."""
    return data_dir() / SETTINGS_NAME


def validate_ae_title(value: object, what: str = "AE title") -> str:
    """Return a valid Application Entity title or raise :class:`NetworkConfigError`.

    PS3.5 Table 6.2-1 (VR AE): at most 16 characters of the default character
    repertoire, no backslash and no control characters; leading and trailing spaces
    are not significant and are removed.
    """
    if not isinstance(value, str):
        raise NetworkConfigError(f"{what} must be text, not {type(value).__name__}")
    title = value.strip(" ")
    if not title:
        raise NetworkConfigError(f"{what} is empty")
    if len(title) > 16:
        raise NetworkConfigError(f"{what} {title!r} is longer than 16 characters")
    bad = [c for c in title if c == "\\" or ord(c) < 0x20 or ord(c) > 0x7E]
    if bad:
        raise NetworkConfigError(
            f"{what} {title!r} contains {bad[0]!r}; use letters, digits, spaces, '-' or '_'"
        )
    return title


def normalise_host(value: object, what: str = "address", *, network: bool = False) -> str:
    """Return an IP address (or, with ``network``, an IP network) in canonical text form.

    ``localhost`` means ``127.0.0.1``.  Host names are refused: resolving them would
    need DNS, and the workstation makes no connection except to its DICOM peers.
    """
    if not isinstance(value, str) or not value.strip():
        raise NetworkConfigError(f"{what} must be a non-empty IP address, not {value!r}")
    text = value.strip()
    if text.lower() == "localhost":
        text = "127.0.0.1"
    try:
        if network and "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        return str(ipaddress.ip_address(text))
    except ValueError:
        kind = "an IP address or network (e.g. 10.0.0.0/24)" if network else "an IP address"
        raise NetworkConfigError(
            f"{what} {value!r} is not {kind}; host names are not accepted because "
            "resolving them would contact a DNS server"
        ) from None


def _port(value: object, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NetworkConfigError(f"{what} must be an integer, not {value!r}")
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise NetworkConfigError(f"{what} {value} is outside {low}..65535")
    return value


def _positive(value: object, what: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NetworkConfigError(f"{what} must be a number, not {value!r}")
    if not value >= minimum:
        raise NetworkConfigError(f"{what} must be at least {minimum:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class PeerSettings:
    """A remote DICOM application entity (the PACS results are sent to).

    Attributes
    ----------
    ae_title
        The peer's AE title (our C-STORE requests are addressed to it).
    host
        IP address of the peer.
    port
        TCP port of the peer.
    """

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title, "PACS AE title"))
        object.__setattr__(self, "host", normalise_host(self.host, "PACS host"))
        _port(self.port, "PACS port")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def from_json(cls, data: object) -> PeerSettings:
        """Build from the ``"pacs"`` object of ``network.json``."""
        if not isinstance(data, Mapping):
            raise NetworkConfigError(
                f"'pacs' must be an object with ae_title, host and port, not {data!r}"
            )
        unknown = sorted(set(data) - {"ae_title", "host", "port"})
        if unknown:
            raise NetworkConfigError(
                f"unknown key(s) in 'pacs': {', '.join(unknown)} (expected ae_title, host, port)"
            )
        missing = [k for k in ("ae_title", "host", "port") if k not in data]
        if missing:
            raise NetworkConfigError(f"'pacs' lacks {', '.join(missing)}")
        return cls(ae_title=data["ae_title"], host=data["host"], port=data["port"])


@dataclass(frozen=True)
class NetworkSettings:
    """Everything the DICOM node and the outbox sender need.

    Attributes
    ----------
    ae_title
        Our AE title: called AE title of incoming associations, calling AE title of
        outgoing ones.
    require_called_ae_title
        Refuse an association whose called AE title is not ``ae_title`` (default
        ``true``).  Set ``false`` only for a sender that cannot be configured to
        address this node by its title.
    port
        Listening port (0 = an ephemeral port, for tests).
    bind
        Listening address.  Default ``127.0.0.1``: nothing outside this machine can
        connect.  Any other address needs both allow-lists.
    allowed_calling_ae_titles
        Calling AE titles accepted; empty = any (only allowed on loopback).
    allowed_hosts
        Peer IP addresses or networks (CIDR) accepted; empty = any (only on loopback).
    quiet_period_s
        A study counts as complete once no instance of it arrived for this long.
    max_associations
        Concurrent incoming associations (connections that sent an accepted
        A-ASSOCIATE-RQ; a connection still waiting to associate holds no slot).
    max_connections_per_host
        Open TCP connections from one peer address at once, associated or not; more
        are closed on accept, so one host cannot take every slot.
    artim_timeout_s
        ARTIM timeout: a connection that has not sent A-ASSOCIATE-RQ within this many
        seconds is closed (also the wait for the peer to close after a release or an
        abort).
    pacs
        Where results are sent; ``None`` = nowhere.
    send_results
        Queue AI results (and later reader findings) for the PACS automatically.
    retry_initial_s, retry_max_s
        Outbox back-off: first retry delay, doubled per failed attempt up to the cap.
    """

    ae_title: str = DEFAULT_AE_TITLE
    require_called_ae_title: bool = True
    port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"
    allowed_calling_ae_titles: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    quiet_period_s: float = 30.0
    max_associations: int = 16
    max_connections_per_host: int = 10
    artim_timeout_s: float = 5.0
    pacs: PeerSettings | None = None
    send_results: bool = False
    retry_initial_s: float = 10.0
    retry_max_s: float = 900.0
    # Where the settings came from, for messages; not written back.
    source: str = field(default="defaults", compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ae_title", validate_ae_title(self.ae_title, "ae_title"))
        _port(self.port, "port", allow_zero=True)
        set_(self, "bind", normalise_host(self.bind, "bind address"))
        set_(
            self,
            "allowed_calling_ae_titles",
            tuple(
                dict.fromkeys(
                    validate_ae_title(t, "allowed calling AE title")
                    for t in _sequence(self.allowed_calling_ae_titles, "allowed_calling_ae_titles")
                )
            ),
        )
        set_(
            self,
            "allowed_hosts",
            tuple(
                dict.fromkeys(
                    normalise_host(h, "allowed host", network=True)
                    for h in _sequence(self.allowed_hosts, "allowed_hosts")
                )
            ),
        )
        set_(self, "quiet_period_s", _positive(self.quiet_period_s, "quiet_period_s"))
        if isinstance(self.max_associations, bool) or not isinstance(self.max_associations, int):
            raise NetworkConfigError(f"max_associations must be an integer, not {self.max_associations!r}")
        if not 1 <= self.max_associations <= 256:
            raise NetworkConfigError(f"max_associations {self.max_associations} is outside 1..256")
        if not isinstance(self.require_called_ae_title, bool):
            raise NetworkConfigError(
                f"require_called_ae_title must be true or false, not {self.require_called_ae_title!r}")
        per_host = self.max_connections_per_host
        if isinstance(per_host, bool) or not isinstance(per_host, int):
            raise NetworkConfigError(f"max_connections_per_host must be an integer, not {per_host!r}")
        if not 1 <= per_host <= 256:
            raise NetworkConfigError(f"max_connections_per_host {per_host} is outside 1..256")
        set_(self, "artim_timeout_s", _positive(self.artim_timeout_s, "artim_timeout_s", minimum=0.1))
        if self.artim_timeout_s > 120:
            raise NetworkConfigError(f"artim_timeout_s {self.artim_timeout_s:g} is above 120 s")
        if not isinstance(self.send_results, bool):
            raise NetworkConfigError(f"send_results must be true or false, not {self.send_results!r}")
        set_(self, "retry_initial_s", _positive(self.retry_initial_s, "retry_initial_s", minimum=0.01))
        set_(self, "retry_max_s", _positive(self.retry_max_s, "retry_max_s", minimum=0.01))
        if self.retry_max_s < self.retry_initial_s:
            raise NetworkConfigError("retry_max_s must not be smaller than retry_initial_s")

    # -- JSON -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The settings as a ``network.json`` object."""
        data = asdict(self)
        data.pop("source")
        data["allowed_calling_ae_titles"] = list(self.allowed_calling_ae_titles)
        data["allowed_hosts"] = list(self.allowed_hosts)
        data["pacs"] = asdict(self.pacs) if self.pacs else None
        return data

    @classmethod
    def from_json(cls, data: object, source: str = "network.json") -> NetworkSettings:
        """Build from a parsed ``network.json`` object (unknown keys are an error)."""
        if not isinstance(data, Mapping):
            raise NetworkConfigError(f"{source}: expected a JSON object, not {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__ if f != "source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NetworkConfigError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"known keys are {', '.join(sorted(known))}"
            )
        kwargs = dict(data)
        try:
            if kwargs.get("pacs") is not None:
                kwargs["pacs"] = PeerSettings.from_json(kwargs["pacs"])
            for key in ("allowed_calling_ae_titles", "allowed_hosts"):
                if key in kwargs:
                    kwargs[key] = tuple(_sequence(kwargs[key], key))
            return cls(**kwargs, source=source)
        except NetworkConfigError as exc:
            raise NetworkConfigError(f"{source}: {exc}") from None

    def with_overrides(self, **changes: Any) -> NetworkSettings:
        """A copy with some fields replaced (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        return replace(self, **changes)


def _sequence(value: object, what: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise NetworkConfigError(f"{what} must be a list, not {value!r}")
    return value


def load_settings(path: str | os.PathLike[str] | None = None) -> NetworkSettings:
    """Read ``network.json`` (defaults when the file does not exist).

    Raises
    ------
    NetworkConfigError
        The file is not valid JSON or holds an invalid or unknown setting; the
        message names the file and the setting.
    """
    p = Path(path) if path is not None else settings_path()
    if not p.exists():
        return NetworkSettings(source=f"defaults (no {p})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NetworkConfigError(f"{p}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise NetworkConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return NetworkSettings.from_json(data, source=str(p))


def save_settings(settings: NetworkSettings, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``network.json`` atomically (temporary file, fsync, rename)."""
    p = Path(path) if path is not None else settings_path()
    # mkstemp's 0600, as network.json always had
    return write_atomic(p, (json.dumps(settings.to_json(), indent=2) + "\n").encode("utf-8"), mode=0o600)
