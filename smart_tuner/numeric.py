"""What counts as a number in a config, a statistic or a stored trial: the predicates every layer shares.

``True`` and ``False`` are ints to Python but not numbers here (YAML and JSON tell them apart). The module is not
called ``numbers``, so that it never stands in for the standard library's module of that name."""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """A real int or float; ``True``/``False`` are not numbers here (YAML and JSON tell them apart)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An int that is not ``True``/``False``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number (:func:`is_number`) that is finite."""
    return is_number(value) and math.isfinite(value)
