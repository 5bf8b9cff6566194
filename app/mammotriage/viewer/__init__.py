"""Viewer logic without Qt: what the reading room shows and where."""
