"""Local archive: an SQLite index over DICOM files that stay where they are.

Importing never copies, moves or modifies a source file: the archive records the
file's absolute path, its size and SHA-256, and what the reader understood about it
(:class:`~mammotriage.dicom.image.MammoMetadata`).  Files are deduplicated by SOP
Instance UID; every file that cannot be imported is logged with a reason.

Exams
-----
The worklist shows *exams*, not DICOM studies.  Each study row carries an
``exam_key`` (see :func:`exam_key_for`):

* by default the exam key is the StudyInstanceUID, so one study is one exam;
* some public data sets store every view as its own study.  CBIS-DDSM, for instance,
  gives each image a PatientID such as ``Mass-Test_P_00173_LEFT_CC`` and its own
  StudyInstanceUID.  When the PatientID ends with a laterality + view suffix
  (``_(LEFT|RIGHT)_(CC|MLO|ML|LM)``, case-insensitive), the exam key is the PatientID
  with that suffix removed, plus the study date (``Mass-Test_P_00173|20161004``), so
  the four single-image studies of one screening visit form one exam.

An exam key built from a patient ID always contains ``|``; a UID never does, so the
two kinds of key cannot collide.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NamedTuple, TypeVar

from mammotriage.clock import utc_now
from mammotriage.config import archive_path
from mammotriage.dicom.errors import MammoReadError
from mammotriage.dicom.hanging import exam_key_for, split_view_patient_id
from mammotriage.dicom.image import (
    Laterality,
    MammoMetadata,
    PixelSpacing,
    PresentationIntent,
    SpacingSource,
    View,
)
from mammotriage.dicom.read import read_metadata
from mammotriage.digest import sha256_file_size
from mammotriage.store import db

__all__ = [
    "Archive",
    "ExamRecord",
    "ImageRecord",
    "ImportReport",
    "ImportedFile",
    "ProgressCallback",
    "Rejection",
    "RejectionRecord",
    "StudyRecord",
    "exam_key_for",
    "split_view_patient_id",
    "view_sort_key",
]

#: ``progress(done, total, path)``: called once per file after it has been handled.
ProgressCallback = Callable[[int, int, str], None]

#: Reads one file's metadata; raises :class:`MammoReadError` for unusable files.
MetadataReader = Callable[[Path], MammoMetadata]

#: PatientID suffix that marks a one-view-per-study layout (CBIS-DDSM).

#: Reading-room order for the standard screening views; others sort after, by name.
_HANGING_ORDER = ("RCC", "LCC", "RMLO", "LMLO")

# Rejection codes produced by the archive itself (the reader's come from MammoReadError.code).
CODE_NOT_FOUND = "not-found"
CODE_NOT_A_FILE = "not-a-file"
CODE_UNREADABLE = "unreadable"
CODE_DICOMDIR = "dicomdir"
CODE_SOP_CONFLICT = "sop-uid-conflict"
CODE_STUDY_CONFLICT = "study-conflict"
CODE_SERIES_CONFLICT = "series-conflict"
CODE_MISSING_UID = "missing-uid"
CODE_UNEXPECTED = "unexpected-error"
CODE_BAD_NAME = "bad-file-name"

REASON_SOP_CONFLICT = "SOP Instance UID already stored with different content"
REASON_DICOMDIR = (
    "DICOMDIR media index, not an image (the images it lists are imported from the folder tree)"
)


# --------------------------------------------------------------------------- exam keys


def _label(laterality: Laterality, view: View) -> str:
    """``RCC``-style label, as :attr:`MammoMetadata.label` builds it."""
    lat = laterality.value if laterality in (Laterality.LEFT, Laterality.RIGHT) else "?"
    return f"{lat}{view.value if view is not View.UNKNOWN else '?'}"


@functools.lru_cache(maxsize=512)
def stored_label(laterality: str | None, view: str | None) -> str:
    """The label of an ``images`` row's stored laterality and view codes (``RCC``, ``L?``)."""
    return _label(_enum(Laterality, laterality, Laterality.UNKNOWN), _enum(View, view, View.UNKNOWN))


def view_sort_key(label: str) -> tuple[int, str]:
    """Sort key putting RCC, LCC, RMLO, LMLO first, then other labels by name."""
    try:
        return (_HANGING_ORDER.index(label), label)
    except ValueError:
        return (len(_HANGING_ORDER), label)


# --------------------------------------------------------------------------- records


class ImportedFile(NamedTuple):
    """A file that is (now or already) in the archive."""

    path: str
    sop_uid: str
    study_uid: str


