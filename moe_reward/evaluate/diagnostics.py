"""Where specialization comes from, or fails: in the data, in what the router can see, or in training.

Every diagnostic is estimated so that it can be read against chance, on pairs that did not fit it:

- **Routing NMI null** (`chance.nmi_null`): the test pairs' NMI(top expert, group) beside the mean and 95th
  percentile of its permutation null and a p-value.
- **Router probe**: a *supervised* linear router (multinomial logistic regression, given the groups) on the
  model's own router inputs, cross-validated over the model's *training* pairs (folds keep a prompt on one
  side): the NMI it reaches, with its own permutation p-value, is the ceiling unsupervised routing could reach
  with this input.
- **Oracle routing**: one Bradley-Terry head per group fitted on the training pairs (shrunk toward one head
  fitted on all of them), evaluated on the test pairs with the group given, beside that one head: whether the
  groups prefer differently at all (a paired per-pair log-loss gain with its standard error and p-value).
- **Discovery efficiency** = routing NMI / probe NMI, bounded to [0, 1] with a bootstrap interval, reported
  only when the probe rests on at least `MIN_PROBE_PAIRS` pairs and beats its own chance level; otherwise
  absent, with the reason.
- **The verdict** (`specialization_verdict`): which kind of heterogeneity the data shows -- "routing" (the
  prompt predicts the criterion), "personalization" (groups or users prefer differently on prompts the
  router cannot tell apart) or "none" (nothing detectable with this backbone).

Groups are the pairs' ``group`` field, or their ``user`` when no pair has a group.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..embed.features import PairFeatures
from ..model.moe import ROUTED_KINDS, SparseMoERewardModel
from ..model.router_inputs import router_data
from .chance import NullNMI, nmi_null, normalized_mutual_information, one_sided_p

PROBE_FOLDS = 5
MAX_PROBE_PAIRS = 5000
MIN_GROUP_PAIRS = 5  # groups with fewer training pairs than this are left out of the probes
MIN_PROBE_PAIRS = 200  # fewer training pairs and the probe's NMI is too noisy to divide by
MIN_PROBE_NMI = 0.05
BOOTSTRAPS = 200

VERDICTS = ("routing", "personalization", "none")


@dataclass
class Diagnostics:
    """Specialization diagnostics of one evaluation (``eval --json`` → ``diagnostics``; JSON keys = fields).
    None means "does not apply here"; `reasons` says why for the ones a reader would expect."""

    label: str | None = None  # the field the groups come from: "group" or "user"
    contingency: dict[str, list[int]] = field(default_factory=dict)  # group -> pairs per top expert
    routing_nmi_null: float | None = None  # mean NMI under shuffled groups
    routing_nmi_null_p95: float | None = None
    routing_nmi_p: float | None = None
    null_unit: str | None = None  # "prompt" or "pair": what the null shuffled
    router_probe_nmi: float | None = None
    router_probe_accuracy: float | None = None
    router_probe_p: float | None = None
    router_probe_pairs: int = 0  # training pairs the probe was cross-validated on
    oracle_routing_accuracy: float | None = None  # per-group heads, group given, on the test pairs
    pooled_head_accuracy: float | None = None  # one head fitted the same way, on the same pairs
    oracle_gain: float | None = None  # per-pair log-loss gain of the group heads (nats)
    oracle_gain_se: float | None = None
    oracle_gain_p: float | None = None
    oracle_pairs: int = 0
    discovery_efficiency: float | None = None
    discovery_efficiency_ci: list[float] | None = None
    pairs: int = 0  # test pairs with a group
    folds: int = 0
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def groups_differ(self) -> bool | None:
        if self.oracle_gain_p is None:
            return None
        return self.oracle_gain_p < 0.05

    @property
    def probe_sees_groups(self) -> bool | None:
        if self.router_probe_p is None or self.router_probe_nmi is None:
            return None
        return self.router_probe_p < 0.05 and self.router_probe_nmi >= MIN_PROBE_NMI


def labels_of(features: PairFeatures) -> tuple[str | None, np.ndarray | None]:
    """("group", labels) when pairs have groups, else ("user", labels) when they have users, else (None, None)."""
    for name in ("group", "user"):
        values = [getattr(p, name) for p in features.pairs]
        if any(v is not None for v in values):
            return name, np.array([v or "(none)" for v in values])
    return None, None


def prompt_units(features: PairFeatures) -> np.ndarray:
    return np.array([p.prompt for p in features.pairs], dtype=object)


# ----------------------------------------------------------------------------- Bradley-Terry heads (numpy)


def fit_bt_head(x: np.ndarray, center: np.ndarray, lam: float) -> np.ndarray:
    """argmin_w mean softplus(-x w) + lam/2 |w - center|^2 (L-BFGS): a ridge Bradley-Terry head on
    chosen-minus-rejected differences, shrunk toward `center`."""
    from scipy.optimize import minimize

    n = max(len(x), 1)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        m = x @ w
        d = w - center
        loss = float(np.logaddexp(0.0, -m).mean() + 0.5 * lam * (d @ d))
        grad = -(x.T @ (1.0 / (1.0 + np.exp(np.clip(m, -50, 50))))) / n + lam * d
        return loss, grad

    res = minimize(objective, center.copy(), jac=True, method="L-BFGS-B", options={"maxiter": 200})
    return np.asarray(res.x)


def _bt_loss(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, -(x @ w))


def _credit(margin: np.ndarray) -> np.ndarray:
    return np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))


def _diffs(model: SparseMoERewardModel, f: PairFeatures, rows: np.ndarray | None = None) -> np.ndarray:
    c, r = (f.chosen, f.rejected) if rows is None else (f.chosen[rows], f.rejected[rows])
    return (np.asarray(c, np.float64) - np.asarray(r, np.float64)) / model.response_scale.numpy().astype(
        np.float64
    )


def oracle_routing(
    model: SparseMoERewardModel,
    train: PairFeatures,
    train_labels: np.ndarray,
    test: PairFeatures,
    test_labels: np.ndarray,
    out: Diagnostics,
) -> None:
    """Per-group heads vs one head, both fitted on the training pairs, on the test pairs (see the module)."""
    names, counts = np.unique(train_labels, return_counts=True)
    known = set(names[counts >= MIN_GROUP_PAIRS])
    rows = np.flatnonzero([g in known for g in test_labels])
    if len(known) < 2 or len(rows) < 2:
        out.reasons["oracle_routing_accuracy"] = (
            f"needs at least 2 groups with {MIN_GROUP_PAIRS} training pairs each and test pairs in them"
        )
        return
    x_train = _diffs(model, train)
    pooled = fit_bt_head(x_train, np.zeros(x_train.shape[1]), 1.0 / len(x_train))
    x_test = _diffs(model, test, rows)
    labels = test_labels[rows]
    oracle_margin = np.zeros(len(rows))
    oracle_loss = np.zeros(len(rows))
    for g in np.unique(labels):
        fit_rows = train_labels == g
        head = fit_bt_head(x_train[fit_rows], pooled, 1.0 / int(fit_rows.sum()))
        m = labels == g
        oracle_margin[m] = x_test[m] @ head
        oracle_loss[m] = _bt_loss(x_test[m], head)
    pooled_margin = x_test @ pooled
    gain = _bt_loss(x_test, pooled) - oracle_loss
    units = prompt_units(test)[rows]
    _, inverse = np.unique(units, return_inverse=True)
    g_units = int(inverse.max()) + 1
    mean = float(gain.mean())
    if g_units > 1:
        resid = np.bincount(inverse, weights=gain) - np.bincount(inverse) * mean
        se = float(math.sqrt(g_units / (g_units - 1) * (resid**2).sum()) / len(gain))
    else:
        se = math.inf
    out.oracle_routing_accuracy = float(_credit(oracle_margin).mean())
    out.pooled_head_accuracy = float(_credit(pooled_margin).mean())
    out.oracle_gain, out.oracle_gain_se = mean, se
    out.oracle_gain_p = one_sided_p(mean, se)
    out.oracle_pairs = len(rows)


def _prompt_folds(units: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    _, ids = np.unique(units, return_inverse=True)
    n = min(n_folds, len(np.unique(ids)))
    if n < 2:
        return []
    return list(GroupKFold(n_splits=n).split(np.zeros(len(ids)), groups=ids))


@torch.no_grad()
def router_probe(
    model: SparseMoERewardModel,
    train: PairFeatures,
    train_labels: np.ndarray,
    out: Diagnostics,
    seed: int = 0,
) -> None:
    """The supervised linear router, cross-validated over the training pairs (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    names, counts = np.unique(train_labels, return_counts=True)
    keep = set(names[counts >= MIN_GROUP_PAIRS])
    rows = np.flatnonzero([g in keep for g in train_labels])
    if len(keep) < 2:
        out.reasons["router_probe_nmi"] = (
            f"needs at least 2 groups with {MIN_GROUP_PAIRS} training pairs each"
        )
        return
    if len(rows) > MAX_PROBE_PAIRS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_PROBE_PAIRS, replace=False))
    units = prompt_units(train)[rows]
    folds = _prompt_folds(units, PROBE_FOLDS)
    if not folds:
        out.reasons["router_probe_nmi"] = "needs training pairs from at least 2 prompts"
        return
    data = router_data(model, train)
    x = model.router_features(data.batch(rows)).numpy().astype(np.float64)
    y = train_labels[rows]
    predicted = np.empty(len(rows), dtype=object)
    for fit_idx, test_idx in folds:
        if len(np.unique(y[fit_idx])) < 2:
            predicted[test_idx] = y[fit_idx][0]
            continue
        probe = LogisticRegression(C=1.0, max_iter=300).fit(x[fit_idx], y[fit_idx])
        predicted[test_idx] = probe.predict(x[test_idx])
    predicted = predicted.astype(str)
    null = nmi_null(predicted, y, units, permutations=500, seed=seed)
    out.router_probe_nmi = normalized_mutual_information(predicted, y)
    out.router_probe_accuracy = float((predicted == y).mean())
    out.router_probe_p = null.p
    out.router_probe_pairs = len(rows)
    out.folds = len(folds)


