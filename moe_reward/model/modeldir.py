"""A saved model directory: the only reader and writer of its files.

    <model>/config.json        the model's config (`ModelConfig` fields), bounded before it is parsed
    <model>/model.safetensors  its tensors: names, shapes and dtypes checked from the header first
    <model>/metrics.json       what training measured and recorded (``data``: the data it was trained on)
    <model>/split_ids.json     pair ids of the train / validation / test split

Every other module calls these functions; none opens those files itself. Anything wrong with a file is a
`CheckpointError` whose one-line message names the file (and the field or tensor). Writes are atomic
(`core.atomic`). This module knows the files, not the model: `model/moe.py` turns the config dict into a
`ModelConfig` and checks what the tensors may hold.

Split ids have one reader with one explicit policy, `read_split_ids(directory, strict=...)`: a missing
file is an error when `strict` (``eval --split test``) and None otherwise (the dashboard then says the
model saved no split); a file that exists but is broken is always an error, never silently "no split".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, overload

import torch

from ..core import atomic
from ..core.errors import MoeRewardError
from ..core.limits import MAX_CONFIG_BYTES, MAX_METRICS_BYTES, MAX_PARAMETERS, MAX_SPLIT_BYTES

CONFIG = "config.json"
TENSORS = "model.safetensors"
METRICS = "metrics.json"
SPLITS = "split_ids.json"
SPLIT_NAMES = ("train", "validation", "test")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CheckpointError(MoeRewardError):
    """A saved model directory that cannot be used; the message names the file and what is wrong with it."""


class MissingCheckpointFile(CheckpointError, FileNotFoundError):
    """A saved model directory without one of its files."""


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` looks like a saved model (it has a config.json); says nothing about its health."""
    return (Path(path) / CONFIG).is_file()


# ----------------------------------------------------------------------------- JSON files


