"""How training makes a data-driven choice: one rule for every "is the more complex model better?".

A choice compares per-pair losses of a simpler model (one head, the warm start, fewer clusters) and a more
complex one on pairs that did not fit either. The more complex model wins only if its mean per-pair gain
exceeds `z` standard errors, where

- the standard error is *cluster-robust*: pairs that share a prompt (or another split unit) share their
  routing and are not independent evidence, so gains are summed per unit before their spread is taken;
- `z` is the one-sided normal quantile at ``alpha / candidates`` (Bonferroni): a gain picked as the best
  of many candidates must clear a higher bar than a gain that was the only one tried;
- the gain must also exceed `floor` nats per pair (a consistent gain of 1e-6 nats buys nothing).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
import torch

MIN_GAIN = 1e-3  # nats per pair: a smaller gain does not buy a more complex model


def z_threshold(alpha: float = 0.05, candidates: int = 1) -> float:
    """One-sided normal quantile at alpha / candidates (Bonferroni over the candidates tried)."""
    return NormalDist().inv_cdf(1.0 - alpha / max(int(candidates), 1))


@dataclass(frozen=True)
class GainTest:
    """The outcome of one comparison (serialized into metrics.json under the choice it made)."""

    gain: float  # mean per-pair gain, nats (the simpler model's loss minus the other's)
    se: float  # its cluster-robust standard error
    z: float  # the bar: gain must exceed z * se (and floor)
    pairs: int
    units: int  # independent units the standard error counts (prompts, questions, ...)
    candidates: int
    floor: float
    significant: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self, unit: str = "nats") -> str:
        """'gain 0.081 ± 0.012 nats per pair over 412 pairs (98 units), bar 2.71 SE' (unit: what a gain
        is measured in: "nats" of log loss, or "accuracy")."""
        what = "nats per pair" if unit == "nats" else unit
        return (
            f"gain {self.gain:.4f} ± {self.se:.4f} {what} over {self.pairs} pairs ({self.units} "
            f"independent units), bar {self.z:.2f} standard errors"
            + (f" for {self.candidates} candidates" if self.candidates > 1 else "")
        )


def gain_test(
    gain: torch.Tensor | np.ndarray,
    units: np.ndarray | None = None,
    candidates: int = 1,
    alpha: float = 0.05,
    floor: float = 0.0,
    z: float | None = None,
) -> GainTest:
    """Test per-pair gains (see the module docstring). `units[i]` names the independent unit of pair i
    (None: every pair is its own unit); `z` overrides the Bonferroni bar."""
    g = np.asarray(gain.detach().cpu().numpy() if isinstance(gain, torch.Tensor) else gain, np.float64)
    n = len(g)
    bar = z_threshold(alpha, candidates) if z is None else float(z)
    if n < 2 or not np.isfinite(g).all():
        return GainTest(float(g.mean()) if n else 0.0, math.inf, bar, n, n, candidates, floor, False)
    mean = float(g.mean())
    if units is None:
        count = n
        se = float(g.std(ddof=1) / math.sqrt(n))
    else:
        _, inverse = np.unique(np.asarray(units), return_inverse=True)
        count = int(inverse.max()) + 1
        if count < 2:
            return GainTest(mean, math.inf, bar, n, count, candidates, floor, False)
        sums = np.bincount(inverse, weights=g)
        sizes = np.bincount(inverse)
        resid = sums - sizes * mean  # per-unit deviation from the mean gain
        se = float(math.sqrt(count / (count - 1) * (resid**2).sum()) / n)
    significant = mean > max(bar * se, floor)
    return GainTest(mean, se, bar, n, count, candidates, floor, bool(significant))


def significant_gain(
    gain: torch.Tensor,
    floor: float = 0.0,
    units: np.ndarray | None = None,
    candidates: int = 1,
    z: float | None = 1.0,
) -> bool:
    """Whether per-pair gains favour the more complex model. With the defaults, the one-standard-error
    rule used to *select* among candidates on validation (the mean gain exceeds one standard error and
    `floor`); pass ``z=None`` and `candidates` for a Bonferroni-corrected *test* (`gain_test`)."""
    return gain_test(gain, units, candidates, floor=floor, z=z).significant
