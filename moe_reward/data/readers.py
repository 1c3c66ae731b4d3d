"""Streaming, bounded readers of preference files: JSONL, JSON arrays, CSV and Parquet, plain or ``.gz``.

A reader yields ``(line, row, error)`` triples, one row at a time: a raw row (a dict, usually), or an error
-- a bad row, or with line 0 a problem of the file itself (truncated or corrupt gzip, JSON array content
in a ``.jsonl``, bad JSON structure), after which it stops. Memory is bounded by one row
(`MAX_ROW_BYTES`), never by the file: a line or element is bounded before it is read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ROW_BYTES = 64 * 1024 * 1024  # one JSONL line, CSV record or JSON array element
MAX_JSON_OBJECT_BYTES = 256 * 1024 * 1024  # a .json file whose top level is an object is read whole


@dataclass
class RowError:
    file: str
    line: int  # 1-based line (JSONL), data row + 1 for the CSV header, element (JSON array), row (Parquet); 0: the file
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


Rows = Iterator[tuple[int, Any, "RowError | None"]]  # (line, raw row, error)


def _stream_problem(exc: BaseException, path: Path, after_line: int) -> RowError:
    """A read error in the middle of a file (truncated or corrupt gzip, I/O error) as one file-level error."""
    where = f"after line {after_line}" if after_line else "at its start"
    if isinstance(exc, EOFError):
        reason = f"the gzip stream ends early {where} (truncated file?); the rows after it are missing"
    elif isinstance(exc, gzip.BadGzipFile):
        reason = f"not a valid gzip file ({exc}) {where}; the rows after it are missing"
    elif isinstance(exc, zlib.error):
        reason = f"corrupt gzip data {where} ({exc}); the rows after it are missing"
    else:
        reason = f"cannot read {where}: {exc}"
    return RowError(str(path), 0, None, reason)


def open_binary(path: Path) -> io.BufferedReader | gzip.GzipFile:
    fh = open(path, "rb")  # noqa: SIM115 (closed by the reader that owns it)
    if path.suffix.lower() == ".gz":
        return gzip.GzipFile(fileobj=fh, mode="rb")
    return fh


_STREAM_ERRORS = (EOFError, OSError, zlib.error)


def _lines(path: Path) -> Iterator[tuple[int, bytes | None, RowError | None]]:
    """Physical lines (without the newline), each bounded by MAX_ROW_BYTES before it is read."""
    lineno = 0
    with open_binary(path) as fh:
        while True:
            try:
                raw = fh.readline(MAX_ROW_BYTES + 1)
                if not raw:
                    return
                lineno += 1
                if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line, in bounded pieces
                        raw = fh.readline(1 << 20)
                    yield (
                        lineno,
                        None,
                        RowError(str(path), lineno, None, f"line longer than {MAX_ROW_BYTES >> 20} MiB"),
                    )
                    continue
            except _STREAM_ERRORS as exc:
                yield lineno, None, _stream_problem(exc, path, lineno)
                return
            yield lineno, raw, None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        raise ValueError("bad JSON: a number too long to read") from None


def _read_jsonl(path: Path) -> Rows:
    first = True
    for lineno, raw, err in _lines(path):
        if raw is None:  # (then err says why)
            yield lineno, None, err
            continue
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                lineno,
                None,
                RowError(str(path), lineno, None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"),
            )
            continue
        if not line.strip():
            continue
        if first and (line.lstrip().startswith("[") or line.strip() == "{"):
            what = (
                "starts a JSON array"
                if line.lstrip().startswith("[")
                else "opens a JSON object over several lines"
            )
            yield (
                lineno,
                None,
                RowError(
                    str(path),
                    0,
                    None,
                    f"line {lineno} {what}: this file holds one JSON "
                    "document, not JSON Lines (one object per line); rename it to .json",
                ),
            )
            return
        first = False
        try:
            yield lineno, _loads(line), None
        except json.JSONDecodeError as exc:
            yield lineno, None, RowError(str(path), lineno, None, f"bad JSON: {exc.msg} (column {exc.colno})")
        except ValueError as exc:
            yield lineno, None, RowError(str(path), lineno, None, str(exc))


_SPACE = re.compile(r"\s*")


class _TextBuffer:
    """A growing window over a decoded text stream, for parsing one JSON value at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="strict")
        self.buf, self.pos, self.eof = "", 0, False
        self.line = 1  # physical line at self.pos
        self.chunk = 1 << 16

    def more(self) -> bool:
        if self.eof:
            return False
        piece = self.fh.read(self.chunk)
        self.chunk = min(max(self.chunk, (len(self.buf) - self.pos)), MAX_ROW_BYTES)  # grow geometrically
        if not piece:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + piece
        self.pos = 0
        return True

    def skip_space(self) -> str:
        """The next non-space character ('' at the end of the file)."""
        while True:
            m = _SPACE.match(self.buf, self.pos)
            assert m is not None  # (r"\s*" matches at every position)
            self.line += self.buf.count("\n", self.pos, m.end())
            self.pos = m.end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self, decoder: json.JSONDecoder, limit: int) -> Any:
        """Parse the JSON value at pos (reading more while it is incomplete)."""
        while True:
            try:
                try:
                    value, end = decoder.raw_decode(self.buf, self.pos)
                except RecursionError:
                    raise ValueError("JSON nested too deeply") from None
                if end < len(self.buf) or self.eof or not self.more():
                    self.line += self.buf.count("\n", self.pos, end)
                    self.pos = end
                    return value
                continue  # a value that ends with the buffer (a number) may go on in the next chunk
            except json.JSONDecodeError as exc:
                incomplete = exc.msg.startswith("Unterminated") or exc.pos >= len(self.buf) - 8
                if not incomplete or self.eof:
                    raise
                if len(self.buf) - self.pos > limit:
                    raise ValueError(f"a JSON value larger than {limit >> 20} MiB") from None
                if not self.more():
                    raise

    def close(self) -> None:
        self.fh.close()


