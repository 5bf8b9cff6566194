"""Which screen shows which view: the screening hanging placed on the screens (no Qt).

The reading room asks Qt for its screens (``QGuiApplication.screens()``, each one's
available geometry) and passes them here as :class:`Screen` values; :func:`plan_hanging`
returns where the four screening views go. Two layouts:

``single``
    Everything in the main window on its own screen: worklist beside (landscape) or
    above (portrait) the 2x2 hanging, RCC | LCC over RMLO | LMLO.

``span``
    The hanging spreads over the image screens and the main window (worklist, status
    bar, log) stays where it is. On a reading station with two 5 MP portrait
    displays side by side (2048x2560 each) beside a landscape worklist monitor:

    * left display: RCC | LCC, right display: RMLO | LMLO (stacked displays: the CCs
      on the upper one). Each display holds one mirror-image pair, the two breasts
      back to back with their chest walls meeting at the display's centre line, so
      that right and left are compared without a bezel between them.
    * This beats "right breast on the left display, left breast on the right": that
      puts the bezel (2-3 cm) between the chest walls and gives each view a
      landscape 2048x1280 pane, where a portrait-shaped breast is limited by the
      height. A 1024x2560 pane shows a typical breast (CC 100x180 mm, MLO 110x220 mm
      bounding box) at about 0.1 mm per screen pixel instead of 0.14-0.17.
    * All four views share one mm per screen pixel (the CC and the MLO of a breast
      are the same size on both displays).
    * One image screen only (a landscape worklist monitor and one portrait display):
      the 2x2 on that display, each pane portrait-shaped (1024x1280).
    * No second screen: the single layout, with the reason.

The comparison hanging (prior exam) adds the prior of each view: in the main window
to the left of the current views (as before); on a span display in a row above them
(prior RCC | prior LCC over RCC | LCC), so that panes stay portrait-shaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

SLOTS = ("RCC", "LCC", "RMLO", "LMLO")
LAYOUTS = ("single", "span")

#: screens closer than this (pixels) count as touching (some set-ups leave a gap)
ADJACENT_GAP = 64

#: the worklist takes this share of a landscape window's width, or of a portrait one's height
WORKLIST_WIDTH = 0.28
WORKLIST_HEIGHT_RANGE = (0.12, 0.22)


@dataclass(frozen=True)
class Screen:
    """One screen's available area in the virtual desktop (logical pixels)."""

    x: int
    y: int
    width: int
    height: int
    name: str = ""
    primary: bool = False

    @property
    def portrait(self) -> bool:
        return self.height > self.width

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def rect(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class Area:
    """A part of the hanging: a grid of panes on one screen.

    ``in_main`` areas are the main window's own hanging (beside or below its
    worklist); the others are a window of their own covering ``rect``.
    """

    screen: int  # index into the screens given to plan_hanging
    rect: tuple[int, int, int, int]  # x, y, width, height (the screen's available area)
    cells: dict[str, tuple[int, int]]  # slot -> (row, column), current exam
    prior_cells: dict[str, tuple[int, int]]  # slot -> (row, column) in the comparison hanging
    in_main: bool = False

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(s for s in SLOTS if s in self.cells)


@dataclass(frozen=True)
class Placement:
    """Where the main window stays and where the views go."""

    layout: str  # "single" or "span": what was laid out (span falls back to single)
    main: int  # screen index of the main window (worklist, status, log)
    areas: tuple[Area, ...]
    common_scale: bool  # one mm per screen pixel for all four views (else one per view pair)
    reason: str  # one line for the status bar
    screens: tuple[Screen, ...] = field(default=())

    def area_of(self, slot: str) -> Area:
        return next(a for a in self.areas if slot in a.cells)


def _two_by_two(screen: int, rect: tuple[int, int, int, int], in_main: bool) -> Area:
    """RCC | LCC over RMLO | LMLO; the comparison puts the prior pair to the left."""
    cells = {"RCC": (0, 2), "LCC": (0, 3), "RMLO": (1, 2), "LMLO": (1, 3)}
    prior = {"RCC": (0, 0), "LCC": (0, 1), "RMLO": (1, 0), "LMLO": (1, 1)}
    return Area(screen, rect, cells, prior, in_main)


def _pair(screen: int, rect: tuple[int, int, int, int], view: str, in_main: bool) -> Area:
    """One view's mirror-image pair, R | L back to back; the prior pair in a row above."""
    return Area(screen, rect, {f"R{view}": (1, 0), f"L{view}": (1, 1)},
                {f"R{view}": (0, 0), f"L{view}": (0, 1)}, in_main)


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def beside(a: Screen, b: Screen) -> bool:
    """``b`` directly right of ``a`` (touching, or a small gap), sharing most of the height."""
    return abs(b.x - a.right) <= ADJACENT_GAP and \
        _overlap(a.y, a.bottom, b.y, b.bottom) >= 0.5 * min(a.height, b.height)


def above(a: Screen, b: Screen) -> bool:
    """``a`` directly above ``b``, sharing most of the width."""
    return abs(b.y - a.bottom) <= ADJACENT_GAP and \
        _overlap(a.x, a.right, b.x, b.right) >= 0.5 * min(a.width, b.width)


def _ordered_pair(screens: list[Screen], i: int, j: int) -> tuple[int, int] | None:
    """(first, second) when the two screens touch: left then right, or upper then lower."""
    a, b = screens[i], screens[j]
    if beside(a, b) or above(a, b):
        return i, j
    if beside(b, a) or above(b, a):
        return j, i
    return None


def main_screen(screens: list[Screen], window_screen: int | None = None) -> int:
    """The screen of the main window: the one it is on, else the primary, else the first."""
    if window_screen is not None and 0 <= window_screen < len(screens):
        return window_screen
    return next((i for i, s in enumerate(screens) if s.primary), 0)


def plan_hanging(screens: list[Screen], layout: str = "single", window_screen: int | None = None) -> Placement:
    """Place the four screening views on ``screens`` for ``layout`` ("single" or
    "span"); ``window_screen`` is the index of the screen the main window is on.

    Unknown layouts and screens of no size are treated as "single" and ignored; with
    no usable screen at all the hanging stays in the main window.
    """
    usable = [i for i, s in enumerate(screens) if s.width > 0 and s.height > 0]
    if not usable:
        return Placement("single", 0, (_two_by_two(0, (0, 0, 0, 0), True),), False,
                         "no screen reported: the hanging stays in the window", tuple(screens))
    main = main_screen(screens, window_screen)
    if main not in usable:
        main = usable[0]
    single = Placement("single", main, (_two_by_two(main, screens[main].rect, True),), False,
                       "hanging in the main window", tuple(screens))
    if layout != "span":
        return single
    others = [i for i in usable if i != main]
    if not others:
        return Placement("single", main, single.areas, False,
                         "one screen: the hanging stays in the main window", tuple(screens))

    # pairs of touching screens for the two view pairs: two image screens, or (a station
    # with two portrait displays and no worklist monitor) the main window's own hanging
    # and the display beside it; two portrait displays first, then not the main one
    candidates = [p for i, j in combinations(others, 2) if (p := _ordered_pair(screens, i, j))]
    candidates += [p for o in others if screens[main].portrait and screens[o].portrait
                   and (p := _ordered_pair(screens, main, o))]

    def rank(pair: tuple[int, int]) -> tuple[bool, bool, int]:
        a, b = screens[pair[0]], screens[pair[1]]
        return (a.portrait and b.portrait, main not in pair, min(a.area, b.area))

    if candidates:
        first, second = max(candidates, key=rank)
        areas = tuple(_pair(s, screens[s].rect, view, s == main) for s, view in ((first, "CC"), (second, "MLO")))
        return Placement("span", main, areas, True,
                         f"CC views on {_name(screens, first)}, MLO views on {_name(screens, second)}",
                         tuple(screens))
    best = max(others, key=lambda i: (screens[i].portrait, screens[i].area))
    return Placement("span", main, (_two_by_two(best, screens[best].rect, False),), False,
                     f"hanging on {_name(screens, best)}, worklist on {_name(screens, main)}", tuple(screens))


def _name(screens: list[Screen], i: int) -> str:
    s = screens[i]
    return f"{s.name or f'screen {i + 1}'} ({s.width}x{s.height})"


def worklist_split(width: int, height: int) -> tuple[str, float]:
    """Where the worklist goes in a main window of ``width`` x ``height``, and its share.

    Landscape: on the left, 28 % of the width. Portrait (taller by 15 % or more): above
    the hanging, as thin as keeps the hanging at least as tall as it is wide, so that
    each of the 2x2 panes stays portrait-shaped like the breast it shows (on a
    2048x2560 display: 20 %, panes about 1024x1024 and taller), between 12 % and 22 %.
    """
    if height <= width * 1.15:
        return "left", WORKLIST_WIDTH
    low, high = WORKLIST_HEIGHT_RANGE
    return "top", min(max(1.0 - width / max(height, 1), low), high)


def screen_at(screens: list[Screen], x: int, y: int) -> int | None:
    """Index of the screen holding the point (a window's centre), else None."""
    return next((i for i, s in enumerate(screens) if s.x <= x < s.right and s.y <= y < s.bottom), None)
