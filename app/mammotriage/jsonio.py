"""Strictly valid JSON for every command's ``--json`` output.

JSON has no NaN or Infinity; Python's :func:`json.dumps` writes them unless told not to.
Every command prints through :func:`print_json`, which turns a float that is not finite
into ``null`` and then refuses anything else that is not JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["json_safe", "print_json"]


def json_safe(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def print_json(value: Any, **kwargs: Any) -> None:
    """Print ``value`` as strictly valid JSON (file names that are not UTF-8 are escaped)."""
    print(json.dumps(json_safe(value), allow_nan=False, **kwargs))
