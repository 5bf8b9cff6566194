"""One reader's double reading at a workstation, without Qt: open an exam for reading
(taking its soft lock, or saying who holds it), what the reader may see, signing, and
the arbitration list a third reader works through.

The rules live in the store (:mod:`mammotriage.store.double_reading`): the session
reads and writes through :class:`~mammotriage.store.double_reading.DoubleReadingLog`,
so blinding and the readers' roles hold whatever the window shows. The window (or a
test) drives the session; every action is durable when the method returns.

A session reads one store: the workstation's archive (``DoubleReadingSession(archive,
home, reader)``) or, in site mode, the site's PostgreSQL store
(:meth:`DoubleReadingSession.on_site`: the same rules over
:mod:`mammotriage.store.pg.double_reading`), where the readers of one exam sit at
different workstations.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mammotriage.store.double_reading import (
    ArbitrationCase,
    DoubleReading,
    DoubleReadingLog,
    DoubleReadingPolicy,
    ExamStatus,
    Lock,
    ReadingLocks,
    arbitration_list,
)
from mammotriage.store.events import CorrectionError, Event
from mammotriage.store.labels import ReaderLabels
from mammotriage.viewer.corrections import ExamCorrections

if TYPE_CHECKING:  # the site store's classes are imported when a session joins a site
    from mammotriage.store.pg.double_reading import (
        SiteDoubleReading,
        SiteDoubleReadingLog,
        SiteReadingLocks,
    )

__all__ = ["DoubleReadingSession", "OpenRead", "Visible"]

log = logging.getLogger(__name__)


@dataclass
class OpenRead:
    """The answer to opening an exam: the reader's corrections, or who holds the exam."""

    exam_key: str
    granted: bool
    lock: Lock | None  # the lease taken, or the other reader's
    status: ExamStatus
    role: str = ""  # "first reader", "second reader", "arbitrator", "reader" (not signed yet)
    corrections: ExamCorrections | None = None
    case: ArbitrationCase | None = None  # for the arbitrator: both reads side by side

    @property
    def text(self) -> str:
        """What the window says: "being read by A" when refused, else the role."""
        if not self.granted and self.lock is not None:
            return self.lock.text
        return self.role


@dataclass(frozen=True)
class Visible:
    """What a reader may see of an exam: their own read, and the others' once unblinded."""

    exam_key: str
    blinded: bool
    own: ReaderLabels
    others: dict[str, ReaderLabels] = field(default_factory=dict)


