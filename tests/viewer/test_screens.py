"""The hanging's placement on the screens (pure: screens in, placement out)."""

from __future__ import annotations

import pytest

from mammotriage.viewer.screens import SLOTS, Screen, plan_hanging, worklist_split

FIVE_MP = (2048, 2560)


def five_mp(x: int, y: int = 0, name: str = "") -> Screen:
    return Screen(x, y, *FIVE_MP, name=name)


def cells(placement, slot):
    area = placement.area_of(slot)
    return area.screen, area.cells[slot]


def assert_complete(placement) -> None:
    """Every slot placed exactly once, current and prior cells distinct within an area."""
    placed = [s for a in placement.areas for s in a.cells]
    assert sorted(placed) == sorted(SLOTS)
    for area in placement.areas:
        assert set(area.prior_cells) == set(area.cells)
        everything = list(area.cells.values()) + list(area.prior_cells.values())
        assert len(set(everything)) == len(everything)


def assert_mirror_image(placement) -> None:
    """Each view's right breast one column left of its left breast, in the same row and
    area: the chest walls face each other at the pair's centre line."""
    for view in ("CC", "MLO"):
        (sr, (rr, rc)), (sl, (lr, lc)) = cells(placement, f"R{view}"), cells(placement, f"L{view}")
        assert sr == sl and rr == lr and lc == rc + 1


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080), (2560, 1440), FIVE_MP, (1080, 1920)])
@pytest.mark.parametrize("layout", ["single", "span", "nonsense"])
def test_one_screen_keeps_the_2x2_in_the_main_window(size, layout) -> None:
    placement = plan_hanging([Screen(0, 0, *size, primary=True)], layout)
    assert placement.layout == "single" and placement.main == 0 and not placement.common_scale
    (area,) = placement.areas
    assert area.in_main and area.screen == 0
    assert_complete(placement)
    assert_mirror_image(placement)
    # CC pair over MLO pair
    assert area.cells["RCC"][0] < area.cells["RMLO"][0]
    if layout == "span":
        assert "one screen" in placement.reason


def test_two_5mp_portrait_displays_beside_a_landscape_worklist_monitor() -> None:
    screens = [Screen(0, 0, 1920, 1080, "worklist", primary=True), five_mp(1920, name="left 5MP"),
               five_mp(3968, name="right 5MP")]
    placement = plan_hanging(screens, "span")
    assert placement.layout == "span" and placement.main == 0 and placement.common_scale
    assert_complete(placement)
    assert_mirror_image(placement)
    assert {cells(placement, s)[0] for s in ("RCC", "LCC")} == {1}  # CCs on the left display
    assert {cells(placement, s)[0] for s in ("RMLO", "LMLO")} == {2}
    assert not any(a.in_main for a in placement.areas)  # the main window keeps only the worklist
    assert placement.area_of("RCC").rect == (1920, 0, 2048, 2560)
    assert "left 5MP" in placement.reason and "right 5MP" in placement.reason
    # single-window layout on the same station: the 2x2 stays in the main window
    single = plan_hanging(screens, "single")
    assert single.layout == "single" and single.areas[0].in_main and single.areas[0].screen == 0


def test_the_worklist_monitor_on_the_right_or_listed_last_changes_nothing() -> None:
    screens = [five_mp(0), five_mp(2048), Screen(4096, 0, 1920, 1200, primary=True)]
    placement = plan_hanging(screens, "span")
    assert placement.main == 2
    assert cells(placement, "RCC")[0] == 0 and cells(placement, "LMLO")[0] == 1
    # the order Qt lists the screens in does not decide left and right
    placement = plan_hanging(list(reversed(screens)), "span")
    assert placement.main == 0
    assert cells(placement, "RCC")[0] == 2 and cells(placement, "LMLO")[0] == 1


def test_a_negative_x_origin_display_left_of_the_primary() -> None:
    screens = [Screen(0, 0, 1920, 1080, primary=True), five_mp(-4096), five_mp(-2048)]
    placement = plan_hanging(screens, "span")
    assert placement.area_of("RCC").rect[0] == -4096 and placement.area_of("RMLO").rect[0] == -2048
    assert_mirror_image(placement)


