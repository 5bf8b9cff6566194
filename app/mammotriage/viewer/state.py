"""Viewer state without Qt (napari style): plain objects that emit events.

Widgets subscribe to these events and redraw; tests can change the state and check
the widgets, or drive the widgets and check the state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mammotriage.dicom.image import WindowPreset
from mammotriage.dicom.voi import Window


class Signal:
    """A minimal synchronous event: ``connect(callback)``, ``emit(*args)``."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []

    def connect(self, callback: Callable[..., None]) -> None:
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[..., None]) -> None:
        self._callbacks.remove(callback)

    def emit(self, *args: object) -> None:
        for callback in list(self._callbacks):
            callback(*args)


@dataclass(frozen=True)
class WindowSetting:
    """The window a pane shows: either a file preset (by index) or explicit values."""

    center: float
    width: float
    function: str = "LINEAR"
    explanation: str = ""
    preset: WindowPreset | None = None  # set when showing a VOI LUT table preset

    @property
    def voi(self) -> Window | WindowPreset:
        if self.preset is not None and self.preset.is_lut:
            return self.preset
        return Window(self.center, self.width, self.function, self.explanation)

    @classmethod
    def from_preset(cls, preset: Window | WindowPreset) -> WindowSetting:
        if isinstance(preset, WindowPreset) and preset.lut is not None:
            # a table has no centre/width: remember an equivalent linear window for dragging
            lo = preset.first_mapped
            hi = preset.first_mapped + len(preset.lut) - 1
            return cls(center=(lo + hi) / 2, width=max(hi - lo, 1), function="LINEAR",
                       explanation=preset.explanation, preset=preset)
        if preset.center is None or preset.width is None:
            raise ValueError(f"window {preset.explanation!r} has neither a table nor a centre and width")
        return cls(center=float(preset.center), width=float(preset.width), function=preset.function,
                   explanation=preset.explanation)


class PaneState:
    """Display state of one pane: window, inversion, zoom and pan."""

    def __init__(self) -> None:
        self.window: WindowSetting | None = None
        self.invert = False
        self.zoom = 1.0  # relative to the common "fit" scale of the hanging
        self.pan = (0.0, 0.0)  # screen pixels
        #: ruler lines in stored-image coordinates (x0, y0, x1, y1)
        self.rulers: list[tuple[float, float, float, float]] = []
        self.changed = Signal()

    def set_window(self, window: WindowSetting) -> None:
        if window != self.window:
            self.window = window
            self.changed.emit("window")

    def adjust_window(self, d_center: float, d_width: float) -> None:
        """Relative window/level change (a right-drag); leaves any VOI LUT table."""
        if self.window is None:
            return
        function = self.window.function
        width = max(1.0 if function == "LINEAR" else 1e-3, self.window.width + d_width)
        self.set_window(WindowSetting(self.window.center + d_center, width, function, "CUSTOM"))

    def set_invert(self, invert: bool) -> None:
        if invert != self.invert:
            self.invert = invert
            self.changed.emit("invert")

    def add_ruler(self, line: tuple[float, float, float, float]) -> None:
        self.rulers.append(tuple(float(v) for v in line))  # type: ignore[arg-type]
        self.changed.emit("rulers")

    def clear_rulers(self) -> None:
        if self.rulers:
            self.rulers.clear()
            self.changed.emit("rulers")

    def set_view(self, zoom: float, pan: tuple[float, float]) -> None:
        zoom = float(min(max(zoom, 0.1), 40.0))
        if zoom != self.zoom or pan != self.pan:
            self.zoom, self.pan = zoom, (float(pan[0]), float(pan[1]))
            self.changed.emit("view")


