"""The embedding cache: each distinct text embedded once, ever, per backbone (`EmbeddingCache`, on disk), a
bounded in-memory cache for long-running processes (`MemoryCache`), and `embed_texts`, which embeds what
the cache does not hold yet."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike
from tqdm.auto import tqdm

from ..core.shards import ShardedCache, cache_root
from .backbone import Backbone
from .features import ProgressFn


def default_cache_dir() -> Path:
    """The embedding cache's folder: ``embeddings/`` under `core.shards.cache_root` (``$MOE_REWARD_CACHE``)."""
    return cache_root() / "embeddings"


class EmbeddingCache(ShardedCache):
    """Embeddings on disk keyed by (backbone, pooling, max length, ...) and the hash of each input text:
    a `core.shards.ShardedCache` (each `put` one new verified shard; a broken or mismatched shard is
    dropped with a warning and its texts embedded again)."""

    def __init__(self, root: str | Path | None, backbone_key: str):
        super().__init__(
            None if root is None else Path(root) / backbone_key,
            "embedding cache",
            "its texts will be embedded again",
        )

    @staticmethod
    def text_hash(prompt: str, response: str | None) -> str:
        body = prompt if response is None else f"{prompt}\x00{response}"
        return hashlib.sha1(body.encode("utf-8")).hexdigest()

    def put(
        self, keys: Sequence[str], values: np.ndarray | Sequence[np.ndarray], dtype: DTypeLike = np.float32
    ) -> None:
        """One embedding row per text hash (a matrix [N, D], stored float32)."""
        super().put(keys, np.asarray(values), dtype=dtype)


class TextCache(Protocol):
    """What `embed_texts` needs of a cache: embeddings by text hash."""

    def get(self, hashes: Sequence[str], /) -> dict[str, np.ndarray]: ...

    def put(self, hashes: Sequence[str], matrix: np.ndarray, /) -> None: ...


class MemoryCache:
    """Embeddings in memory, at most `max_entries` of them (least recently used dropped first), for a
    process that runs for days (the reward server): under RLHF nearly every response is new, so an
    unbounded or on-disk cache would only grow, while prompts (many responses each) stay hot. With `disk`
    (an `EmbeddingCache`), lookups that miss memory read it and new embeddings are written to it too.
    Safe to share between threads."""

    def __init__(self, max_entries: int = 50_000, disk: EmbeddingCache | None = None):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.disk = disk
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for h in hashes:
                vec = self._entries.get(h)
                if vec is not None:
                    self._entries.move_to_end(h)
                    found[h] = vec
        missing = [h for h in hashes if h not in found]
        if self.disk is not None and missing:
            from_disk = self.disk.get(missing)
            self._remember(from_disk)
            found.update(from_disk)
        self.hits += len(found)
        self.misses += len(hashes) - len(found)
        return found

    def put(self, hashes: Sequence[str], matrix: np.ndarray) -> None:
        self._remember(dict(zip(hashes, np.asarray(matrix, dtype=np.float32), strict=True)))
        if self.disk is not None:
            self.disk.put(hashes, matrix)

    def _remember(self, entries: dict[str, np.ndarray]) -> None:
        with self._lock:
            for h, vec in entries.items():
                self._entries[h] = vec
                self._entries.move_to_end(h)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def embed_texts(
    backbone: Backbone,
    items: Sequence[tuple[str, str | None]],
    cache: TextCache | None = None,
    progress: ProgressFn | None = None,
    desc: str = "embed",
    chunk: int = 1024,
) -> np.ndarray:
    """Embed (prompt, response-or-None) items; each distinct item is computed once, cached ones never.

    Progress (the bar on a terminal, or the `progress(done, total)` callback) advances once per batch.
    """
    hashes = [EmbeddingCache.text_hash(p, r) for p, r in items]
    have = cache.get(hashes) if cache is not None else {}
    todo: dict[str, tuple[str, str | None]] = {}
    for h, item in zip(hashes, items, strict=True):
        if h not in have and h not in todo:
            todo[h] = item
    if todo:
        keys = list(todo)
        ids = [backbone.token_ids(p, r) for p, r in todo.values()]
        total = len(ids)
        bar = tqdm(
            total=total, desc=desc, unit="text", disable=True if progress is not None or total < 64 else None
        )
        have = dict(have)
        # Chunks go to the cache as they finish, so an interrupted long run keeps what it did.
        for start in range(0, total, chunk):
            done_before = start

            def step(done: int, _n: int, base: int = done_before) -> None:
                bar.update(base + done - bar.n)
                if progress:
                    progress(base + done, total)

            mat = backbone.encode_ids(ids[start : start + chunk], progress=step, quiet=True)
            if cache is not None:
                cache.put(keys[start : start + chunk], mat)
            have.update(zip(keys[start : start + chunk], mat, strict=True))
        bar.close()
    elif progress:
        progress(len(items), len(items))
    return np.stack([have[h] for h in hashes]) if hashes else np.zeros((0, backbone.dim), np.float32)
