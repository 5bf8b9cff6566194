"""Deprecated alias of :mod:`mammotriage.learning.commands` (moved in architecture v2); removed in the next release."""

import sys
import warnings

from mammotriage.learning import commands as _moved

warnings.warn("mammotriage.model.learning_commands is deprecated: import mammotriage.learning.commands",
              DeprecationWarning, stacklevel=2)
if __name__ == "__main__":  # python -m mammotriage.model.learning_commands
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
