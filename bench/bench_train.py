"""Training time of the sparse model (K=8, top-2) on 10,000 pairs of cached 384-d embeddings, and peak
memory on 100,000 pairs.

Targets (issue: library foundation): <= 20 s for 10k pairs on 2 cores; < 4 GB peak for 100k pairs.
Features are synthetic unit vectors with a planted, context-dependent preference (the cost per pair is the
same as for real embeddings; embedding time is measured by bench_embed.py). The single-head baseline is
timed in the same process.
Run: python bench/bench_train.py [--pairs 10000] [--memory-pairs 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic_features(n: int, d: int = 384, groups: int = 8, seed: int = 0):
    from moe_reward.data.pairs import PreferencePair
    from moe_reward.embed.features import PairFeatures

    rng = np.random.default_rng(seed)
    # Groups come in reversed couples (g and g+1 prefer opposite directions), so one head cannot fit them.
    base_dirs = rng.normal(size=(groups // 2, d)).astype(np.float32) / np.sqrt(d)
    directions = np.concatenate([base_dirs, -base_dirs])[
        np.arange(groups) % 2 * (groups // 2) + np.arange(groups) // 2
    ]
    group = rng.integers(groups, size=n)
    prompt = rng.normal(size=(n, d)).astype(np.float32) * 0.3
    prompt[np.arange(n), group] += 3
    base = rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    delta = directions[group] + 0.7 * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    pairs = [PreferencePair("p", "c", "r", group=str(g), id=str(i)) for i, g in enumerate(group)]
    return PairFeatures(norm(prompt), norm(base + 0.3 * delta), norm(base - 0.3 * delta), pairs, {})


def time_training(n: int) -> None:
    from moe_reward.evaluate.metrics import evaluate
    from moe_reward.model.moe import ModelConfig
    from moe_reward.train.config import TrainConfig
    from moe_reward.train.loop import train_model

    f = synthetic_features(n + n // 10)
    train, val = f.subset(range(n)), f.subset(range(n, len(f)))
    for kind in ("single", "sparse"):
        t0 = time.perf_counter()
        res = train_model(
            train, val, ModelConfig(kind=kind, num_experts=8, top_k=2), TrainConfig.for_kind(kind)
        )
        dt = time.perf_counter() - t0
        ev = evaluate(res.model, val)
        print(
            f"{kind:7s} K={res.model.num_experts} on {n} pairs: {dt:6.2f} s, {len(res.history)} epochs, "
            f"val accuracy {ev['accuracy']:.3f}, NMI {ev['routing_nmi']:.3f}"
        )


def peak_memory(n: int) -> None:
    code = (
        "import resource, sys; sys.path.insert(0, 'bench');"
        "from bench_train import synthetic_features;"
        "from moe_reward.model.moe import ModelConfig; from moe_reward.train.config import TrainConfig; from moe_reward.train.loop import train_model;"
        f"f = synthetic_features({n}); train_model(f, None, ModelConfig(kind='sparse', num_experts=8, top_k=2),"
        " TrainConfig(epochs=2, min_steps=1));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kb = int(out.stdout.strip().splitlines()[-1])
    print(
        f"peak RSS training sparse on {n} pairs (process total, incl. torch): {kb / 1024**2:.2f} GB (target < 4 GB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--memory-pairs", type=int, default=100_000)
    args = ap.parse_args()
    time_training(args.pairs)
    peak_memory(args.memory_pairs)
    print(json.dumps({"self_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))


if __name__ == "__main__":
    main()
