"""Runs as standard JSON: figures the server could not know (NaN) become null, which every JSON reader accepts."""

from __future__ import annotations

import json
import math
from typing import Any


def json_text(data: Any) -> str:
    return json.dumps(_nan_to_none(data), indent=1, allow_nan=False)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value
