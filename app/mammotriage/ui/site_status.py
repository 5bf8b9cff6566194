"""The status bar's site line: "site server unreachable since HH:MM — N corrections waiting".

:class:`SiteStatusLabel` reads :meth:`mammotriage.viewer.site_log.SiteLog.status` once a
second (two counts in the local buffer file and a flag: no network on the UI thread) and
shows :func:`~mammotriage.viewer.site_log.site_status_text`; it is hidden while the server
is reachable and nothing waits. Changes of state go to the window's log through
:attr:`SiteStatusLabel.changed`. :attr:`SiteStatusLabel.arrived` brings the sender's
news to the UI thread: the exams whose local copy changed (another workstation's
corrections), for the window to re-read what is open.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QLabel, QWidget

from mammotriage.viewer.site_log import SiteLog, site_status_text

__all__ = ["SiteStatusLabel"]

_AWAY_STYLE = "QLabel { color: white; background: #a4262c; padding: 1px 6px; border-radius: 3px; }"
_SENDING_STYLE = "QLabel { padding: 1px 6px; }"


class SiteStatusLabel(QLabel):
    """The site server's state and the corrections waiting for it."""

    #: The new text ('' once the server is reachable and the buffer drained).
    changed = Signal(str)
    #: A line for the window's log, on the changes worth one: the server lost, everything stored again.
    noteworthy = Signal(str)
    #: The exam keys whose local copy of the server's events changed (queued from the sender's thread).
    arrived = Signal(object)

    def __init__(self, log: SiteLog, where: str = "", interval_ms: int = 1000, parent: QWidget | None = None):
        super().__init__("", parent)
        self.site_log = log
        self.where = where
        self.setVisible(False)
        self._away = False
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        listener = self._arrived
        log.add_listener(listener)
        self.destroyed.connect(lambda *_: log.remove_listener(listener))
        self.refresh()

    def _arrived(self, exam_keys: list[str | None]) -> None:
        """On the sender's thread: hand the news to the UI thread (a queued signal)."""
        try:
            self.arrived.emit(list(exam_keys))
        except RuntimeError:  # the label is gone (the window closing): nobody to tell
            self.site_log.remove_listener(self._arrived)

    def refresh(self) -> str:
        status = self.site_log.status()
        text = site_status_text(status)
        if text != self.text():
            self.setText(text)
            self.setStyleSheet(_AWAY_STYLE if not status.reachable else _SENDING_STYLE)
            tip = [self.where] if self.where else []
            if status.reason:
                tip.append(f"last error: {status.reason}")
            tip.append(f"corrections are kept in {self.site_log.buffered.buffer.path} until the server has them")
            self.setToolTip("\n".join(tip))
            self.changed.emit(text)
            if not status.reachable and not self._away:
                self.noteworthy.emit(text + (f" ({status.reason})" if status.reason else ""))
            elif not text and self._away:
                self.noteworthy.emit("site server reachable again: every correction is stored")
            self._away = not status.reachable or (self._away and bool(text))
        if self.isHidden() == bool(text):  # a status bar shows what it is given: hide it again
            self.setVisible(bool(text))
        return text
