"""Text search over pairs: which pairs' prompt or responses contain every word or "quoted phrase" of a
query (case-insensitive). The Expert map, the tables and `moe-reward search` share it.

    rows = search_pairs(features.pairs, 'step "by step"', fields=("prompt",))
    describe_query('step "by step"', ("prompt",))   # 'prompt contains "step" and "by step"'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

FIELDS = ("prompt", "chosen", "rejected", "id", "group", "user")
TEXT_FIELDS = ("prompt", "chosen", "rejected")  # the default: the texts
MAX_QUERY = 500  # characters
MAX_TERMS = 20
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def parse_query(query: str) -> list[str]:
    """The query's terms, case-folded: words, and "quoted phrases" kept whole. Raises ValueError for a
    query that is too long or has no term."""
    text = str(query)
    if len(text) > MAX_QUERY:
        raise ValueError(f"search: at most {MAX_QUERY} characters, got {len(text)}")
    found = (m.group(1) if m.group(1) is not None else m.group(2) for m in _TOKEN.finditer(text))
    terms = [t.casefold() for t in found if t.strip()]
    if not terms:
        raise ValueError("search: give at least one word")
    if len(terms) > MAX_TERMS:
        raise ValueError(f"search: at most {MAX_TERMS} words or phrases, got {len(terms)}")
    return list(dict.fromkeys(terms))


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in fields if f not in FIELDS]
    if bad or not fields:
        raise ValueError(f"search: fields must be among {', '.join(FIELDS)}, got {', '.join(bad) or 'none'}")
    return tuple(dict.fromkeys(fields))


def search_pairs(pairs: Sequence, query: str, fields: Sequence[str] = TEXT_FIELDS) -> np.ndarray:
    """Rows of `pairs` (PreferencePair-like) in which every term of `query` occurs in at least one of
    `fields` (case-insensitive substring match), in order."""
    terms = parse_query(query)
    fields = check_fields(fields)
    hits = []
    for i, p in enumerate(pairs):
        text = "\n".join(str(getattr(p, f, "") or "") for f in fields).casefold()
        if all(t in text for t in terms):
            hits.append(i)
    return np.asarray(hits, dtype=np.int64)


def describe_query(query: str, fields: Sequence[str] = TEXT_FIELDS) -> str:
    """'prompt, chosen or rejected contains "step" and "short"': how a search slice was made, in words."""
    terms = parse_query(query)
    fields = check_fields(fields)
    where = fields[0] if len(fields) == 1 else ", ".join(fields[:-1]) + f" or {fields[-1]}"
    return f"{where} contains " + " and ".join(f'"{t}"' for t in terms)


def narrow_selection(
    selected: np.ndarray, region: bool, found: np.ndarray | None, slice_rows: np.ndarray | None
) -> np.ndarray:
    """The Expert map's selection: the pairs of the drawn region (`selected`, when `region`), narrowed to
    the search matches and to the sidebar's slice; without a region, the matches (or the slice) alone."""
    rows: np.ndarray | None = np.asarray(selected, dtype=np.int64) if region else None
    for narrower in (found, slice_rows):
        if narrower is None:
            continue
        narrower = np.asarray(narrower, dtype=np.int64)
        rows = narrower if rows is None else np.intersect1d(rows, narrower)
    return np.zeros(0, dtype=np.int64) if rows is None else rows
