"""Deprecated alias of :mod:`mammotriage.learning.dataset_check` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import dataset_check as _moved

warnings.warn("mammotriage.model.dataset_check is deprecated: import mammotriage.learning.dataset_check",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
