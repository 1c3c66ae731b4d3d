"""Every CSV the project writes goes through here, so that it is safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel, LibreOffice
and Google Sheets as a formula (``=cmd|' /C calc'!A0``, ``=HYPERLINK(...)``): text from a preference file
must never run as one. Such a text cell is written with a leading apostrophe (the spreadsheets' own "this
is text" mark), which shows the text as it was. Numbers are written as numbers (``-0.25`` stays a number);
only text cells (and header names) are neutralized.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from . import atomic

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, prefixed with an apostrophe; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _frame(frame):
    """A pandas DataFrame with every text cell and column name neutralized (numbers untouched)."""
    out = frame.copy()
    out.columns = [safe_cell(str(c)) for c in out.columns]
    for name in out.columns:
        if out[name].dtype == object or str(out[name].dtype) in ("string", "str"):
            out[name] = out[name].map(safe_cell)
    return out


def frame_csv(frame, index: bool = False) -> bytes:
    """A DataFrame as UTF-8 CSV bytes (dashboard downloads)."""
    return _frame(frame).to_csv(index=index).encode("utf-8")


def write_frame(frame, path: str | Path, index: bool = False) -> Path:
    """A DataFrame to a CSV file, atomically."""
    safe = _frame(frame)
    with atomic.open_atomic(path, "w", newline="") as fh:
        safe.to_csv(fh, index=index)
    return Path(path)


def rows_csv(rows: Iterable[dict], fieldnames: Sequence[str]) -> str:
    buf = io.StringIO(newline="")
    _write_rows(buf, rows, fieldnames)
    return buf.getvalue()


def write_rows(path: str | Path, rows: Iterable[dict], fieldnames: Sequence[str]) -> Path:
    """Dict rows to a CSV file (header first), atomically."""
    with atomic.open_atomic(path, "w", newline="") as fh:
        _write_rows(fh, rows, fieldnames)
    return Path(path)


def _write_rows(fh, rows: Iterable[dict], fieldnames: Sequence[str]) -> None:
    writer = csv.writer(fh)
    writer.writerow([safe_cell(str(f)) for f in fieldnames])
    for row in rows:
        writer.writerow([safe_cell(row.get(f, "")) for f in fieldnames])
