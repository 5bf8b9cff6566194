"""Progressive, prioritised view decoding over all cores, pixels handed over in shared memory.

No Qt here (the loader's Qt-free companion):

* **Progressive.** A view on screen whose file is JPEG 2000 or HTJ2K gets a *preview*
  task first: openjpeg's reduce decodes the resolution level closest to a pane (about
  1/8, 512 rows of a 4096-row view) in a small fraction of the full decode; it is
  painted at once and replaced by the full-resolution view when that arrives.  The
  preview carries the full image's shape, so the pane's geometry (fit, mm scale,
  orientation) is that of the full view; the full view takes over the preview's
  automatic window and breast box, so neither the window nor the fit moves.
  Other syntaxes (uncompressed, RLE, JPEG lossless and baseline; and JPEG 2000 where
  openjpeg's reduce is not available) are decoded once, in the full task: as soon as the
  frame is decoded, a view on screen gets the same kind of preview (a strided
  downsample to the same level, with the full view's shape, orientation, window and
  breast box, all worked out from the full frame), sent to the UI through a queue while
  the worker goes on to the full pyramid and the pixel hash.
* **All cores.** Worker processes (pylibjpeg holds the GIL) times openjpeg's own threads.
* **Shared memory.** A worker writes a view's pyramid levels into one
  :class:`multiprocessing.shared_memory.SharedMemory` block and returns only its name
  and layout; the UI process maps it (no pickled copy of the pixels) and unlinks the
  name at once, so the memory goes with the last array that uses it.
* **Priorities.** Tasks wait in this process, not in the executor: at most one task per
  worker is in flight, so what is on screen (its previews first) goes before the views
  of the open exam's prior, which go before prefetch; both wait while a view on screen
  is decoding; a new open jumps every pending prefetch, and
  :meth:`ProgressiveLoader.prefetch` replaces the prefetch list.
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
import itertools
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mammotriage.dicom import MammoReadError, read_image
from mammotriage.dicom.image import MammoImage, pixel_sha256
from mammotriage.dicom.progressive import preview_factor, read_image_progressive
from mammotriage.dicom.pyramid import build_pyramid
from mammotriage.viewer.loader import (
    LoadedView,
    LoadError,
    ViewLoader,
    display_facts,
    load_view,
    view_from_image,
)

__all__ = ["ProgressiveLoader", "SharedView", "attach", "decode_task", "share"]

PREVIEW, FULL = "preview", "full"
#: scheduling classes, lowest first
ON_SCREEN_PREVIEW, ON_SCREEN, WITH_EXAM, PREFETCH = 0, 1, 2, 3
#: free space kept in /dev/shm beyond a block (else the pixels are pickled instead)
_SHM_MARGIN = 64 << 20


# --------------------------------------------------------------------------- shared memory

@dataclass
class SharedView:
    """A decoded view whose levels wait in a shared-memory block (what a worker returns)."""

    view: LoadedView  # with ``levels`` empty
    name: str
    layout: list[tuple[tuple[int, int], int]]  # (shape, byte offset) per level
    dtype: str


class _Attached(shared_memory.SharedMemory):
    """The UI side's mapping: it stays until the last array over it is gone."""

    def close(self) -> None:  # the arrays own the mapping (closing under them would fail)
        return None


def _shm_room(size: int) -> bool:
    try:
        return shutil.disk_usage("/dev/shm").free >= size + _SHM_MARGIN
    except OSError:
        return os.name != "posix"  # no /dev/shm to ask: let SharedMemory try


