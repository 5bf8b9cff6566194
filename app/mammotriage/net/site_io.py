"""The AI worker's DICOMweb side: an exam's images from the site archive, its results back.

* :class:`DicomWebExamSource` is the worker's image source
  (:class:`mammotriage.triage.site_worker.ExamImageSource`, matched by shape: ``net``
  and ``triage`` do not import each other): QIDO-RS the study's instances, WADO-RS each
  image into the archive client's byte-bounded :class:`~mammotriage.net.dicomweb.InstanceCache`.
  Results already in the study (SR, SEG, presentation states, key objects) are not
  fetched. An archive that cannot be reached is a :class:`ConnectionError` (the worker
  gives the job back); an instance that cannot be had is a problem of that instance.
* :class:`StowSink` is the worker's :class:`~mammotriage.triage.sink.ResultSink`: each
  SR/SEG goes to the archive with STOW-RS (which forwards it to the PACS where the site
  configures it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from mammotriage.digest import image_set_digest
from mammotriage.net.dicomweb import DicomWebArchive, DicomWebError

__all__ = ["RESULT_SOP_CLASS_PREFIXES", "DicomWebExamSource", "StowSink", "is_away"]

log = logging.getLogger(__name__)

#: SOP classes that are results, not images: SR (…88.x, key objects 88.59 included),
#: Segmentation (…66.x), presentation states (…11.x).
RESULT_SOP_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.66.",
                             "1.2.840.10008.5.1.4.1.1.11.")
#: Failures that mean "the archive is away now", not "this instance is bad".
_AWAY = ("timeout", "unreachable")


def is_away(exc: DicomWebError) -> bool:
    """Whether a failure means "the archive is away now" (try again later), not "this is refused"."""
    return exc.code in _AWAY or (exc.code == "http" and (exc.status or 0) >= 500)


class DicomWebExamSource:
    """An exam's image files (the exam key is the Study Instance UID) through ``archive``."""

    def __init__(self, archive: DicomWebArchive) -> None:
        self.archive = archive

    def image_set(self, exam_key: str) -> str | None:
        """:func:`~mammotriage.digest.image_set_digest` of the study's images in the archive
        now (results left out: storing a result into the study does not change it); None
        when the archive answers but the study cannot be listed (an invalid UID, an answer
        over the limits: the job is queued without a set, and its triage says why).
        Raises :class:`ConnectionError` when the archive is away (the study is offered again)."""
        try:
            return image_set_digest(i.sop_uid for i in self.images(exam_key))
        except DicomWebError as exc:
            log.warning("study %s: its image set is not known (%s); queued without it", exam_key, exc)
            return None

    def images(self, exam_key: str) -> list[Any]:
        """The study's instances without the results (QIDO-RS); :class:`ConnectionError`
        when the archive is away, :class:`DicomWebError` for any other failure."""
        try:
            instances = self.archive.find_instances(exam_key)
        except DicomWebError as exc:
            if is_away(exc):
                raise ConnectionError(str(exc)) from None
            raise
        return [i for i in instances if not (i.sop_class_uid or "").startswith(RESULT_SOP_CLASS_PREFIXES)]

    def exam_files(self, exam_key: str) -> tuple[list[Path], list[str]]:
        images = self.images(exam_key)
        if not images:
            raise LookupError(f"study {exam_key}: the archive holds no image of it")
        paths: list[Path] = []
        problems: list[str] = []
        away: list[DicomWebError] = []
        for record in images:
            try:
                paths.append(self.archive.fetch_instance(record.study_uid, record.series_uid, record.sop_uid))
            except DicomWebError as exc:
                if is_away(exc):
                    away.append(exc)
                else:
                    problems.append(str(exc))
        if away and not paths:
            raise ConnectionError(str(away[0]))
        problems += [str(exc) for exc in away]
        return paths, problems


class StowSink:
    """Sends each written result file to the archive with STOW-RS; ``queue`` says whether
    the archive stored it (an instance it holds already counts: it keeps the first copy)."""

    def __init__(self, archive: DicomWebArchive) -> None:
        self.archive = archive
        #: the last failure, for the worker's log
        self.problem = ""

    def queue(self, path: Path, kind: str) -> bool:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            self.problem = f"{path.name} ({kind}) cannot be read back: {exc}"
            log.warning("%s", self.problem)
            return False
        try:
            result = self.archive.store([ds])
        except DicomWebError as exc:
            self.problem = f"{path.name} ({kind}): {exc}"
            log.warning("STOW-RS: %s", self.problem)
            return False
        if result.failed:
            self.problem = f"{path.name} ({kind}): " + "; ".join(f"{sop}: {why}" for sop, why in result.failed)
            log.warning("STOW-RS: %s", self.problem)
            return False
        return True
