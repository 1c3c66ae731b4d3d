"""Per-expert statistics: one function, one definition per number, for the Overview's cards, Expert detail,
the stakeholder report and `moe-reward expert`.

    rows = summarize_experts(scores, index=scope.index, names=model.config.expert_names)
    rows[3].top_accuracy      # the model's accuracy on the pairs whose top expert is E3 (None: no such pair)

An expert of a top-k model takes part in pairs of other criteria too (as the second expert), so its own
accuracy over every pair it takes part in mixes in pairs it is not meant to decide: a perfect expert of a
2-expert top-2 model reads 0.50 there. The number a card leads with is therefore `top_accuracy`, the
model's accuracy on the pairs this expert leads (`metrics.expert_top_accuracy`, the same per-pair
correctness as the overall accuracy). `EXPERT_STATS` holds each number's label and definition (the help
text wherever it is shown).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .metrics import PairScores, expert_top_accuracy
from .summary import Stat

EXPERT_STATS: dict[str, Stat] = {
    s.key: s
    for s in (
        Stat(
            "top_accuracy",
            "Accuracy on its pairs",
            "The model's accuracy on the pairs whose top expert (largest routing weight) is this one: how "
            "well the pairs this expert leads are decided. n/a when it leads no pair.",
        ),
        Stat(
            "top_share",
            "Top expert for",
            "Share of the pairs whose top expert (largest routing weight) is this one.",
        ),
        Stat(
            "own_top_accuracy",
            "Its own margin on its pairs",
            "On the pairs it leads, how often this expert's own reward alone (without the other routed "
            "experts) ranks the chosen response above the rejected one.",
        ),
        Stat(
            "mean_weight",
            "Mean routing weight",
            "This expert's routing weight averaged over all pairs of the subset (its share of the mix).",
        ),
    )
}


def expert_title(k: int, names: list[str] | tuple[str, ...] | None = None) -> str:
    """'E3 · brevity' when the analyst named expert 3, else 'E3'."""
    name = names[k] if names is not None and 0 <= k < len(names) else ""
    return f"E{k} · {name}" if name else f"E{k}"


@dataclass(frozen=True)
class ExpertSummary:
    """One expert on one subset of pairs (JSON: `asdict`, the same keys)."""

    expert: int
    name: str  # the analyst's name for it ('' when unnamed)
    title: str  # 'E3 · brevity' or 'E3'
    n_pairs: int  # pairs in the subset
    n_top: int  # of them, pairs whose top expert is this one
    top_share: float  # n_top / n_pairs
    top_accuracy: float | None  # the model's accuracy on those pairs (None when n_top == 0)
    own_top_accuracy: float | None  # this expert's own margin's sign on those pairs
    n_routed: int  # pairs with a non-zero routing weight for it (top-k)
    mean_weight: float  # its mean routing weight over the subset

    @property
    def used(self) -> bool:
        return self.n_top > 0

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_experts(
    scores: PairScores, index: np.ndarray | None = None, names: list[str] | None = None
) -> list[ExpertSummary]:
    """Every expert's statistics on the pairs `index` of `scores` (all pairs when None)."""
    s = scores if index is None else scores.subset(np.asarray(index, dtype=np.int64))
    k = s.routing.shape[1]
    n = len(s.margin)
    top = s.top_expert
    lead_accuracy = expert_top_accuracy(top, s.correct, k)
    out = []
    for e in range(k):
        mine = top == e
        n_top = int(mine.sum())
        out.append(
            ExpertSummary(
                expert=e,
                name=(names[e] if names is not None and e < len(names) else "") or "",
                title=expert_title(e, names),
                n_pairs=n,
                n_top=n_top,
                top_share=n_top / n if n else 0.0,
                top_accuracy=lead_accuracy[e],
                own_top_accuracy=float(s.expert_correct[mine, e].mean()) if n_top else None,
                n_routed=int((s.routing[:, e] > 0).sum()),
                mean_weight=float(s.routing[:, e].mean()) if n else 0.0,
            )
        )
    return out


def unused_experts(scores: PairScores) -> list[int]:
    """Experts that are the top expert of no pair at all (of every pair scored): nothing routes to them."""
    k = scores.routing.shape[1]
    counts = np.bincount(scores.top_expert, minlength=k) if len(scores.margin) else np.zeros(k, int)
    return [e for e in range(k) if counts[e] == 0]


def describe_unused(experts: list[int], n_pairs: int) -> str:
    """'6 unused experts (E2, E3, E4, E5, E6, E7): the top expert of none of the 200 pairs.'"""
    if not experts:
        return ""
    which = ", ".join(f"E{e}" for e in experts)
    noun = "expert" if len(experts) == 1 else "experts"
    return (
        f"{len(experts)} unused {noun} ({which}): the top expert of none of the {n_pairs} pairs, so "
        f"nothing routes to {'it' if len(experts) == 1 else 'them'} first."
    )


@dataclass(frozen=True)
class ExpertGroupRow:
    """One expert on one group of a subset (Expert detail's per-group chart)."""

    group: str
    n: int  # pairs of the group in the subset
    n_top: int  # of them, pairs whose top expert is this one
    own_accuracy: float  # this expert's own margin's sign, on every pair of the group
    top_accuracy: float | None  # the model's accuracy on the group's pairs this expert leads


def expert_groups(
    scores: PairScores, groups: np.ndarray, expert: int, index=None, order: list[str] | None = None
) -> list[ExpertGroupRow]:
    """Per group (in `order`, sorted names by default), how expert `expert` does on the pairs `index` (all
    when None)."""
    idx = np.arange(len(scores.margin)) if index is None else np.asarray(index, dtype=np.int64)
    s, g = scores.subset(idx), np.asarray(groups)[idx]
    leads = s.top_expert == expert
    out = []
    for name in order if order is not None else sorted(set(g.tolist())):
        m = g == name
        led = m & leads
        out.append(
            ExpertGroupRow(
                str(name),
                int(m.sum()),
                int(led.sum()),
                float(s.expert_correct[m, expert].mean()),
                float(s.correct[led].mean()) if led.any() else None,
            )
        )
    return out


def expert_pairs(scores: PairScores, expert: int, index=None, top: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Rows (of the file) of the `top` pairs in `index` with the highest routing weight for `expert`, and of
    the `top` with its largest own margins (in absolute value); stable order."""
    idx = np.arange(len(scores.margin)) if index is None else np.asarray(index, dtype=np.int64)
    weight = scores.routing[idx, expert]
    margin = np.abs(scores.expert_margins[idx, expert])
    return idx[np.argsort(-weight, kind="stable")[:top]], idx[np.argsort(-margin, kind="stable")[:top]]
