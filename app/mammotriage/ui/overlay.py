"""AI overlay data for one view and its rendering helpers (suspicion map, marks)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np
from PySide6.QtGui import QImage

from mammotriage.dicom.hanging import DisplayOrientation
from mammotriage.resources import colormap
from mammotriage.viewer.session import OverlayData


@dataclass
class AiOverlay:
    """What the model said about one image, in stored-image coordinates."""

    findings: list[dict]  # {"box": [x0, y0, x1, y1], "kind": str, "score": float}
    image_score: float
    model_version: str
    stale: bool = False  # produced by an older model than the active one
    suspicion: np.ndarray | None = field(default=None, repr=False)
    map_factor: float = 1.0  # stored pixels per map pixel
    breast_score: float | None = None
    exam_score: float | None = None
    _rgba: np.ndarray | None = field(default=None, repr=False)
    _qimage: QImage | None = field(default=None, repr=False)
    _key: tuple | None = None

    @classmethod
    def of(cls, data: OverlayData) -> AiOverlay:
        """The overlay of what the reading session found (:class:`~mammotriage.viewer.session.OverlayData`)."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(data)})

    def map_extent(self) -> tuple[float, float]:
        """(width, height) of the map in stored pixels."""
        assert self.suspicion is not None
        rows, cols = self.suspicion.shape
        return cols * self.map_factor, rows * self.map_factor

    def map_image(self, orientation: DisplayOrientation) -> QImage | None:
        """The coloured map in display orientation (cached)."""
        if self.suspicion is None:
            return None
        key = (orientation.flip_h, orientation.flip_v, orientation.transpose)
        if self._qimage is None or self._key != key:
            values = np.clip(np.asarray(self.suspicion, dtype=np.float32), 0.0, 1.0)
            idx = np.rint(orientation.apply(values) * 255).astype(np.uint8)
            self._rgba = np.ascontiguousarray(_suspicion_lut()[idx])
            h, w = idx.shape
            self._qimage = QImage(self._rgba.data, w, h, w * 4, QImage.Format.Format_RGBA8888).copy()
            self._key = key
        return self._qimage


@lru_cache(maxsize=1)
def _suspicion_lut() -> np.ndarray:
    return colormap("suspicion")
