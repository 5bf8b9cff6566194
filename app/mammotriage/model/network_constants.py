"""Constants shared by the torch and non-torch parts of the model package."""

from mammotriage.dicom.vocab import DETECTED_KINDS

#: The network's classes, in output-channel order: the detected finding kinds.
CLASSES = DETECTED_KINDS