def discovery_efficiency(
    top: np.ndarray, groups: np.ndarray, routing_nmi: float | None, out: Diagnostics, seed: int = 0
) -> None:
    """routing NMI / probe NMI in [0, 1] with a bootstrap interval over the test pairs, or the reason it is
    not reported."""
    if routing_nmi is None:
        out.reasons["discovery_efficiency"] = "the model does not route (one expert): no routing NMI"
        return
    if out.router_probe_nmi is None:
        out.reasons.setdefault(
            "discovery_efficiency", "no router probe: " + out.reasons.get("router_probe_nmi", "n/a")
        )
        return
    if out.router_probe_pairs < MIN_PROBE_PAIRS:
        out.reasons["discovery_efficiency"] = (
            f"the router probe rests on {out.router_probe_pairs} training pairs (fewer than {MIN_PROBE_PAIRS})"
        )
        return
    if not out.probe_sees_groups:
        out.reasons["discovery_efficiency"] = (
            f"the router probe does not beat its chance level (NMI {out.router_probe_nmi:.3f}, p = "
            f"{out.router_probe_p:.3f}): the router's input cannot see the groups, so there is nothing to divide by"
        )
        return
    probe = out.router_probe_nmi
    rng = np.random.default_rng(seed)
    boots = [
        normalized_mutual_information(top[idx], groups[idx])
        for idx in (rng.integers(0, len(top), len(top)) for _ in range(BOOTSTRAPS))
    ]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    out.discovery_efficiency = min(1.0, routing_nmi / probe)
    out.discovery_efficiency_ci = [round(min(1.0, lo / probe), 4), round(min(1.0, hi / probe), 4)]