def _read_json(path: Path) -> Rows:
    """A JSON array of rows (streamed element by element), or an object holding one (read whole)."""
    src = _TextBuffer(path)
    decoder = json.JSONDecoder()
    line = 1
    try:
        start = src.skip_space()
        if start == "":
            yield 0, None, RowError(str(path), 0, None, "empty file (no rows)")
            return
        if start == "[":
            src.pos += 1
            element = 0
            while True:
                c = src.skip_space()
                if c == "]" and element == 0:
                    break
                if element:
                    if c == "]":
                        break
                    if c != ",":
                        raise json.JSONDecodeError("Expecting ',' delimiter", src.buf, src.pos)
                    src.pos += 1
                    src.skip_space()
                element += 1
                line = src.line
                try:
                    value = src.value(decoder, MAX_ROW_BYTES)
                except ValueError as exc:
                    if isinstance(exc, json.JSONDecodeError):
                        raise
                    yield (
                        0,
                        None,
                        RowError(
                            str(path),
                            0,
                            None,
                            f"element {element} (line {line}): {exc}; the rest of the file was not read",
                        ),
                    )
                    return
                yield element, value, None
            return
        if start != "{":
            raise json.JSONDecodeError("Expecting an array of rows or an object", src.buf, src.pos)
        data = src.value(decoder, MAX_JSON_OBJECT_BYTES)
        if src.skip_space():
            yield (
                0,
                None,
                RowError(
                    str(path),
                    0,
                    None,
                    f"more JSON after the first object (line {src.line}): this "
                    "file holds JSON Lines (one object per line), not one JSON document; rename it to .jsonl",
                ),
            )
            return
        rows = next((v for v in data.values() if isinstance(v, list)), [data])
        for i, row in enumerate(rows, start=1):
            yield i, row, None
    except json.JSONDecodeError as exc:
        lineno = src.line + src.buf.count("\n", src.pos, exc.pos) if exc.doc is src.buf else src.line
        yield (
            0,
            None,
            RowError(
                str(path), 0, None, f"bad JSON at line {lineno}: {exc.msg}; the rest of the file was not read"
            ),
        )
    except UnicodeDecodeError as exc:  # (a ValueError: handled first)
        yield (
            0,
            None,
            RowError(
                str(path),
                0,
                None,
                f"not valid UTF-8 ({exc.reason}) after line {src.line}; the rest of the file was not read",
            ),
        )
    except ValueError as exc:  # RecursionError-turned-ValueError, or too large
        yield (
            0,
            None,
            RowError(str(path), 0, None, f"{exc} (line {src.line}); the rest of the file was not read"),
        )
    except _STREAM_ERRORS as exc:
        yield 0, None, _stream_problem(exc, path, src.line)
    finally:
        src.close()


_BAD_BYTES = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of invalid UTF-8


def _read_csv(path: Path) -> Rows:
    csv.field_size_limit(MAX_ROW_BYTES)
    text = io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        reader = csv.reader(text)
        try:
            header = next(reader, None)
        except (csv.Error, *_STREAM_ERRORS) as exc:
            yield (
                0,
                None,
                _stream_problem(exc, path, 0)
                if not isinstance(exc, csv.Error)
                else RowError(str(path), 1, None, f"bad CSV header: {exc}"),
            )
            return
        if header is None:
            return
        if any(_BAD_BYTES.search(h) for h in header):
            yield 0, None, RowError(str(path), 1, None, "header: not valid UTF-8")
            return
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, None, RowError(str(path), reader.line_num, None, f"bad CSV: {exc}")
                continue
            except _STREAM_ERRORS as exc:
                yield 0, None, _stream_problem(exc, path, reader.line_num)
                return
            lineno = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if any(_BAD_BYTES.search(v) for v in values):
                yield lineno, None, RowError(str(path), lineno, None, "not valid UTF-8")
            elif len(values) > len(header):
                yield lineno, None, RowError(str(path), lineno, None, "more fields than the header")
            else:
                row = dict(zip(header, values + [""] * (len(header) - len(values)), strict=True))
                yield lineno, {k: (v if v != "" else None) for k, v in row.items()}, None
    finally:
        text.close()


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".gz":
        yield (
            0,
            None,
            RowError(
                str(path),
                0,
                None,
                "gzip-compressed Parquet is not supported (Parquet compresses itself); decompress it",
            ),
        )
        return
    i = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                i += 1
                yield i, row, None
    except Exception as exc:  # noqa: BLE001 (pyarrow raises its own types for corrupt files)
        where = f"after row {i}" if i else "at its start"
        yield (
            0,
            None,
            RowError(
                str(path),
                0,
                None,
                f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]}) {where}",
            ),
        )


READERS: dict[str, Callable[[Path], Rows]] = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".pq": _read_parquet,
}


def reader_for(path: Path, fmt: str | None) -> Callable[[Path], Rows]:
    suffixes = [x.lower() for x in path.suffixes]
    if fmt:
        suffix = f".{fmt.lstrip('.').lower()}"
    elif suffixes[-1:] == [".gz"] and len(suffixes) > 1:
        suffix = suffixes[-2]
    else:
        suffix = path.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise ValueError(f"{path}: unknown format {suffix!r}; use one of {sorted(READERS)} (optionally .gz)")
    return reader
