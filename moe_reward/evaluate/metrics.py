"""Evaluation and routing statistics of a trained model on a set of pair features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..embed.features import PairFeatures
from ..model.moe import SparseMoERewardModel
from ..model.router_inputs import RouterData, router_data


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
        return self.prob_chosen > 0.5

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


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(a, b) -> float:
    """NMI with arithmetic-mean normalization (as scikit-learn's default); 0 when either side is constant."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) == 0:
        return 0.0
    ha, hb = _entropy(a), _entropy(b)
    if ha == 0 or hb == 0:
        return 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    pj = joint / joint.sum()
    pa, pb = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
    nz = pj > 0
    mi = float((pj[nz] * np.log(pj[nz] / (pa @ pb)[nz])).sum())
    return max(0.0, mi / ((ha + hb) / 2))


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


def evaluate(
    model: SparseMoERewardModel,
    features: PairFeatures,
    scores: PairScores | None = None,
    diagnostics: bool = False,
) -> dict:
    """Pairwise accuracy overall and per group, routing statistics, NMI(top-1 expert, group); with
    `diagnostics`, also `specialization_diagnostics` under ``"diagnostics"`` (seconds, not milliseconds)."""
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
    result: dict = {
        "model": model.describe(),
        "kind": model.config.kind,
        "n_pairs": n,
        "accuracy": float(s.correct.mean()) if n else float("nan"),
        "mean_margin": float(s.margin.mean()) if n else float("nan"),
        "expert_utilization": utilization.round(6).tolist(),
        "expert_load": s.routing.mean(0).round(6).tolist() if n else [0.0] * k,
        "routing_entropy": float(ent.mean()) if n else float("nan"),
        "routing_entropy_normalized": float(ent.mean() / np.log(k)) if n and k > 1 else 0.0,
        "active_experts_per_pair": float(active.sum(-1).mean()) if n else 0.0,
        "coactivation": co.round(6).tolist(),
        "expert_accuracy": s.expert_correct.mean(0).round(6).tolist() if n else [0.0] * k,
        "expert_top_accuracy": expert_top_accuracy(top, s.correct, k),
        "per_group": {},
        "routing_nmi": None,
        "routing_purity": None,
        "per_expert_group_accuracy": {},
        "group_expert_counts": {},
    }
    if groups is not None and n:
        for g in sorted(set(groups)):
            m = groups == g
            result["per_group"][g] = {"accuracy": float(s.correct[m].mean()), "n": int(m.sum())}
            result["group_expert_counts"][g] = np.bincount(top[m], minlength=k).tolist()
        result["routing_nmi"] = normalized_mutual_information(top, groups) if k > 1 else 0.0
        result["routing_purity"] = routing_purity(top, groups) if k > 1 else None
        for e in range(k):
            result["per_expert_group_accuracy"][str(e)] = {
                g: float(s.expert_correct[groups == g, e].mean()) for g in sorted(set(groups))
            }
    if diagnostics:
        result["diagnostics"] = specialization_diagnostics(model, features, s, router)
    return result


# ----------------------------------------------------------------------------- specialization diagnostics

DIAGNOSTIC_FOLDS = 5
DIAGNOSTIC_MAX_PAIRS = 5000
MIN_GROUP_PAIRS = 5  # groups with fewer pairs than this are left out of the probes


def _folds(features: PairFeatures, rows: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds that keep all pairs of one prompt on one side."""
    from sklearn.model_selection import GroupKFold

    prompts = [features.pairs[i].prompt for i in rows]
    _, prompt_ids = np.unique(prompts, return_inverse=True)
    n = min(n_folds, len(np.unique(prompt_ids)))
    if n < 2:
        return []
    return list(GroupKFold(n_splits=n).split(rows, groups=prompt_ids))


@torch.no_grad()
def specialization_diagnostics(
    model: SparseMoERewardModel,
    features: PairFeatures,
    scores: PairScores,
    router: RouterData | None = None,
    seed: int = 0,
) -> dict:
    """Where specialization fails: in what the router can see, or in what training found.

    - ``contingency``: group x expert counts of each pair's top-1 expert.
    - ``router_probe_nmi`` / ``router_probe_accuracy``: a *supervised* linear router (multinomial logistic
      regression, given the groups) on the same standardized router inputs, cross-validated over prompts
      (5 folds): the NMI it reaches is the ceiling that unsupervised routing could reach with this input.
    - ``oracle_routing_accuracy``: one Bradley-Terry head per group on the experts' inputs, the group given
      at test time, cross-validated the same way: what the experts' inputs allow with perfect routing.
    - ``discovery_efficiency``: routing NMI / probe NMI (1 = training found all the probe can see).
    Values are None where they do not apply (no groups, one expert, no router, too few pairs).
    """
    from sklearn.linear_model import LogisticRegression

    groups = groups_of(features)
    out: dict = {
        "contingency": {},
        "router_probe_nmi": None,
        "router_probe_accuracy": None,
        "oracle_routing_accuracy": None,
        "discovery_efficiency": None,
        "pairs": 0,
        "folds": 0,
    }
    if groups is None or not len(features):
        return out
    k = model.num_experts
    top = scores.top_expert
    for g in sorted(set(groups)):
        out["contingency"][g] = np.bincount(top[groups == g], minlength=k).tolist()
    names, counts = np.unique(groups, return_counts=True)
    keep = set(names[counts >= MIN_GROUP_PAIRS])
    rows = np.flatnonzero([g in keep for g in groups])
    if len(keep) < 2:
        return out
    if len(rows) > DIAGNOSTIC_MAX_PAIRS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, DIAGNOSTIC_MAX_PAIRS, replace=False))
    folds = _folds(features, rows, DIAGNOSTIC_FOLDS)
    if not folds:
        return out
    y = groups[rows]
    out["pairs"], out["folds"] = int(len(rows)), len(folds)
    diff = ((features.chosen[rows] - features.rejected[rows]) / model.response_scale.numpy()).astype(
        np.float64
    )
    correct = np.zeros(len(rows), bool)
    for fit_idx, test_idx in folds:
        for g in np.unique(y[test_idx]):
            fit_g = fit_idx[y[fit_idx] == g]
            test_g = test_idx[y[test_idx] == g]
            if not len(fit_g):
                continue
            x = np.concatenate([diff[fit_g], -diff[fit_g]])
            t = np.r_[np.ones(len(fit_g)), np.zeros(len(fit_g))]
            head = LogisticRegression(C=1.0, fit_intercept=False, max_iter=300).fit(x, t)
            correct[test_g] = diff[test_g] @ head.coef_[0] > 0
    out["oracle_routing_accuracy"] = float(correct.mean())
    if model.config.kind in ("sparse", "dense", "micro") and k > 1:
        router = router if router is not None else router_data(model, features)
        x = model.router_features(router.batch(rows)).numpy().astype(np.float64)
        predicted = np.empty(len(rows), dtype=object)
        for fit_idx, test_idx in folds:
            if len(np.unique(y[fit_idx])) < 2:
                predicted[test_idx] = y[fit_idx][0]
                continue
            probe = LogisticRegression(C=1.0, max_iter=300).fit(x[fit_idx], y[fit_idx])
            predicted[test_idx] = probe.predict(x[test_idx])
        predicted = predicted.astype(str)
        out["router_probe_nmi"] = normalized_mutual_information(predicted, y)
        out["router_probe_accuracy"] = float((predicted == y).mean())
        nmi = normalized_mutual_information(top[rows], y)
        out["routing_nmi_probed_pairs"] = nmi
        if out["router_probe_nmi"] > 1e-9:
            out["discovery_efficiency"] = float(nmi / out["router_probe_nmi"])
    return out


def expert_agreement(scores: PairScores) -> np.ndarray:
    """[K, K] share of pairs on which two experts' margins have the same sign."""
    sign = np.sign(scores.expert_margins)
    return (sign[:, :, None] == sign[:, None, :]).mean(0)


def disagreements(a: PairScores, b: PairScores, limit: int = 200) -> np.ndarray:
    """Indices of pairs where two models pick different winners, the most confident disagreements first."""
    differ = np.where(a.correct != b.correct)[0]
    strength = np.abs(a.prob_chosen[differ] - b.prob_chosen[differ])
    return differ[np.argsort(-strength, kind="stable")][:limit]
