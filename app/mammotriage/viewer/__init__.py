"""The reading session without Qt (napari style): view state with events, the reader's
corrections with one undo/redo, the view loader, and :class:`ReadingSession` (the exam
on screen, its AI overlays, the active model it follows). ``ui`` shows it; nothing here
imports PySide6.
"""