def share(view: LoadedView) -> SharedView | LoadedView:
    """Move ``view``'s levels into one shared-memory block (worker side).

    Returns the view itself (pickled as before) when shared memory lacks the room.
    """
    levels = view.levels
    dtype = levels[0].dtype
    layout, offset = [], 0
    for level in levels:
        layout.append(((int(level.shape[0]), int(level.shape[1])), offset))
        offset += -(-level.nbytes // 64) * 64  # 64-byte aligned levels
    if not _shm_room(offset):
        return view
    shm = shared_memory.SharedMemory(create=True, size=max(offset, 1))
    try:
        for level, (shape, start) in zip(levels, layout, strict=True):
            target = np.ndarray(shape, dtype=dtype, buffer=shm.buf, offset=start)
            target[...] = level
            del target
    except BaseException:
        shm.close()
        shm.unlink()
        raise
    shm.close()  # the block stays until the UI process unlinks it
    return SharedView(view=replace(view, levels=[]), name=shm.name, layout=layout, dtype=dtype.str)


def attach(shared: SharedView) -> LoadedView:
    """Map a :class:`SharedView` as a :class:`LoadedView` (UI side, no copy) and unlink it."""
    shm = _Attached(name=shared.name)
    try:
        levels = [np.ndarray(shape, dtype=np.dtype(shared.dtype), buffer=shm.buf, offset=start)
                  for shape, start in shared.layout]
    finally:
        shm.unlink()  # the name goes now; the memory with the last level array
    return replace(shared.view, levels=levels)


# --------------------------------------------------------------------------- worker side

def _preview(path: str, threads: int) -> LoadedView | LoadError | None:
    """The reduced-resolution view of a JPEG 2000 file (None when it has none)."""
    try:
        result = read_image_progressive(path, None, threads)
    except MammoReadError as exc:
        return LoadError(path, exc.reason, exc.code)
    if result is None or result[1] == 0:
        return None  # not JPEG 2000, or small enough: the full decode is the preview
    return _as_preview(path, result[0])


def _as_preview(path: str, reduced_image: MammoImage) -> LoadedView:
    """The preview view of a reduced image: the full image's shape, its breast box in
    the full image's display pixels, no pixel hash (corrections need the full view)."""
    meta = reduced_image.meta
    view = view_from_image(path, reduced_image, pyramid_min=128)
    reduced = view.levels[0].shape
    full = view.orientation.apply(np.empty((meta.rows, meta.columns), dtype=np.bool_)).shape
    box = view.breast_box
    if box is not None:  # in the full image's display pixels, like every view's box
        sy, sx = full[0] / reduced[0], full[1] / reduced[1]
        box = (box[0] * sx, box[1] * sy, min(box[2] * sx, full[1]), min(box[3] * sy, full[0]))
    return replace(view, breast_box=box, full_shape=(int(full[0]), int(full[1])), preview=True, pixel_sha256="")


def full_with_preview(path: str, image: MammoImage, send: Callable[[LoadedView], None]) -> LoadedView:
    """The full view of a decoded image whose file had no reduced levels; first, when it
    is large enough to need one, its first pyramid level (every ``2**r``-th pixel,
    :func:`preview_factor`, as a JPEG 2000 preview) goes to ``send`` as a preview with
    the full view's orientation, automatic window, breast box and shape: only the full
    pyramid and the pixel hash come after it."""
    meta = image.meta
    orientation, auto, oriented, box = display_facts(meta, image.pixels)
    r = preview_factor(meta.rows, meta.columns)
    if r > 0:
        step = 2 ** r
        send(LoadedView(path=str(path), meta=meta, orientation=orientation,
                        levels=build_pyramid(np.ascontiguousarray(oriented[::step, ::step]), 128), auto=auto,
                        breast_box=box, full_shape=(int(oriented.shape[0]), int(oriented.shape[1])), preview=True))
    return LoadedView(path=str(path), meta=meta, orientation=orientation, levels=build_pyramid(oriented),
                      auto=auto, pixel_sha256=pixel_sha256(image.pixels), breast_box=box)


def _send_early(path: str, view: LoadedView) -> None:  # worker side
    from mammotriage.viewer import loader

    if loader.EARLY is not None:
        loader.EARLY.put((path, share(view)))


def _full(path: str, threads: int, early: bool = False) -> LoadedView | LoadError:
    """The full-resolution view: openjpeg with threads where exact, else the reference
    reader (pydicom's plugins); with ``early``, a preview of the latter is sent as soon
    as the frame is decoded."""
    try:
        result = read_image_progressive(path, 0, threads)
    except MammoReadError as exc:
        return LoadError(path, exc.reason, exc.code)
    if result is not None:
        return view_from_image(path, result[0])
    if not early:
        return load_view(path)
    try:
        image = read_image(path)
    except MammoReadError as exc:
        return LoadError(path, exc.reason, exc.code)
    return full_with_preview(path, image, lambda preview: _send_early(path, preview))


def warm_up() -> bool:
    """Import what a decode needs (glymur and libopenjp2, pydicom's decoders, the breast
    mask's scipy), so that the first exam opened does not pay for it."""
    from mammotriage.dicom.progressive import _glymur
    from mammotriage.model import preprocess  # noqa: F401 - the breast box's segmentation

    _glymur()
    return True


def decode_task(path: str, mode: str, threads: int, early: bool = False) -> SharedView | LoadedView | LoadError | None:
    """One task of a decode worker: the preview (None when the file has none) or the full
    view (``early``: a view on screen, which gets a preview from the full decode when its
    file had none of its own)."""
    try:
        result = _preview(path, threads) if mode == PREVIEW else _full(path, threads, early)
    except MemoryError:
        return LoadError(path, "out of memory while decoding (the worker's limit)", "internal-error")
    except Exception as exc:  # noqa: BLE001 - never let a worker crash the viewer
        return LoadError(path, f"{type(exc).__name__}: {exc}", "internal-error")
    if isinstance(result, LoadedView):
        return share(result)
    return result


# --------------------------------------------------------------------------- UI side

class Fetcher(Protocol):
    """Brings a view's file before it is decoded (site mode: :class:`~mammotriage.viewer.site_images.SiteImageFetcher`)."""

    def ready(self, path: str) -> bool | LoadError: ...

    def cancel(self, path: str) -> None: ...


@dataclass(order=True)
class _Task:
    rank: tuple[int, int]
    path: str = field(compare=False)
    mode: str = field(compare=False)


class ProgressiveLoader(ViewLoader):
    """:class:`ViewLoader` with previews, priorities, prefetch and shared-memory handover.

    ``on_screen`` (paths in the panes now) and ``cache.pinned`` (those plus the prior's)
    are set by the window when an exam opens; they decide what goes first.
    """

    def __init__(self, workers: int | None = None, threads: int | None = None):
        cores = os.cpu_count() or 1
        #: previews the workers send before their full task ends (:func:`full_with_preview`)
        # (a SimpleQueue: ``put`` writes the message before the worker goes on, so it is
        # in the pipe before the task's own result; the UI reads it every poll)
        self._early: Any = mp.get_context("spawn").SimpleQueue()
        super().__init__(workers=workers or max(1, min(cores, 4)), early=self._early)
        self.workers = workers or max(1, min(cores, 4))
        #: openjpeg threads per decode (all cores, at most 8: the last view of an exam uses them all)
        self.threads = threads or min(cores, 8)
        self._prefetch: list[str] = []
        self._waiting: dict[tuple[str, str], int] = {}  # (path, mode) -> sequence number
        self._seq = itertools.count()
        self._running: dict[cf.Future[Any], tuple[str, str]] = {}
        self._previews: dict[str, LoadedView] = {}  # shown previews, until their full view comes
        self.previews_shown = 0
        #: site mode: brings back a file the site cache evicted before it is decoded
        #: (``ready(path)``: True, False while it is fetched, or the fetch's LoadError)
        self.fetcher: Fetcher | None = None
        self._fetch_failed: list[LoadError] = []
        # each worker imports the decode stack now, while the reader is not waiting
        self._warm = [self._pool.submit(warm_up) for _ in range(self.workers)]

    # ---------------------------------------------------------------- requests
    def request(self, path: str | Path, *, preview: bool = True) -> LoadedView | None:
        key = str(path)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if (key, FULL) not in self._waiting and not self._in_flight(key, FULL):
            self._waiting[(key, FULL)] = next(self._seq)
        self._pending[key] = None  # wanted (the base class's record of what is on its way)
        if preview and key not in self._previews and (key, PREVIEW) not in self._waiting \
                and not self._in_flight(key, PREVIEW):
            self._waiting[(key, PREVIEW)] = next(self._seq)
        self._top_up(ON_SCREEN_PREVIEW)  # the rest starts at the next poll, once the open is queued
        return None

    def prefetch(self, paths: Iterable[str]) -> None:
        """Decode ``paths`` (in this order) when nothing on screen waits; replaces the
        previous prefetch list (what is no longer wanted and not started is dropped)."""
        wanted = [str(p) for p in paths]
        keep = set(wanted)
        for path in self._prefetch:
            if path not in keep and path not in self.cache.pinned and path not in self.on_screen:
                self._waiting.pop((path, FULL), None)
                self._waiting.pop((path, PREVIEW), None)
                if not self._in_flight(path, FULL):
                    self._pending.pop(path, None)
                if self.fetcher is not None:
                    self.fetcher.cancel(path)  # its file is no longer wanted either
        self._prefetch = wanted
        for path in wanted:
            if self.cache.get(path) is None and (path, FULL) not in self._waiting \
                    and not self._in_flight(path, FULL):
                self._waiting[(path, FULL)] = next(self._seq)
                self._pending[path] = None

    def _in_flight(self, path: str, mode: str) -> bool:
        return (path, mode) in self._running.values()

    def _rank(self, path: str, mode: str, seq: int) -> tuple[int, int]:
        if path in self.on_screen:
            cls = ON_SCREEN_PREVIEW if mode == PREVIEW else ON_SCREEN
        elif path in self.cache.pinned:
            cls = WITH_EXAM
        else:
            cls = PREFETCH if path in self._prefetch else WITH_EXAM
        return (cls, seq)

    def next_tasks(self) -> list[tuple[str, str]]:
        """The waiting tasks in the order they would start (for tests and the status)."""
        ranked = sorted(self._waiting.items(), key=lambda kv: self._rank(kv[0][0], kv[0][1], kv[1]))
        return [key for key, _seq in ranked]

    def _top_up(self, up_to: int = PREFETCH) -> None:
        """Start waiting tasks, best first, while a worker is free (classes <= ``up_to``)."""
        if len(self._running) >= self.workers or not self._waiting:
            return
        heap = [_Task(self._rank(p, m, s), p, m) for (p, m), s in self._waiting.items()]
        heapq.heapify(heap)
        # the prior and prefetch wait until the views on screen are decoded: they would
        # take the cores of what the reader is waiting for
        screen_busy = any(path in self.on_screen for path, _mode in self._running.values())
        while heap and len(self._running) < self.workers:
            task = heapq.heappop(heap)
            if task.rank[0] > up_to or (task.rank[0] > ON_SCREEN and screen_busy):
                break
            if task.mode == PREVIEW and task.path not in self.on_screen:
                del self._waiting[(task.path, task.mode)]  # no longer on screen: no preview
                continue
            if (task.path, task.mode) not in self._waiting:
                continue  # dropped in this loop, with its other task's failed fetch
            ready = self.fetcher.ready(task.path) if self.fetcher is not None else True
            if ready is False:
                continue  # its file is on its way: it waits, the next task may start
            if isinstance(ready, LoadError):  # the view's error; its other task goes too
                self._waiting.pop((task.path, FULL), None)
                self._waiting.pop((task.path, PREVIEW), None)
                self._pending.pop(task.path, None)
                self._fetch_failed.append(ready)
                continue
            del self._waiting[(task.path, task.mode)]
            early = task.mode == FULL and task.path in self.on_screen and task.path not in self._previews
            future = self._pool.submit(decode_task, task.path, task.mode, self.threads, early)
            self._running[future] = (task.path, task.mode)

    # ---------------------------------------------------------------- results
    def _early_previews(self) -> list[LoadedView]:
        """The previews the workers sent so far, of views still wanted and not shown yet."""
        out: list[LoadedView] = []
        while True:
            try:
                if self._early.empty():
                    return out
                path, payload = self._early.get()
            except (OSError, ValueError, EOFError):  # closed (shut down)
                return out
            view = attach(payload) if isinstance(payload, SharedView) else payload
            if path in self._pending and self.cache.get(path) is None and path not in self._previews:
                self._previews[path] = view
                self.previews_shown += 1
                out.append(view)

    def poll(self) -> list[LoadedView | LoadError]:
        # the finished tasks first, then the queue: a task's early preview was sent before
        # it finished, so it is read here, ahead of its full view
        finished = [f for f in self._running if f.done()]
        results: list[LoadedView | LoadError] = list(self._early_previews())
        results += self._fetch_failed
        self._fetch_failed = []
        for future in finished:
            path, mode = self._running.pop(future)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker is reported, not fatal
                result = LoadError(path, f"worker failed: {type(exc).__name__}: {exc}", "internal-error")
            if isinstance(result, SharedView):
                result = attach(result)
            if mode == PREVIEW:
                if isinstance(result, LoadedView) and self.cache.get(path) is None:
                    self._previews[path] = result
                    self.previews_shown += 1
                    results.append(result)
                continue  # a preview that failed says nothing: the full decode reports
            self._pending.pop(path, None)
            shown = self._previews.pop(path, None)
            if isinstance(result, LoadedView):
                if shown is not None and shown.orientation == result.orientation:
                    # what the reader saw stays put: the same window and fit
                    result = replace(result, auto=shown.auto, breast_box=shown.breast_box)
                self.cache.put(result)
                self._waiting.pop((path, PREVIEW), None)
            results.append(result)
        self._top_up()
        return results

    @property
    def busy(self) -> bool:
        return bool(self._running or self._waiting or self._fetch_failed)

    @property
    def in_flight(self) -> int:
        return sum(1 for f in self._running if f.running())

    def shutdown(self) -> None:
        self._waiting.clear()
        self._pending.clear()
        for future in list(self._running):
            if future.cancel():
                self._running.pop(future)
        for future, _key in list(self._running.items()):
            try:  # finished ones still own a shared-memory block: free it
                result = future.result(timeout=0) if future.done() else None
            except Exception:  # noqa: BLE001
                result = None
            if isinstance(result, SharedView):
                attach(result)
        super().shutdown()
        self._early_previews()  # what was sent and not read: its shared memory goes
        self._early.close()