def null_of_routing(top: np.ndarray, groups: np.ndarray, units: np.ndarray, out: Diagnostics) -> NullNMI:
    null = nmi_null(top, groups, units)
    out.routing_nmi_null, out.routing_nmi_null_p95 = null.null_mean, null.null_p95
    out.routing_nmi_p, out.null_unit = null.p, null.unit
    return null


def specialization_diagnostics(
    model: SparseMoERewardModel,
    features: PairFeatures,
    top: np.ndarray,
    routing_nmi: float | None,
    train_features: PairFeatures | None = None,
    probes: bool = True,
    seed: int = 0,
) -> Diagnostics:
    """All diagnostics of `model` on the test pairs `features` whose top experts are `top` (see the module
    docstring). The probes and oracle need the model's training pairs (`train_features`) and `probes`."""
    out = Diagnostics()
    label, groups = labels_of(features)
    out.label = label
    if groups is None or not len(features):
        out.reasons["routing_nmi"] = "the pairs have no group (or user) field"
        return out
    k = model.num_experts
    for g in sorted(set(groups)):
        out.contingency[g] = np.bincount(top[groups == g], minlength=k).tolist()
    out.pairs = len(features)
    if routing_nmi is not None:
        null_of_routing(top, groups, prompt_units(features), out)
    if not probes:
        return out
    if train_features is None or not len(train_features):
        why = "needs the model's training pairs (evaluate the data the model was trained on, with its saved split)"
        out.reasons["router_probe_nmi"] = out.reasons["oracle_routing_accuracy"] = why
        out.reasons["discovery_efficiency"] = why
        return out
    train_label, train_groups = labels_of(train_features)
    if train_groups is None or train_label != label:
        why = f"the training pairs have no {label} field"
        out.reasons["router_probe_nmi"] = out.reasons["oracle_routing_accuracy"] = why
        return out
    oracle_routing(model, train_features, train_groups, features, groups, out)
    if model.config.kind in ROUTED_KINDS and k > 1:
        router_probe(model, train_features, train_groups, out, seed)
        discovery_efficiency(top, groups, routing_nmi, out, seed)
    else:
        out.reasons["router_probe_nmi"] = f"a {model.config.kind} model has no router"
    return out


