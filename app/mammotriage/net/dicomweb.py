"""Images over DICOMweb from the site archive (Orthanc): QIDO-RS, WADO-RS, STOW-RS.

:class:`DicomWebArchive` wraps :class:`dicomweb_client.api.DICOMwebClient` (with the
archive's generated credentials, :func:`mammotriage.net.orthanc.read_credentials`):

* :meth:`~DicomWebArchive.find_studies` / :meth:`~DicomWebArchive.find_instances`
  (QIDO-RS) return plain records;
* :meth:`~DicomWebArchive.fetch_instance` (WADO-RS, the instance as stored:
  ``transfer-syntax=*``) streams the body with a byte limit and a total deadline,
  checks that it is the DICOM instance asked for and puts it into an
  :class:`InstanceCache` (files on disk, least recently used evicted by bytes, atomic
  writes, each entry's sha256 in its file name, a corrupt entry fetched again);
* :meth:`~DicomWebArchive.store` (STOW-RS) sends SR/SEG results and says which
  instances the archive took and which it refused.

:class:`StableStudyWatcher` follows Orthanc's ``/changes`` feed (the sequence number
kept in a state file) and yields the Study Instance UID of each ``StableStudy``
change: the study-complete signal, without polling files.

Every failure (timeout, refused connection, HTTP 4xx/5xx, a body that is not DICOM or
is larger than the limit) is a :class:`DicomWebError` naming the study or instance,
the reason and a stable ``code``; the batch calls (:meth:`DicomWebArchive.fetch_study`,
:meth:`DicomWebArchive.store`) go on with the other instances.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mammotriage.jsonio import write_atomic
from mammotriage.net.orthanc import DICOMWEB_ROOT, OrthancServer

__all__ = [
    "DEFAULT_MAX_INSTANCE_BYTES",
    "DicomWebArchive",
    "DicomWebError",
    "InstanceCache",
    "InstanceRecord",
    "StableStudyWatcher",
    "StowResult",
    "StudyFetch",
    "StudyRecord",
]

log = logging.getLogger(__name__)

#: Largest instance body accepted by default (a full-field view is ~30 MB uncompressed).
DEFAULT_MAX_INSTANCE_BYTES = 512 * 1024 * 1024
#: Room for the multipart framing around the one part of a WADO-RS instance response.
_FRAMING_BYTES = 64 * 1024
_CHUNK = 1024 * 1024
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ORTHANC_ID = re.compile(r"^[0-9a-f-]{8,64}$")
#: WADO-RS instance request: as stored (no transcoding), not gzipped by the server (Orthanc
#: compresses HTTP answers on the fly by default, which costs more than it saves on images).
_INSTANCE_HEADERS = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
                     "Accept-Encoding": "identity"}


class DicomWebError(RuntimeError):
    """A DICOMweb call that failed: ``what`` (study or instance), ``reason`` and ``code``.

    Codes: ``timeout``, ``unreachable``, ``tls`` (the certificate failed verification),
    ``http`` (``status`` holds the HTTP status), ``not-dicom``, ``too-large``,
    ``bad-response``, ``bad-uid``, ``cache`` (the entry cannot be written: disk full, say).
    """

    def __init__(self, what: str, reason: str, code: str, status: int | None = None) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
        self.code = code
        self.status = status


def _check_uid(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _UID.match(value):
        raise DicomWebError(what, f"{value!r} is not a valid UID", "bad-uid")
    return value


def _request_error(what: str, exc: BaseException) -> DicomWebError:
    """The :class:`DicomWebError` for an exception raised by requests or the client."""
    if isinstance(exc, requests.Timeout):
        return DicomWebError(what, f"the archive did not answer in time ({exc})", "timeout")
    if isinstance(exc, requests.exceptions.SSLError):  # before ConnectionError, its base class
        return DicomWebError(what, f"TLS with the archive failed: its certificate is not from the site CA, "
                                   f"does not name the server, or the handshake failed ({exc})", "tls")
    if isinstance(exc, requests.ConnectionError):
        return DicomWebError(what, f"cannot reach the archive ({exc})", "unreachable")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        # the connection broke in the middle of a body (an archive restarting): away, not a bad answer
        return DicomWebError(what, f"the archive's answer was cut off ({exc})", "unreachable")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        r = exc.response
        return DicomWebError(what, f"the archive answered HTTP {r.status_code} {r.reason}", "http",
                             r.status_code)
    return DicomWebError(what, f"bad answer from the archive: {exc}", "bad-response")


def _text(record: Mapping[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON record (PS3.18 F.2), as text."""
    element = record.get(tag)
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    value = values[0]
    if isinstance(value, Mapping):  # PN
        value = value.get("Alphabetic")
    return None if value is None else str(value)


