"""Local archive of imported mammograms: an SQLite index over files left in place.

Importing (:meth:`Archive.import_paths`) reads each file's metadata, hashes it and
records it; source files are never copied, moved or modified.  The worklist reads
:meth:`Archive.exams`.
"""

from mammotriage.store.archive import (
    Archive,
    ExamRecord,
    ImageRecord,
    ImportedFile,
    ImportReport,
    Rejection,
    RejectionRecord,
    StudyRecord,
    exam_key_for,
    split_view_patient_id,
)
from mammotriage.store.db import SCHEMA_VERSION, SchemaVersionError

__all__ = [
    "SCHEMA_VERSION",
    "Archive",
    "ExamRecord",
    "ImageRecord",
    "ImportReport",
    "ImportedFile",
    "Rejection",
    "RejectionRecord",
    "SchemaVersionError",
    "StudyRecord",
    "exam_key_for",
    "split_view_patient_id",
]
