"""What a number would be by chance: the statistics every headline number is read against.

- `normalized_mutual_information` and its **permutation null** (`nmi_null`): the NMI between two labelings
  of a few hundred pairs is far above 0 even when they are independent (many clusters, few pairs), so an
  NMI is only specialization when it beats its own chance level. The null shuffles the group labels --
  across *units* (prompts) when every unit has one group, because pairs of one prompt share their routing
  and are not independent -- and reports the null's mean, its 95th percentile and a permutation p-value.
- `wilson_interval`: the 95% interval of an accuracy on n pairs.
- `one_sided_p`: the p-value of a mean gain given its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

NULL_PERMUTATIONS = 1000
MAX_NULL_CELLS = (
    1_000_000  # permutations x pairs: fewer permutations on large sets (p resolution 1/201 at worst)
)


def _entropy_of_counts(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi_from_table(table: np.ndarray) -> float:
    """NMI of a contingency table (arithmetic-mean normalization, as scikit-learn's default); 0 when either
    side is constant."""
    table = np.asarray(table, dtype=np.float64)
    n = table.sum()
    if n <= 0:
        return 0.0
    ha, hb = _entropy_of_counts(table.sum(1)), _entropy_of_counts(table.sum(0))
    if ha == 0 or hb == 0:
        return 0.0
    pj = table / n
    pa, pb = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
    nz = pj > 0
    mi = float((pj[nz] * np.log(pj[nz] / (pa @ pb)[nz])).sum())
    return max(0.0, mi / ((ha + hb) / 2))


def normalized_mutual_information(a, b) -> float:
    """NMI with arithmetic-mean normalization (as scikit-learn's default); 0 when either side is constant."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) == 0:
        return 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    return nmi_from_table(table)


def _nmi_rows(tables: np.ndarray) -> np.ndarray:
    """NMI of each of P contingency tables [P, A, B] (vectorized `nmi_from_table`)."""
    n = tables.sum((1, 2), keepdims=True)
    pj = tables / np.maximum(n, 1)
    pa, pb = pj.sum(2, keepdims=True), pj.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.where(pj > 0, pj * np.log(pj / (pa * pb)), 0.0).sum((1, 2))
        ha = -np.where(pa > 0, pa * np.log(pa), 0.0).sum((1, 2))
        hb = -np.where(pb > 0, pb * np.log(pb), 0.0).sum((1, 2))
        out = np.where((ha > 0) & (hb > 0), mi / ((ha + hb) / 2), 0.0)
    return np.maximum(out, 0.0)


@dataclass(frozen=True)
class NullNMI:
    """An NMI beside its permutation null."""

    observed: float
    null_mean: float
    null_p95: float
    p: float  # (1 + #null >= observed) / (1 + permutations)
    permutations: int
    unit: str  # what was shuffled: "prompt" (whole prompts) or "pair"

    @property
    def significant(self) -> bool:
        return self.p < 0.05


def nmi_null(
    top: np.ndarray,
    groups: np.ndarray,
    units: np.ndarray | None = None,
    permutations: int = NULL_PERMUTATIONS,
    seed: int = 0,
) -> NullNMI:
    """NMI(top expert, group) against its permutation null. When every unit (e.g. prompt) carries one group,
    whole units' groups are shuffled (pairs of one prompt share their routing); otherwise pairs' groups."""
    top, groups = np.asarray(top), np.asarray(groups)
    _, ti = np.unique(top, return_inverse=True)
    names, gi = np.unique(groups, return_inverse=True)
    n, a, b = len(gi), len(names), int(ti.max()) + 1 if len(ti) else 1
    table = np.zeros((a, b))
    np.add.at(table, (gi, ti), 1)
    observed = nmi_from_table(table)
    rng = np.random.default_rng(seed)
    permutations = max(200, min(permutations, MAX_NULL_CELLS // max(n, 1)))
    by_unit = False
    unit_group = ui = np.zeros(0, np.int64)
    if units is not None and n:
        _, ui = np.unique(np.asarray(units), return_inverse=True)
        unit_group = np.full(ui.max() + 1, -1)
        unit_group[ui] = gi
        by_unit = bool((unit_group[ui] == gi).all()) and len(unit_group) > 1
    block = max(1, min(100, 5_000_000 // max(n, 1)))  # permutations per contingency batch (bounded memory)
    null = np.empty(permutations)
    for s in range(0, permutations, block):
        m = min(block, permutations - s)
        base = unit_group if by_unit else gi
        perms = rng.permuted(np.broadcast_to(base, (m, len(base))), axis=1)
        if by_unit:
            perms = perms[:, ui]
        flat = (np.arange(m)[:, None] * a * b + perms * b + ti[None, :]).ravel()
        tables = np.bincount(flat, minlength=m * a * b).reshape(m, a, b).astype(np.float64)
        null[s : s + m] = _nmi_rows(tables)
    p = (1 + int((null >= observed - 1e-12).sum())) / (1 + permutations)
    return NullNMI(
        observed,
        float(null.mean()),
        float(np.quantile(null, 0.95)),
        p,
        permutations,
        "prompt" if by_unit else "pair",
    )


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion (successes may be fractional: ties count as half)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def one_sided_p(mean: float, se: float) -> float:
    """P(a gain this large or larger | no gain) under a normal approximation."""
    if not math.isfinite(se) or se <= 0:
        return 0.0 if mean > 0 and se == 0 else 1.0
    return 1.0 - NormalDist().cdf(mean / se)