class HangingState:
    """The four screening panes plus what links them."""

    LINK_MODES = ("all", "pair", "none")

    def __init__(self, slots: tuple[str, ...] = ("RCC", "LCC", "RMLO", "LMLO")):
        self.slots = slots
        self.panes = {slot: PaneState() for slot in slots}
        self.link_mode = "all"
        self.show_text = True
        self.fullscreen: str | None = None
        self.compare = False  # the comparison hanging: the prior exam beside the current one
        self.tool = "pan"  # left-drag tool: "pan", "ruler" or "draw"
        self.draw_shape = "box"  # "box" or "ellipse" for the draw tool
        self.selected: tuple[str, str] | None = None  # (slot, label id)
        self.magnifier = False
        self.magnifier_factor = 3.0
        # AI overlays (automation-bias controls)
        self.reading_mode = "on demand"  # or "after read"
        self.ai_requested = False  # the reader asked to see AI for this exam
        self.initial_read_done = False  # the reader recorded an initial assessment
        self.show_map = True
        self.map_opacity = 0.45
        self.show_all_marks = False  # Shift+A: candidates above the lower operating point
        self.mark_threshold = 0.5
        #: the second, lower operating point of Shift+A (None: half the mark threshold)
        self.candidate_point: float | None = None
        self.max_candidates = 10  # at most this many candidates a view
        self.changed = Signal()

    def linked(self, slot: str) -> list[str]:
        """Slots whose zoom/pan follow ``slot`` (itself included)."""
        if self.link_mode == "all":
            return list(self.slots)
        if self.link_mode == "pair":
            # the mirror-image pair of one view: RCC with LCC, RMLO with LMLO
            return [s for s in self.slots if s[1:] == slot[1:]]
        return [slot]

    def set_view(self, slot: str, zoom: float, pan: tuple[float, float]) -> None:
        """Zoom/pan a pane and the panes linked to it.

        Pan is mirrored horizontally between the two breasts, so that linked panes move
        towards or away from the centre line together.
        """
        for other in self.linked(slot):
            mirrored = (other[0] != slot[0])
            self.panes[other].set_view(zoom, (-pan[0] if mirrored else pan[0], pan[1]))

    def cycle_link(self) -> str:
        self.link_mode = self.LINK_MODES[(self.LINK_MODES.index(self.link_mode) + 1) % 3]
        self.changed.emit("link")
        return self.link_mode

    def toggle_text(self) -> None:
        self.show_text = not self.show_text
        self.changed.emit("text")

    READING_MODES = ("on demand", "after read")

    @property
    def ai_locked(self) -> bool:
        """In "after read" mode AI stays locked until the initial assessment exists."""
        return self.reading_mode == "after read" and not self.initial_read_done

    @property
    def ai_visible(self) -> bool:
        if self.reading_mode == "after read":
            return self.initial_read_done and self.ai_requested
        return self.ai_requested

    def new_exam(self, initial_read_done: bool) -> None:
        """Opening an exam hides AI again (each exam is read before AI is seen)."""
        self.ai_requested = False
        self.initial_read_done = initial_read_done
        self.changed.emit("ai")

    def toggle_ai(self) -> bool:
        """Show/hide AI; returns False (and changes nothing) while AI is locked."""
        if self.ai_locked:
            return False
        self.ai_requested = not self.ai_requested
        self.changed.emit("ai")
        return True

    def record_initial_read(self) -> None:
        self.initial_read_done = True
        if self.reading_mode == "after read":
            self.ai_requested = True  # the overlays unlock and show
        self.changed.emit("ai")

    def set_reading_mode(self, mode: str) -> None:
        if mode not in self.READING_MODES:
            raise ValueError(f"unknown reading mode {mode!r}")
        self.reading_mode = mode
        self.changed.emit("ai")

    def set_map_opacity(self, opacity: float) -> None:
        self.map_opacity = float(min(max(opacity, 0.0), 1.0))
        self.changed.emit("ai")

    def toggle_map(self) -> None:
        self.show_map = not self.show_map
        self.changed.emit("ai")

    @property
    def candidate_threshold(self) -> float:
        if self.candidate_point is not None:
            return min(self.candidate_point, self.mark_threshold)
        return self.mark_threshold / 2

    def shown_marks(self, scores: list[float]) -> set[int]:
        """Indices of the unreviewed AI marks to draw: those at or above the operating
        point, or with Shift+A the (at most ``max_candidates``) best ones at or above the
        lower candidate point."""
        if not self.show_all_marks:
            return {i for i, s in enumerate(scores) if s >= self.mark_threshold}
        ranked = sorted((i for i, s in enumerate(scores) if s >= self.candidate_threshold),
                        key=lambda i: -scores[i])
        return set(ranked[: self.max_candidates])

    def toggle_all_marks(self) -> None:
        self.show_all_marks = not self.show_all_marks
        self.changed.emit("ai")

    def set_tool(self, tool: str) -> None:
        if tool not in ("pan", "ruler", "draw"):
            raise ValueError(f"unknown tool {tool!r}")
        self.tool = tool
        self.changed.emit("tool")

    def select(self, slot: str, label_id: str) -> None:
        self.selected = (slot, label_id) if label_id else None
        self.changed.emit("selection")

    def toggle_magnifier(self) -> None:
        self.magnifier = not self.magnifier
        self.changed.emit("magnifier")

    def toggle_fullscreen(self, slot: str) -> None:
        self.fullscreen = None if self.fullscreen == slot else slot
        self.changed.emit("fullscreen")
