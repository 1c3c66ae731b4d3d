"""Query parameters of a dashboard link, parsed so that a hostile link cannot crash a page.

`parse_query_value(raw, parse, valid)` is the one way a page reads a value from its address: it returns
a valid value or None, and never raises (``?expert=²`` used to raise: ``str.isdigit`` accepts '²' and
``int`` does not). Integers and numbers are read from ASCII digits only, every number must be finite,
texts are bounded, and ``valid`` (a collection, or a predicate) says what the page can show.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any

MAX_QUERY_CHARS = 2000  # a longer value is no view this dashboard ever wrote
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def parse_int(text: str) -> int:
    """An integer written in ASCII digits (not '²', not '٣', not '1e3'); ValueError otherwise."""
    if not isinstance(text, str) or not _INT.fullmatch(text.strip()):
        raise ValueError(f"not an integer: {str(text)[:40]!r}")
    return int(text.strip())


def parse_float(text: str) -> float:
    """A finite number written in ASCII (no 'nan', 'inf', '1e999'); ValueError otherwise."""
    if not isinstance(text, str) or not _FLOAT.fullmatch(text.strip()):
        raise ValueError(f"not a number: {str(text)[:40]!r}")
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text[:40]!r}")
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _size(raw: Any) -> int:
    return sum(len(str(x)) for x in raw) if isinstance(raw, (list, tuple)) else len(str(raw))


def parse_query_value(
    raw: Any, parse: Callable[[Any], Any] = str, valid: Collection | Callable[[Any], bool] | None = None
) -> Any:
    """`parse(raw)` when it succeeds and gives a valid value (finite numbers only; every item of a list in
    `valid`), else None. `int` and `float` as `parse` mean `parse_int` / `parse_float`. Never raises."""
    if raw is None or _size(raw) > MAX_QUERY_CHARS:
        return None
    parse = {int: parse_int, float: parse_float}.get(parse, parse)  # type: ignore[call-overload]
    try:
        value = parse(raw)
        if value is None or not _finite(value):
            return None
        if valid is None:
            return value
        if callable(valid):
            return value if valid(value) else None
        items = value if isinstance(value, list) else [value]
        return value if all(v in valid for v in items) else None
    except Exception:  # noqa: BLE001 (whatever a parser makes of a hostile string: not a value)
        return None
