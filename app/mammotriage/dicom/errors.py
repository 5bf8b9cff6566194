"""Typed errors raised while reading DICOM files.

Every error carries the file path (when known) and a human-readable reason, so the
import batch, the CLI and the viewer can all report *which* file failed and *why*.
"""

from __future__ import annotations

from pathlib import Path


class MammoReadError(Exception):
    """Base class: a file could not be turned into a :class:`MammoImage`."""

    #: short machine-readable category, stable for scripts (``mammotriage info --json``)
    code = "read-error"

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class NotDicomError(MammoReadError):
    """The file is not a DICOM file (or is too damaged to parse)."""

    code = "not-dicom"


class UnreadableFileError(MammoReadError):
    """The file exists but cannot be read (permissions, a broken link, an I/O error)."""

    code = "unreadable"


class NotAnImageError(MammoReadError):
    """A valid DICOM object that holds no image (SR, dose report, presentation state ...)."""

    code = "not-an-image"


class NotMammogramError(MammoReadError):
    """An image, but not of the breast (e.g. a chest CR)."""

    code = "not-a-mammogram"


class UnsupportedTransferSyntaxError(MammoReadError):
    """No installed decoder can decode the pixel data's transfer syntax."""

    code = "cannot-decode"


class CorruptPixelDataError(MammoReadError):
    """Pixel data is missing, truncated or inconsistent with the image attributes."""

    code = "corrupt-pixel-data"


class UnsupportedImageError(MammoReadError):
    """A breast image in a form the reader does not handle (colour, multi-frame ...)."""

    code = "unsupported-image"
