"""How a value reads in a line for people (summaries, alerts, the report): one formatter."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, spec: str = ".4g", missing: str = "-") -> str:
    """A float in ``spec`` (NaN and inf as ``nan``/``inf``), nothing (None) as ``missing``, anything else as it
    prints (an int stays whole)."""
    if value is None:
        return missing
    if isinstance(value, float):
        return format(value, spec)
    return str(value)