@dataclass(frozen=True)
class StudyRecord:
    """A study the archive holds (QIDO-RS)."""

    study_uid: str
    patient_id: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    instances: int | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """An instance the archive holds (QIDO-RS)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None = None


@dataclass
class StudyFetch:
    """What :meth:`DicomWebArchive.fetch_study` got: cached files and per-instance errors."""

    study_uid: str
    paths: dict[str, Path] = field(default_factory=dict)
    errors: list[DicomWebError] = field(default_factory=list)


@dataclass
class StowResult:
    """What the archive did with a STOW-RS request: stored and refused SOP Instance UIDs."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------- cache


class InstanceCache:
    """Fetched instances on disk, bounded by bytes, least recently used evicted first.

    Each entry is one file ``<SOP Instance UID>.<sha256>.dcm`` written atomically; the
    sha256 in its name is checked on every hit, and an entry that does not match (a
    disk error, a truncated or edited file) is deleted and reported as a miss, so the
    instance is fetched again rather than trusted. The recency order is the files'
    modification times (a hit touches its file), so it survives a restart.
    One process owns a cache folder; the methods are thread-safe.
    """

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"cache size must be a positive number of bytes, not {max_bytes!r}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Path, int, str]] = OrderedDict()
        self.folder.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.folder.iterdir():
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # a write interrupted by a crash
                continue
            parts = path.name.split(".")
            if len(parts) < 3 or parts[-1] != "dcm" or not _UID.match(".".join(parts[:-2])):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, ".".join(parts[:-2]), path, st.st_size, parts[-2]))
        for _, uid, path, size, sha in sorted(found):
            old = self._entries.pop(uid, None)
            if old is not None:
                old[0].unlink(missing_ok=True)
            self._entries[uid] = (path, size, sha)
        with self._lock:
            self._evict(keep=None)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size, _ in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, sop_uid: object) -> bool:
        with self._lock:
            return sop_uid in self._entries

    def uids(self) -> list[str]:
        """Cached SOP Instance UIDs, least recently used first."""
        with self._lock:
            return list(self._entries)

    def path_of(self, sop_uid: str) -> Path | None:
        """The entry's file without checking it (None when not cached)."""
        with self._lock:
            return self._path_locked(sop_uid)

    def get(self, sop_uid: str) -> Path | None:
        """The cached file of ``sop_uid``, checked against its sha256; None on a miss."""
        with self._lock:
            entry = self._entries.get(sop_uid)
        if entry is None:
            return None
        path, size, sha = entry
        try:  # hashed outside the lock: other threads' hits and puts go on meanwhile
            data: bytes | None = path.read_bytes()
        except OSError:
            data = None
        intact = data is not None and len(data) == size and hashlib.sha256(data).hexdigest() == sha
        with self._lock:
            if self._entries.get(sop_uid) != entry:  # replaced or evicted meanwhile
                return self._path_locked(sop_uid) if intact else None
            if not intact:
                log.warning("cache entry %s of instance %s is corrupt; fetching it again", path, sop_uid)
                del self._entries[sop_uid]
                path.unlink(missing_ok=True)
                return None
            self._entries.move_to_end(sop_uid)
        with contextlib.suppress(OSError):
            os.utime(path)
        return path

    def _path_locked(self, sop_uid: str) -> Path | None:
        entry = self._entries.get(sop_uid)
        return entry[0] if entry else None

    def discard(self, sop_uid: str) -> bool:
        """Drop an entry (its file too); False when it was not cached."""
        with self._lock:
            entry = self._entries.pop(sop_uid, None)
        if entry is None:
            return False
        entry[0].unlink(missing_ok=True)
        return True

    def put(self, sop_uid: str, data: bytes) -> Path:
        """Store ``data`` for ``sop_uid`` and evict least recently used entries over budget."""
        _check_uid(sop_uid, "cache entry")
        if len(data) > self.max_bytes:
            raise ValueError(f"instance {sop_uid}: {len(data)} bytes do not fit a cache of {self.max_bytes}")
        sha = hashlib.sha256(data).hexdigest()
        path = self.folder / f"{sop_uid}.{sha}.dcm"
        try:
            write_atomic(path, data, durable=False)  # checked on every hit, fetched again if bad
        except OSError as exc:
            raise DicomWebError(f"instance {sop_uid}", f"cannot write the cache entry {path}: "
                                f"{exc.strerror or exc}", "cache") from None
        with self._lock:
            old = self._entries.pop(sop_uid, None)
            if old is not None and old[0] != path:
                old[0].unlink(missing_ok=True)
            self._entries[sop_uid] = (path, len(data), sha)
            self._evict(keep=sop_uid)
        return path

    def _evict(self, keep: str | None) -> None:
        total = sum(size for _, size, _ in self._entries.values())
        for uid in list(self._entries):
            if total <= self.max_bytes:
                break
            if uid == keep:
                continue
            path, size, _ = self._entries.pop(uid)
            path.unlink(missing_ok=True)
            total -= size


