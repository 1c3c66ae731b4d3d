"""Atomic file writes: write a temporary file next to the target, flush it to disk, then rename.

A reader (or a later run) sees either the old file or the complete new one, never a half-written one:
a full disk, a crash or a kill during the write leaves the target as it was and removes the temporary
file. The temporary name starts with ``.`` and ends with ``.tmp``, so globs for ``*.json`` or
``*.safetensors`` never pick it up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def _temp_for(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: str, path: Path) -> None:
    _fsync(tmp)
    # mkstemp creates the file private (0600); give it the permissions a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_with(path: str | Path, write: Callable[[str], object]) -> Path:
    """Let `write(tmp_path)` (e.g. ``safetensors.save_file``) write a temporary file, then rename it onto
    `path` (whatever `write` returns is ignored). On any failure the temporary file is removed and `path` is left untouched."""
    path = Path(path)
    tmp = _temp_for(path)
    try:
        write(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def open_atomic(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO]:
    """``with open_atomic(path) as fh: ...``: a file object whose content replaces `path` only when the
    block finishes without an exception (streaming writers: CSV, JSONL)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = _temp_for(path)
    try:
        with open(tmp, "wb") if mode == "wb" else open(tmp, "w", encoding=encoding, newline=newline) as fh:
            yield fh
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """`Path.write_text`, atomically."""
    with open_atomic(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """`Path.write_bytes`, atomically."""
    with open_atomic(path, "wb") as fh:
        fh.write(data)
    return Path(path)
