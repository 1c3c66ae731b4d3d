"""Evaluation of a trained model on a set of pair features: one typed `Evaluation`, with every number read
against its chance level (ties count as half; accuracy has its interval; routing NMI its permutation null;
a model whose experts are all alike says so and claims no routing NMI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ..embed.features import PairFeatures
from ..model.moe import ROUTED_KINDS, SparseMoERewardModel
from ..model.router_inputs import RouterData, router_data
from .chance import normalized_mutual_information, wilson_interval
from .diagnostics import Diagnostics, specialization_diagnostics, specialization_verdict

__all__ = ["Evaluation", "PairScores", "evaluate", "normalized_mutual_information", "score_pairs"]


@dataclass
class PairScores:
    """Everything a model says about N pairs, as numpy arrays (row i = features.pairs[i])."""

    margin: np.ndarray  # [N] reward(chosen) - reward(rejected) under the routing used
    prob_chosen: np.ndarray  # [N]
    routing: np.ndarray  # [N, K] weights used (top-k for sparse)
    router_probs: np.ndarray  # [N, K] the router's full softmax
    expert_margins: np.ndarray  # [N, K]
    chosen_rewards: np.ndarray  # [N, K] each expert's reward of the chosen response
    rejected_rewards: np.ndarray  # [N, K]

    @property
    def correct(self) -> np.ndarray:
        """The chosen response scored strictly higher (a tie is not correct: see `credit`)."""
        return self.prob_chosen > 0.5

    @property
    def tie(self) -> np.ndarray:
        """The model scores both responses alike (to float32 precision): it cannot tell them apart."""
        return self.prob_chosen == 0.5

    @property
    def credit(self) -> np.ndarray:
        """Per-pair accuracy credit: 1 correct, 1/2 a tie, 0 wrong (a tie-only model reads 0.5, not 0)."""
        return np.where(self.correct, 1.0, np.where(self.tie, 0.5, 0.0))

    def accuracy(self, index: np.ndarray | None = None) -> float:
        """Accuracy with ties counted as half, on all pairs or those at `index` (nan on none)."""
        credit = self.credit if index is None else self.credit[index]
        return float(credit.mean()) if len(credit) else float("nan")

    @property
    def top_expert(self) -> np.ndarray:
        return self.routing.argmax(-1)

    @property
    def confidence(self) -> np.ndarray:
        """Weight of the top expert: 1 means the pair is routed to one expert only."""
        return self.routing.max(-1)

    @property
    def expert_correct(self) -> np.ndarray:
        return self.expert_margins > 0

    def subset(self, index: np.ndarray) -> PairScores:
        return PairScores(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


@torch.no_grad()
def score_pairs(
    model: SparseMoERewardModel,
    features: PairFeatures,
    user_weights: np.ndarray | None = None,
    user_bias: np.ndarray | None = None,
    batch: int = 8192,
    router: RouterData | None = None,
) -> PairScores:
    model.eval()
    router = router if router is not None else router_data(model, features)
    parts: list[list[np.ndarray]] = [[] for _ in range(7)]
    uw = None if user_weights is None else torch.as_tensor(user_weights, dtype=torch.float32)
    ub = None if user_bias is None else torch.as_tensor(user_bias, dtype=torch.float32)
    for s in range(0, len(features), batch):
        sl = slice(s, s + batch)
        c, r = (
            torch.from_numpy(np.ascontiguousarray(a[sl], np.float32))
            for a in (features.chosen, features.rejected)
        )
        out = model.pair(router.batch(sl), c, r, user_weights=uw, user_bias=ub)
        rc, rr = model.expert_rewards(c), model.expert_rewards(r)
        prob = out.prob_chosen(mixture=model.config.kind == "micro" and uw is None)
        for i, a in enumerate((out.margin, prob, out.routing, out.router_probs, out.expert_margins, rc, rr)):
            parts[i].append(a.numpy())
    k = model.num_experts
    empty = [np.zeros(0), np.zeros(0)] + [np.zeros((0, k))] * 5
    return PairScores(*(np.concatenate(p) if p else e for p, e in zip(parts, empty, strict=True)))


def routing_purity(top_expert: np.ndarray, groups: np.ndarray) -> float:
    """Share of pairs whose top expert's majority group is their own group (1 = experts never mix groups)."""
    total = 0
    for k in np.unique(top_expert):
        _, counts = np.unique(groups[top_expert == k], return_counts=True)
        total += counts.max()
    return total / max(len(groups), 1)


