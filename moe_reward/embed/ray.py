"""Distributed embedding on Ray Data: ``moe-reward embed --engine ray``.

How it runs:

1. The driver reads and validates the input with the same loader as the single-process path (the same
   ids and the same file:line error messages), and marks the first pair of every distinct prompt.
2. The pairs become a Ray dataset of Arrow blocks of `block_rows` pairs, streamed through `map_batches`
   with an actor pool of `workers` actors. Each actor loads one backbone (on a GPU when the cluster has
   them: one GPU per actor) and embeds its batch with `embed_texts`: each distinct text of the batch once;
   a prompt's own embedding only in the batch that holds its first pair, so a prompt shared by many pairs
   is embedded once end to end, whatever the block boundaries.
3. The driver receives the embedded batches in input order and writes them as a folder of shards
   (`embed.ShardWriter`: float16 by default, ``manifest.json`` last) as they arrive, filling each pair's
   prompt vector from the first one. Memory holds a few blocks and one vector per distinct prompt.

Multi-node: ``ray start --head --port=6379`` on one machine, ``ray start --address=<head>:6379`` on each
other machine (with this package and the backbone installed), then the same command on any node with
``--address auto``. The shards are written on the machine that runs the command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.pairs import PreferencePair
from .backbone import Backbone, BackboneSpec
from .cache import EmbeddingCache, embed_texts
from .features import ProgressFn, ShardWriter, default_cache_dir


class _EmbedActor:
    """One backbone per actor: a batch of pairs (Arrow columns) -> their prompt / chosen / rejected vectors."""

    def __init__(self, spec: dict, cache_dir: str | None):
        self.backbone = Backbone(BackboneSpec(**spec))
        self.cache = EmbeddingCache(cache_dir, self.backbone.cache_key) if cache_dir else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(x) for x in batch["prompt"]]
        first = np.asarray(batch["first"], dtype=bool)
        n = len(prompts)
        items: list[tuple[str, str | None]] = [(prompts[i], None) for i in range(n) if first[i]]
        items += [(p, str(c)) for p, c in zip(prompts, batch["chosen"], strict=True)]
        items += [(p, str(r)) for p, r in zip(prompts, batch["rejected"], strict=True)]
        self.backbone.truncated = 0
        mat = embed_texts(self.backbone, items, self.cache)
        k = int(first.sum())
        prompt = np.zeros((n, self.backbone.dim), np.float32)
        prompt[first] = mat[:k]
        truncated = np.zeros(n, np.int64)
        truncated[0] = self.backbone.truncated
        return {
            "row": np.asarray(batch["row"]),
            "first": first,
            "prompt": prompt,
            "chosen": mat[k : k + n],
            "rejected": mat[k + n :],
            "truncated": truncated,
            "meta": np.array([json.dumps(self.backbone.metadata())] * n, dtype=object),
        }


def _connect(address: str | None, num_cpus: int | None):
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=address or "local",  # "local": a fresh local cluster, never a stale one
        num_cpus=None if address else num_cpus,  # (a running cluster has its own)
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def embed_with_ray(
    pairs: Sequence[PreferencePair],
    spec: BackboneSpec,
    out: str | Path,
    *,
    workers: int = 2,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    block_rows: int = 256,
    shard_rows: int = 100_000,
    dtype: str = "float16",
    address: str | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Embed `pairs` on a Ray cluster (a local one unless `address` is given) into a folder of shards.

    Returns the manifest (rows, shards, metadata with ``engine``, ``workers`` and ``seconds``). With
    ``gpus_per_worker=None`` each actor takes one GPU when the cluster has GPUs, none otherwise.
    `cache_dir`: an embedding cache on each node's disk (off by default: a large run fills it once).
    """
    import pyarrow as pa
    import ray
    import ray.data

    if workers < 1 or block_rows < 1:
        raise ValueError(f"workers and block_rows must be >= 1 (got {workers}, {block_rows})")
    if not pairs:
        raise ValueError("nothing to embed: no pairs")
    t0 = time.perf_counter()
    started = _connect(address, num_cpus=None if address else max(2, int(workers * cpus_per_worker) + 1))
    try:
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        seen: set[str] = set()
        first = []
        for p in pairs:
            first.append(p.prompt not in seen)
            seen.add(p.prompt)
        table = pa.table(
            {
                "row": np.arange(len(pairs), dtype=np.int64),
                "first": np.array(first),
                "prompt": [p.prompt for p in pairs],
                "chosen": [p.chosen for p in pairs],
                "rejected": [p.rejected for p in pairs],
            }
        )
        blocks = [table.slice(s, block_rows) for s in range(0, len(pairs), block_rows)]
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # shards in input order
        ctx.enable_progress_bars = False  # ours below counts pairs
        root = default_cache_dir() if cache_dir == "default" else cache_dir
        ds = ray.data.from_arrow(blocks).map_batches(
            _EmbedActor,
            fn_constructor_kwargs={"spec": asdict(spec), "cache_dir": None if root is None else str(root)},
            batch_size=block_rows,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker or None,
        )
        writer = ShardWriter(out, dtype=dtype, shard_rows=shard_rows)
        prompt_vec: dict[str, np.ndarray] = {}
        meta: dict = {}
        truncated = 0
        bar = tqdm(
            total=len(pairs), desc="embed pairs (ray)", unit="pair", disable=True if progress else None
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows = np.asarray(batch["row"])
            chunk = [pairs[i] for i in rows]
            prompt = np.array(batch["prompt"], np.float32)  # a writable copy (Ray's batches are read-only)
            for j, (p, is_first) in enumerate(zip(chunk, batch["first"], strict=True)):
                if is_first:
                    prompt_vec[p.prompt] = prompt[j].copy()
                else:
                    prompt[j] = prompt_vec[p.prompt]
            if not meta:
                meta = json.loads(str(batch["meta"][0]))
            truncated += int(np.asarray(batch["truncated"]).sum())
            writer.add(
                prompt,
                np.asarray(batch["chosen"], np.float32),
                np.asarray(batch["rejected"], np.float32),
                chunk,
                meta,
            )
            bar.update(len(rows))
            if progress:
                progress(bar.n, len(pairs))
        bar.close()
        seconds = time.perf_counter() - t0
        return writer.close(
            {"truncated_inputs": truncated, "engine": "ray", "workers": workers, "seconds": round(seconds, 3)}
        )
    finally:
        if started:
            ray.shutdown()