def read_json(path: Path, limit: int) -> object:
    """A JSON file of at most `limit` bytes; `CheckpointError` naming the file for anything wrong."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise CheckpointError(f"{path}: {size} bytes, more than the limit of {limit}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except CheckpointError:
        raise
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        truncated = exc.msg.startswith("Unterminated") or exc.pos >= len(exc.doc) - 1
        raise CheckpointError(
            f"{path}: bad JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg.removesuffix(' starting at')}" + (" (truncated file?)" if truncated else "")
        ) from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _read_object(path: Path, limit: int) -> dict:
    raw = read_json(path, limit)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def read_config(directory: str | Path) -> dict:
    """``config.json`` as a dict (bounded, a JSON object); `ModelConfig` checks its fields."""
    src = Path(directory)
    path = src / CONFIG
    if not path.is_file():
        raise MissingCheckpointFile(f"{src}: not a saved model (missing {CONFIG})")
    return _read_object(path, MAX_CONFIG_BYTES)


def write_config(directory: str | Path, config: dict) -> Path:
    return atomic.write_text(Path(directory) / CONFIG, json.dumps(config, indent=2))


def read_metrics(directory: str | Path) -> dict:
    """``metrics.json`` ({} when the model has none); a broken file is a `CheckpointError`."""
    path = Path(directory) / METRICS
    if not path.exists():
        return {}
    return _read_object(path, MAX_METRICS_BYTES)


def write_metrics(directory: str | Path, metrics: dict) -> Path:
    return atomic.write_text(Path(directory) / METRICS, json.dumps(metrics, indent=2))


def trained_on(directory: str | Path) -> str | None:
    """The data the model was trained on, as recorded in its metrics.json ("data"); None when not recorded
    (or the model has no metrics.json). A broken metrics.json is a `CheckpointError`."""
    data = read_metrics(directory).get("data")
    return data if isinstance(data, str) and data else None


@overload
def read_split_ids(directory: str | Path, strict: Literal[True] = True) -> dict[str, list[str]]: ...
@overload
def read_split_ids(directory: str | Path, strict: bool) -> dict[str, list[str]] | None: ...


def read_split_ids(directory: str | Path, strict: bool = True) -> dict[str, list[str]] | None:
    """Pair ids per split ({"train": [...], "validation": [...], "test": [...]}).

    A missing file: `MissingCheckpointFile` when `strict`, else None. A file that exists but is too
    large, not JSON, or not three lists of ids: always a `CheckpointError` naming the file."""
    path = Path(directory) / SPLITS
    if not path.is_file():
        if not strict:
            return None
        raise MissingCheckpointFile(
            f"{path}: no saved split (the model was not trained by `moe-reward train`); use --split all"
        )
    data = read_json(path, MAX_SPLIT_BYTES)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected an object with train, validation and test id lists")
    for name in SPLIT_NAMES:
        ids = data.get(name)
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise CheckpointError(f"{path}: {name}: expected a list of pair ids")
    return {name: data[name] for name in SPLIT_NAMES}


def write_split_ids(directory: str | Path, splits: dict[str, list[str]]) -> Path:
    return atomic.write_text(
        Path(directory) / SPLITS, json.dumps({name: list(splits[name]) for name in SPLIT_NAMES})
    )


# ----------------------------------------------------------------------------- tensors


def write_tensors(directory: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic.write_with(Path(directory) / TENSORS, lambda tmp: save_file(state, tmp))


class TensorFile:
    """``with TensorFile(directory) as tf``: a model's safetensors file, read header first.

    `tf.header` (name -> (shape, dtype)) and `tf.values_held` come from the header alone; `tf.check`
    compares them with the tensors a model expects, and `tf.read` loads the tensors (each finite, every
    ``*scale`` divisor positive). Every problem is a `CheckpointError` naming the file and the tensor."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / TENSORS
        self.header: dict[str, tuple[tuple[int, ...], str]] = {}

    def __enter__(self) -> TensorFile:
        from safetensors import safe_open

        if not self.path.is_file():
            raise MissingCheckpointFile(f"{self.path.parent}: not a saved model (missing {TENSORS})")
        try:
            size = self.path.stat().st_size
            if size == 0:
                raise CheckpointError(f"{self.path}: empty file")
            if size > 8 * MAX_PARAMETERS + (1 << 24):
                raise CheckpointError(
                    f"{self.path}: {size} bytes, more than a model within the limits can hold"
                )
            self._ctx = safe_open(str(self.path), framework="pt")
            self._fh = self._ctx.__enter__()
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error type for corrupt files)
            raise CheckpointError(
                f"{self.path}: not a readable safetensors file ({str(exc)[:200]})"
            ) from None
        try:
            fh = self._fh
            self.header = {
                k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype())
                for k in fh.keys()  # noqa: SIM118
            }
        except Exception as exc:  # noqa: BLE001
            self._ctx.__exit__(None, None, None)
            raise CheckpointError(
                f"{self.path}: not a readable safetensors file ({str(exc)[:200]})"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def values_held(self) -> int:
        return sum(math.prod(shape) for shape, _ in self.header.values())

    def check(self, expected: dict[str, tuple[int, ...]]) -> None:
        """The file's tensors against the model's: names, shapes, float dtypes."""
        header = self.header
        problems = [f"missing tensor {name!r}" for name in sorted(set(expected) - set(header))]
        problems += [f"unexpected tensor {name!r}" for name in sorted(set(header) - set(expected))]
        for name in sorted(set(header) & set(expected)):
            (shape, dtype), want = header[name], expected[name]
            if shape != tuple(want):
                problems.append(f"tensor {name!r} has shape {list(shape)}, {CONFIG} implies {list(want)}")
            elif dtype not in FLOAT_DTYPES:
                problems.append(f"tensor {name!r} has dtype {dtype}, expected a float type")
        if problems:
            more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
            raise CheckpointError(f"{self.path}: " + "; ".join(problems[:3]) + more)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors, each finite (and every ``*scale`` divisor positive)."""
        try:
            state = {name: self._fh.get_tensor(name) for name in names}
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"{self.path}: not a readable safetensors file ({str(exc)[:200]})"
            ) from None
        for name, value in state.items():
            if not torch.isfinite(value).all():
                raise CheckpointError(f"{self.path}: tensor {name!r} has NaN or infinite values")
            if name.endswith("scale") and not (value > 0).all():
                raise CheckpointError(f"{self.path}: tensor {name!r} (a divisor) has values <= 0")
        return state