def expert_top_accuracy(top_expert: np.ndarray, correct: np.ndarray, k: int) -> list[float | None]:
    """Per expert, the model's accuracy on the pairs whose top expert it is (None where there are none).

    `correct` is the per-pair correctness the overall accuracy averages (so both use one definition).
    Unlike an expert's own accuracy on every pair it takes part in, this reads 1.0 for an expert that
    decides its pairs perfectly under top-k routing, where the other active experts handle other criteria."""
    top, credit = np.asarray(top_expert), np.asarray(correct, dtype=float)
    return [float(credit[top == e].mean()) if (top == e).any() else None for e in range(k)]


def groups_of(features: PairFeatures) -> np.ndarray | None:
    groups = [p.group for p in features.pairs]
    return None if all(g is None for g in groups) else np.array([g or "(none)" for g in groups])


def distinct_experts(scores: PairScores) -> int:
    """How many experts score these pairs differently (experts whose margins agree to 1e-6 of their scale
    count once): 1 when every expert is a copy of one head."""
    m = scores.expert_margins
    if m.shape[1] <= 1 or not len(m):
        return int(m.shape[1] > 0)
    scale = float(np.abs(m).max()) or 1.0
    return int(np.unique(np.round(m.T / (scale * 1e-6)), axis=0).shape[0])


ONE_EXPERT = "one expert (no specialization found)"


@dataclass
class Evaluation:
    """What `evaluate` says of a model on N pairs. Serialized (``to_dict``) with these field names as JSON
    keys (``eval --json``, ``metrics.json`` → ``test``/``train``); `Evaluation.from_dict` reads them back.
    Mapping access (``ev["accuracy"]``) reads the same JSON view, for code that handles a saved
    metrics.json and a fresh evaluation alike."""

    model: str
    kind: str
    n_pairs: int
    accuracy: float  # ties count as half
    ties: int  # pairs the model scores alike
    accuracy_ci: list[float]  # 95% Wilson interval
    mean_margin: float
    expert_utilization: list[float]  # share of pairs whose top expert is k
    expert_load: list[float]  # mean routing weight of k
    routing_entropy: float
    routing_entropy_normalized: float
    active_experts_per_pair: float
    coactivation: list[list[float]]
    expert_accuracy: list[float]  # each expert's own margin, on every pair
    expert_top_accuracy: list[float | None]  # the model's accuracy on the pairs an expert leads (top expert)
    distinct_experts: int
    experts_identical: bool
    routing: str  # "routed" or ONE_EXPERT
    per_group: dict[str, dict[str, Any]] = field(default_factory=dict)  # accuracy, n, ci
    routing_nmi: float | None = None  # None: no groups, or no routing to measure
    routing_purity: float | None = None
    per_expert_group_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    group_expert_counts: dict[str, list[int]] = field(default_factory=dict)
    specialization: str = "none"  # "routing" | "personalization" | "none"
    specialization_reason: str = ""
    diagnostics: Diagnostics = field(default_factory=Diagnostics)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["diagnostics"] = self.diagnostics.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> Evaluation:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        diag = values.get("diagnostics") or {}
        dknown = {f.name for f in fields(Diagnostics)}
        values["diagnostics"] = Diagnostics(**{k: v for k, v in diag.items() if k in dknown})
        return cls(**values)

    def __getitem__(self, key: str) -> Any:
        if key == "diagnostics":
            return self.diagnostics.to_dict()
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.__dataclass_fields__ else default

    def __contains__(self, key: object) -> bool:
        return key in self.__dataclass_fields__