def specialization_verdict(
    experts_identical: bool,
    routing_nmi: float | None,
    diagnostics: Diagnostics | None,
    discovery: dict | None = None,
) -> tuple[str, str]:
    """("routing" | "personalization" | "none", one plain sentence) from the diagnostics and, when given,
    what discovery decided in training (``metrics.json`` → ``discovery``)."""
    d = diagnostics or Diagnostics()
    decision = (discovery or {}).get("decision")
    label = d.label or "group"
    routed = not experts_identical and routing_nmi is not None and d.routing_nmi_p is not None
    if routed and d.routing_nmi_p is not None and d.routing_nmi_p < 0.05:
        return "routing", (
            f"The prompt predicts the criterion: routing separates the {label}s beyond chance (NMI "
            f"{routing_nmi:.3f}, chance {d.routing_nmi_null:.3f}, 95% of shuffles below {d.routing_nmi_null_p95:.3f}, "
            f"p = {d.routing_nmi_p:.3f})."
        )
    if d.groups_differ and d.probe_sees_groups:
        return "routing", (
            f"The prompt predicts the criterion: {label}s prefer differently (per-{label} heads gain "
            f"{d.oracle_gain:.3f} nats per pair, p = {d.oracle_gain_p:.3f}) and a supervised router on the same "
            f"input tells them apart (probe NMI {d.router_probe_nmi:.3f}, p = {d.router_probe_p:.3f}); this model"
            + (" routes by it only partly." if routed else " did not find it.")
        )
    if decision == "routed" and not experts_identical:
        return "routing", (
            "The prompt predicts the preference: the routed start beat one head on held-out folds of the "
            f"training pairs, though not along the {label}s given."
        )
    if d.groups_differ:
        return "personalization", (
            f"{label.capitalize()}s prefer differently (per-{label} heads gain {d.oracle_gain:.3f} nats per pair "
            f"on test pairs, p = {d.oracle_gain_p:.3f}), but nothing the router reads tells them apart"
            + (
                f" (probe NMI {d.router_probe_nmi:.3f}, p = {d.router_probe_p:.3f})"
                if d.router_probe_nmi is not None
                else ""
            )
            + ": personalize per user; routing cannot help."
        )
    if d.groups_differ is None and decision is None:
        return "none", "No heterogeneity was detected (no groups or training pairs to test it with)."
    return "none", "No heterogeneity detectable with this backbone: " + (
        f"{label}s do not prefer differently beyond chance (p = {d.oracle_gain_p:.3f}), "
        if d.oracle_gain_p is not None
        else ""
    ) + "and the prompt did not predict the preference on held-out pairs."
