"""Deprecated alias of :mod:`mammotriage.learning.snapshot_data` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import snapshot_data as _moved

warnings.warn("mammotriage.model.snapshot_data is deprecated: import mammotriage.learning.snapshot_data",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
