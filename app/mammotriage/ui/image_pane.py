"""One mammogram pane: windowed display-resolution image, zoom/pan, corner text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QImage,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QRegion,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from mammotriage.dicom.pyramid import choose_level
from mammotriage.dicom.voi import DisplayLut
from mammotriage.ui.overlay import AiOverlay
from mammotriage.viewer.loader import LoadedView
from mammotriage.viewer.raster import Raster, screen_raster, shared_lut
from mammotriage.viewer.state import HangingState, PaneState, WindowSetting

if TYPE_CHECKING:
    from mammotriage.store.labels import Label
    from mammotriage.viewer.corrections import ExamCorrections

BACKGROUND = QColor(0, 0, 0)
TEXT = QColor(230, 200, 90)
ERROR = QColor(240, 90, 80)
RULER = QColor(90, 220, 120)
MARK = QColor(255, 70, 60)  # unreviewed AI mark
MARK_STALE = QColor(170, 170, 170)
ACCEPTED = QColor(80, 230, 110)  # AI mark the reader accepted
REJECTED = QColor(150, 150, 150)  # AI mark the reader rejected (false positive)
EDITED = QColor(255, 160, 40)  # AI mark the reader moved, resized or re-kinded
READER = QColor(60, 200, 255)  # finding drawn by the reader
SELECTED = QColor(255, 230, 0)


@dataclass(frozen=True)
class MarkStyle:
    colour: QColor
    line: Qt.PenStyle
    caption: str
    width: float = 2.0


def _label_style(label, stale: bool) -> MarkStyle:
    """How a label is drawn, by source and review status: unreviewed AI marks red and
    solid, accepted green and thick, rejected grey and dotted, edited orange and
    dash-dotted, the reader's own findings blue and dashed."""
    if label.source == "reader":
        suspicion = label.score
        return MarkStyle(READER, Qt.PenStyle.DashLine,
                         f"{label.kind} (reader{'' if suspicion is None else f' {int(round(suspicion * 100))}'})")
    score = f"{int(round(float(label.score or 0) * 100))}"
    if label.status == "rejected":
        return MarkStyle(REJECTED, Qt.PenStyle.DotLine, f"{label.kind} {score} \u2717 rejected", 1.5)
    edited = label.kind != label.original_kind or label.geometry != label.original_geometry
    if label.status == "accepted" and edited:
        return MarkStyle(EDITED, Qt.PenStyle.DashDotLine, f"{label.kind} {score} \u270e edited", 2.5)
    if label.status == "accepted":
        return MarkStyle(ACCEPTED, Qt.PenStyle.SolidLine, f"{label.kind} {score} \u2713 accepted", 3.0)
    return MarkStyle(MARK_STALE if stale else MARK, Qt.PenStyle.SolidLine, f"{label.kind} {score}")


def caption_box(text_rect: QRectF, mark: QRectF, pane: QRectF, placed: Sequence[QRectF] = ()) -> QRectF:
    """Where a mark's caption goes: above the mark, else below it, moved sideways and
    vertically so that it stays inside the pane, and stepped up or down off the
    captions already ``placed``."""
    box = QRectF(text_rect)
    box.moveBottomLeft(mark.topLeft() + QPointF(-3, -5))
    if box.top() < pane.top():
        box.moveTopLeft(mark.bottomLeft() + QPointF(-3, 5))

    def inside(b: QRectF) -> QRectF:
        b = QRectF(b)
        b.moveLeft(min(max(b.left(), pane.left()), pane.right() - b.width()))
        b.moveTop(min(max(b.top(), pane.top()), pane.bottom() - b.height()))
        return b

    first = inside(box)
    for step in (0, -1, 1, -2, 2, -3, 3):
        candidate = inside(box.translated(0, step * (box.height() + 1)))
        if not any(candidate.intersects(p) for p in placed):
            return candidate
    return first


LENS_RADIUS = 110
#: share of the pane the largest breast's bounding box fills at the initial zoom
FIT_FILL = 0.94


def ruler_length_mm(view: LoadedView, line: tuple[float, float, float, float]) -> float | None:
    """Length of a stored-coordinate line in mm (None without pixel spacing).

    Stored coordinates are used so that row and column spacing apply to the right axes
    whatever flips or transposition the display uses.
    """
    spacing = view.meta.spacing
    if spacing is None:
        return None
    x0, y0, x1, y1 = line
    return math.hypot((x1 - x0) * spacing.col_mm, (y1 - y0) * spacing.row_mm)


