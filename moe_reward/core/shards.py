"""One sharded on-disk cache: string keys -> arrays, each entry verifiable against its key.

Used by the embedding cache (`embed/cache.py`, keyed by the hash of each text) and the token-state cache
(`model/router_inputs.py`, keyed by the hash of each prompt); the root of every cache is `cache_root()`.

Layout: a folder of shards, ``<time>-<pid>.safetensors``. Each `put` writes one new shard, atomically
(`core.atomic`), so concurrent writers never corrupt each other and a reader sees a shard whole or not at
all. A shard holds its rows (``values`` [N, ...]; with ``lengths`` [N] when the entries differ in their
first dimension and are padded) and, in the safetensors metadata of the same file, the format, the key
list and one content digest per key: ``blake2b(key, dtype, shape, bytes of the entry)``. On read every
entry's digest is recomputed, so a key list reversed, rows edited or keys moved to other rows are caught;
two shards' files swapped stay correct (each file carries its own keys).

A shard that cannot be used (truncated, corrupt, not finite, a digest that does not match its entry) is
deleted with one warning and what it held is computed again by the caller when next needed; shards of the
older format (a separate ``.json`` key list, no digests: unverifiable) are deleted the same way, with one
warning for all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from . import atomic

SHARD_FORMAT = "moe-reward-cache-shard/1"


def cache_root() -> Path:
    """Where every on-disk cache lives: ``$MOE_REWARD_CACHE``, else ``~/.cache/moe_reward``."""
    return Path(os.environ.get("MOE_REWARD_CACHE") or Path.home() / ".cache" / "moe_reward")


def entry_digest(key: str, value: np.ndarray) -> str:
    """The content digest that binds one entry to its key (dtype and shape included)."""
    value = np.ascontiguousarray(value)
    h = hashlib.blake2b(digest_size=16)
    h.update(key.encode("utf-8", "surrogatepass"))
    h.update(f"\x00{value.dtype.str}\x00{value.shape}\x00".encode())
    h.update(value.tobytes())
    return h.hexdigest()


class ShardedCache:
    """Keys -> arrays in a folder of verified shards (see the module docstring).

    `what` names the cache in warnings ("embedding cache"), `then` says what happens to dropped entries
    ("its texts will be embedded again"). With ``directory=None`` it is an in-memory cache only.
    """

    def __init__(
        self, directory: str | Path | None, what: str = "cache", then: str = "recomputed when needed"
    ):
        self.dir = None if directory is None else Path(directory)
        self.what, self.then = what, then
        self._index: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ reading
    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            if self.dir is not None and self.dir.is_dir():
                old = []
                for shard in sorted(self.dir.glob("*.safetensors")):
                    entries = self._read_shard(shard)
                    if entries is None:
                        old.append(shard)
                    else:
                        self._index.update(entries)
                self._drop_old(old)
        return self._index

    def _read_shard(self, shard: Path) -> dict[str, np.ndarray] | None:
        """One shard's entries, each checked against its digest; {} for a broken shard (deleted with a
        warning); None for a shard of the older, unverifiable format (deleted by `_drop_old`)."""
        from safetensors import safe_open

        try:
            with safe_open(str(shard), framework="numpy") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != SHARD_FORMAT:
                    return None
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
            return self._entries(meta, tensors)
        except FileNotFoundError:
            return {}  # deleted meanwhile by another reader that found it broken
        except Exception as exc:  # noqa: BLE001 (any broken shard is dropped and recomputed, never fatal)
            self._drop(shard, f"dropped broken shard {shard} ({str(exc)[:160]})")
            return {}

    @staticmethod
    def _entries(meta: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys, digests = json.loads(meta["keys"]), json.loads(meta["digests"])
        values = tensors["values"]
        lengths = tensors.get("lengths")
        if not (
            isinstance(keys, list) and isinstance(digests, list) and len(keys) == len(digests) == len(values)
        ):
            raise ValueError(f"{len(keys)} keys and {len(digests)} digests for {len(values)} rows")
        if lengths is not None and (
            len(lengths) != len(values)
            or values.ndim < 2
            or (lengths < 0).any()
            or (lengths > values.shape[1]).any()
        ):
            raise ValueError("impossible entry lengths")
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError("NaN or infinite values")
        out = {}
        for i, (key, digest) in enumerate(zip(keys, digests, strict=True)):
            value = values[i] if lengths is None else values[i, : int(lengths[i])]
            if not isinstance(key, str) or entry_digest(key, value) != digest:
                raise ValueError(f"entry {i} ({str(key)[:40]}) does not match its content digest")
            out[key] = value
        return out

    def _drop(self, shard: Path, message: str) -> None:
        warnings.warn(f"{self.what}: {message}; {self.then}", stacklevel=5)
        for path in (shard, shard.with_suffix(".json")):
            with contextlib.suppress(OSError):
                path.unlink()

    def _drop_old(self, shards: list[Path]) -> None:
        if not shards:
            return
        warnings.warn(
            f"{self.what}: dropped {len(shards)} shards of an older format without content digests in "
            f"{self.dir} (they cannot be verified); {self.then}",
            stacklevel=4,
        )
        for shard in shards:
            for path in (shard, shard.with_suffix(".json")):
                with contextlib.suppress(OSError):
                    path.unlink()

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The entries held for these keys (missing keys are absent from the result)."""
        index = self._load()
        return {k: index[k] for k in keys if k in index}

    # ------------------------------------------------------------------ writing
    def put(
        self, keys: Sequence[str], values: np.ndarray | Sequence[np.ndarray], dtype: DTypeLike = np.float32
    ) -> None:
        """Store entries, as one new shard: a matrix [N, ...] (one row per key), or a list of N arrays that
        may differ in their first dimension (stored padded, with their lengths). Values are converted to
        `dtype`; what `get` returns afterwards is exactly what a later reader verifies."""
        keys = [str(k) for k in keys]
        if isinstance(values, np.ndarray):
            if len(values) != len(keys):
                raise ValueError(f"{len(keys)} keys for {len(values)} rows")
            stacked = np.ascontiguousarray(values, dtype=dtype)
            entries, lengths = list(stacked), None
        else:
            entries = [np.ascontiguousarray(v, dtype=dtype) for v in values]
            if len(entries) != len(keys):
                raise ValueError(f"{len(keys)} keys for {len(entries)} entries")
            if not entries:
                return
            width = max(len(e) for e in entries)
            stacked = np.zeros((len(entries), width, *entries[0].shape[1:]), dtype)
            for i, e in enumerate(entries):
                stacked[i, : len(e)] = e
            lengths = np.array([len(e) for e in entries], np.int64)
        self._load().update(zip(keys, entries, strict=True))
        if self.dir is None or not keys:
            return
        meta = {
            "format": SHARD_FORMAT,
            "keys": json.dumps(keys),
            "digests": json.dumps([entry_digest(k, e) for k, e in zip(keys, entries, strict=True)]),
        }
        tensors = {"values": stacked} if lengths is None else {"values": stacked, "lengths": lengths}
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        from safetensors.numpy import save_file

        atomic.write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
