"""Personalization speed: one Hedge update and a 32-label gradient fit (targets: <= 5 ms, <= 200 ms).

Each is printed next to a bare numpy baseline of the same arithmetic in this process, so the adapter's
own overhead (validation, history, warm-started re-solves) is visible and the numbers can be compared
across machines. Run: ``python bench/bench_personalize.py [--experts 8]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from moe_reward.personalize.adapters import make_adapter, softmax, softplus


def best_of(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls, in milliseconds (best-of filters scheduler noise)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def numpy_gradient_fit(m: np.ndarray, steps: int = 200, lr: float = 0.1) -> np.ndarray:
    """Baseline: one cold Adam solve of the same objective, no history, no warm starts."""
    z, mom, vel = np.zeros(m.shape[1]), np.zeros(m.shape[1]), np.zeros(m.shape[1])
    for t in range(1, steps + 1):
        w = softmax(z)
        gw = m.T @ (-0.5 * (1 + np.tanh(-0.5 * (m @ w))) / len(m))
        g = w * (gw - w @ gw) + 0.02 * z
        mom = 0.9 * mom + 0.1 * g
        vel = 0.999 * vel + 0.001 * g * g
        z -= lr * (mom / (1 - 0.9**t)) / (np.sqrt(vel / (1 - 0.999**t)) + 1e-8)
    return softmax(z)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--labels", type=int, default=32)
    args = ap.parse_args(argv)
    k, n = args.experts, args.labels
    rng = np.random.default_rng(0)
    margins = rng.normal(size=(n, k))
    margins[:, 1] = np.abs(margins[:, 1]) + 0.2
    logits = rng.normal(size=(n, k))

    hedge = make_adapter("hedge", k)
    hedge_ms = best_of(lambda: hedge.update(margins[0], "p0"), 200)
    logw = np.zeros(k)
    base_ms = best_of(lambda: softmax(logw - softplus(-margins[0])), 200)
    print(f"hedge update       {hedge_ms:8.3f} ms   (numpy baseline {base_ms:.3f} ms; target <= 5 ms)")

    ids = [f"p{i}" for i in range(n)]
    for params in ({"mode": "weights"}, {"mode": "router_bias"}, {"mode": "router_bias", "top_k": 2}):
        grad = make_adapter("gradient", k, **params)
        ms = best_of(lambda grad=grad: grad.fit(margins, ids, logits), 5)
        label = ", ".join(f"{a}={b}" for a, b in params.items())
        print(f"gradient fit {n:>3} labels ({label}) {ms:8.1f} ms   (target <= 200 ms)")
    base_ms = best_of(lambda: numpy_gradient_fit(margins), 5)
    print(f"numpy baseline: one cold 200-step Adam solve on {n} labels {base_ms:.1f} ms")
    for name in ("hedge", "batch"):
        ad = make_adapter(name, k)
        print(f"{name} fit {n} labels {best_of(lambda ad=ad: ad.fit(margins, ids), 20):8.3f} ms")


if __name__ == "__main__":
    main()
