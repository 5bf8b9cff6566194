"""Deprecated alias of :mod:`mammotriage.learning.retrain` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import retrain as _moved

warnings.warn("mammotriage.model.retrain is deprecated: import mammotriage.learning.retrain",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