class DoubleReadingSession:
    """Reader ``reader``'s double reading on one workstation (see the module docstring)."""

    log: DoubleReadingLog | SiteDoubleReadingLog
    locks: ReadingLocks | SiteReadingLocks
    site: DoubleReading | SiteDoubleReading

    def __init__(self, archive_file: str | Path | None, home: str | Path, reader: str, *,
                 workstation: str | None = None, policy: DoubleReadingPolicy | None = None,
                 site_dsn: str | None = None):
        self.reader = reader
        self.policy = policy or DoubleReadingPolicy.load(home)
        if site_dsn is not None:
            from mammotriage.store.pg.double_reading import (
                SiteDoubleReading,
                SiteDoubleReadingLog,
                SiteReadingLocks,
            )

            log = SiteDoubleReadingLog(site_dsn, reader, self.policy, workstation)
            self.log = log
            self.locks = SiteReadingLocks(site_dsn, log.workstation, self.policy.lease_s)
            self.site = SiteDoubleReading(site_dsn, self.policy)
        elif archive_file is not None:
            local = DoubleReadingLog(archive_file, reader, self.policy, workstation)
            self.log = local
            self.locks = ReadingLocks(archive_file, local.workstation, self.policy.lease_s)
            self.site = DoubleReading(archive_file, self.policy)
        else:
            raise ValueError("a double-reading session needs an archive file or a site's connection string")
        self._open: dict[str, OpenRead] = {}

    @classmethod
    def on_site(cls, dsn: str, home: str | Path, reader: str, *, workstation: str | None = None,
                policy: DoubleReadingPolicy | None = None) -> DoubleReadingSession:
        """A session on the site's PostgreSQL store (``dsn``: the workstation role's)."""
        return cls(None, home, reader, workstation=workstation, policy=policy, site_dsn=dsn)

    def close(self) -> None:
        """Leave every open exam and close the stores. A lock that cannot be released (the
        reader's sign-in ended, the server away) is left to its lease, said in the log, and
        never stops the rest (before, the first refusal left the other locks and the
        connections open); once the server is away the other releases are not tried.
        Any other error is raised after the stores are closed."""
        from mammotriage.store.double_reading import StoreUnreachable

        failed: Exception | None = None
        try:
            away: StoreUnreachable | None = None
            for key in list(self._open):
                if away is None:
                    try:
                        self.close_exam(key)
                        continue
                    except StoreUnreachable as exc:
                        away = exc
                        reason = str(exc)
                    except CorrectionError as exc:
                        reason = str(exc)
                else:
                    reason = f"the site is away ({away})"
                self._open.pop(key, None)
                log.warning("soft lock on %s not released (%s); its lease of %.0f s ends it",
                            key, reason, self.policy.lease_s)
        finally:
            for part in (self.log, self.locks, self.site):
                try:
                    part.close()
                except Exception as exc:  # noqa: BLE001 - close the others too, then say the first
                    failed = failed or exc
        if failed is not None:
            raise failed

    def __enter__(self) -> DoubleReadingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- state
    def status(self, exam_key: str) -> ExamStatus:
        return self.log.status(exam_key)

    def role(self, status: ExamStatus) -> str:
        if self.reader in status.readers:
            return ("first reader", "second reader")[status.readers.index(self.reader)]
        if status.arbitrator == self.reader or (len(status.readers) == 2 and status.state == "discordant"):
            return "arbitrator"
        return "reader" if len(status.readers) < 2 else ""

    def holders(self, now: _dt.datetime | None = None) -> dict[str, Lock]:
        """Exams being read now (on every workstation) -> who holds them."""
        return self.locks.holders(now)

    # ----------------------------------------------------------------- reading
    def open_for_reading(self, exam_key: str, *, ai_marks: dict[str, list[dict[str, Any]]] | None = None,
                         model_version: str = "", now: _dt.datetime | None = None) -> OpenRead:
        """Take the exam's soft lock and start (or go on with) this reader's read; refused
        (``granted`` false, ``lock`` the holder's) while another reader holds it, or when the
        exam has nothing left for this reader (double-read and not discordant)."""
        status = self.status(exam_key)
        role = self.role(status)
        if not role:
            return OpenRead(exam_key, False, None, status)
        taken = self.locks.take(exam_key, self.reader, now)
        if not taken.granted:
            return OpenRead(exam_key, False, taken.lock, status, role)
        corrections = ExamCorrections(self.log, exam_key, self.reader)
        if ai_marks is not None:
            corrections.set_ai(model_version, ai_marks)
        case = self.site.case(exam_key, ai_marks, model_version) if role == "arbitrator" else None
        opened = OpenRead(exam_key, True, taken.lock, status, role, corrections, case)
        self._open[exam_key] = opened
        return opened

    def renew(self, exam_key: str, now: _dt.datetime | None = None) -> bool:
        """Extend this reader's lease on an open exam (the window's periodic tick)."""
        return exam_key in self._open and self.locks.take(exam_key, self.reader, now).granted

    def close_exam(self, exam_key: str, now: _dt.datetime | None = None) -> None:
        """Leave the exam: its lock is released."""
        self._open.pop(exam_key, None)
        self.locks.release(exam_key, self.reader, now)

    def visible(self, exam_key: str) -> Visible:
        """What this reader may see of the exam (others' reads only once both have signed)."""
        opened = self._open.get(exam_key)
        corrections = opened.corrections if opened and opened.corrections else \
            ExamCorrections(self.log, exam_key, self.reader)
        labels = corrections.labels
        others = {r: rl for r, rl in labels.items() if r != self.reader}
        return Visible(exam_key, not self.status(exam_key).unblinded, labels[self.reader], others)

    def _corrections(self, exam_key: str) -> ExamCorrections:
        opened = self._open.get(exam_key)
        if opened is None or opened.corrections is None:
            raise CorrectionError(f"exam {exam_key} is not open for reading here")
        return opened.corrections

    def corrections(self, exam_key: str) -> ExamCorrections:
        """The open exam's corrections (accept, reject, add, ... as in the single-reader viewer)."""
        return self._corrections(exam_key)

    def sign(self, exam_key: str, assessment: dict[str, Any]) -> ExamStatus:
        """Sign this reader's read; the exam is left (lock released). Returns its new state."""
        self._corrections(exam_key).sign(assessment)
        self.close_exam(exam_key)
        return self.status(exam_key)

    # ----------------------------------------------------------------- arbitration
    def arbitration_queue(self) -> list[ExamStatus]:
        """Discordant exams this reader may arbitrate (not one of their two readers)."""
        return arbitration_list(self.site.statuses().values(), self.reader)

    def arbitrate(self, exam_key: str, assessment: dict[str, Any]) -> Event:
        """Record the consensus of a discordant exam opened by this (third) reader: one
        ``arbitrate`` event naming both reads; the exam is left (lock released)."""
        corrections = self._corrections(exam_key)
        status = self.status(exam_key)
        payload = {**assessment, "rule": self.policy.discordance, "reasons": list(status.reasons),
                   "reads": [{"reader": r.reader, "seq": r.seq} for r in status.reads]}
        event = self.log.append(reader=self.reader, exam_key=exam_key, action="arbitrate", payload=payload,
                                model_version=corrections.model_version)
        self.close_exam(exam_key)
        return event