def evaluate(
    model: SparseMoERewardModel,
    features: PairFeatures,
    scores: PairScores | None = None,
    diagnostics: bool = False,
    train_features: PairFeatures | None = None,
    discovery: dict | None = None,
) -> Evaluation:
    """Pairwise accuracy (ties as half) overall and per group with intervals, routing statistics, NMI(top-1
    expert, group) with its permutation null, and the heterogeneity verdict. With `diagnostics` and the
    model's training pairs (`train_features`), also the router probe, oracle routing and discovery
    efficiency (seconds, not milliseconds). `discovery` is what training decided (``metrics.json``)."""
    router = router_data(model, features)
    s = scores if scores is not None else score_pairs(model, features, router=router)
    k = model.num_experts
    n = len(features)
    groups = groups_of(features)
    top = s.top_expert
    utilization = np.bincount(top, minlength=k) / max(n, 1)
    active = s.routing > 0
    co = (active.T.astype(float) @ active.astype(float)) / max(n, 1)
    ent = -(s.router_probs * np.log(np.clip(s.router_probs, 1e-12, None))).sum(-1)
    credit = s.credit
    distinct = distinct_experts(s) if n else k
    identical = distinct <= 1
    routes = model.config.kind in ROUTED_KINDS and k > 1 and not identical
    ev = Evaluation(
        model=model.describe(),
        kind=model.config.kind,
        n_pairs=n,
        accuracy=float(credit.mean()) if n else float("nan"),
        ties=int(s.tie.sum()),
        accuracy_ci=[round(x, 4) for x in wilson_interval(float(credit.sum()), n)],
        mean_margin=float(s.margin.mean()) if n else float("nan"),
        expert_utilization=utilization.round(6).tolist(),
        expert_load=s.routing.mean(0).round(6).tolist() if n else [0.0] * k,
        routing_entropy=float(ent.mean()) if n else float("nan"),
        routing_entropy_normalized=float(ent.mean() / np.log(k)) if n and k > 1 else 0.0,
        active_experts_per_pair=float(active.sum(-1).mean()) if n else 0.0,
        coactivation=co.round(6).tolist(),
        expert_accuracy=s.expert_correct.mean(0).round(6).tolist() if n else [0.0] * k,
        expert_top_accuracy=expert_top_accuracy(top, credit, k),
        distinct_experts=distinct,
        experts_identical=identical,
        routing="routed" if routes else ONE_EXPERT,
    )
    if groups is not None and n:
        for g in sorted(set(groups)):
            m = groups == g
            ev.per_group[g] = {
                "accuracy": float(credit[m].mean()),
                "n": int(m.sum()),
                "ci": [round(x, 4) for x in wilson_interval(float(credit[m].sum()), int(m.sum()))],
            }
            ev.group_expert_counts[g] = np.bincount(top[m], minlength=k).tolist()
        if routes:
            ev.routing_nmi = normalized_mutual_information(top, groups)
            ev.routing_purity = routing_purity(top, groups)
        for e in range(k):
            ev.per_expert_group_accuracy[str(e)] = {
                g: float(s.expert_correct[groups == g, e].mean()) for g in sorted(set(groups))
            }
    ev.diagnostics = specialization_diagnostics(
        model, features, top, ev.routing_nmi, train_features, probes=diagnostics
    )
    ev.specialization, ev.specialization_reason = specialization_verdict(
        identical, ev.routing_nmi, ev.diagnostics, discovery
    )
    return ev


def expert_agreement(scores: PairScores) -> np.ndarray:
    """[K, K] share of pairs on which two experts' margins have the same sign."""
    sign = np.sign(scores.expert_margins)
    return (sign[:, :, None] == sign[:, None, :]).mean(0)


def disagreements(a: PairScores, b: PairScores, limit: int = 200) -> np.ndarray:
    """Indices of pairs where two models pick different winners, the most confident disagreements first."""
    differ = np.where(a.correct != b.correct)[0]
    strength = np.abs(a.prob_chosen[differ] - b.prob_chosen[differ])
    return differ[np.argsort(-strength, kind="stable")][:limit]