def test_two_portrait_displays_and_no_worklist_monitor_share_the_main_window() -> None:
    screens = [five_mp(0, name="A"), five_mp(2048, name="B")]
    placement = plan_hanging(screens, "span", window_screen=1)
    assert placement.layout == "span" and placement.main == 1 and placement.common_scale
    cc, mlo = placement.area_of("RCC"), placement.area_of("RMLO")
    assert (cc.screen, mlo.screen) == (0, 1)
    assert mlo.in_main and not cc.in_main  # the MLO pair below the worklist, in the main window
    assert_mirror_image(placement)


def test_portrait_and_landscape_put_the_2x2_on_the_portrait_display() -> None:
    screens = [Screen(0, 0, 1920, 1080, primary=True), five_mp(1920)]
    placement = plan_hanging(screens, "span")
    (area,) = placement.areas
    assert area.screen == 1 and not area.in_main and placement.layout == "span"
    assert not placement.common_scale  # one screen: each view pair at its own best scale
    assert_complete(placement)
    assert_mirror_image(placement)
    # the main window on the portrait display: the 2x2 goes to the other screen
    placement = plan_hanging(screens, "span", window_screen=1)
    assert placement.main == 1 and placement.areas[0].screen == 0


def test_stacked_screens_put_the_cc_pair_on_the_upper_one() -> None:
    screens = [Screen(0, 0, 1366, 768, primary=True), Screen(1366, 0, 1920, 1080, "upper"),
               Screen(1366, 1080, 1920, 1080, "lower")]
    placement = plan_hanging(screens, "span")
    assert cells(placement, "RCC")[0] == 1 and cells(placement, "RMLO")[0] == 2
    assert_mirror_image(placement)
    assert_complete(placement)


def test_a_portrait_pair_wins_over_a_landscape_pair() -> None:
    screens = [Screen(0, 0, 1366, 768, primary=True), Screen(0, 768, 1920, 1080), Screen(1920, 768, 1920, 1080),
               five_mp(4000), five_mp(6048)]
    placement = plan_hanging(screens, "span")
    assert {a.screen for a in placement.areas} == {3, 4}


def test_screens_that_do_not_touch_are_not_paired() -> None:
    screens = [Screen(0, 0, 1920, 1080, primary=True), five_mp(3000), five_mp(6000)]
    placement = plan_hanging(screens, "span")
    (area,) = placement.areas  # the 2x2 on one of them, no pair split by a gap
    assert area.screen in (1, 2) and len(area.cells) == 4


def test_bad_screen_lists_never_crash() -> None:
    assert plan_hanging([], "span").areas[0].in_main
    placement = plan_hanging([Screen(0, 0, 0, 0), Screen(0, 0, 1366, 768)], "span", window_screen=0)
    assert placement.main == 1 and placement.layout == "single"
    assert plan_hanging([Screen(0, 0, 1920, 1080)], "span", window_screen=7).main == 0


def test_prior_cells_keep_span_panes_portrait_shaped() -> None:
    screens = [Screen(0, 0, 1920, 1080, primary=True), five_mp(1920), five_mp(3968)]
    area = plan_hanging(screens, "span").area_of("LCC")
    # prior pair in the row above the current pair: two rows of two on 2048x2560
    assert area.prior_cells["LCC"] == (0, 1) and area.cells["LCC"] == (1, 1)


@pytest.mark.parametrize(("size", "side", "share"), [
    ((1366, 768), "left", 0.28), ((1920, 1080), "left", 0.28), ((1000, 1100), "left", 0.28),
    (FIVE_MP, "top", 0.2), ((1080, 1920), "top", 0.22), ((1500, 1800), "top", 0.167)])
def test_worklist_split(size, side, share) -> None:
    where, got = worklist_split(*size)
    assert where == side and got == pytest.approx(share, abs=0.01)
    if where == "top":  # the hanging under it stays at least about as tall as wide
        w, h = size
        assert h * (1 - got) >= 0.85 * w


def test_screen_at_finds_the_window_centre() -> None:
    from mammotriage.viewer.screens import screen_at

    screens = [Screen(0, 0, 1920, 1080), five_mp(-2048), five_mp(1920)]
    assert screen_at(screens, 960, 540) == 0
    assert screen_at(screens, -10, 2000) == 1
    assert screen_at(screens, 1920, 0) == 2
    assert screen_at(screens, 99999, 0) is None


def test_the_placement_module_loads_without_qt() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, mammotriage.viewer.screens; "
            "sys.exit(1 if any(m in sys.modules for m in ('PySide6', 'torch')) else 0)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "app"))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0
