"""Number checks shared by the online YAML loaders; each error names the dotted key."""

from __future__ import annotations

import math
from typing import Any

from l1forge.errors import ConfigError


def integer(raw: Any, key: str, lo: int, hi: int = 1 << 62) -> int:
    """``raw`` as an int in [lo, hi] (booleans refused)."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not lo <= raw <= hi:
        raise ConfigError(f"{key}: expected an integer in [{lo}, {hi}], got {raw!r}")
    return raw


def number(raw: Any, key: str, lo: float = 0.0, hi: float = math.inf, strict: bool = True) -> float:
    """``raw`` as a finite float in (lo, hi] (``strict``) or [lo, hi]."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
    if (raw <= lo if strict else raw < lo) or raw > hi:
        bracket = "(" if strict else "["
        raise ConfigError(f"{key}: expected a number in {bracket}{lo}, {hi}], got {raw!r}")
    return float(raw)
