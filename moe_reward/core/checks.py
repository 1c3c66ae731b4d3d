"""Checks of a config value where a user value enters (a dataclass's ``__post_init__``, a function's first
lines): each raises ValueError naming the field, the allowed values or range, and what it got. No
dependencies, so that any stage can use them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection


def short(value: object, limit: int = 40) -> str:
    """`value` for a message: its repr, cut (a config may hold a megabyte where a number belongs)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """An integer (not a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {short(value)}")
    return int(value)


def check_number(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """A finite number (not a bool) in [lo, hi] ((lo, hi] with `lo_open`)."""
    x = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not (math.isfinite(x) and (lo < x if lo_open else lo <= x) and x <= hi):
        where = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be a finite number in {where}, got {short(value)}")
    return x


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """One of `choices`."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {short(value)}")


def check_text(name: str, value: object, max_chars: int = 4096) -> str:
    """Non-empty text of at most `max_chars` characters."""
    if not (isinstance(value, str) and value.strip() and len(value) <= max_chars):
        raise ValueError(
            f"{name} must be non-empty text of at most {max_chars} characters, got {short(value)}"
        )
    return value
