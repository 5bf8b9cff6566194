"""Anchoring the correction-event chain: a per-installation key and a head record.

The hash chain of :mod:`mammotriage.store.events` alone can be recomputed by anyone who
can write the database: edit an event, rehash everything after it, and the chain is
consistent again.  Two anchors close that:

* **The audit key** (:class:`AuditKey`): 32 random bytes in a file outside the
  database and outside the data directory, readable by its owner only (mode 0600;
  a key readable by others is refused).  Every event stores ``mac =
  HMAC-SHA256(key, hash)``, so an edited or re-chained event no longer verifies unless
  the forger could read the key.
* **The head record** (:class:`FileAnchor`): after every append, one line
  ``{"archive", "count", "last_seq", "last_hash", "at", "mac"}`` is appended to a file
  beside the key (never rewritten; each line is keyed too).  Deleting the tail of
  the chain, or all of it, leaves a head that points past the end.

:func:`head_record` (count, last sequence number, last hash and their MAC, no time) is
what dataset snapshots and export manifests carry, so every copy of the labels also
pins the chain it came from.

The anchor is an interface (:class:`AuditAnchor`: ``record`` and ``latest``) so that a
shared server can hold it later (several workstations appending to one chain record
their heads there instead of in a local file).

Threat model (``docs/hospital-it.md``): the key guards against edits by anyone who can
write the database but not read the key: another OS account with write access to the
data folder, or someone editing a copied archive.  It does not guard against the
workstation's own account (which holds the key) or root.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mammotriage.clock import utc_now

__all__ = [
    "ENV_AUDIT_KEY",
    "AuditAnchor",
    "AuditKey",
    "AuditKeyError",
    "FileAnchor",
    "Head",
    "audit_key_path",
    "head_record",
]

#: Environment variable naming the key file (overrides the default location).
ENV_AUDIT_KEY = "MAMMOTRIAGE_AUDIT_KEY"
KEY_BYTES = 32


class AuditKeyError(RuntimeError):
    """The audit key cannot be used (unreadable, readable by others, malformed)."""


def audit_key_path() -> Path:
    """Where the installation's audit key lives.

    ``$MAMMOTRIAGE_AUDIT_KEY`` when set; else, with ``$MAMMOTRIAGE_HOME``, the folder
    ``<home>-keys`` beside the data directory (not inside it: a copy of the data folder
    does not carry the key); else the platform's per-user *configuration* folder
    (``~/.config/mammotriage`` on Linux; the data lives in ``~/.local/share``).
    """
    env = os.environ.get(ENV_AUDIT_KEY)
    if env:
        return Path(env).expanduser()
    from mammotriage.config import ENV_HOME

    home = os.environ.get(ENV_HOME)
    if home:
        h = Path(home).expanduser().absolute()
        return h.parent / f"{h.name}-keys" / "audit.key"
    import platformdirs

    return Path(platformdirs.user_config_dir("mammotriage", appauthor=False)) / "audit.key"


def _owner_only(path: Path, what: str) -> None:
    if os.name != "posix":
        return
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuditKeyError(
            f"{what} {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 600 {path}` (and `chmod 700 {path.parent}`)")
    if st.st_uid != os.getuid():
        raise AuditKeyError(f"{what} {path} belongs to another user (uid {st.st_uid})")


@dataclass(frozen=True)
class AuditKey:
    """The per-installation HMAC key."""

    secret: bytes
    path: Path

    @classmethod
    def load(cls, path: str | Path | None = None, *, create: bool = True) -> AuditKey:
        """Read the key, creating it (mode 0600, folder 0700) when absent and ``create``.

        Raises
        ------
        AuditKeyError
            The file is readable or writable by others, belongs to another user, or
            does not hold a key.
        """
        p = Path(path) if path is not None else audit_key_path()
        if not p.exists() and create:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it a moment ago
            else:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(secrets.token_hex(KEY_BYTES) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
        try:
            _owner_only(p, "audit key")
            text = p.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise AuditKeyError(f"audit key {p} is missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditKeyError(f"cannot read the audit key {p}: {exc}") from None
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = b""
        if len(secret) != KEY_BYTES:
            raise AuditKeyError(f"{p} does not hold a {KEY_BYTES}-byte hex audit key")
        return cls(secret, p)

    def mac(self, message: str) -> str:
        """HMAC-SHA256 of ``message`` (UTF-8), hex."""
        return hmac.new(self.secret, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def verify(self, message: str, mac: str) -> bool:
        """Constant-time check of a MAC made by :meth:`mac`."""
        return hmac.compare_digest(self.mac(message), str(mac))


@dataclass(frozen=True)
class Head:
    """The end of the chain at one moment: how many events, the last one's seq and hash."""

    count: int
    last_seq: int
    last_hash: str
    mac: str = ""
    at: str = ""

    def message(self, archive_id: str) -> str:
        return f"mammotriage.audit-head/1|{archive_id}|{self.count}|{self.last_seq}|{self.last_hash}"

    def signed(self, key: AuditKey, archive_id: str) -> Head:
        return Head(self.count, self.last_seq, self.last_hash, key.mac(self.message(archive_id)), self.at)

    def valid(self, key: AuditKey, archive_id: str) -> bool:
        return bool(self.mac) and key.verify(self.message(archive_id), self.mac)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "last_seq": self.last_seq, "last_hash": self.last_hash,
                "mac": self.mac}


