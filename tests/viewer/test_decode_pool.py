"""The progressive loader: previews, shared-memory handover, priorities, prefetch policy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mammotriage.phantom import generate_exam, write_demo_set
from mammotriage.viewer.decode_pool import (
    ON_SCREEN,
    PREFETCH,
    PREVIEW,
    ProgressiveLoader,
    attach,
    share,
)
from mammotriage.viewer.loader import LoadedView, ViewCache, load_view
from mammotriage.viewer.prefetch import prefetch_paths, view_bytes

pytest.importorskip("glymur")


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exam")
    return generate_exam(8, rows=1536, columns=1248, bits_stored=16, transfer_syntax="jpeg2000").save(folder)


def _collect(loader: ProgressiveLoader, want: int, timeout: float = 300.0) -> list:
    out: list = []
    end = time.monotonic() + timeout
    while len([r for r in out if not getattr(r, "preview", False)]) < want:
        assert time.monotonic() < end, "decode did not finish"
        out.extend(loader.poll())
        time.sleep(0.01)
    return out


def test_share_and_attach_round_trip_without_pickling_pixels(exam) -> None:
    import pickle

    view = load_view(str(exam["LCC"]))
    shared = share(view)
    assert len(pickle.dumps(shared)) < 100_000 < view.nbytes  # the pixels are not in the message
    back = attach(shared)
    assert [lv.shape for lv in back.levels] == [lv.shape for lv in view.levels]
    assert all(np.array_equal(a, b) for a, b in zip(back.levels, view.levels, strict=True))
    with pytest.raises(FileNotFoundError):  # unlinked once mapped
        attach(shared)


def test_open_paints_a_preview_then_the_identical_full_view(exam) -> None:
    loader = ProgressiveLoader(workers=2, threads=1)
    try:
        paths = [str(exam[s]) for s in ("RCC", "LCC")]
        loader.on_screen = set(paths)
        loader.cache.pinned = set(paths)
        for path in paths:
            assert loader.request(path) is None
        results = _collect(loader, 2)
        for path in paths:
            mine = [r for r in results if isinstance(r, LoadedView) and r.path == path]
            assert [r.preview for r in mine] == [True, False]  # preview first, then full
            preview, full = mine
            reference = load_view(path)
            assert preview.shape == full.shape == reference.shape  # same geometry
            assert preview.levels[0].shape[0] <= 640 < full.levels[0].shape[0]
            assert np.array_equal(full.levels[0], reference.levels[0])
            assert full.pixel_sha256 == reference.pixel_sha256 and preview.pixel_sha256 == ""
            assert full.auto == preview.auto and full.breast_box == preview.breast_box  # no jump
            assert loader.request(path) is full  # cached
    finally:
        loader.shutdown()


def test_an_open_jumps_pending_prefetch(exam, tmp_path) -> None:
    other = generate_exam(9, rows=512, columns=416, transfer_syntax="jpeg2000").save(tmp_path)
    loader = ProgressiveLoader(workers=1, threads=1)
    try:
        loader.prefetch([str(p) for p in other.values()])
        waiting = loader.next_tasks()
        assert waiting and all(mode == "full" for _p, mode in waiting)
        opened = str(exam["RMLO"])
        loader.on_screen = {opened}
        loader.cache.pinned = {opened}
        loader.request(opened)
        order = loader.next_tasks() + [v for v in loader._running.values()]
        first = loader.next_tasks()[0] if loader.next_tasks() else None
        assert (opened, PREVIEW) in order
        assert first is not None and first[0] == opened  # ahead of every prefetch
        assert loader._rank(opened, "full", 10**9) < loader._rank(str(other["LCC"]), "full", 0)
        assert loader._rank(opened, "full", 0)[0] == ON_SCREEN
        assert loader._rank(str(other["LCC"]), "full", 0)[0] == PREFETCH
        loader.prefetch([])  # no longer wanted: dropped before it starts
        assert all(p == opened for p, _m in loader.next_tasks())
        _collect(loader, 1)
    finally:
        loader.shutdown()


def test_prefetch_policy_takes_unread_exams_in_order_with_priors_within_budget(tmp_path) -> None:
    from mammotriage.store import Archive
    from mammotriage.store.assessment import ReadState
    from mammotriage.store.priors import link_priors

    write_demo_set(tmp_path / "demo", 4, seed=3, priors=1, rows=256, columns=208)
    archive = Archive(tmp_path / "a.sqlite")
    archive.import_paths([tmp_path / "demo"])
    exams = archive.exams()
    priors = link_priors(exams)
    current = [e for e in exams if priors.get(e.exam_key)] + [e for e in exams if not priors.get(e.exam_key)]
    cache = ViewCache()
    plan = prefetch_paths(current, {}, priors, cache, n=2)
    first, second = current[0], current[1]
    prior = priors[first.exam_key][0]
    expected = [i.path for i in first.images] + [i.path for i in prior.images] + [i.path for i in second.images]
    assert sorted(plan) == sorted(dict.fromkeys(expected))
    assert plan.index(first.images[0].path) < plan.index(second.images[0].path)
    # a signed exam is skipped; a small budget stops the plan
    signed = {first.exam_key: ReadState("signed", "dr a", "now")}
    assert not set(plan_i.path for plan_i in first.images) & set(prefetch_paths(current, signed, priors, cache, n=1))
    small = ViewCache(max_bytes=view_bytes(first.images[0]) * 3)
    assert len(prefetch_paths(current, {}, priors, small, n=2)) == 3


def test_workers_keep_the_decode_limits_and_refuse_a_lying_header(exam, tmp_path) -> None:
    import resource

    import pydicom

    from mammotriage.dicom.limits import DECODE_WORKER_LIMIT

    ds = pydicom.dcmread(exam["LCC"])
    ds.Rows = 768  # the codestream's SIZ still says 1536
    lie = tmp_path / "lie.dcm"
    ds.save_as(lie)
    loader = ProgressiveLoader(workers=1, threads=1)
    try:
        soft, _hard = loader._pool.submit(resource.getrlimit, resource.RLIMIT_AS).result(timeout=120)
        assert soft == DECODE_WORKER_LIMIT
        loader.on_screen = {str(lie)}
        loader.request(str(lie))
        results = _collect(loader, 1)
        errors = [r for r in results if r.path == str(lie)]
        assert errors and all(not isinstance(r, LoadedView) for r in errors)
        assert errors[-1].code == "corrupt-pixel-data" and "refused before decoding" in errors[-1].reason
    finally:
        loader.shutdown()


def test_prior_and_prefetch_wait_while_the_views_on_screen_decode(exam, tmp_path) -> None:
    other = generate_exam(10, rows=512, columns=416, transfer_syntax="jpeg2000").save(tmp_path)
    loader = ProgressiveLoader(workers=2, threads=1)
    try:
        opened = str(exam["LMLO"])
        prior = str(other["RCC"])
        loader.on_screen = {opened}
        loader.cache.pinned = {opened, prior}
        loader.prefetch([str(p) for p in other.values() if str(p) != prior])
        loader.request(opened)
        loader.request(prior)  # the open exam's prior
        loader.poll()  # tops up: a worker is free, but the view on screen is still decoding
        running = list(loader._running.values())
        assert running and all(path == opened for path, _mode in running)
        results = _collect(loader, 1 + len(other))  # then the prefetch runs
        assert {r.path for r in results if not r.preview} == {opened} | {str(p) for p in other.values()}
    finally:
        loader.shutdown()


@pytest.fixture(scope="module", params=["explicit", "rle"])
def other_syntax(request, tmp_path_factory) -> dict[str, Path]:
    """An exam whose files have no reduced resolutions of their own (uncompressed, RLE)."""
    folder = tmp_path_factory.mktemp(f"exam-{request.param}")
    return generate_exam(8, rows=1536, columns=1248, bits_stored=16, transfer_syntax=request.param).save(folder)


def test_other_syntaxes_get_the_first_level_early_then_the_identical_full_view(other_syntax) -> None:
    loader = ProgressiveLoader(workers=2, threads=1)
    try:
        paths = [str(other_syntax[s]) for s in ("RCC", "LCC")]
        prefetched = str(other_syntax["RMLO"])
        loader.on_screen = set(paths)
        loader.cache.pinned = set(paths)
        for path in paths:
            assert loader.request(path) is None
        loader.prefetch([prefetched])
        results = _collect(loader, 3)
        for path in paths:
            mine = [r for r in results if isinstance(r, LoadedView) and r.path == path]
            assert [r.preview for r in mine] == [True, False], path  # the first level first, then full
            preview, full = mine
            reference = load_view(path)
            assert preview.shape == full.shape == reference.shape  # the full image's geometry
            assert preview.levels[0].shape == (384, 312) and full.levels[0].shape == (1536, 1248)
            assert np.array_equal(full.levels[0], reference.levels[0])
            assert full.pixel_sha256 == reference.pixel_sha256 and preview.pixel_sha256 == ""
            # no jump, and the window and fit of the view as it was before it had a preview
            assert preview.auto == full.auto == reference.auto
            assert preview.breast_box == full.breast_box == reference.breast_box is not None
            assert preview.orientation == full.orientation == reference.orientation
            assert np.array_equal(preview.levels[0], reference.levels[0][::4, ::4])  # its first level
        # a view that is not on screen gets no preview: only its full view
        assert [r.preview for r in results if r.path == prefetched] == [False]
        assert loader.previews_shown == 2
    finally:
        loader.shutdown()
