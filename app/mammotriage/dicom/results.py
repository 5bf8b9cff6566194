"""Deprecated: the AI and reader result objects moved to :mod:`mammotriage.dicom.sr`
(structured reports), :mod:`mammotriage.dicom.seg` (the suspicion SEG) and
:mod:`mammotriage.dicom.content` (what both share). This module re-exports them for
one release, for scripts that import it.
"""

from __future__ import annotations

import warnings

from mammotriage.dicom.content import (
    ALGORITHM_FAMILY,
    BREAST,
    CONTRIBUTION_DESCRIPTION,
    DEVICE_UID_NAMESPACE,
    EQUIPMENT_MANUFACTURER,
    EQUIPMENT_MODEL,
    NOT_FOR_CLINICAL_USE,
    PURPOSE_OF_REFERENCE,
    AlgorithmInfo,
    save_dataset,
)
from mammotriage.dicom.seg.sop import SEGMENT_CATEGORY, SEGMENT_TYPE, write_suspicion_seg
from mammotriage.dicom.sr.content import (
    FINDING_CATEGORY,
    FINDING_CODES,
    NO_FINDINGS,
    PROCEDURE_REPORTED,
    SCORE_CONCEPT,
    SCORE_UNIT,
)
from mammotriage.dicom.sr.sop import (
    READER_FINDINGS_DESCRIPTION,
    FindingRecord,
    ReaderFindingRecord,
    write_findings_sr,
    write_reader_findings_sr,
)

warnings.warn(
    "mammotriage.dicom.results is deprecated: import from mammotriage.dicom.sr, "
    "mammotriage.dicom.seg or mammotriage.dicom.content",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "ALGORITHM_FAMILY", "BREAST", "CONTRIBUTION_DESCRIPTION", "DEVICE_UID_NAMESPACE", "EQUIPMENT_MANUFACTURER",
    "EQUIPMENT_MODEL", "FINDING_CATEGORY", "FINDING_CODES", "NOT_FOR_CLINICAL_USE", "NO_FINDINGS",
    "PROCEDURE_REPORTED", "PURPOSE_OF_REFERENCE", "READER_FINDINGS_DESCRIPTION", "SCORE_CONCEPT", "SCORE_UNIT",
    "SEGMENT_CATEGORY", "SEGMENT_TYPE", "AlgorithmInfo", "FindingRecord", "ReaderFindingRecord", "save_dataset",
    "write_findings_sr", "write_reader_findings_sr", "write_suspicion_seg",
]
