"""Segmentations: the model's suspicion map as a fractional SEG (see :mod:`.sop`)."""

from mammotriage.dicom.content import NOT_FOR_CLINICAL_USE, AlgorithmInfo, save_dataset
from mammotriage.dicom.seg.sop import write_suspicion_seg

__all__ = ["NOT_FOR_CLINICAL_USE", "AlgorithmInfo", "save_dataset", "write_suspicion_seg"]
