"""Structured reports (highdicom-style: ``content`` builds the items, ``sop`` the objects).

AI results are two objects, both built with highdicom, both marked as research output:

* :func:`write_findings_sr` - a Comprehensive SR (PS3.3 A.35.3) whose content is a
  TID 1500 "Measurement Report" (PS3.16 TID 1500) with one TID 1410 "Planar ROI
  Measurements and Qualitative Evaluations" group per finding: a closed POLYLINE
  rectangle in the source image's pixel coordinates, the finding's kind and its score.
  highdicom cannot write the Mammography CAD SR (PS3.16 TID 4000), so TID 1500 is the
  interoperable choice (and the measurement template IHE AI Results builds on).
* :func:`~mammotriage.dicom.seg.write_suspicion_seg` - a FRACTIONAL / PROBABILITY Segmentation (PS3.3
  A.51, C.8.20.2) of one source image, on the source's pixel grid.

Both identify the algorithm as IHE Radiology "AI Results" (AIR) asks: algorithm name,
version and a Device UID that changes with every model version
(:class:`~mammotriage.dicom.content.AlgorithmInfo`),
recorded in the Contributing Equipment Sequence (0018,A001) of the SOP Common module
(PS3.3 C.12.1), in the SR's device observer context (TID 1002/1004) and algorithm
identification (TID 4019), and in the SEG's Segment Sequence (PS3.3 C.8.20.2). Their
Series Description says "not for clinical use".

Coordinates
-----------
Boxes are ``(x0, y0, x1, y1)`` in stored-image pixels, x = column, y = row, half-open
(the box covers columns ``x0 .. x1 - 1``). DICOM 2D SCOORD pixel coordinates (PS3.3
C.18.6, Spatial Coordinates Macro) are ``column\\row`` with sub-pixel resolution where
the top-left corner of the top-left pixel is ``0.0\\0.0``, the centre of that pixel
``0.5\\0.5`` and the bottom-right corner of the bottom-right pixel ``Columns\\Rows``.
The half-open box ``[x0, x1) x [y0, y1)`` is therefore exactly the rectangle with
corners ``(x0, y0)`` and ``(x1, y1)`` in SCOORD: no half-pixel shift in either direction.

The reader's findings (:func:`write_reader_findings_sr`) use the same template without
algorithm or score.

Codes
-----
See :data:`FINDING_CODES` and the constants of :mod:`mammotriage.dicom.sr.content`; every code is taken from
pydicom's DICOM dictionaries (``pydicom.sr.codedict.codes``).
"""

from mammotriage.dicom.content import NOT_FOR_CLINICAL_USE, AlgorithmInfo, save_dataset
from mammotriage.dicom.sr.content import FINDING_CODES
from mammotriage.dicom.sr.sop import (
    READER_FINDINGS_DESCRIPTION,
    FindingRecord,
    ReaderFindingRecord,
    write_findings_sr,
    write_reader_findings_sr,
)

__all__ = [
    "FINDING_CODES", "NOT_FOR_CLINICAL_USE", "READER_FINDINGS_DESCRIPTION", "AlgorithmInfo", "FindingRecord",
    "ReaderFindingRecord", "save_dataset", "write_findings_sr", "write_reader_findings_sr",
]
