"""Which views to decode ahead of the reader (no Qt).

The next ``N`` exams in worklist order that this reading room has not signed yet, each
with its most recent prior (the comparison the reader will open), within the view
cache's memory budget: what is pinned on screen counts first, and a view is planned
only while the estimated size of everything planned still fits.  The loader decodes the
plan after whatever is on screen (see :mod:`mammotriage.viewer.decode_pool`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mammotriage.dicom.hanging import hang
from mammotriage.store.archive import ExamRecord, ImageRecord
from mammotriage.store.priors import prior_of

__all__ = ["DEFAULT_EXAMS", "prefetch_paths", "view_bytes"]

#: how many exams ahead are decoded
DEFAULT_EXAMS = 2


def view_bytes(image: ImageRecord) -> int:
    """Estimated bytes of a decoded view: 16-bit pixels plus a 2x2 pyramid (4/3)."""
    return int(image.rows) * int(image.columns) * 2 * 4 // 3


def prefetch_paths(ahead: Sequence[ExamRecord], reads: Mapping[str, Any], priors: dict[str, list[ExamRecord]], cache: Any,
                   n: int = DEFAULT_EXAMS) -> list[str]:
    """Paths to decode ahead, best first.

    ``ahead`` are the worklist's exams after the open one, in worklist order; ``reads``
    the read state per exam key (signed exams are skipped); ``priors`` the linked priors
    (``store.priors.link_priors``); ``cache`` the loader's :class:`ViewCache` (its
    budget, what is in it and what is pinned).
    """
    pinned = sum(v.nbytes for v in (cache.get(p) for p in cache.pinned) if v is not None)
    room = cache.max_bytes - pinned
    planned: list[str] = []
    taken = 0
    exams = 0
    for exam in ahead:
        if exams >= n:
            break
        state = reads.get(exam.exam_key)
        if state is not None and getattr(state, "state", "") == "signed":
            continue
        exams += 1
        group = [exam]
        prior = prior_of(exam, priors)
        if prior is not None:
            group.append(prior)
        for member in group:
            slots, _extras = hang(member.images)
            for image in slots.values():
                if image.path in planned or image.path in cache.pinned:
                    continue
                size = view_bytes(image)
                if taken + size > room:
                    return planned
                taken += size
                planned.append(image.path)
    return planned
