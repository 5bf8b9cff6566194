"""Deprecated alias of :mod:`mammotriage.viewer.loader` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.viewer import loader as _moved

warnings.warn("mammotriage.ui.loader is deprecated: import mammotriage.viewer.loader",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