class Rejection(NamedTuple):
    """A file that was not imported, and why."""

    path: str
    reason: str
    code: str


@dataclass
class ImportReport:
    """Outcome of :meth:`Archive.import_paths`.

    Attributes
    ----------
    imported
        Files added by this import.
    duplicates
        Files whose SOP Instance UID was already stored with identical content.
    rejected
        Files not imported, with a human-readable reason and a stable code.
    """

    imported: list[ImportedFile] = field(default_factory=list)
    duplicates: list[ImportedFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of files handled."""
        return len(self.imported) + len(self.duplicates) + len(self.rejected)

    def summary(self) -> str:
        """Human-readable summary: counts, then one line per rejected file."""

        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        lines = [
            f"{plural(self.total, 'file')}: {len(self.imported)} imported, "
            f"{plural(len(self.duplicates), 'duplicate')}, {len(self.rejected)} rejected"
        ]
        lines += [f"  rejected {r.path}: {r.reason} [{r.code}]" for r in self.rejected]
        return "\n".join(lines)


@dataclass(frozen=True)
class ImageRecord:
    """One stored image, with its series attributes."""

    sop_uid: str
    series_uid: str
    study_uid: str
    path: str
    sha256: str
    size: int
    laterality: Laterality
    view: View
    view_modifiers: tuple[str, ...]
    presentation_intent: PresentationIntent
    rows: int
    columns: int
    transfer_syntax: str
    photometric: str
    spacing: PixelSpacing | None
    imported_at: str
    modality: str
    series_description: str
    manufacturer: str
    manufacturer_model: str

    @property
    def label(self) -> str:
        """Reading-room label such as ``RCC`` (``?`` for an unknown part)."""
        return _label(self.laterality, self.view)


@dataclass(frozen=True)
class StudyRecord:
    """One stored DICOM study."""

    study_uid: str
    patient_id: str
    patient_name: str
    accession: str
    study_date: _dt.date | None
    description: str
    exam_key: str
    image_count: int
    views: tuple[str, ...]  # distinct labels, hanging order, e.g. ("RCC", "LCC")


@dataclass(frozen=True)
class ExamRecord:
    """A worklist exam: the studies sharing one exam key, with all their images."""

    exam_key: str
    patient_id: str  # without a one-view-per-study suffix
    patient_name: str
    study_date: _dt.date | None
    accessions: tuple[str, ...]
    study_uids: tuple[str, ...]
    images: tuple[ImageRecord, ...]  # hanging order
    patient_id_issuer: str = ""  # Issuer of Patient ID ("" when the files carry none)

    @property
    def views(self) -> tuple[str, ...]:
        """Distinct view labels present, in hanging order."""
        return tuple(sorted({i.label for i in self.images}, key=view_sort_key))


@dataclass(frozen=True)
class RejectionRecord:
    """One entry of the rejection log."""

    path: str
    reason: str
    code: str
    at: str


# --------------------------------------------------------------------------- helpers


class _Rejected(Exception):
    """Internal: abort one file's import with a reason and code."""

    def __init__(self, reason: str, code: str):
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class _Candidate:
    path: str
    rejection: Rejection | None = None
    #: the name as found (a symbolic link's own path), for messages about it
    given: str = ""

    @property
    def shown(self) -> str:
        return self.given or self.path


def _file_candidate(path: str) -> _Candidate:
    given = os.path.abspath(os.path.expanduser(path))
    return _Candidate(_abs(given), given=given if os.path.islink(given) else "")


def printable_path(path: str) -> str:
    """``path`` as text that can be printed and stored: bytes of a file name that are not
    UTF-8 (kept by Python as surrogates) become ``\\xNN`` escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _abs(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())


_E = TypeVar("_E", bound=Enum)


def _enum(cls: type[_E], value: str | None, default: _E) -> _E:
    try:
        return cls(value)
    except ValueError:
        return default


def _date(value: str | None) -> _dt.date | None:
    if not value:
        return None
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        return None


def _iter_candidates(paths: Iterable[str | os.PathLike[str]]) -> Iterator[_Candidate]:
    """Expand files and folder trees (recursively, hidden entries included)."""
    for given in paths:
        top = _abs(given)
        named = os.path.abspath(os.path.expanduser(os.fspath(given)))
        try:
            st = os.stat(top)
        except FileNotFoundError:
            yield _Candidate(top, Rejection(named, "no such file or directory", CODE_NOT_FOUND))
            continue
        except OSError as exc:
            yield _Candidate(
                top, Rejection(named, f"cannot access: {exc.strerror or exc}", CODE_UNREADABLE)
            )
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield _file_candidate(os.fspath(given))
            continue
        errors: list[OSError] = []
        # Symlinked folders are not followed (no loops); symlinked files are imported.
        for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):
            while errors:
                err = errors.pop()
                where = _abs(err.filename) if err.filename else dirpath
                yield _Candidate(
                    where,
                    Rejection(where, f"cannot list folder: {err.strerror or err}", CODE_UNREADABLE),
                )
            dirnames.sort()
            for name in sorted(filenames):
                yield _file_candidate(os.path.join(dirpath, name))
        while errors:  # the top folder itself could not be listed
            err = errors.pop()
            yield _Candidate(
                top, Rejection(top, f"cannot list folder: {err.strerror or err}", CODE_UNREADABLE)
            )


# --------------------------------------------------------------------------- archive


class Archive(db.Connected):
    """Index of imported mammograms in one SQLite file.

    Parameters
    ----------
    path
        Database file; defaults to :func:`mammotriage.config.archive_path`
        (which honours ``MAMMOTRIAGE_HOME``).
    reader
        Function reading one file's metadata; defaults to
        :func:`mammotriage.dicom.read.read_metadata`.

    Notes
    -----
    One instance may be shared between threads (e.g. an import worker and the UI):
    database access is serialised by a lock, held per file during an import, never
    across the whole batch.  Use as a context manager or call :meth:`close`.
    """

    closed_name = "archive"

    def __init__(self, path: str | Path | None = None, *, reader: MetadataReader | None = None):
        if path is None:
            path = archive_path()
        super().__init__(Path(path).expanduser().resolve())
        self._reader = reader

    # -- import --------------------------------------------------------------------

    def import_paths(
        self,
        paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
        progress: ProgressCallback | None = None,
    ) -> ImportReport:
        """Import files and folder trees.

        Folders are walked recursively (hidden files and folders included, symlinked
        folders not followed).  Each regular file is read with the metadata reader,
        hashed (SHA-256, streamed) and stored in one transaction.  The batch never
        stops on a bad file: every failure, expected or not, becomes a rejection
        (reported and logged in the ``rejections`` table).

        * SOP Instance UID already stored with the same SHA-256: a *duplicate*, not an
          error (if the stored path no longer exists, it is updated to this one).
        * Same SOP Instance UID, different content: rejected
          (``"SOP Instance UID already stored with different content"``).
        * ``DICOMDIR`` files: rejected with a reason (they index images, they are not images).

        Source files are opened read-only and never modified or moved.

        Parameters
        ----------
        paths
            Files and/or folders (a single path is accepted too).
        progress
            ``progress(done, total, path)`` called after each file.  An exception
            raised by it propagates and stops the batch (a UI can cancel this way);
            files handled before that stay imported.

        Returns
        -------
        ImportReport
            Imported, duplicate and rejected files.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        candidates: list[_Candidate] = []
        seen: set[str] = set()
        for cand in _iter_candidates(paths):
            if cand.rejection is None and cand.path in seen:
                continue
            seen.add(cand.path)
            candidates.append(cand)

        report = ImportReport()
        total = len(candidates)
        for done, cand in enumerate(candidates, start=1):
            rejection = cand.rejection
            shown = cand.shown
            if rejection is None:
                try:
                    outcome = self._import_file(cand.path)
                except _Rejected as exc:
                    rejection = Rejection(shown, exc.reason, exc.code)
                except MammoReadError as exc:
                    reason = exc.reason if shown == cand.path else f"{exc.reason} (link to {cand.path})"
                    rejection = Rejection(shown, reason, exc.code)
                except FileNotFoundError:
                    rejection = Rejection(
                        shown, "no such file (removed, or a broken link)", CODE_NOT_FOUND
                    )
                except OSError as exc:
                    rejection = Rejection(
                        shown, f"cannot read file: {exc.strerror or exc}", CODE_UNREADABLE
                    )
                except Exception as exc:  # noqa: BLE001 - the batch must go on, whatever happened
                    rejection = Rejection(
                        shown, f"{type(exc).__name__}: {exc}", CODE_UNEXPECTED
                    )
                else:
                    is_new, item = outcome
                    (report.imported if is_new else report.duplicates).append(item)
            if rejection is not None:
                rejection = Rejection(printable_path(rejection.path), printable_path(rejection.reason),
                                      rejection.code)
                report.rejected.append(rejection)
                self.log_rejection(rejection)
            if progress is not None:
                progress(done, total, cand.shown)
        return report

    def log_rejection(self, rejection: Rejection) -> None:
        try:
            with self._lock, db.transaction(self.conn):
                self.conn.execute(
                    "INSERT INTO rejections (path, reason, code, at) VALUES (?, ?, ?, ?)",
                    (printable_path(rejection.path), printable_path(rejection.reason), rejection.code,
                     utc_now()),
                )
        except sqlite3.Error:
            # The report still carries the rejection; a failing log must not stop the batch.
            pass

    def _import_file(self, path_str: str) -> tuple[bool, ImportedFile]:
        path = Path(path_str)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _Rejected("not a regular file", CODE_NOT_A_FILE)
        if path.name.upper() == "DICOMDIR":
            raise _Rejected(REASON_DICOMDIR, CODE_DICOMDIR)
        if printable_path(path_str) != path_str:
            raise _Rejected("file name is not valid UTF-8: the archive cannot record it (rename the file)",
                            CODE_BAD_NAME)

        reader = self._reader if self._reader is not None else read_metadata
        meta = reader(path)
        missing = [
            name
            for name, value in (
                ("SOP Instance UID", meta.sop_instance_uid),
                ("Study Instance UID", meta.study_instance_uid),
                ("Series Instance UID", meta.series_instance_uid),
            )
            if not value
        ]
        if missing:
            raise _Rejected(f"missing {', '.join(missing)}", CODE_MISSING_UID)
        digest, size = sha256_file_size(path)
        item = ImportedFile(path_str, meta.sop_instance_uid, meta.study_instance_uid)

        with self._lock, db.transaction(self.conn) as conn:
            row = conn.execute(
                "SELECT path, sha256 FROM images WHERE sop_uid = ?", (meta.sop_instance_uid,)
            ).fetchone()
            if row is not None:
                if row["sha256"] != digest:
                    raise _Rejected(
                        f"{REASON_SOP_CONFLICT} (stored: {row['path']})", CODE_SOP_CONFLICT
                    )
                if row["path"] != path_str and not os.path.exists(row["path"]):
                    # Same content, stored copy gone (moved folder): follow the file.
                    conn.execute(
                        "UPDATE images SET path = ? WHERE sop_uid = ?",
                        (path_str, meta.sop_instance_uid),
                    )
                return False, item
            self._upsert_study(conn, meta)
            self._upsert_series(conn, meta)
            spacing = meta.spacing
            conn.execute(
                """
                INSERT INTO images (
                    sop_uid, series_uid, study_uid, path, sha256, size, laterality, "view",
                    view_modifiers, presentation_intent, "rows", "columns", transfer_syntax,
                    photometric, spacing_row_mm, spacing_col_mm, spacing_source, imported_at
                ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    meta.sop_instance_uid,
                    meta.series_instance_uid,
                    meta.study_instance_uid,
                    path_str,
                    digest,
                    size,
                    meta.laterality.value,
                    meta.view.value,
                    json.dumps(list(meta.view_modifiers)),
                    meta.presentation_intent.value,
                    int(meta.rows),
                    int(meta.columns),
                    meta.transfer_syntax_uid,
                    meta.photometric,
                    spacing.row_mm if spacing else None,
                    spacing.col_mm if spacing else None,
                    spacing.source.value if spacing else None,
                    utc_now(),
                ),
            )
        return True, item

    @staticmethod
    def _upsert_study(conn: sqlite3.Connection, meta: MammoMetadata) -> None:
        row = conn.execute(
            "SELECT patient_id FROM studies WHERE study_uid = ?", (meta.study_instance_uid,)
        ).fetchone()
        if row is not None:
            # One study, one patient: never attach an image of another patient to it.
            if row["patient_id"].strip() != meta.patient_id.strip():
                raise _Rejected(
                    f"Study Instance UID already stored for a different patient "
                    f"(stored PatientID {row['patient_id']!r}, file has {meta.patient_id!r})",
                    CODE_STUDY_CONFLICT,
                )
            return
        conn.execute(
            """
            INSERT INTO studies (study_uid, patient_id, patient_name, accession, study_date,
                                 description, exam_key, patient_id_issuer)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                meta.study_instance_uid,
                meta.patient_id,
                meta.patient_name,
                meta.accession_number,
                meta.study_date.isoformat() if meta.study_date else None,
                meta.study_description,
                exam_key_for(meta.patient_id, meta.study_instance_uid, meta.study_date),
                meta.patient_id_issuer,
            ),
        )

    @staticmethod
    def _upsert_series(conn: sqlite3.Connection, meta: MammoMetadata) -> None:
        row = conn.execute(
            "SELECT study_uid FROM series WHERE series_uid = ?", (meta.series_instance_uid,)
        ).fetchone()
        if row is not None:
            if row["study_uid"] != meta.study_instance_uid:
                raise _Rejected(
                    f"Series Instance UID already stored under another study ({row['study_uid']})",
                    CODE_SERIES_CONFLICT,
                )
            return
        conn.execute(
            """
            INSERT INTO series (series_uid, study_uid, modality, description, manufacturer, model)
            VALUES (?, ?, ?, ?, ?, ?)
            """,
            (
                meta.series_instance_uid,
                meta.study_instance_uid,
                meta.modality,
                meta.series_description,
                meta.manufacturer,
                meta.manufacturer_model,
            ),
        )

    # -- queries -----------------------------------------------------------------

    _IMAGE_SELECT = """
        SELECT i.*, s.modality AS modality, s.description AS series_description,
               s.manufacturer AS manufacturer, s.model AS model
        FROM images AS i JOIN series AS s ON s.series_uid = i.series_uid
    """

    @staticmethod
    def _image_record(row: sqlite3.Row) -> ImageRecord:
        spacing = None
        if row["spacing_row_mm"] is not None and row["spacing_col_mm"] is not None:
            spacing = PixelSpacing(
                row_mm=float(row["spacing_row_mm"]),
                col_mm=float(row["spacing_col_mm"]),
                source=_enum(SpacingSource, row["spacing_source"], SpacingSource.UNKNOWN),
            )
        try:
            modifiers = tuple(str(m) for m in json.loads(row["view_modifiers"] or "[]"))
        except (ValueError, TypeError):
            modifiers = ()
        return ImageRecord(
            sop_uid=row["sop_uid"],
            series_uid=row["series_uid"],
            study_uid=row["study_uid"],
            path=row["path"],
            sha256=row["sha256"],
            size=int(row["size"]),
            laterality=_enum(Laterality, row["laterality"], Laterality.UNKNOWN),
            view=_enum(View, row["view"], View.UNKNOWN),
            view_modifiers=modifiers,
            presentation_intent=_enum(
                PresentationIntent, row["presentation_intent"], PresentationIntent.UNKNOWN
            ),
            rows=int(row["rows"]),
            columns=int(row["columns"]),
            transfer_syntax=row["transfer_syntax"],
            photometric=row["photometric"],
            spacing=spacing,
            imported_at=row["imported_at"],
            modality=row["modality"],
            series_description=row["series_description"],
            manufacturer=row["manufacturer"],
            manufacturer_model=row["model"],
        )

    @staticmethod
    def _sorted_images(images: Iterable[ImageRecord]) -> list[ImageRecord]:
        return sorted(images, key=lambda i: (view_sort_key(i.label), i.imported_at, i.sop_uid))

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self.conn.execute(sql, tuple(params)).fetchall())

    def count(self) -> int:
        """Number of stored images."""
        return int(self._query("SELECT COUNT(*) FROM images")[0][0])

    def image(self, sop_uid: str) -> ImageRecord | None:
        """The stored image with this SOP Instance UID, or ``None``."""
        rows = self._query(self._IMAGE_SELECT + " WHERE i.sop_uid = ?", (sop_uid,))
        return self._image_record(rows[0]) if rows else None

    def exam_key_of(self, study_uid: str) -> str | None:
        """The exam a stored study belongs to (None when it is not stored)."""
        rows = self._query("SELECT exam_key FROM studies WHERE study_uid = ?", (study_uid,))
        return str(rows[0]["exam_key"]) if rows else None

    def images_for_study(self, study_uid: str) -> list[ImageRecord]:
        """Images of one study, in hanging order (RCC, LCC, RMLO, LMLO, others)."""
        rows = self._query(self._IMAGE_SELECT + " WHERE i.study_uid = ?", (study_uid,))
        return self._sorted_images(self._image_record(r) for r in rows)

    def studies(self) -> list[StudyRecord]:
        """All studies, newest study date first, with the view labels present."""
        with self._lock:
            study_rows = self.conn.execute("SELECT * FROM studies").fetchall()
            image_rows = self.conn.execute(
                'SELECT study_uid, laterality, "view" FROM images'
            ).fetchall()
        labels: dict[str, list[str]] = {}
        for r in image_rows:
            labels.setdefault(r["study_uid"], []).append(
                _label(
                    _enum(Laterality, r["laterality"], Laterality.UNKNOWN),
                    _enum(View, r["view"], View.UNKNOWN),
                )
            )
        records = [
            StudyRecord(
                study_uid=r["study_uid"],
                patient_id=r["patient_id"],
                patient_name=r["patient_name"],
                accession=r["accession"],
                study_date=_date(r["study_date"]),
                description=r["description"],
                exam_key=r["exam_key"],
                image_count=len(labels.get(r["study_uid"], [])),
                views=tuple(sorted(set(labels.get(r["study_uid"], [])), key=view_sort_key)),
            )
            for r in study_rows
        ]
        records.sort(key=lambda s: (s.patient_id, s.study_uid))
        records.sort(key=lambda s: s.study_date or _dt.date.min, reverse=True)
        return records

    def exams(self) -> list[ExamRecord]:
        """Worklist exams: studies grouped by exam key, each with all its images.

        See the module docstring (and :func:`exam_key_for`) for the grouping rule.
        Sorted newest study date first (undated last), then by patient ID.
        """
        with self._lock:
            study_rows = self.conn.execute("SELECT * FROM studies ORDER BY study_uid").fetchall()
            image_rows = self.conn.execute(self._IMAGE_SELECT).fetchall()
        exams = self._build_exams(study_rows, image_rows)
        exams.sort(key=lambda e: (e.patient_id, e.exam_key))
        exams.sort(key=lambda e: e.study_date or _dt.date.min, reverse=True)
        return exams

    def exam(self, exam_key: str) -> ExamRecord | None:
        """One exam by key, or ``None``."""
        with self._lock:
            study_rows = self.conn.execute(
                "SELECT * FROM studies WHERE exam_key = ? ORDER BY study_uid", (exam_key,)
            ).fetchall()
            image_rows = self.conn.execute(
                self._IMAGE_SELECT
                + " WHERE i.study_uid IN (SELECT study_uid FROM studies WHERE exam_key = ?)",
                (exam_key,),
            ).fetchall()
        exams = self._build_exams(study_rows, image_rows)
        return exams[0] if exams else None

    def same_patient_exam_keys(self, exam_keys: Sequence[str]) -> list[str]:
        """Keys of the other exams stored under the Patient ID of any of ``exam_keys``
        (indexed: no scan of the archive)."""
        keys = list(exam_keys)
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        rows = self._query(
            "SELECT DISTINCT p.exam_key FROM exam_index e JOIN exam_index p ON p.patient_id = e.patient_id "
            f"WHERE e.exam_key IN ({marks}) AND p.exam_key NOT IN ({marks}) ORDER BY p.exam_key", (*keys, *keys))
        return [r[0] for r in rows]

    def _build_exams(
        self, study_rows: Sequence[sqlite3.Row], image_rows: Sequence[sqlite3.Row]
    ) -> list[ExamRecord]:
        by_study: dict[str, list[ImageRecord]] = {}
        for r in image_rows:
            by_study.setdefault(r["study_uid"], []).append(self._image_record(r))
        groups: dict[str, list[sqlite3.Row]] = {}
        for r in study_rows:
            groups.setdefault(r["exam_key"], []).append(r)
        exams: list[ExamRecord] = []
        for key, rows in groups.items():
            first = rows[0]
            dates = [d for d in (_date(r["study_date"]) for r in rows) if d is not None]
            pid = first["patient_id"]
            images = [img for r in rows for img in by_study.get(r["study_uid"], [])]
            exams.append(
                ExamRecord(
                    exam_key=key,
                    patient_id=split_view_patient_id(pid) or pid,
                    patient_name=first["patient_name"],
                    study_date=min(dates) if dates else None,
                    accessions=tuple(sorted({r["accession"] for r in rows if r["accession"]})),
                    study_uids=tuple(r["study_uid"] for r in rows),
                    images=tuple(self._sorted_images(images)),
                    patient_id_issuer=first["patient_id_issuer"],
                )
            )
        return exams

    def rejections(self) -> list[RejectionRecord]:
        """The rejection log, oldest first."""
        rows = self._query("SELECT path, reason, code, at FROM rejections ORDER BY id")
        return [RejectionRecord(r["path"], r["reason"], r["code"], r["at"]) for r in rows]
