"""Deprecated alias of :mod:`mammotriage.viewer.corrections` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.viewer import corrections as _moved

warnings.warn("mammotriage.ui.corrections is deprecated: import mammotriage.viewer.corrections",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
