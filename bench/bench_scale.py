"""Embedding and training at scale.

1. Ray engine throughput (`moe-reward embed --engine ray`) with 1 and 2 workers on a local Ray cluster,
   against the single-process pipeline on the same pairs of the default data (one thread per worker;
   the single process uses all cores), with the cosine agreement of the Ray result.
2. Peak memory (max RSS of a fresh process) of loading and training on N synthetic pairs of 384-d features
   stored as float16 shards (default 1M pairs; target < 6 GB), and of the dashboard's first steps on them
   (load + evaluate).

Run: python bench/bench_scale.py [--pairs 300] [--workers 1,2] [--memory-pairs 1000000] [--skip-ray] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def ray_throughput(args) -> None:
    import ray

    from moe_reward.data.pairs import load_pairs
    from moe_reward.embed.backbone import BackboneSpec
    from moe_reward.embed.features import PairFeatures
    from moe_reward.embed.pairs import embed_pairs, pair_items
    from moe_reward.embed.ray import embed_with_ray

    pairs = load_pairs("controlled").pairs[: args.pairs]
    texts = len(set(pair_items(pairs)))
    spec = BackboneSpec(runtime=args.runtime)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    ref = embed_pairs(pairs, spec, cache_dir=None)
    single = time.perf_counter() - t
    print(
        f"{len(pairs)} pairs of the default data = {texts} distinct texts; runtime {args.runtime}; "
        f"load average {load:.2f}; {os.cpu_count()} CPUs"
    )
    print(f"single process (all cores)   : {single:6.1f}s  {texts / single:6.1f} texts/s")
    t = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=max(w for w in args.workers) + 1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    print(f"ray cluster start            : {time.perf_counter() - t:6.1f}s")
    try:
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                manifest = embed_with_ray(
                    pairs,
                    spec,
                    Path(tmp) / "out",
                    workers=workers,
                    cpus_per_worker=1,
                    block_rows=args.block_rows,
                )
                wall = time.perf_counter() - t
                got = PairFeatures.load(Path(tmp) / "out")
                cos = min(
                    float((got.rows(k) * ref.rows(k)).sum(1).min()) for k in ("prompt", "chosen", "rejected")
                )
            print(
                f"ray engine, {workers} worker(s)      : {wall:6.1f}s  {texts / wall:6.1f} texts/s  "
                f"(actor start-up included; {len(manifest['shards'])} shard(s); cosine to single process min "
                f"{cos:.4f}; load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- memory at scale


def write_synthetic(folder: Path, n: int, dim: int, shard_rows: int, seed: int = 0) -> None:
    """n pairs of unit-norm synthetic features with a learnable signal, written shard by shard (float16)."""
    from moe_reward.data.pairs import PreferencePair
    from moe_reward.embed.features import ShardWriter

    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim).astype(np.float32)
    writer = ShardWriter(folder, dtype="float16", shard_rows=shard_rows)
    for start in range(0, n, shard_rows):
        m = min(shard_rows, n - start)
        prompt = rng.normal(size=(m, dim)).astype(np.float32)
        base = rng.normal(size=(m, dim)).astype(np.float32)
        delta = rng.normal(size=(m, dim)).astype(np.float32)
        delta *= np.sign(delta @ w)[:, None]  # chosen - rejected leans along w
        chosen, rejected = base + 0.5 * delta, base - 0.5 * delta
        for a in (prompt, chosen, rejected):
            a /= np.linalg.norm(a, axis=1, keepdims=True)
        pairs = [
            PreferencePair(
                f"prompt {(start + i) // 4}",
                f"c{start + i}",
                f"r{start + i}",
                group=f"g{(start + i) % 8}",
                id=f"s{start + i}",
            )
            for i in range(m)
        ]
        writer.add(prompt, chosen, rejected, pairs, {"backbone": "synthetic", "pooling": "mean", "dim": dim})
    writer.close()


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def measure_child(folder: str, what: str, kind: str, epochs: int) -> None:
    """Runs in a fresh process: load the shards, then train (or evaluate), printing peak RSS at each step."""
    import torch

    from moe_reward.core.heap import return_freed_memory
    from moe_reward.embed.features import PairFeatures

    if not os.environ.get("NO_HEAP_FIX"):
        return_freed_memory()  # as the CLI does
    out: dict = {}
    t = time.perf_counter()
    feats = PairFeatures.load(folder)
    out["load_s"], out["after_load_gb"], out["storage"] = (
        time.perf_counter() - t,
        _peak_gb(),
        feats.storage_dtype,
    )
    if what == "train":
        from moe_reward.app.pipeline import TrainRequest, train_from_data
        from moe_reward.train.config import TrainConfig

        torch.manual_seed(0)
        req = TrainRequest(
            data=folder,
            kind=kind,
            experts=8,
            top_k=2,
            router_input="pooled",
            train=TrainConfig.for_kind(kind, epochs=epochs, min_steps=0, batch_size=4096),
        )
        t = time.perf_counter()
        _, metrics = train_from_data(req, None, features=feats)
        out["train_s"], out["accuracy"] = time.perf_counter() - t, metrics["test"]["accuracy"]
    else:
        from moe_reward.evaluate.metrics import evaluate
        from moe_reward.model.moe import ModelConfig, SparseMoERewardModel

        model = SparseMoERewardModel(
            ModelConfig(kind=kind, input_dim=feats.dim, num_experts=8, top_k=2, router_input="pooled")
        )
        t = time.perf_counter()
        res = evaluate(model, feats)
        out["eval_s"], out["accuracy"] = time.perf_counter() - t, res["accuracy"]
    out["peak_gb"] = _peak_gb()
    print(json.dumps(out))


def memory(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp) / "features"
        t = time.perf_counter()
        write_synthetic(folder, args.memory_pairs, args.dim, args.shard_rows)
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
        print(
            f"wrote {args.memory_pairs:,} synthetic pairs x {args.dim}-d as float16 shards ({size:.2f} GiB) in "
            f"{time.perf_counter() - t:.0f}s; float32 in memory would be "
            f"{args.memory_pairs * args.dim * 3 * 4 / 2**30:.2f} GiB",
            flush=True,
        )
        for what in ("train", "evaluate"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(folder),
                "--child-what",
                what,
                "--kind",
                args.kind,
                "--epochs",
                str(args.epochs),
            ]
            res = subprocess.run(
                cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()}
            )
            if res.returncode:
                print(res.stderr[-3000:])
                raise SystemExit(f"{what} failed")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            verdict = (
                ""
                if what != "train"
                else f" (target < 6 GB: {'met' if row['peak_gb'] * 2**30 / 1e9 < 6 else 'MISSED'})"
            )
            print(
                f"{what:8s} {args.kind} on {args.memory_pairs:,} pairs{' (glibc default malloc)' if os.environ.get('NO_HEAP_FIX') else ''}: peak RSS {row['peak_gb']:.2f} GiB "
                f"= {row['peak_gb'] * 2**30 / 1e9:.2f} GB{verdict}; after loading {row['after_load_gb']:.2f} GiB "
                f"({row['storage']} in memory, {row['load_s']:.0f}s); "
                + ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in row.items()
                    if k.endswith("_s") or k == "accuracy"
                ),
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=300, help="pairs of the default data for the Ray throughput")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--block-rows", type=int, default=64)
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnx", "onnx-int8"])
    ap.add_argument("--memory-pairs", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shard-rows", type=int, default=100_000)
    ap.add_argument("--kind", default="sparse")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--tmp", default=None, help="where the synthetic shards go (default: the system temp dir)"
    )
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-what", default="train", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        measure_child(args.child, args.child_what, args.kind, args.epochs)
        return
    args.workers = [int(w) for w in args.workers.split(",")]
    if not args.skip_ray:
        ray_throughput(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