# ---------------------------------------------------------------------------- client


def _single_part(body: bytes, content_type: str, what: str) -> bytes:
    """The one part of a ``multipart/related`` WADO-RS body (or a bare ``application/dicom``)."""
    media, *params = [p.strip() for p in content_type.split(";")]
    if media.lower() == "application/dicom":
        return body
    if media.lower() != "multipart/related":
        raise DicomWebError(what, f"the archive sent {media or 'no content type'}, not DICOM", "not-dicom")
    boundary = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"').encode("latin-1")
    if not boundary:
        raise DicomWebError(what, "multipart answer without a boundary", "bad-response")
    marker = b"--" + boundary
    start = body.find(marker)
    if start < 0:
        raise DicomWebError(what, "multipart answer without its boundary", "bad-response")
    head_end = body.find(b"\r\n\r\n", start)
    if head_end < 0:
        raise DicomWebError(what, "multipart part without headers", "bad-response")
    headers = body[start + len(marker):head_end].decode("latin-1").lower()
    data_start = head_end + 4
    length = re.search(r"content-length:\s*(\d+)", headers)
    if length:
        data = body[data_start:data_start + int(length.group(1))]
        if len(data) != int(length.group(1)):
            raise DicomWebError(what, "multipart part shorter than its Content-Length", "bad-response")
        rest = body[data_start + len(data):]
    else:
        end = body.find(b"\r\n" + marker, data_start)
        if end < 0:
            raise DicomWebError(what, "multipart part without its closing boundary", "bad-response")
        data, rest = body[data_start:end], body[end:]
    if rest.lstrip(b"\r\n").startswith(marker) and not rest.lstrip(b"\r\n")[len(marker):].startswith(b"--"):
        raise DicomWebError(what, "the archive sent more than one instance", "bad-response")
    return data


