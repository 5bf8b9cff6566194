"""The learning loop: snapshots as training data, data checks, retrain, gate, the
registry's promote/rollback side, monitoring, and their commands.

Importing this package is light (no torch); the modules are imported by name
(``mammotriage.learning.retrain``, ``.gate``, ...). ``model`` never imports it.
"""