def ruler_label(view: LoadedView, line: tuple[float, float, float, float]) -> str:
    """``"23.4 mm at detector"`` / ``"magnified"`` / ``"px"`` when spacing is unknown."""
    length = ruler_length_mm(view, line)
    spacing = view.meta.spacing
    if length is None or spacing is None:
        x0, y0, x1, y1 = line
        return f"{math.hypot(x1 - x0, y1 - y0):.0f} px (no pixel spacing)"
    return f"{length:.1f} mm {spacing.source.value}"


class ImagePane(QWidget):
    """Paints one view of the hanging; state lives in a :class:`PaneState`.

    The image is anchored at its chest-wall edge (``anchor`` "left" or "right"), so that
    in the 4-up hanging the two breasts meet back to back at the centre line.
    """

    fullscreen_requested = Signal(str)
    view_changed = Signal(str, float, tuple)  # slot, zoom, pan (drives linked panes)
    window_dragged = Signal(str, float, float)  # slot, d_center, d_width
    label_clicked = Signal(str, str)  # slot, label id ("" = none)
    label_edited = Signal(str, str, dict)  # slot, label id, new geometry (stored pixels)
    finding_drawn = Signal(str, dict)  # slot, geometry (stored pixels)

    def __init__(self, slot: str, state: PaneState, parent: QWidget | None = None,
                 hanging: HangingState | None = None, read_only: bool = False):
        super().__init__(parent)
        self.slot = slot
        self.read_only = read_only  # a prior's view: look, zoom, window; no marks edited or measured
        self.state = state
        self.hanging = hanging  # tool and magnifier settings shared by all panes
        self.pointer: QPointF | None = None  # last pointer position (QWidget.cursor() is the shape)
        self._ruler_start: QPointF | None = None
        self.overlay: AiOverlay | None = None
        self.corrections: ExamCorrections | None = None  # of the open exam, set by the main window
        self._edit_preview: tuple[str, dict] | None = None  # label id, geometry while dragging
        self._draw_rect: QRectF | None = None
        self.view: LoadedView | None = None
        self.message = ""  # inline message (loading, missing view, error)
        self.is_error = False
        self.anchor = "right" if slot.startswith("R") else "left"
        self.show_text = True
        self.mm_per_px: float | None = None  # common physical scale of the hanging
        self.date_label = ""  # "CURRENT" / "PRIOR 2024-03-01" in a comparison hanging
        self._lut_key: tuple | None = None
        self._lut: DisplayLut | None = None
        self._lut32: DisplayLut | None = None
        self._cache_key: tuple | None = None
        self._qimage: QImage | None = None
        self._raster: Raster | None = None
        self._drag: tuple[str, QPointF, tuple] | None = None
        self.paints = 0
        self._elided: dict[tuple[str, int], str] = {}  # corner text lines fitted to the pane's width
        self._elided_font = ""
        # the pane paints every pixel itself: Qt paints nothing under it first
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(120, 120)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.setMouseTracking(True)
        self.setAccessibleName(f"pane {slot}")
        state.changed.connect(self._on_state)

    # ----------------------------------------------------------------- content
    def set_view(self, view: LoadedView | None, message: str = "") -> None:
        self.view = view
        self.message = message
        self.is_error = False
        self._cache_key = None
        self._lut_key = None
        self._raster = None
        self.update()

    def set_overlay(self, overlay: AiOverlay | None) -> None:
        self.overlay = overlay
        self.update()

    def ai_shown(self) -> bool:
        return self.overlay is not None and self.hanging is not None and self.hanging.ai_visible

    def set_error(self, message: str) -> None:
        self.view = None
        self.message = message
        self.is_error = True
        self.update()

    def _on_state(self, what: str) -> None:
        self.update()

    # ----------------------------------------------------------------- geometry
    def _loaded(self) -> LoadedView:
        """The pane's view, where the caller runs only while one is shown."""
        if self.view is None:
            raise RuntimeError(f"pane {self.slot}: no image loaded")
        return self.view

    def _point(self, x: float, y: float) -> QPointF:
        """:meth:`stored_to_widget` of a pane that shows an image."""
        self._loaded()
        point = self.stored_to_widget(x, y)
        assert point is not None  # a view is loaded
        return point

    def fit_box(self) -> tuple[float, float, float, float]:
        """What the initial view fits: the breast's bounding box (display-oriented
        level-0 pixels), else the whole image."""
        view = self._loaded()
        rows, cols = view.shape
        return view.breast_box or (0.0, 0.0, float(cols), float(rows))

    def base_scale(self) -> float:
        """Screen pixels per full-resolution image pixel at zoom 1."""
        if self.view is None:
            return 1.0
        spacing = self.view.meta.spacing
        if self.mm_per_px and spacing is not None:
            # the same physical size in every pane: mm on screen per screen pixel is common
            return spacing.row_mm / self.mm_per_px
        x0, y0, x1, y1 = self.fit_box()
        return FIT_FILL * min(self.width() / max(x1 - x0, 1.0), self.height() / max(y1 - y0, 1.0))

    def _origin(self, scale: float) -> tuple[float, float]:
        """Top-left of the image at ``scale`` before panning: the breast's chest-wall
        edge on the pane's chest-wall side (the hanging's centre line), the breast
        centred vertically."""
        x0, y0, x1, y1 = self.fit_box()
        x = self.width() - x1 * scale if self.anchor == "right" else -x0 * scale
        y = self.height() / 2.0 - (y0 + y1) / 2.0 * scale
        return x, y

    def image_rect(self) -> QRectF:
        """Where the full image lands on screen (widget coordinates)."""
        if self.view is None:
            return QRectF()
        rows, cols = self.view.shape
        scale = self.base_scale() * self.state.zoom
        x, y = self._origin(scale)
        return QRectF(x + self.state.pan[0], y + self.state.pan[1], cols * scale, rows * scale)

    def breast_rect(self) -> QRectF | None:
        """Where the breast's bounding box lands on screen (None without a view)."""
        if self.view is None:
            return None
        rect = self.image_rect()
        rows, cols = self.view.shape
        x0, y0, x1, y1 = self.fit_box()
        sx, sy = rect.width() / cols, rect.height() / rows
        return QRectF(rect.x() + x0 * sx, rect.y() + y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)

    def widget_to_stored(self, point: QPointF) -> tuple[float, float] | None:
        """Widget point -> stored-image (column, row), through the display orientation."""
        if self.view is None:
            return None
        rect = self.image_rect()
        rows, cols = self.view.shape
        dx = (point.x() - rect.x()) / rect.width() * cols
        dy = (point.y() - rect.y()) / rect.height() * rows
        stored_shape = (self.view.meta.rows, self.view.meta.columns)
        return self.view.orientation.display_to_stored(dx, dy, stored_shape)

    def stored_to_widget(self, x: float, y: float) -> QPointF | None:
        if self.view is None:
            return None
        stored_shape = (self.view.meta.rows, self.view.meta.columns)
        dx, dy = self.view.orientation.stored_to_display(x, y, stored_shape)
        rect = self.image_rect()
        rows, cols = self.view.shape
        return QPointF(rect.x() + dx / cols * rect.width(), rect.y() + dy / rows * rect.height())

    # ----------------------------------------------------------------- rendering
    def _window(self) -> WindowSetting | None:
        return self.state.window

    def display_image(self) -> tuple[QImage, int, QPointF] | None:
        """The windowed 8-bit image at screen resolution: (image, pyramid level, where).

        The stored values of the pyramid level that fits the pane are resampled to the
        pane's screen pixels once per geometry (:mod:`mammotriage.viewer.raster`); a window
        change is then one table lookup over those pixels (the table shared with the
        other panes showing the same window), drawn without scaling.
        """
        if self.view is None:
            return None
        window = self._window()
        rect = self.image_rect()
        ratio = self.devicePixelRatioF()  # a HiDPI screen: the raster is made at device pixels
        level_index = choose_level(self.view.levels, min(rect.height() * ratio, self.view.shape[0]))
        raster = screen_raster(self._raster, id(self.view), level_index, self.view.levels[level_index],
                               (rect.x(), rect.y(), rect.width(), rect.height()), (self.width(), self.height()),
                               self.state.zoom < 2, ratio)
        if raster is None:
            return None
        key = (raster.key, window, self.state.invert)
        lut_key = (window, self.state.invert)
        if lut_key != self._lut_key or self._lut is None:
            voi = window.voi if window is not None else self.view.auto
            self._lut, self._lut32 = shared_lut(self.view.meta, voi, self.state.invert)
            self._lut_key = lut_key
        if key != self._cache_key or self._qimage is None or raster is not self._raster:
            h, w = raster.values.shape
            if raster is not self._raster or self._qimage is None:
                # one image per geometry, Qt's own memory; every frame of a drag is looked
                # up straight into it (no per-frame QImage, copy or allocation)
                self._qimage = QImage(w, h, QImage.Format.Format_RGB32)
                self._qimage.setDevicePixelRatio(ratio)
                self._raster = raster
            assert self._lut32 is not None  # set with the LUT above
            # bits() each frame: Qt detaches the image if the paint engine still shares it
            # and gives it a new cache key, so a cached copy is never shown stale
            pixels = np.frombuffer(self._qimage.bits(), dtype=np.uint32).reshape(h, self._qimage.bytesPerLine() // 4)
            raster.render(self._lut32, out=pixels[:, :w])
            del pixels  # no view of the image's memory outlives this frame
            self._cache_key = key
        return self._qimage, level_index, QPointF(*raster.logical_origin)

    def paintEvent(self, event: QPaintEvent) -> None:  # Qt API
        painter = QPainter(self)
        shown = self.display_image() if self.view is not None else None
        if shown is None:
            painter.fillRect(self.rect(), BACKGROUND)
        else:
            qimage, _level, origin = shown
            size = qimage.deviceIndependentSize()
            # black around the image only (the image covers the rest: the pane is opaque)
            inner = QRect(QPoint(math.ceil(origin.x()), math.ceil(origin.y())),
                          QPoint(math.floor(origin.x() + size.width()) - 1, math.floor(origin.y() + size.height()) - 1))
            for part in QRegion(self.rect()).subtracted(QRegion(inner)):  # type: ignore[attr-defined]
                painter.fillRect(part, BACKGROUND)
            painter.drawImage(origin, qimage)  # already at screen resolution
        if self.view is not None:
            if self.hanging is not None:
                self._paint_overlay(painter)
            self._paint_rulers(painter)
            if self.hanging is not None and self.hanging.magnifier and self.pointer is not None:
                self._paint_lens(painter, self.pointer)
        self._paint_text(painter)
        if self.hasFocus():
            painter.setPen(QColor(80, 130, 200))
            painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        painter.end()
        self.paints += 1

    def lens_image(self, center: QPointF, radius: int = LENS_RADIUS) -> tuple[QImage, QRectF] | None:
        """The magnified patch under ``center``: same orientation, window and inversion.

        Returns the patch (from the pyramid level that matches the lens scale) and the
        widget rectangle it is drawn into.
        """
        if self.view is None or self.hanging is None or self._lut is None:
            return None
        factor = self.hanging.magnifier_factor
        rect = self.image_rect()
        rows0, cols0 = self.view.shape
        screen_per_px = rect.width() / cols0 * factor  # screen pixels per level-0 pixel in the lens
        # source region in level-0 display coordinates
        cx = (center.x() - rect.x()) / rect.width() * cols0
        cy = (center.y() - rect.y()) / rect.height() * rows0
        half = radius / screen_per_px
        level_index = choose_level(self.view.levels, min(rows0 * screen_per_px * self.devicePixelRatioF(), rows0))
        level = self.view.levels[level_index]
        f = level.shape[0] / rows0
        x0, x1 = int(math.floor((cx - half) * f)), int(math.ceil((cx + half) * f))
        y0, y1 = int(math.floor((cy - half) * f)), int(math.ceil((cy + half) * f))
        xa, xb = max(x0, 0), min(x1, level.shape[1])
        ya, yb = max(y0, 0), min(y1, level.shape[0])
        if xb <= xa or yb <= ya:
            return None
        patch = np.ascontiguousarray(self._lut.apply(level[ya:yb, xa:xb]))
        image = QImage(patch.data, patch.shape[1], patch.shape[0], patch.shape[1],
                       QImage.Format.Format_Grayscale8).copy()
        scale = screen_per_px / f
        target = QRectF(center.x() + (xa / f - cx) * screen_per_px, center.y() + (ya / f - cy) * screen_per_px,
                        (xb - xa) * scale, (yb - ya) * scale)
        return image, target

    def map_rect(self) -> QRectF | None:
        """Widget rectangle covered by the suspicion map (through the display transform)."""
        if self.view is None or self.overlay is None or self.overlay.suspicion is None:
            return None
        w, h = self.overlay.map_extent()
        return QRectF(self._point(0.0, 0.0), self._point(w, h)).normalized()

    def labels(self) -> list[Label]:
        """Labels of this image: the reader's fold when corrections exist, else AI marks."""
        if self.view is None:
            return []
        if self.corrections is not None:
            return self.corrections.labels_for(self.view.meta.sop_instance_uid)
        if self.overlay is None:
            return []
        from mammotriage.store.labels import Label, ai_target

        sop = self.view.meta.sop_instance_uid
        out: list[Label] = []
        for i, f in enumerate(self.overlay.findings):
            geometry = {"type": "box", "box": [float(v) for v in f["box"]]}
            out.append(Label(ai_target(self.overlay.model_version, sop, i), sop, "ai", "unreviewed", f["kind"],
                             geometry, float(f["score"]), f["kind"], geometry))
        return out

    def label_items(self) -> list[tuple[QRectF, Label]]:
        """(widget rectangle, label) of every label drawn now.

        AI marks show only while AI is visible, and unreviewed ones only at or above
        the operating point (all with "show all"); the reader's own findings always show.
        """
        if self.view is None or self.hanging is None:
            return []
        ai_on = self.ai_shown()
        labels = self.labels()
        unreviewed = [lab for lab in labels if lab.source == "ai" and lab.status == "unreviewed"]
        keep = self.hanging.shown_marks([float(lab.score or 0.0) for lab in unreviewed])
        hidden = {lab.label_id for i, lab in enumerate(unreviewed) if i not in keep}
        out = []
        for label in labels:
            if label.source == "ai" and (not ai_on or label.label_id in hidden):
                continue
            preview = self._edit_preview if self._edit_preview and self._edit_preview[0] == label.label_id else None
            geometry = preview[1] if preview else label.geometry
            out.append((self.geometry_rect(geometry), label))
        return out

    def geometry_rect(self, geometry: dict) -> QRectF:
        if geometry.get("type") == "polygon":
            xs = [p[0] for p in geometry["points"]]
            ys = [p[1] for p in geometry["points"]]
            box = [min(xs), min(ys), max(xs), max(ys)]
        else:
            box = geometry["box"]
        return QRectF(self._point(box[0], box[1]), self._point(box[2], box[3])).normalized()

    def mark_rects(self) -> list[tuple[QRectF, dict]]:
        """Widget rectangles of the visible AI marks (kind/score dicts)."""
        return [(rect, {"box": lab.geometry["box"], "kind": lab.kind, "score": lab.score})
                for rect, lab in self.label_items() if lab.source == "ai"]

    def _paint_overlay(self, painter: QPainter) -> None:
        overlay = self.overlay
        assert self.hanging is not None and self.view is not None
        if overlay is not None and self.ai_shown() and self.hanging.show_map and overlay.suspicion is not None:
            image = overlay.map_image(self.view.orientation)
            target = self.map_rect()
            if image is not None and target is not None:
                painter.save()
                painter.setOpacity(self.hanging.map_opacity)
                painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
                painter.drawImage(target, image)
                painter.restore()
        metrics = painter.fontMetrics()
        placed: list[QRectF] = []  # captions drawn so far: the next one avoids them
        selected = self.hanging.selected[1] if self.hanging.selected and self.hanging.selected[0] == self.slot else None
        for rect, label in self.label_items():
            style = _label_style(label, overlay.stale if overlay else False)
            colour, text = style.colour, style.caption
            pen = QPen(SELECTED if label.label_id == selected else colour, style.width + (1 if label.label_id == selected else 0))
            pen.setStyle(style.line)
            painter.setPen(pen)
            outline = rect.adjusted(-3, -3, 3, 3)
            if label.geometry.get("type") == "ellipse":
                painter.drawEllipse(outline)
            elif label.geometry.get("type") == "polygon":
                from PySide6.QtGui import QPolygonF

                painter.drawPolygon(QPolygonF([self._point(x, y) for x, y in label.geometry["points"]]))
            else:
                painter.drawRect(outline)
            box = caption_box(QRectF(metrics.boundingRect(text)).adjusted(-3, -1, 3, 1), outline, QRectF(self.rect()),
                              placed)
            placed.append(box)
            painter.fillRect(box, QColor(0, 0, 0, 170))
            painter.setPen(colour)
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        if self._draw_rect is not None:
            pen = QPen(READER, 1.5)
            pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            if self.hanging.draw_shape == "ellipse":
                painter.drawEllipse(self._draw_rect)
            else:
                painter.drawRect(self._draw_rect)

    def _paint_lens(self, painter: QPainter, center: QPointF) -> None:
        lens = self.lens_image(center)
        if lens is None:
            return
        image, target = lens
        path = QPainterPath()
        path.addEllipse(center, LENS_RADIUS, LENS_RADIUS)
        painter.save()
        painter.setClipPath(path)
        painter.fillPath(path, BACKGROUND)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        painter.drawImage(target, image)
        if self.hanging is not None:
            # the same overlay, through the lens' magnification about its centre
            factor = self.hanging.magnifier_factor
            painter.translate(center)
            painter.scale(factor, factor)
            painter.translate(-center)
            self._paint_overlay(painter)
        painter.restore()
        painter.setPen(QPen(TEXT, 1.5))
        painter.drawEllipse(center, LENS_RADIUS, LENS_RADIUS)

    def _paint_rulers(self, painter: QPainter) -> None:
        if self.read_only:
            return  # rulers are measured on the current exam's images
        lines = list(self.state.rulers)
        if self._ruler_start is not None and self.pointer is not None:
            a = self.widget_to_stored(self._ruler_start)
            b = self.widget_to_stored(self.pointer)
            if a and b:
                lines.append((a[0], a[1], b[0], b[1]))
        painter.setPen(QPen(RULER, 1.5))
        view = self._loaded()
        for line in lines:
            p0 = self._point(line[0], line[1])
            p1 = self._point(line[2], line[3])
            painter.drawLine(p0, p1)
            painter.drawText(p1 + QPointF(6, -6), ruler_label(view, line))

    def corner_lines(self) -> dict[str, list[str]]:
        """The corner annotations (also used by tests and the screenshot check)."""
        if self.view is None:
            return {"top": [self.slot], "bottom": []}
        meta = self.view.meta
        date = meta.study_date.isoformat() if meta.study_date else ""
        top = [meta.label + (f" ({', '.join(meta.view_modifiers)})" if meta.view_modifiers else "")
               + (f"  {self.date_label} {date}".rstrip() if self.date_label else "")]
        if not self.read_only and (self.slot.endswith("CC")
                                   or (self.hanging is not None and self.hanging.fullscreen == self.slot)):
            # who this is: on the top row of the hanging (and a full-screen view)
            name = meta.patient_name.replace("^", " ").strip()
            if name != meta.patient_id:
                top.append(name or "(no name)")
            age = meta.age_at_exam
            top.append(" · ".join(p for p in (meta.patient_id, f"age {age}" if age is not None else "",
                                              f"acc {meta.accession_number}" if meta.accession_number else "")
                                  if p))
        if date and not self.date_label:
            top.append(date)
        if meta.manufacturer:
            top.append(meta.manufacturer)
        window = self._window()
        bottom = []
        if window is not None:
            if window.preset is not None and window.preset.is_lut:
                bottom.append(f"VOI LUT {window.explanation}")
            else:
                bottom.append(f"C {window.center:.0f} W {window.width:.0f} {window.function.lower()}"
                              + (f" {window.explanation}" if window.explanation else ""))
        if self.state.invert:
            bottom.append("inverted")
        bottom.append(f"zoom {self.state.zoom * self.base_scale():.2f}x")
        if meta.spacing is not None:
            bottom.append(f"spacing {meta.spacing.row_mm:.3f} mm ({meta.spacing.source.value})")
        top.extend(self._ai_lines())
        return {"top": top, "bottom": bottom}

    def _ai_lines(self) -> list[str]:
        if self.hanging is None:
            return []
        if self.overlay is None:
            return ["AI: no result yet"]
        if self.hanging.ai_locked:
            return ["AI: locked until your initial assessment (B)"]
        if not self.hanging.ai_visible:
            return ["AI: hidden (A to show)"]
        o = self.overlay
        lines = []
        if o.breast_score is not None:
            lines.append(f"AI breast {int(round(o.breast_score * 100))}"
                         + (f" · exam {int(round(o.exam_score * 100))}" if o.exam_score is not None else ""))
        n_all = len(o.findings)
        n_shown = len(self.hanging.shown_marks([float(f["score"]) for f in o.findings]))
        lines.append(f"marks {n_shown}/{n_all}" + (f" candidates >= {self.hanging.candidate_threshold:.2f}"
                                                   if self.hanging.show_all_marks else " >= operating point"))
        lines.append(f"model {o.model_version}" + (" (OLDER MODEL)" if o.stale else ""))
        return lines

    def _paint_text(self, painter: QPainter) -> None:
        font = QFont(self.font())
        font.setPointSize(9)
        painter.setFont(font)
        if self.message:
            painter.setPen(ERROR if self.is_error else TEXT)
            painter.drawText(self.rect().adjusted(12, 12, -12, -12),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.message)
        if not self.show_text:
            return
        painter.setPen(TEXT)
        lines = self.corner_lines()
        align = Qt.AlignmentFlag.AlignLeft if self.anchor == "right" else Qt.AlignmentFlag.AlignRight
        # text goes on the outer side, away from the chest wall and the centre line
        margin = self.rect().adjusted(8, 6, -8, -6)
        metrics = painter.fontMetrics()

        width = margin.width()
        if len(self._elided) > 256 or self._elided_font != font.key():
            self._elided.clear()
            self._elided_font = font.key()

        def elide(text: str) -> str:
            fitted = self._elided.get((text, width))
            if fitted is None:
                fitted = self._elided[(text, width)] = metrics.elidedText(text, Qt.TextElideMode.ElideRight, width)
            return fitted

        def fit(text_lines: list[str]) -> str:  # a narrow pane elides, never overlaps its neighbour
            return "\n".join(elide(t) for t in text_lines)

        painter.drawText(margin, align | Qt.AlignmentFlag.AlignTop, fit(lines["top"]))
        painter.drawText(margin, align | Qt.AlignmentFlag.AlignBottom, fit(lines["bottom"]))

    # ----------------------------------------------------------------- interaction
    def label_at(self, point: QPointF) -> tuple[QRectF, Label] | None:
        """The smallest drawn label whose outline contains ``point``."""
        hits = [(r, lab) for r, lab in self.label_items() if r.adjusted(-5, -5, 5, 5).contains(point)]
        return min(hits, key=lambda h: h[0].width() * h[0].height()) if hits else None

    def _selected_item(self) -> tuple[QRectF, Label] | None:
        if self.hanging is None or not self.hanging.selected or self.hanging.selected[0] != self.slot:
            return None
        return next(((r, lab) for r, lab in self.label_items() if lab.label_id == self.hanging.selected[1]), None)

    def _grab_label(self, pos: QPointF) -> tuple[QRectF, Label] | None:
        """The label a left press at ``pos`` grabs for moving or resizing: the selected
        one when the press is on it (or on a corner handle), else the one under it."""
        selected = self._selected_item()
        if selected is not None and selected[0].adjusted(-6, -6, 6, 6).contains(pos):
            return selected
        return self.label_at(pos)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if event.button() == Qt.MouseButton.RightButton:
            self._drag = ("window", pos, (0.0, 0.0))
        elif self.read_only and event.button() == Qt.MouseButton.LeftButton:
            self._drag = ("pan", pos, self.state.pan)
        elif event.button() == Qt.MouseButton.LeftButton and self.hanging is not None and self.view is not None \
                and self.hanging.tool == "ruler":
            self._ruler_start = pos
            self.pointer = pos
        elif event.button() == Qt.MouseButton.LeftButton and self.hanging is not None and self.view is not None \
                and self.hanging.tool == "draw":
            self._drag = ("draw", pos, ())
            self._draw_rect = QRectF(pos, pos)
        elif event.button() == Qt.MouseButton.LeftButton and (grabbed := self._grab_label(pos)) is not None:
            rect, label = grabbed
            if self.hanging is not None and self.hanging.selected != (self.slot, label.label_id):
                self.label_clicked.emit(self.slot, label.label_id)  # pressing a mark selects it
            corner = _near_corner(rect, pos)
            self._drag = ("resize" if corner else "move", pos, (label.label_id, label.geometry, corner))
        elif event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            self._drag = ("pan", pos, self.state.pan)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        self.pointer = event.position()
        if self._ruler_start is not None or (self.hanging is not None and self.hanging.magnifier):
            self.update()
        if self._drag is None:
            return
        kind, start, origin = self._drag
        delta = event.position() - start
        if kind == "window":
            window = self.state.window
            width = window.width if window is not None else 1000.0
            # horizontal drag = width (contrast), vertical drag = centre (brightness)
            step = max(width, 2.0) / 300.0
            self._drag = (kind, event.position(), origin)
            self.window_dragged.emit(self.slot, delta.y() * step, delta.x() * step)
        elif kind == "draw":
            self._draw_rect = QRectF(start, event.position()).normalized()
            self.update()
        elif kind in ("move", "resize"):
            label_id, geometry, corner = origin
            self._edit_preview = (label_id, self._edited_geometry(geometry, start, event.position(), corner))
            self.update()
        else:
            pan = (origin[0] + delta.x(), origin[1] + delta.y())
            self.view_changed.emit(self.slot, self.state.zoom, pan)
        event.accept()

    def _edited_geometry(self, geometry: dict, start: QPointF, end: QPointF, corner: str | None) -> dict:
        """Geometry after a move or corner drag, computed in stored coordinates."""
        a = self.widget_to_stored(start)
        b = self.widget_to_stored(end)
        if a is None or b is None:  # no image: nothing moves
            return geometry
        dx, dy = b[0] - a[0], b[1] - a[1]
        if geometry.get("type") == "polygon":
            return {"type": "polygon", "points": [[x + dx, y + dy] for x, y in geometry["points"]]}
        x0, y0, x1, y1 = geometry["box"]
        if corner is None:
            box = [x0 + dx, y0 + dy, x1 + dx, y1 + dy]
        else:
            # move the stored corner nearest to the grabbed screen corner
            xs = [x0, x1]
            ys = [y0, y1]
            ix = min((0, 1), key=lambda i: abs(xs[i] - a[0]))
            iy = min((0, 1), key=lambda i: abs(ys[i] - a[1]))
            xs[ix] += dx
            ys[iy] += dy
            box = [min(xs), min(ys), max(xs), max(ys)]
        rows, cols = self._loaded().meta.rows, self._loaded().meta.columns
        box = [min(max(box[0], 0.0), cols), min(max(box[1], 0.0), rows),
               min(max(box[2], 0.0), cols), min(max(box[3], 0.0), rows)]
        return {"type": geometry.get("type", "box"), "box": [round(v, 2) for v in box]}

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        drag, self._drag = self._drag, None
        if drag is not None and drag[0] == "draw":
            rect, self._draw_rect = self._draw_rect, None
            a = self.widget_to_stored(rect.topLeft()) if rect is not None else None
            b = self.widget_to_stored(rect.bottomRight()) if rect is not None else None
            if rect is not None and rect.width() >= 4 and rect.height() >= 4 and a and b:
                rows, cols = self._loaded().meta.rows, self._loaded().meta.columns
                box = [max(min(a[0], b[0]), 0.0), max(min(a[1], b[1]), 0.0),
                       min(max(a[0], b[0]), cols), min(max(a[1], b[1]), rows)]
                shape = self.hanging.draw_shape if self.hanging is not None else "box"
                self.finding_drawn.emit(self.slot, {"type": shape, "box": [round(v, 2) for v in box]})
            self.update()
        elif drag is not None and drag[0] in ("move", "resize"):
            preview, self._edit_preview = self._edit_preview, None
            if preview is not None and preview[1] != drag[2][1]:
                self.label_edited.emit(self.slot, preview[0], preview[1])
            self.update()
        elif drag is not None and drag[0] == "pan" and event.button() == Qt.MouseButton.LeftButton:
            moved = event.position() - drag[1]
            if abs(moved.x()) + abs(moved.y()) < 4:  # a click, not a pan: select what is under it
                hit = self.label_at(event.position())
                self.label_clicked.emit(self.slot, hit[1].label_id if hit else "")
        if self._ruler_start is not None:
            a = self.widget_to_stored(self._ruler_start)
            b = self.widget_to_stored(event.position())
            self._ruler_start = None
            if a and b and (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 > 4:
                self.state.add_ruler((a[0], a[1], b[0], b[1]))
            self.update()

    def leaveEvent(self, event) -> None:
        self.pointer = None
        self.update()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.fullscreen_requested.emit(self.slot)

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps == 0 or self.view is None:
            return
        self.zoom_at(event.position(), math.pow(1.15, steps))
        event.accept()

    def zoom_at(self, point: QPointF, factor: float) -> None:
        """Zoom by ``factor`` keeping the image point under ``point`` fixed."""
        rect = self.image_rect()
        if rect.width() <= 0:
            return
        fx = (point.x() - rect.x()) / rect.width()
        fy = (point.y() - rect.y()) / rect.height()
        new_zoom = min(max(self.state.zoom * factor, 0.1), 40.0)
        scale = self.base_scale() * new_zoom
        rows, cols = self._loaded().shape
        w, h = cols * scale, rows * scale
        x0, y0 = self._origin(scale)
        pan = (point.x() - fx * w - x0, point.y() - fy * h - y0)
        self.view_changed.emit(self.slot, new_zoom, pan)


def _near_corner(rect: QRectF, point: QPointF, radius: float = 8.0) -> str | None:
    """Which corner of ``rect`` (tl, tr, bl, br) is within ``radius`` of ``point``."""
    corners = {"tl": rect.topLeft(), "tr": rect.topRight(), "bl": rect.bottomLeft(), "br": rect.bottomRight()}
    for name, c in corners.items():
        if abs(c.x() - point.x()) <= radius and abs(c.y() - point.y()) <= radius:
            return name
    return None