# --------------------------------------------------------------------------- command line


def double_reading_listing(archive_file: str | Path, home: str | Path, site_dsn: str | None = None
                           ) -> dict[str, Any]:
    """The site's double reading as a JSON-ready dict: the setting, how many exams are in
    each state, and the arbitration list with both reads (of the archive, or of the site
    store at ``site_dsn``)."""
    policy = DoubleReadingPolicy.load(home)
    if site_dsn is not None:
        from mammotriage.store.pg.double_reading import SiteDoubleReading

        with SiteDoubleReading(site_dsn, policy) as on_site:
            statuses = on_site.statuses()
    else:
        with DoubleReading(archive_file, policy) as site:
            statuses = site.statuses()
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status.state] = counts.get(status.state, 0) + 1
    return {"enabled": policy.enabled, "discordance": policy.discordance, "lease_s": policy.lease_s,
            "source": policy.source, "states": dict(sorted(counts.items())),
            "arbitration": [s.to_json() for s in arbitration_list(statuses.values())]}


def listing_text(listing: dict[str, Any]) -> str:
    lines = [f"double reading {'on' if listing['enabled'] else 'off'} (discordance rule "
             f"{listing['discordance']}, lock lease {listing['lease_s']} s)"
             + (f": {listing['source']}" if listing["source"] else "")]
    lines.append("exams: " + (", ".join(f"{n} {state}" for state, n in listing["states"].items()) or "none signed"))
    lines.append(f"arbitration: {len(listing['arbitration'])} exam(s)")
    for case in listing["arbitration"]:
        reads = " | ".join(f"{r['reader']}: {r['text']}" for r in case["reads"])
        lines.append(f"  {case['exam_key']}  {reads}  ({'; '.join(case['reasons'])})")
    return "\n".join(lines)


def add_double_reading_command(sub: Any) -> None:
    """``mammotriage double-reading [--json] [--site PROFILE]`` (registered by the composition root)."""
    p = sub.add_parser("double-reading", help="double reading: the site setting, exam states and the "
                       "arbitration list")
    p.add_argument("--json", action="store_true")
    p.add_argument("--site", metavar="PROFILE", help="read the site store of a site profile "
                   "(default: this workstation's archive)")
    p.set_defaults(func=_cmd_double_reading)


def _cmd_double_reading(args: Any) -> int:
    import json
    import sys

    from mammotriage.config import archive_path, data_dir
    from mammotriage.store.double_reading import StoreUnreachable

    dsn = None
    if getattr(args, "site", None):
        from mammotriage.net.site_profile import SiteProfileError, load_profile

        try:
            dsn = load_profile(args.site).dsn()
        except SiteProfileError as exc:
            print(f"double-reading --site: {exc}", file=sys.stderr)
            return 2
    try:
        listing = double_reading_listing(archive_path(), data_dir(), dsn)
    except StoreUnreachable as exc:
        print(f"double-reading --site {args.site}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(listing, indent=2) if args.json else listing_text(listing))
    return 0
