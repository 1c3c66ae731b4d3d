"""Saved slices: a named set of pairs (from a search, a map selection or filters) kept in the workspace.

The only reader and writer of ``<workspace>/slices/<name>.json``::

    {"format": 1, "name": "step-prompts", "pair_ids": ["q12-3", ...], "how": "search",
     "description": "prompt contains \\"step\\"", "data": "data/controlled/features.safetensors",
     "model": "default-sparse", "created": "2025-01-31T12:00:00+00:00"}

A slice is pair ids, not row numbers, so it applies to any file holding those pairs (`slice_index`).
Names follow the workspace's name rule (letters, digits, '.', '_', '-'); a slice is never overwritten
unless the caller says so (`overwrite=True`), and every write is atomic.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core import atomic
from .workspace import check_name

FORMAT = 1
HOW = ("search", "box", "lasso", "filter", "ids")  # how a slice was made
MAX_SLICE_BYTES = 256 * 1024 * 1024  # a slice file, checked before it is read
MAX_SLICE_PAIRS = 5_000_000
MAX_DESCRIPTION = 500


class SliceError(ValueError):
    """A slice that cannot be saved or read; the message names the file (and field)."""


class SliceExists(SliceError):
    """Saving under a name that is taken, without `overwrite`."""


@dataclass
class Slice:
    name: str
    pair_ids: list[str]
    how: str = "ids"  # one of HOW
    description: str = ""  # how it was made, in words: 'prompt contains "step"'
    data: str = ""  # the data file it was made on (label or path)
    model: str = ""  # the model whose view made it (a map selection depends on it); '' when none
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def n(self) -> int:
        return len(self.pair_ids)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def summary(self) -> str:
        """'step-prompts: 120 pairs, search: prompt contains "step"'."""
        return f"{self.name}: {self.n} pairs, {self.how}" + (
            f": {self.description}" if self.description else ""
        )


def _check(raw: object, where: str) -> Slice:
    if not isinstance(raw, dict):
        raise SliceError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format", FORMAT) != FORMAT:
        raise SliceError(f"{where}: format: expected {FORMAT}, got {raw.get('format')!r}")
    for key in ("name", "how", "description", "data", "model", "created"):
        if key in raw and not isinstance(raw[key], str):
            raise SliceError(f"{where}: {key}: expected text, got {type(raw[key]).__name__}")
    if "name" not in raw:
        raise SliceError(f"{where}: name: missing")
    try:
        check_name(raw["name"], "slice name")
    except ValueError as exc:
        raise SliceError(f"{where}: name: {exc}") from None
    ids = raw.get("pair_ids")
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise SliceError(f"{where}: pair_ids: expected a list of pair ids (texts)")
    if len(ids) > MAX_SLICE_PAIRS:
        raise SliceError(f"{where}: pair_ids: {len(ids)} ids, more than the limit of {MAX_SLICE_PAIRS}")
    if len(set(ids)) != len(ids):
        raise SliceError(f"{where}: pair_ids: an id appears twice")
    how = raw.get("how", "ids")
    if how not in HOW:
        raise SliceError(f"{where}: how: expected one of {', '.join(HOW)}, got {how!r}")
    description = raw.get("description", "")
    if len(description) > MAX_DESCRIPTION:
        raise SliceError(f"{where}: description: at most {MAX_DESCRIPTION} characters")
    kept = {k: raw[k] for k in ("data", "model", "created") if k in raw}
    return Slice(raw["name"], list(ids), how, description, **kept)


def slice_path(directory: str | Path, name: str) -> Path:
    return Path(directory) / f"{check_name(name, 'slice name')}.json"


def save_slice(directory: str | Path, slc: Slice, overwrite: bool = False) -> Path:
    """Write `slc` as `<directory>/<name>.json` (atomic). Raises `SliceExists` when the name is taken and
    not `overwrite`, `SliceError` for an invalid slice (an empty one included)."""
    try:
        path = slice_path(directory, slc.name)
    except ValueError as exc:
        raise SliceError(str(exc)) from None
    checked = _check(slc.to_dict(), f"slice {slc.name!r}")
    if not checked.pair_ids:
        raise SliceError(f"slice {slc.name!r}: no pairs to save")
    if path.exists() and not overwrite:
        raise SliceExists(
            f"{path}: a slice named {slc.name!r} exists; pick another name or choose to replace it"
        )
    atomic.write_text(path, json.dumps(checked.to_dict(), ensure_ascii=False, indent=1))
    return path


def load_slice(path: str | Path) -> Slice:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SLICE_BYTES:
            raise SliceError(f"{path}: {size} bytes, more than the limit of {MAX_SLICE_BYTES} for a slice")
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SliceError(f"{path}: no such slice") from None
    except UnicodeDecodeError as exc:
        raise SliceError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SliceError(f"{path}: bad JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SliceError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:
        raise SliceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    slc = _check(raw, str(path))
    if slc.name != path.stem:
        raise SliceError(f"{path}: name: {slc.name!r} does not match the file name")
    return slc


def read_slice(directory: str | Path, name: str) -> Slice:
    try:
        path = slice_path(directory, name)
    except ValueError as exc:
        raise SliceError(str(exc)) from None
    return load_slice(path)


def list_slices(directory: str | Path) -> tuple[list[Slice], dict[str, str]]:
    """The slices that load, by name, and {file name: why} for those that do not."""
    found, problems = [], {}
    folder = Path(directory)
    if not folder.is_dir():
        return [], {}
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            found.append(load_slice(path))
        except SliceError as exc:
            problems[path.name] = str(exc)
    return found, problems


def delete_slice(directory: str | Path, name: str) -> None:
    try:
        path = slice_path(directory, name)
    except ValueError as exc:
        raise SliceError(str(exc)) from None
    if not path.is_file():
        raise SliceError(f"{path}: no such slice")
    path.unlink()


def slice_index(slc: Slice, ids: list[str]) -> np.ndarray:
    """Rows of `ids` (a data file's pair ids, in order) that are in the slice, in the file's order."""
    wanted = set(slc.pair_ids)
    return np.array([i for i, pid in enumerate(ids) if pid in wanted], dtype=np.int64)
