"""DICOM reading, display transforms, views and hanging (no torch, no Qt)."""

from mammotriage.dicom.errors import (
    CorruptPixelDataError,
    MammoReadError,
    NotAnImageError,
    NotDicomError,
    NotMammogramError,
    UnreadableFileError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from mammotriage.dicom.image import (
    Laterality,
    MammoImage,
    MammoMetadata,
    PixelSpacing,
    PresentationIntent,
    SpacingSource,
    View,
    WindowPreset,
)
from mammotriage.dicom.read import open_dataset, read_image, read_metadata

__all__ = [
    "CorruptPixelDataError", "Laterality", "MammoImage", "MammoMetadata", "MammoReadError",
    "NotAnImageError", "NotDicomError", "NotMammogramError", "PixelSpacing", "PresentationIntent",
    "SpacingSource", "UnreadableFileError", "UnsupportedImageError", "UnsupportedTransferSyntaxError", "View",
    "WindowPreset", "open_dataset", "read_image", "read_metadata",
]
