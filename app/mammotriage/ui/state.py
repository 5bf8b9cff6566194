"""Deprecated alias of :mod:`mammotriage.viewer.state` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.viewer import state as _moved

warnings.warn("mammotriage.ui.state is deprecated: import mammotriage.viewer.state",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
