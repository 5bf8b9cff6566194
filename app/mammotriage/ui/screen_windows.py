"""The hanging spread over several screens: the Qt side of :mod:`mammotriage.viewer.screens`.

:class:`ScreenLayout` asks Qt for the screens, lets :func:`plan_hanging` decide, and
moves the :class:`HangingView`'s panes: those of the main window's own area stay in
its grid, the others go into a frameless :class:`ScreenWindow` covering their screen.
The panes are the same objects wherever they are, driven by the one
:class:`HangingState`, so window/level, zoom, pan, selection and the keyboard
shortcuts (added to every screen window) keep working across the screens.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QAction, QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QGridLayout, QWidget

from mammotriage.ui.hanging_view import HangingView
from mammotriage.viewer.screens import Area, Placement, Screen, plan_hanging, screen_at


def qt_screens() -> list[Screen]:
    """The screens Qt reports: available geometry (without task bars), name, primary.
    (``QScreen.orientation()`` is not used: a rotated display reports its shape.)"""
    primary = QGuiApplication.primaryScreen()
    screens = []
    for s in QGuiApplication.screens():
        g = s.availableGeometry()
        screens.append(Screen(g.x(), g.y(), g.width(), g.height(), s.name(), s is primary))
    return screens


class ScreenWindow(QWidget):
    """A top-level window covering one screen, holding part of the hanging (black, no frame)."""

    def __init__(self, hanging: HangingView, actions: list[QAction]):
        super().__init__(None, Qt.WindowType.Window | Qt.WindowType.FramelessWindowHint)
        self.hanging = hanging
        self.setWindowTitle("Mammo Triage — hanging")
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        palette = self.palette()
        palette.setColor(QPalette.ColorRole.Window, QColor(0, 0, 0))
        self.setPalette(palette)
        self.setAutoFillBackground(True)
        self.addActions(actions)  # the main window's shortcuts work on this screen too
        self.area: Area | None = None

    def resizeEvent(self, event) -> None:  # Qt API name
        super().resizeEvent(event)
        self.hanging.refit_scale()


def _grid(widget: QWidget) -> QGridLayout:
    """The grid layout of the hanging view or of a display window."""
    layout = widget.layout()
    if not isinstance(layout, QGridLayout):
        raise TypeError(f"{type(widget).__name__} has no grid layout")
    return layout


class ScreenLayout:
    """Applies a layout ("single" or "span") to a hanging view and a main window."""

    def __init__(self, hanging: HangingView, actions: list[QAction]):
        self.hanging = hanging
        self.actions = actions
        self.windows: list[ScreenWindow] = []
        self.placement: Placement | None = None

    def apply(self, layout: str, main: QWidget, screens: list[Screen] | None = None) -> Placement:
        """Place the panes for ``layout`` on ``screens`` (default: Qt's); the main window
        stays where it is. Returns the placement (its ``reason`` for the status bar)."""
        screens = qt_screens() if screens is None else screens
        centre = main.frameGeometry().center()
        placement = plan_hanging(screens, layout, screen_at(screens, centre.x(), centre.y()))
        hanging = self.hanging
        grids: dict[int, QGridLayout] = {}
        windows: list[ScreenWindow] = []
        for i, area in enumerate(placement.areas):
            if area.in_main:
                grids[i] = _grid(hanging)
                continue
            window = self.windows.pop(0) if self.windows else ScreenWindow(hanging, self.actions)
            window.area = area
            grids[i] = _grid(window)
            windows.append(window)
        for index, area in enumerate(placement.areas):
            for slot in area.slots:  # addWidget moves a pane out of its old grid and window
                grids[index].addWidget(hanging.panes[slot], *area.cells[slot])
                grids[index].addWidget(hanging.prior_panes[slot], *area.prior_cells[slot])
        for old in self.windows:  # windows no longer needed (a screen gone, back to single)
            old.close()
            old.deleteLater()
        self.windows = windows
        hanging.common_scale = placement.common_scale
        hanging.setVisible(any(a.in_main for a in placement.areas))
        for window in windows:
            assert window.area is not None  # set above for every window kept
            x, y, w, h = window.area.rect
            window.setGeometry(QRect(x, y, w, h))
            window.show()
        self.placement = placement
        hanging.relayout()
        return placement

    def close(self) -> None:
        """Close the display windows, the panes back in the hanging view first (a
        window deletes its children)."""
        home = plan_hanging([]).areas[0]  # the main window's 2x2
        grid = _grid(self.hanging)
        for slot in home.slots:
            grid.addWidget(self.hanging.panes[slot], *home.cells[slot])
            grid.addWidget(self.hanging.prior_panes[slot], *home.prior_cells[slot])
        for window in self.windows:
            window.close()
            window.deleteLater()
        self.windows = []
