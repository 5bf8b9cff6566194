"""Deprecated alias of :mod:`mammotriage.learning.monitor` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import monitor as _moved

warnings.warn("mammotriage.triage.monitor is deprecated: import mammotriage.learning.monitor",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
