"""Checks shared by strategies' options."""

from __future__ import annotations

import math

from metacl.errors import MetaclError


def check_positive(value: float, flag: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise MetaclError(f"{flag} must be a finite number >= 0, got {value!r}; pass e.g. {flag} 1.0")
    return float(value)
