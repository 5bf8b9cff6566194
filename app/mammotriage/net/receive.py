"""Store and import instances received over the network.

Each received instance is written, exactly as received (the data set bytes in the
negotiated transfer syntax, JPEG 2000 and JPEG-LS included, behind a DICOM file meta
header), to::

    <data dir>/received/<StudyInstanceUID>/<SOPInstanceUID>.dcm

atomically (temporary file in the same file system, fsync, rename, fsync of the
folder), then indexed through :meth:`mammotriage.store.Archive.import_paths`, the
same path as a folder import: deduplicated by SOP Instance UID and content, and
rejected with a logged reason when it is not a usable mammogram.

Rejected instances are kept, for the IT department to inspect, under::

    <data dir>/received/rejected/<UTC time>-<id>.dcm

and the archive's rejection log holds the reason (with the path of that file; for a
study or series conflict, found only when indexing, the path it was received under).
The C-STORE response then carries a failure status (PS3.4 B.2.3) and an Error Comment
with the reason, so the sending system shows why.

Success (0x0000) is answered only after the file is durable and indexed and the
reader's checks passed, the cheap frame-structure checks of compressed pixel data
included (:mod:`mammotriage.dicom.codestream`: JPEG 2000 SIZ, JPEG SOF, JPEG-LS SOF55
and the RLE segment header against Rows/Columns, fragments and offsets inside the
data; bounded inflation of Deflated data sets).  Pixels are not decoded here: a full
decode costs seconds per view and is the triage worker's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import uuid
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from mammotriage.clock import utc_datetime
from mammotriage.dicom.errors import MammoReadError
from mammotriage.dicom.read import read_metadata
from mammotriage.digest import sha256_file
from mammotriage.store.archive import (
    CODE_SOP_CONFLICT,
    REASON_SOP_CONFLICT,
    Archive,
    ImportReport,
    Rejection,
)

__all__ = [
    "ReceiveOutcome",
    "ReceiveResult",
    "ReceivedStore",
    "Status",
]

LOG = logging.getLogger(__name__)

#: A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters.  Checked before a
#: UID becomes part of a path, so a hostile UID cannot escape the received folder.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Status(int, Enum):
    """C-STORE response statuses used by the node (PS3.4 Annex B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    #: Refused: out of resources (disk full, archive unavailable) - the sender may retry.
    OUT_OF_RESOURCES = 0xA700
    #: Error: cannot understand - the object is not parseable DICOM.
    CANNOT_UNDERSTAND = 0xC000
    #: Error: missing, malformed or inconsistent UIDs.
    BAD_UIDS = 0xC001
    #: Error: a valid object the workstation does not take (not a mammogram, SR ...).
    NOT_ACCEPTED = 0xC002
    #: Error: pixel data missing, truncated or inconsistent.
    CORRUPT_PIXELS = 0xC003
    #: Error: SOP Instance UID already stored with other content, or study/series conflict.
    CONFLICT = 0xC004
    #: Error: unexpected failure in the workstation (a bug: see its log).
    INTERNAL = 0xC0FF


_STATUS_BY_CODE = {
    "not-dicom": Status.CANNOT_UNDERSTAND,
    "not-an-image": Status.NOT_ACCEPTED,
    "not-a-mammogram": Status.NOT_ACCEPTED,
    "unsupported-image": Status.NOT_ACCEPTED,
    "cannot-decode": Status.NOT_ACCEPTED,
    "corrupt-pixel-data": Status.CORRUPT_PIXELS,
    "missing-uid": Status.BAD_UIDS,
    "bad-uid": Status.BAD_UIDS,
    "uid-mismatch": Status.BAD_UIDS,
    "sop-uid-conflict": Status.CONFLICT,
    "study-conflict": Status.CONFLICT,
    "series-conflict": Status.CONFLICT,
    "unreadable": Status.OUT_OF_RESOURCES,
}


class ReceiveOutcome(str, Enum):
    """What happened to one received instance."""

    IMPORTED = "imported"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"  # could not be stored (disk, database): the sender should retry


@dataclass(frozen=True)
class ReceiveResult:
    """Outcome of :meth:`ReceivedStore.receive`.

    Attributes
    ----------
    outcome
        Imported, duplicate, rejected or failed.
    status
        The C-STORE response status to send.
    reason
        Human-readable reason ("" on success).
    code
        Stable rejection code (as in the archive's rejection log), "" on success.
    path
        Where the file now lies (``None`` if it could not be written).
    sop_uid, study_uid
        UIDs of the instance ("" when unknown).
    calling_ae_title
        Who sent it.
    """

    outcome: ReceiveOutcome
    status: Status
    reason: str = ""
    code: str = ""
    path: str | None = None
    sop_uid: str = ""
    study_uid: str = ""
    calling_ae_title: str = ""

    @property
    def ok(self) -> bool:
        """True when the sender gets a success status (imported or duplicate)."""
        return self.status == Status.SUCCESS


class _Reject(Exception):
    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _uid_ok(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID.match(value) is not None


class ReceivedStore:
    """Writes received instances under a root folder and imports them into an archive.

    Parameters
    ----------
    root
        The ``received`` folder (created if missing).
    archive
        The archive to import into (shared with the rest of the program; it is
        thread-safe).

    Notes
    -----
    :meth:`receive` may be called from several association threads at once: writing
    and the header check run in parallel, placing a file under its final name and
    importing it are serialised, so two copies of one instance cannot race.
    """

    def __init__(self, root: str | os.PathLike[str], archive: Archive) -> None:
        self.root = Path(root).resolve()
        self.incoming = self.root / ".incoming"
        self.rejected_dir = self.root / "rejected"
        self.archive = archive
        self._place_lock = threading.Lock()
        for folder in (self.root, self.incoming, self.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._clean_incoming()

    def _clean_incoming(self) -> None:
        """Remove partial files left by a crash (the sender got no success for them)."""
        for leftover in self.incoming.glob("*.part"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    # -- public ------------------------------------------------------------------

    def final_path(self, study_uid: str, sop_uid: str) -> Path:
        """Where an instance with these (valid) UIDs is stored."""
        return self.root / study_uid / f"{sop_uid}.dcm"

    def receive(
        self,
        data: bytes,
        *,
        sop_instance_uid: str = "",
        calling_ae_title: str = "",
    ) -> ReceiveResult:
        """Store one received instance and import it.

        Parameters
        ----------
        data
            The instance in DICOM file format: preamble, ``DICM``, file meta
            information and the data set exactly as received.
        sop_instance_uid
            Affected SOP Instance UID of the C-STORE request, checked against the
            data set's (empty: not checked).
        calling_ae_title
            The sender, for the log.

        Returns
        -------
        ReceiveResult
            Never raises for bad input: every problem becomes a result with a
            failure status and a reason.
        """
        try:
            tmp = self._write_temp(data)
        except OSError as exc:
            LOG.error("cannot store instance from %s: %s", calling_ae_title, exc)
            return ReceiveResult(
                ReceiveOutcome.FAILED,
                Status.OUT_OF_RESOURCES,
                f"cannot write the received instance: {exc.strerror or exc}",
                "unreadable",
                sop_uid=sop_instance_uid,
                calling_ae_title=calling_ae_title,
            )
        try:
            return self._receive_file(tmp, sop_instance_uid, calling_ae_title)
        except Exception as exc:  # never let a bug crash the association
            LOG.exception("unexpected error while receiving %s", sop_instance_uid)
            tmp.unlink(missing_ok=True)
            return ReceiveResult(
                ReceiveOutcome.FAILED,
                Status.INTERNAL,
                f"internal error: {type(exc).__name__}: {exc}",
                "unexpected-error",
                sop_uid=sop_instance_uid,
                calling_ae_title=calling_ae_title,
            )

    # -- steps -------------------------------------------------------------------

    def _write_temp(self, data: bytes) -> Path:
        tmp = self.incoming / f"{uuid.uuid4().hex}.part"
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    @staticmethod
    def _header_uids(data_path: Path, sop_expected: str) -> tuple[str, str]:
        """(study UID, SOP UID) from the header, or :class:`_Reject`."""
        try:
            ds = pydicom.dcmread(data_path, stop_before_pixels=True)
            study = str(ds.get("StudyInstanceUID", "") or "").strip()
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
            raise _Reject(f"not a DICOM object: {type(exc).__name__}: {exc}", "not-dicom") from None
        except Exception as exc:  # noqa: BLE001 - damaged headers raise many kinds of errors
            raise _Reject(f"cannot parse DICOM: {type(exc).__name__}: {exc}", "not-dicom") from None
        missing = [n for n, v in (("Study Instance UID", study), ("SOP Instance UID", sop)) if not v]
        if missing:
            raise _Reject(f"missing {', '.join(missing)}", "missing-uid")
        for name, value in (("Study Instance UID", study), ("SOP Instance UID", sop)):
            if not _uid_ok(value):
                raise _Reject(f"malformed {name} {value[:80]!r}", "bad-uid")
        if sop_expected and sop != sop_expected.strip():
            raise _Reject(
                f"SOP Instance UID in the data set ({sop}) differs from the C-STORE request "
                f"({sop_expected})",
                "uid-mismatch",
            )
        return study, sop

    def _receive_file(self, tmp: Path, sop_expected: str, calling: str) -> ReceiveResult:
        # 1. The archive's own reader, before the file takes its final name: objects
        #    that can never be imported (garbage, SR, chest CR, corrupt pixels) go to
        #    rejected/ with the reason a folder import would give.
        try:
            meta = read_metadata(tmp)
        except MammoReadError as exc:
            return self._reject_early(
                tmp, exc.reason, exc.code, sop_expected, "", calling
            )
        # 2. UIDs that are safe to use as file names.
        try:
            study, sop = self._header_uids(tmp, sop_expected)
        except _Reject as rej:
            return self._reject_early(
                tmp, rej.reason, rej.code, sop_expected, meta.study_instance_uid, calling
            )
        # 3. Place under the final name and import (serialised).
        final = self.final_path(study, sop)
        with self._place_lock:
            if final.exists():
                known = self.archive.image(sop)
                if sha256_file(final) == sha256_file(tmp) or known is None:
                    # Same bytes (a re-send), or a file left by a crash before its import.
                    os.replace(tmp, final)
                else:
                    return self._reject_early(
                        tmp,
                        f"{REASON_SOP_CONFLICT} (stored: {known.path})",
                        CODE_SOP_CONFLICT,
                        sop,
                        study,
                        calling,
                    )
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                _fsync_dir(final.parent)
            report = self.archive.import_paths([final])
            result = self._result_from_report(report, final, sop, study, calling)
            if result.outcome is ReceiveOutcome.DUPLICATE:
                stored = self.archive.image(sop)
                if stored is not None and Path(stored.path) != final:
                    # Already archived from elsewhere (e.g. a folder import): no second copy.
                    final.unlink(missing_ok=True)
                    result = replace(result, path=stored.path)
            elif result.outcome is ReceiveOutcome.REJECTED:
                moved = self._quarantine(final)
                LOG.warning(
                    "rejected instance %s from %s moved to %s: %s",
                    sop,
                    calling,
                    moved,
                    result.reason,
                )
                result = replace(result, path=str(moved))
        return result

    def _quarantine(self, path: Path) -> Path:
        stamp = utc_datetime().strftime("%Y%m%dT%H%M%S")
        target = self.rejected_dir / f"{stamp}-{uuid.uuid4().hex[:12]}.dcm"
        os.replace(path, target)
        return target

    def _reject_early(
        self, tmp: Path, reason: str, code: str, sop: str, study: str, calling: str
    ) -> ReceiveResult:
        """Move to rejected/ and write the archive's rejection log (never import it)."""
        target = self._quarantine(tmp)
        self.archive.log_rejection(Rejection(str(target), reason, code))
        LOG.warning("rejected instance %s from %s (%s): %s", sop or "?", calling, target, reason)
        return ReceiveResult(
            ReceiveOutcome.REJECTED,
            _STATUS_BY_CODE.get(code, Status.NOT_ACCEPTED),
            reason,
            code,
            str(target),
            sop,
            study,
            calling,
        )

    @staticmethod
    def _result_from_report(
        report: ImportReport, path: Path, sop: str, study: str, calling: str
    ) -> ReceiveResult:
        if report.imported:
            return ReceiveResult(
                ReceiveOutcome.IMPORTED, Status.SUCCESS, "", "", str(path), sop, study, calling
            )
        if report.duplicates:
            return ReceiveResult(
                ReceiveOutcome.DUPLICATE,
                Status.SUCCESS,
                "already stored",
                "",
                report.duplicates[0].path,
                sop,
                study,
                calling,
            )
        rejection = report.rejected[0]
        return ReceiveResult(
            ReceiveOutcome.REJECTED,
            _STATUS_BY_CODE.get(rejection.code, Status.NOT_ACCEPTED),
            rejection.reason,
            rejection.code,
            str(path),
            sop,
            study,
            calling,
        )
