"""Decode views in worker processes and hand display-ready data to the UI thread.

pylibjpeg holds the GIL while decoding, so decoding and pyramid building run in a
process pool; the UI polls finished futures from its event loop and never blocks.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.dicom import MammoMetadata, MammoReadError, read_image
from mammotriage.dicom.hanging import DisplayOrientation, display_orientation
from mammotriage.dicom.image import MammoImage, pixel_sha256
from mammotriage.dicom.limits import DECODE_WORKER_LIMIT, limit_address_space
from mammotriage.dicom.pyramid import build_pyramid
from mammotriage.dicom.voi import Window, auto_window, render_8bit
from mammotriage.lifetime import die_with_parent


@dataclass
class LoadedView:
    """One view ready for display: pyramid levels already in hanging orientation."""

    path: str
    meta: MammoMetadata
    orientation: DisplayOrientation
    levels: list[np.ndarray]  # display-oriented stored values, level 0 = full resolution
    auto: Window  # window from the image's statistics (used when the file has no preset)
    pixel_sha256: str = ""  # of the stored pixels (correction events carry it)
    #: bounding box of the breast (x0, y0, x1, y1) in display-oriented level-0 pixels,
    #: from the segmentation the model uses; None when it cannot be found
    breast_box: tuple[float, float, float, float] | None = None
    #: display-oriented shape of the full image when ``levels`` start below it (a preview)
    full_shape: tuple[int, int] | None = None
    #: a reduced-resolution stand-in, replaced by the full view when that is decoded
    preview: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """Display-oriented (rows, columns) of the full image: every pane geometry uses it."""
        if self.full_shape is not None:
            return self.full_shape
        rows, cols = self.levels[0].shape
        return int(rows), int(cols)

    @property
    def nbytes(self) -> int:
        return int(sum(level.nbytes for level in self.levels))


@dataclass
class LoadError:
    path: str
    reason: str
    code: str


def load_view(path: str) -> LoadedView | LoadError:
    """Decode ``path``, orient it for the hanging and build its pyramid (worker side)."""
    try:
        image = read_image(path)
    except MammoReadError as exc:
        return LoadError(path, exc.reason, exc.code)
    except Exception as exc:  # noqa: BLE001 - never let a worker crash the viewer
        return LoadError(path, f"{type(exc).__name__}: {exc}", "internal-error")
    return view_from_image(path, image)


def display_facts(meta: MammoMetadata, pixels: np.ndarray
                  ) -> tuple[DisplayOrientation, Window, np.ndarray, tuple[float, float, float, float] | None]:
    """What a view's display needs from its decoded stored pixels: the hanging
    orientation, the automatic window, the display-oriented pixels (contiguous) and the
    breast box in them."""
    orientation = display_orientation(meta)
    auto = auto_window(meta, pixels)
    if orientation.source == "default":
        # no Patient Orientation: let the pixels say where the chest wall is
        orientation = display_orientation(meta, render_8bit(meta, pixels[::4, ::4], auto))
    oriented = np.ascontiguousarray(orientation.apply(pixels))
    return orientation, auto, oriented, breast_box(meta, oriented, auto)


def view_from_image(path: str, image: MammoImage, pyramid_min: int = 256) -> LoadedView:
    """The display-ready view of a decoded :class:`~mammotriage.dicom.MammoImage`."""
    meta = image.meta
    orientation, auto, oriented, box = display_facts(meta, image.pixels)
    return LoadedView(path=str(path), meta=meta, orientation=orientation,
                      levels=build_pyramid(oriented, pyramid_min), auto=auto, pixel_sha256=pixel_sha256(image.pixels),
                      breast_box=box)


def breast_box(meta: MammoMetadata, oriented: np.ndarray, window: Window) -> tuple[float, float, float, float] | None:
    """Bounding box of the breast in display-oriented pixels, from the breast mask of
    the model's preprocessing (on a copy reduced to <= 1024 px); None when the mask is
    empty or covers (nearly) the whole image, i.e. when it says nothing."""
    from mammotriage.model.preprocess import breast_mask

    step = max(1, int(np.ceil(max(oriented.shape) / 1024)))
    try:
        mask = breast_mask(render_8bit(meta, oriented[::step, ::step], window))
    except (ValueError, MemoryError):
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0 or cols.size == 0 or mask.mean() > 0.97:
        return None
    h, w = oriented.shape
    return (float(cols[0] * step), float(rows[0] * step),
            float(min((cols[-1] + 1) * step, w)), float(min((rows[-1] + 1) * step, h)))


class ViewCache:
    """LRU cache of loaded views bounded by bytes; pinned paths are never evicted."""

    def __init__(self, max_bytes: int = 1_500_000_000):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, LoadedView] = OrderedDict()
        self.pinned: set[str] = set()

    def get(self, path: str) -> LoadedView | None:
        item = self._items.get(path)
        if item is not None:
            self._items.move_to_end(path)
        return item

    def discard(self, path: str) -> None:
        """Forget ``path``'s view (pinned or not): the next request decodes it again."""
        self._items.pop(path, None)

    def put(self, view: LoadedView) -> None:
        self._items[view.path] = view
        self._items.move_to_end(view.path)
        self._evict()

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._items.values())

    def _evict(self) -> None:
        total = self.nbytes
        for path in list(self._items):
            if total <= self.max_bytes:
                break
            if path in self.pinned:
                continue
            total -= self._items.pop(path).nbytes


#: in a decode worker: where it sends what is ready before its task ends (a preview of
#: the view it is decoding), when its loader gave it a queue
EARLY: Any = None


def _init_decode_worker(parent_pid: int, limit: int, early: Any = None) -> None:
    global EARLY
    die_with_parent(parent_pid)
    limit_address_space(limit)
    EARLY = early


class ViewLoader:
    """Submits decode jobs to a process pool; results are collected by :meth:`poll`."""

    def __init__(self, workers: int = 2, early: Any = None):
        ctx = mp.get_context("spawn")
        # untrusted files are decoded here: a bounded address space per worker, and workers
        # exit when the app does, even when it is killed (no orphaned decoders); ``early``
        # (a queue of the spawn context) reaches the workers as :data:`EARLY`
        self._pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                            initializer=_init_decode_worker,
                                            initargs=(os.getpid(), DECODE_WORKER_LIMIT, early))
        #: path -> its decode job (``None``: wanted, the job not yet submitted; a subclass
        #: that schedules its own jobs marks them so)
        self._pending: dict[str, cf.Future[Any] | None] = {}
        self.cache = ViewCache()
        #: the paths in the panes now: a scheduling loader decodes them first (this one
        #: decodes in request order)
        self.on_screen: set[str] = set()

    def request(self, path: str | Path) -> LoadedView | None:
        """Return the view if cached, else start loading it (once) and return None."""
        key = str(path)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if key not in self._pending:
            self._pending[key] = self._pool.submit(load_view, key)
        return None

    def poll(self) -> list[LoadedView | LoadError]:
        """Collect finished jobs (non-blocking)."""
        done = [k for k, f in self._pending.items() if f is not None and f.done()]
        results: list[LoadedView | LoadError] = []
        for key in done:
            future = self._pending.pop(key)
            assert future is not None  # selected as done above
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker is reported, not fatal
                result = LoadError(key, f"worker failed: {type(exc).__name__}: {exc}", "internal-error")
            if isinstance(result, LoadedView):
                self.cache.put(result)
            results.append(result)
        return results

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    @property
    def in_flight(self) -> int:
        """Decodes running in the workers now (not those waiting, nor finished and not yet polled)."""
        return sum(1 for f in self._pending.values() if f is not None and f.running())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