class DicomWebArchive:
    """QIDO-RS, WADO-RS (into an :class:`InstanceCache`) and STOW-RS against the site archive.

    Parameters
    ----------
    url
        The archive's HTTP root, e.g. ``http://archive.site:8042`` (DICOMweb is
        ``url + dicomweb_root``; Orthanc's REST API, for :class:`StableStudyWatcher`, is
        ``url``).
    credentials
        (user, password) for HTTP basic authentication, or None.
    cache
        Where fetched instances go.
    timeout_s
        Seconds without an answer (connect or read) before a call fails; a WADO-RS
        fetch also fails when the whole body takes longer than ``fetch_deadline_s``.
    max_instance_bytes
        Largest instance body accepted (never more than the cache holds).
    ca
        HTTPS: the only CA certificate (PEM file) the archive's certificate may come from
        (the site CA of a site profile). None: the system's trust store.
    check_hostname
        False only for the server's own calls to a certificate that does not name
        127.0.0.1 (the chain is still checked against ``ca``).
    """

    def __init__(self, url: str, credentials: tuple[str, str] | None, cache: InstanceCache, *,
                 timeout_s: float = 20.0, fetch_deadline_s: float = 300.0,
                 max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
                 dicomweb_root: str = DICOMWEB_ROOT, ca: str | os.PathLike[str] | None = None,
                 check_hostname: bool = True) -> None:
        self.url = url.rstrip("/")
        self.ca = ca
        self.check_hostname = check_hostname
        self.dicomweb_url = self.url + "/" + dicomweb_root.strip("/")
        self.cache = cache
        self.timeout_s = float(timeout_s)
        self.fetch_deadline_s = float(fetch_deadline_s)
        self.max_instance_bytes = min(int(max_instance_bytes), cache.max_bytes)
        self.credentials = credentials
        #: QIDO-RS page size and the most pages one search may take.
        self.qido_page = 1000
        self.qido_max_pages = 1000
        self.session = self.new_session()
        self.client = DICOMwebClient(self.dicomweb_url, session=self.session, timeout=self.timeout_s)
        # 429/408/503/504 are retried a few times, briefly; everything else fails at once.
        self.client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=200)

    @classmethod
    def for_server(cls, server: OrthancServer, cache_folder: str | os.PathLike[str], cache_bytes: int,
                   **kwargs: Any) -> DicomWebArchive:
        """A client of an :class:`~mammotriage.net.orthanc.OrthancServer` on this host (its CA, if HTTPS)."""
        kwargs.setdefault("ca", server.tls_ca)
        kwargs.setdefault("check_hostname", server.tls_check_hostname)
        return cls(server.url, server.credentials(), InstanceCache(cache_folder, cache_bytes), **kwargs)

    def twin(self) -> DicomWebArchive:
        """A client of the same archive (credentials, CA, timeouts, cache) for another
        thread: a requests session is not shared between threads; the cache is."""
        root = self.dicomweb_url[len(self.url):]
        twin = DicomWebArchive(self.url, self.credentials, self.cache, timeout_s=self.timeout_s,
                               fetch_deadline_s=self.fetch_deadline_s, max_instance_bytes=self.max_instance_bytes,
                               dicomweb_root=root, ca=self.ca, check_hostname=self.check_hostname)
        twin.qido_page, twin.qido_max_pages = self.qido_page, self.qido_max_pages
        return twin

    def new_session(self) -> requests.Session:
        """A requests session with the archive's credentials and CA (one per thread)."""
        from mammotriage.net.tls import verify_session

        session = requests.Session()
        session.trust_env = False  # never a proxy from the environment: the archive is on site
        if self.credentials is not None:
            session.auth = self.credentials
        return verify_session(session, self.ca, self.check_hostname)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DicomWebArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ QIDO-RS

    def _qido(self, what: str, call: Callable[[int, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Every record of a QIDO-RS search, page by page (``limit``/``offset``).

        A server that ignores the offset (the same page again) or never ends is cut
        off with an error instead of looping.
        """
        out: list[dict[str, Any]] = []
        previous: list[dict[str, Any]] | None = None
        for page in range(self.qido_max_pages):
            try:
                records = call(self.qido_page, page * self.qido_page)
            except (requests.RequestException, ValueError) as exc:
                raise _request_error(what, exc) from None
            if not isinstance(records, list):
                raise DicomWebError(what, "QIDO-RS answer is not a list", "bad-response")
            if records and records == previous:
                raise DicomWebError(what, "the archive sent the same page again (offset ignored)",
                                    "bad-response")
            out += [r for r in records if isinstance(r, dict)]
            if len(records) < self.qido_page:
                return out
            previous = records
        raise DicomWebError(what, f"more than {self.qido_max_pages * self.qido_page} results",
                            "too-large")

    def find_studies(self, **search_filters: str) -> list[StudyRecord]:
        """Every study matching ``search_filters`` (QIDO-RS keywords, e.g. ``PatientID=...``)."""
        records = self._qido("QIDO-RS studies", lambda limit, offset: self.client.search_for_studies(
            search_filters=search_filters or None, limit=limit, offset=offset))
        studies = []
        for record in records:
            uid = _text(record, "0020000D")
            if uid is None or not _UID.match(uid):
                log.warning("QIDO-RS study without a valid Study Instance UID skipped: %r", uid)
                continue
            count = _text(record, "00201208")
            studies.append(StudyRecord(
                study_uid=uid, patient_id=_text(record, "00100020"), study_date=_text(record, "00080020"),
                accession_number=_text(record, "00080050"),
                instances=int(count) if count and count.isdigit() else None))
        return studies

    def find_instances(self, study_uid: str | None = None, series_uid: str | None = None) -> list[InstanceRecord]:
        """Every instance of a study (or series), or of the whole archive when none is given."""
        what = f"QIDO-RS instances of study {study_uid}" if study_uid else "QIDO-RS instances"
        if study_uid is not None:
            _check_uid(study_uid, what)
        if series_uid is not None:
            _check_uid(series_uid, what)
        records = self._qido(what, lambda limit, offset: self.client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid, limit=limit, offset=offset))
        instances = []
        for record in records:
            uids = (_text(record, "0020000D") or study_uid, _text(record, "0020000E") or series_uid,
                    _text(record, "00080018"))
            if not all(u is not None and _UID.match(u) for u in uids):
                log.warning("%s: record without valid study/series/instance UIDs skipped: %r", what, uids)
                continue
            study, series, sop = (str(u) for u in uids)
            instances.append(InstanceRecord(study, series, sop, _text(record, "00080016")))
        return instances

    # ------------------------------------------------------------------ WADO-RS

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """The instance as a file in the cache (fetched with WADO-RS on a miss).

        Raises :class:`DicomWebError` naming the instance and its study.
        """
        what = f"instance {sop_uid} of study {study_uid}"
        for uid in (study_uid, series_uid, sop_uid):
            _check_uid(uid, what)
        cached = self.cache.get(sop_uid)
        if cached is not None:
            return cached
        data = self._download(what, f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}"
                                    f"/instances/{sop_uid}")
        try:
            ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
            sent = str(ds.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError, TypeError) as exc:
            raise DicomWebError(what, f"the archive's answer is not a DICOM instance ({exc})", "not-dicom") from None
        if sent != sop_uid:
            raise DicomWebError(what, f"the archive sent instance {sent} instead", "bad-response")
        return self.cache.put(sop_uid, data)

    def _download(self, what: str, url: str) -> bytes:
        limit = self.max_instance_bytes
        deadline = time.monotonic() + self.fetch_deadline_s
        try:
            with self.session.get(url, headers=_INSTANCE_HEADERS, stream=True,
                                  timeout=self.timeout_s) as response:
                if response.status_code != 200:
                    raise DicomWebError(what, f"the archive answered HTTP {response.status_code} "
                                              f"{response.reason}", "http", response.status_code)
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limit + _FRAMING_BYTES:
                    raise DicomWebError(what, f"{int(declared)} bytes is more than the limit of {limit}",
                                        "too-large")
                body = bytearray()
                for chunk in response.iter_content(_CHUNK):
                    body += chunk
                    if len(body) > limit + _FRAMING_BYTES:
                        raise DicomWebError(what, f"the body exceeds the limit of {limit} bytes", "too-large")
                    if time.monotonic() > deadline:
                        raise DicomWebError(what, f"the body took longer than {self.fetch_deadline_s:.0f} s",
                                            "timeout")
                content_type = response.headers.get("Content-Type", "")
        except requests.RequestException as exc:
            raise _request_error(what, exc) from None
        data = _single_part(bytes(body), content_type, what)
        if len(data) > limit:
            raise DicomWebError(what, f"{len(data)} bytes is more than the limit of {limit}", "too-large")
        return data

    def fetch_study(self, study_uid: str) -> StudyFetch:
        """Every instance of a study into the cache; a failed instance is reported, the rest go on."""
        result = StudyFetch(study_uid)
        try:
            instances = self.find_instances(study_uid)
        except DicomWebError as exc:
            result.errors.append(exc)
            return result
        for record in instances:
            try:
                result.paths[record.sop_uid] = self.fetch_instance(
                    record.study_uid, record.series_uid, record.sop_uid)
            except DicomWebError as exc:
                result.errors.append(exc)
        return result

    # ------------------------------------------------------------------ STOW-RS

    def store(self, datasets: Sequence[Dataset]) -> StowResult:
        """Send datasets (SR, SEG) with STOW-RS; which the archive stored and which it refused.

        A dataset without SOP/Study Instance UIDs is refused here, the others are sent.
        Raises :class:`DicomWebError` only when the request itself fails (nothing stored).
        """
        result = StowResult()
        sendable = []
        for ds in datasets:
            sop = str(getattr(ds, "SOPInstanceUID", "") or "")
            if not _UID.match(sop) or not _UID.match(str(getattr(ds, "StudyInstanceUID", "") or "")):
                result.failed.append((sop or "(no SOP Instance UID)", "no valid SOP/Study Instance UID"))
                continue
            sendable.append(ds)
        if not sendable:
            return result
        what = "STOW-RS of " + ", ".join(str(ds.SOPInstanceUID) for ds in sendable[:3]) + (
            f" and {len(sendable) - 3} more" if len(sendable) > 3 else "")
        try:
            answer = self.client.store_instances(sendable)
        except (requests.RequestException, ValueError, TypeError, AttributeError) as exc:
            raise _request_error(what, exc) from None
        stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])}
        failed = {str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0) or 0)
                  for item in answer.get("FailedSOPSequence", [])}
        for ds in sendable:
            sop = str(ds.SOPInstanceUID)
            if sop in stored:
                result.stored.append(sop)
            elif sop in failed:
                result.failed.append((sop, f"refused by the archive (failure reason 0x{failed[sop]:04X})"))
            else:
                result.failed.append((sop, "not acknowledged by the archive"))
        return result


# ---------------------------------------------------------------------------- stable studies


class StableStudyWatcher:
    """Study Instance UIDs of studies Orthanc declares stable, from its ``/changes`` feed.

    ``since`` is the last change sequence handled; with a ``state_file`` it is kept
    there (atomically), so a restarted watcher goes on where it stopped and reports
    each ``StableStudy`` change once. A study that receives new images after it was
    stable becomes stable again and is reported again (it needs triage again).
    """

    def __init__(self, archive: DicomWebArchive, state_file: str | os.PathLike[str] | None = None,
                 since: int | None = 0, page: int = 100) -> None:
        """``since``: the change to start after when there is no state yet; 0 is the start of
        the feed (every study stable so far), None its current end (only what comes next;
        asks the archive, so it raises :class:`DicomWebError` when it cannot be reached)."""
        self.url = archive.url
        self.timeout_s = archive.timeout_s
        self.session = archive.new_session()
        self.state_file = Path(state_file) if state_file is not None else None
        self.page = page
        self.since = 0
        saved = None
        if self.state_file is not None and self.state_file.exists():
            try:
                saved = int(json.loads(self.state_file.read_text(encoding="utf-8"))["since"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable watcher state (%s); starting afresh", self.state_file, exc)
        if saved is not None:
            self.since = saved
        elif since is None:
            last = self._get("Orthanc changes feed", "/changes", last="")
            self._advance(last.get("Last", 0) if isinstance(last, dict) and isinstance(last.get("Last"), int) else 0)
        else:
            self.since = since

    def _get(self, what: str, path: str, **params: Any) -> Any:
        try:
            response = self.session.get(self.url + path, params=params, timeout=self.timeout_s)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as exc:
            raise _request_error(what, exc) from None

    def _advance(self, seq: int) -> None:
        if seq <= self.since:
            return
        self.since = seq
        if self.state_file is not None:
            try:
                write_atomic(self.state_file, (json.dumps({"since": seq}) + "\n").encode())
            except OSError as exc:  # kept in memory; the next change tries again
                log.warning("%s: cannot save the watcher state: %s", self.state_file, exc.strerror or exc)

    def _study_uid(self, orthanc_id: str) -> str | None:
        if not _ORTHANC_ID.match(orthanc_id):
            log.warning("stable study with a malformed Orthanc id %r skipped", orthanc_id)
            return None
        try:
            study = self._get(f"stable study {orthanc_id}", f"/studies/{orthanc_id}")
        except DicomWebError as exc:
            if exc.status == 404:  # deleted since it became stable
                log.warning("%s", exc)
                return None
            raise
        tags = study.get("MainDicomTags") if isinstance(study, dict) else None
        uid = tags.get("StudyInstanceUID") if isinstance(tags, dict) else None
        if not isinstance(uid, str) or not _UID.match(uid):
            log.warning("stable study %s without a valid Study Instance UID skipped", orthanc_id)
            return None
        return uid

    def changes(self) -> Iterator[str]:
        """Stable studies since :attr:`since`, up to the end of the feed.

        :attr:`since` advances past a change once the consumer has taken its UID (on the
        next iteration) and past each page's other changes.
        """
        while True:
            body = self._get("Orthanc changes feed", "/changes", since=self.since, limit=self.page)
            if not isinstance(body, dict) or not isinstance(body.get("Changes"), list):
                raise DicomWebError("Orthanc changes feed", "answer without a Changes list", "bad-response")
            for change in body["Changes"]:
                if not isinstance(change, dict):
                    continue
                seq = change.get("Seq")
                if change.get("ChangeType") == "StableStudy" and isinstance(change.get("ID"), str):
                    uid = self._study_uid(change["ID"])
                    if uid is not None:
                        yield uid
                if isinstance(seq, int):
                    self._advance(seq)
            last = body.get("Last")
            if isinstance(last, int):
                self._advance(last)
            if body.get("Done", True) or not body["Changes"]:
                return

    def poll(self) -> list[str]:
        """The stable studies since the last call (one pass over the feed)."""
        return list(self.changes())

    def follow(self, stop: threading.Event, interval_s: float = 1.0,
               on_error: Callable[[DicomWebError], None] | None = None) -> Iterator[str]:
        """Yield stable studies as they come until ``stop`` is set.

        A failing archive (restarting, unreachable) is reported to ``on_error`` (else
        logged) and retried with a growing pause (at most 30 s); the watcher goes on.
        """
        pause = interval_s
        while not stop.is_set():
            try:
                yield from self.changes()
                pause = interval_s
            except DicomWebError as exc:
                (on_error or (lambda e: log.warning("%s", e)))(exc)
                pause = min(max(pause * 2, interval_s), 30.0)
            stop.wait(pause)

    def close(self) -> None:
        self.session.close()
