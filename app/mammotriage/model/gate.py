"""Deprecated alias of :mod:`mammotriage.learning.gate` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import gate as _moved

warnings.warn("mammotriage.model.gate is deprecated: import mammotriage.learning.gate",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
