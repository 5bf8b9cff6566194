"""Detection model: network, preprocessing, inference, training, evaluation, packages.

Importing this package is light (no torch); the torch modules are imported by name
(``mammotriage.model.network``, ``.infer``, ``.train``, ...).
"""

from mammotriage.model.network_constants import CLASSES

__all__ = ["CLASSES"]
