"""The 4-up screening hanging: RCC | LCC over RMLO | LMLO, each view pair at one physical scale.

The comparison hanging (C) adds the most recent prior exam to the left of the current
one: prior RCC | prior LCC | RCC | LCC over the MLOs. A prior pane shares its current
counterpart's :class:`PaneState`, so window/level, inversion, zoom and pan are linked
between current and prior by construction; prior panes are read-only.

Spanning screens (``ui/screen_windows.py``) moves panes into windows on other screens;
they stay this view's panes, on one mm scale (``common_scale``).
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QGridLayout, QWidget

from mammotriage.dicom.voi import default_window
from mammotriage.ui.image_pane import FIT_FILL, ImagePane
from mammotriage.viewer.loader import LoadedView
from mammotriage.viewer.state import HangingState, WindowSetting


class HangingView(QWidget):
    """Four panes driven by a :class:`HangingState`; same mm per screen pixel in all."""

    status = Signal(str)

    def __init__(self, state: HangingState | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state or HangingState()
        self.panes: dict[str, ImagePane] = {}
        self.prior_panes: dict[str, ImagePane] = {}  # the comparison hanging's prior views
        self.common_scale = False  # one mm scale for all four views (set when spanning screens)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        palette = self.palette()
        palette.setColor(QPalette.ColorRole.Window, QColor(0, 0, 0))  # no bright seam on the centre line
        self.setPalette(palette)
        self.setAutoFillBackground(True)
        for i, slot in enumerate(self.state.slots):
            for prior in (False, True):
                pane = ImagePane(slot, self.state.panes[slot], self, hanging=self.state, read_only=prior)
                pane.view_changed.connect(self.state.set_view)
                pane.window_dragged.connect(self._on_window_drag)
                pane.fullscreen_requested.connect(self.state.toggle_fullscreen)
                layout.addWidget(pane, i // 2, i % 2 + (0 if prior else 2))
                (self.prior_panes if prior else self.panes)[slot] = pane
                if prior:
                    pane.setAccessibleName(f"pane {slot} prior")
                    pane.setVisible(False)
        self.state.changed.connect(self._on_state)

    def all_panes(self) -> list[ImagePane]:
        return [*self.panes.values(), *self.prior_panes.values()]

    def set_prior_view(self, slot: str, view: LoadedView | None, message: str = "") -> None:
        self.prior_panes[slot].set_view(view, message)
        self._update_scale()

    def set_compare(self, on: bool) -> None:
        """Show or hide the prior exam beside the current one (dates in the corner text)."""
        self.state.compare = on
        for pane in self.panes.values():
            pane.date_label = "CURRENT" if on else ""
        for pane in self.prior_panes.values():
            pane.date_label = "PRIOR"
        self._layout_panes()

    # ----------------------------------------------------------------- content
    def clear(self, message: str = "") -> None:
        for pane in self.panes.values():
            pane.set_view(None, message)

    def set_loading(self, slot: str) -> None:
        self.panes[slot].set_view(None, "loading ...")

    def set_missing(self, slot: str) -> None:
        self.panes[slot].set_view(None, f"{slot}: view not in this exam")

    def set_error(self, slot: str, message: str) -> None:
        self.panes[slot].set_error(f"{slot}: {message}")

    def set_view(self, slot: str, view: LoadedView) -> None:
        pane = self.panes[slot]
        pane.set_view(view)
        state = self.state.panes[slot]
        if state.window is None:
            state.set_window(WindowSetting.from_preset(default_window(view.meta) or view.auto))
        self._update_scale()

    def _update_scale(self) -> None:
        """Common physical scale per view: the two breasts of a view (RCC and LCC, RMLO
        and LMLO) share their mm per screen pixel, chosen so that the larger breast's
        bounding box fits its pane; in full screen the enlarged view alone decides (and,
        spanning screens, the other display's pair keeps its own)."""
        needed: dict[str, float] = {}
        for pane in self.all_panes():
            slot = pane.slot
            if pane.view is None or pane.view.meta.spacing is None or not self._in_view(pane):
                continue
            x0, y0, x1, y1 = pane.fit_box()
            sp = pane.view.meta.spacing
            group = self.scale_group(slot)
            needed[group] = max(needed.get(group, 0.0), (y1 - y0) * sp.row_mm / max(pane.height() * FIT_FILL, 1),
                                (x1 - x0) * sp.col_mm / max(pane.width() * FIT_FILL, 1))
        for pane in self.all_panes():
            pane.mm_per_px = needed.get(self.scale_group(pane.slot)) or (max(needed.values()) if needed else None)
            pane.update()

    def scale_group(self, slot: str) -> str:
        """Panes that share one physical scale: the same view of both breasts; all four
        views when the hanging spans screens (``common_scale``); the enlarged view alone."""
        if slot == self.state.fullscreen:
            return "full"
        return "all" if self.common_scale else slot[1:]

    def _in_view(self, pane: ImagePane) -> bool:
        """Whether the layout shows ``pane``: priors only when comparing; in full screen
        the enlarged view (and its prior), and the panes on other screens."""
        if pane.read_only and not self.state.compare:
            return False
        full = self.state.fullscreen
        return full is None or pane.slot == full or pane.parentWidget() is not self.panes[full].parentWidget()

    def refit_scale(self) -> None:
        """Recompute the common scale (a pane on another screen was resized)."""
        self._update_scale()

    def relayout(self) -> None:
        """Visibility and fit again, after the panes moved between screens."""
        self._layout_panes()

    def _layout_panes(self) -> None:
        """Visibility after a change of full screen or comparison; then refit (F refits:
        the enlarged view, or the hanging back from it, fits its breast)."""
        for pane in self.all_panes():
            pane.setVisible(self._in_view(pane))
        for holder in {pane.parentWidget() for pane in self.all_panes()}:  # this view, or a screen window
            layout = holder.layout() if holder is not None else None
            if layout is not None:
                layout.activate()
        self.fit()

    def fit(self) -> None:
        """Back to the initial fit: zoom 1 and no pan in every pane."""
        for st in self.state.panes.values():
            st.set_view(1.0, (0.0, 0.0))
        self._update_scale()

    def resizeEvent(self, event) -> None:  # Qt API
        super().resizeEvent(event)
        self._update_scale()

    # ----------------------------------------------------------------- actions
    def _on_state(self, what: str) -> None:
        if what == "text":
            for pane in self.all_panes():
                pane.show_text = self.state.show_text
                pane.update()
        elif what == "fullscreen":
            self._layout_panes()
        elif what == "link":
            self.status.emit(f"zoom/pan link: {self.state.link_mode}")
        elif what == "tool":
            self.status.emit({"ruler": "ruler: left-drag to measure",
                              "draw": f"draw a missed finding ({self.state.draw_shape}): left-drag",
                              }.get(self.state.tool, "pan: left-drag"))
        elif what in ("ai", "selection"):
            for pane in self.all_panes():
                pane.update()
        elif what == "magnifier":
            self.status.emit(f"magnifier {'on' if self.state.magnifier else 'off'}")
            for pane in self.all_panes():
                pane.update()

    def _on_window_drag(self, slot: str, d_center: float, d_width: float) -> None:
        targets = list(self.state.slots) if self.state.link_mode == "all" else [slot]
        for s in targets:
            self.state.panes[s].adjust_window(d_center, d_width)

    def apply_preset(self, index: int) -> None:
        """Keys 1-5: the file's n-th preset in every pane (each from its own file)."""
        names = []
        for slot, pane in self.panes.items():
            if pane.view is None:
                continue
            presets = pane.view.meta.presets
            if index < len(presets):
                self.state.panes[slot].set_window(WindowSetting.from_preset(presets[index]))
                names.append(presets[index].explanation)
            elif index == 0:
                self.state.panes[slot].set_window(WindowSetting.from_preset(pane.view.auto))
                names.append("AUTO")
        self.status.emit(f"preset {index + 1}: {', '.join(sorted(set(names))) or 'none in these files'}")

    def reset(self) -> None:
        for slot, pane in self.panes.items():
            st = self.state.panes[slot]
            st.set_invert(False)
            st.set_view(1.0, (0.0, 0.0))
            st.clear_rulers()
            if pane.view is not None:
                st.set_window(WindowSetting.from_preset(default_window(pane.view.meta) or pane.view.auto))
        self.status.emit("reset")

    def toggle_invert(self) -> None:
        invert = not all(st.invert for st in self.state.panes.values())
        for st in self.state.panes.values():
            st.set_invert(invert)