def head_record(head: Head) -> dict[str, Any]:
    """The head as stored in snapshot and export manifests (no time: deterministic)."""
    return {"format": "mammotriage.audit-head/1", **head.to_json()}


class AuditAnchor(Protocol):
    """Somewhere outside the database that remembers the chain's heads.

    A shared server would implement the same two calls for several workstations.
    """

    def record(self, head: Head) -> None:
        """Remember ``head`` (append; never rewrite earlier heads)."""

    def latest(self) -> tuple[Head | None, list[str]]:
        """The newest head and any problems found reading the earlier ones."""


class FileAnchor:
    """Heads appended, one JSON line each, to ``<key folder>/heads/<archive id>.jsonl``.

    Parameters
    ----------
    key
        The audit key; every line carries a MAC over (archive id, count, seq, hash).
    archive_id
        Stable identity of the archive (a random UUID kept in its database).
    """

    def __init__(self, key: AuditKey, archive_id: str):
        self.key = key
        self.archive_id = archive_id
        self.path = key.path.parent / "heads" / f"{archive_id}.jsonl"

    def exists(self) -> bool:
        return self.path.exists()

    def record(self, head: Head) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        signed = head.signed(self.key, self.archive_id)
        line = json.dumps({**signed.to_json(), "archive": self.archive_id,
                           "at": utc_now()},
                          sort_keys=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            # A writer killed mid-line left a fragment: start on a line of our own.
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            os.write(fd, (("\n" if torn else "") + line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def latest(self) -> tuple[Head | None, list[str]]:
        problems: list[str] = []
        best: Head | None = None
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None, []
        except (OSError, UnicodeDecodeError) as exc:
            return None, [f"cannot read the head file {self.path}: {exc}"]
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue  # a line torn by a killed writer: it anchors nothing
            try:
                head = Head(int(d["count"]), int(d["last_seq"]), str(d["last_hash"]), str(d["mac"]),
                            str(d.get("at", "")))
            except (ValueError, KeyError, TypeError):
                problems.append(f"head file {self.path.name} line {number} is not a head record")
                continue
            if not head.valid(self.key, self.archive_id):
                problems.append(f"head file {self.path.name} line {number} has a wrong MAC "
                                "(written without the audit key)")
                continue
            # Two processes appending at once may write their heads out of order.
            if best is None or head.last_seq > best.last_seq:
                best = head
        return best, problems
