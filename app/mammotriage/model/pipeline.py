"""Deprecated alias of :mod:`mammotriage.learning.pipeline` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import pipeline as _moved

warnings.warn("mammotriage.model.pipeline is deprecated: import mammotriage.learning.pipeline",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
