"""Export of dataset snapshots for ML staff or another site.

:func:`export_snapshot` writes a self-describing folder: de-identified DICOM images
(PS3.15 Basic Profile, :mod:`mammotriage.export.deid`), one TID 1500 SR per reviewed
image with its final findings, the labels as a MONAI detection datalist, as COCO and in
full (:mod:`mammotriage.export.formats`), a README and a manifest with the sha256 of
every file. :func:`mammotriage.export.commands.add_dataset_commands` registers the
``dataset`` and ``export`` CLI commands.

The names below are imported on first use, so that registering the CLI commands does
not load dicognito or highdicom.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXPORT_FORMAT", "ExportError", "ExportReport", "export_snapshot"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mammotriage.export import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
