"""What a number means and which pairs it is on: one definition per statistic, one named subset per number.

Every page, the stakeholder report and the CLI take their statistics from here, so that a name never
shows two values: `STATS` defines each headline statistic once (label + one sentence), `relate` says
how a data file relates to a model's training data (its saved ``split_ids.json``) and which subsets of
pairs a number can be on, headline first (the held-out test split when the file is the training data).

    rel = relate(model_dir, features, same_file=...)
    rel.headline          # Scope("test", "held-out test split", index)
    rel.message           # a plain sentence when the data is not (only) the model's test data
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embed.features import PairFeatures
from ..model import modeldir
from .metrics import Evaluation

TOO_FEW_PAIRS = 30  # below this a held-out accuracy means little (binomial sd > 0.09)


@dataclass(frozen=True)
class Stat:
    key: str
    label: str
    definition: str
    digits: int = 3

    def format(self, value) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        return f"{value:.{self.digits}f}"


STATS: dict[str, Stat] = {
    s.key: s
    for s in (
        Stat(
            "accuracy",
            "Accuracy",
            "Share of pairs on which the model's reward of the chosen response is above that of the rejected one, "
            "a tie (both scored alike) counting as half: 0.5 is chance, and a model that scores everything alike "
            "reads 0.5, not 0.",
        ),
        Stat(
            "routing_nmi",
            "Routing NMI",
            "Normalized mutual information between each pair's top expert and its group: 0 when routing ignores "
            "the groups, 1 when every group has experts of its own. On a few hundred pairs it is well above 0 by "
            "chance alone: read it against its chance level (the mean NMI when the groups are shuffled), shown "
            "beside it. Not reported when the experts are all alike (nothing is routed).",
        ),
        Stat(
            "routing_entropy_normalized",
            "Routing entropy",
            "Mean entropy of the router's softmax over the K experts, divided by log K: 0 when each prompt goes "
            "to one expert with certainty, 1 when the router spreads every prompt evenly.",
        ),
        Stat(
            "experts_in_use",
            "Experts in use",
            "Experts that are the top choice for more than 1% of the pairs.",
            0,
        ),
        Stat(
            "active_experts_per_pair",
            "Active experts per pair",
            "Mean number of experts with a non-zero routing weight (top-k for a sparse model).",
            2,
        ),
        Stat(
            "routing_purity",
            "Routing purity",
            "Share of pairs whose top expert's most frequent group is their own group.",
        ),
    )
}

# Specialization diagnostics (analysis.evaluate(...)["diagnostics"], metrics.json["test"]["diagnostics"]).
DIAGNOSTICS: dict[str, Stat] = {
    s.key: s
    for s in (
        Stat(
            "router_probe_nmi",
            "Router probe NMI",
            "NMI reached by a supervised linear probe that is given the groups and sees the same router inputs, "
            "cross-validated over the model's training pairs: the ceiling that unsupervised routing could reach "
            "with this representation (read against its own chance level).",
        ),
        Stat(
            "router_probe_accuracy",
            "Router probe accuracy",
            "How often that supervised probe predicts a pair's group from the router's inputs; low means the "
            "representation itself hides the groups.",
        ),
        Stat(
            "oracle_routing_accuracy",
            "Oracle-routing accuracy",
            "Pairwise accuracy on the test pairs of one reward head per group, fitted on the training pairs, with "
            "the group given: what routing by the true criterion would achieve. Shown beside one head fitted the "
            "same way: if the group heads do not beat it, the groups do not prefer differently.",
        ),
        Stat(
            "discovery_efficiency",
            "Discovery efficiency",
            "Routing NMI divided by the probe's NMI, at most 1, with a bootstrap interval: the share of the "
            "discoverable group structure that unsupervised training found. Reported only when the probe rests on "
            "enough training pairs and beats its own chance level.",
        ),
    )
}


def headline_values(ev: dict | Evaluation) -> dict[str, Any]:
    """The STATS values of one evaluation (an `Evaluation`, or its JSON from a saved metrics.json), with
    what a reader needs beside them: the accuracy's interval and ties, the NMI's chance level."""
    used = np.asarray(ev.get("expert_utilization") or [], dtype=float)
    diag = ev.get("diagnostics") or {}
    return {
        "accuracy": ev.get("accuracy"),
        "accuracy_ci": ev.get("accuracy_ci"),
        "ties": ev.get("ties"),
        "routing_nmi": ev.get("routing_nmi"),
        "routing_nmi_null": diag.get("routing_nmi_null"),
        "routing_nmi_p": diag.get("routing_nmi_p"),
        "routing": ev.get("routing"),
        "routing_entropy_normalized": ev.get("routing_entropy_normalized"),
        "experts_in_use": int((used > 0.01).sum()),
        "active_experts_per_pair": ev.get("active_experts_per_pair"),
        "routing_purity": ev.get("routing_purity"),
    }


def chance_note(key: str, values: dict) -> str:
    """What a headline value is read against: '95% 0.55-0.67' for an accuracy, 'chance 0.031, p 0.001' for
    a routing NMI, 'one expert (no specialization found)' when there is no NMI because nothing is routed."""
    if key == "accuracy":
        ci, ties = values.get("accuracy_ci"), values.get("ties")
        note = f"95% {ci[0]:.2f}-{ci[1]:.2f}" if ci else ""
        return note + (f"; {ties} ties as half" if ties else "")
    if key == "routing_nmi":
        if values.get("routing_nmi") is None:
            routing = values.get("routing")
            return routing if routing and routing != "routed" else ""
        if values.get("routing_nmi_null") is None:
            return ""
        significant = (values.get("routing_nmi_p") or 1.0) < 0.05
        return f"chance {values['routing_nmi_null']:.3f}, p {values['routing_nmi_p']:.3f}" + (
            "" if significant else ": not beyond chance"
        )
    return ""


def verdict_of(ev: dict | Evaluation | None) -> tuple[str, str] | None:
    """(verdict, reason) of an evaluation or a saved metrics.json's "test" (None for older files)."""
    verdict = ev.get("specialization") if ev else None
    if not verdict:
        return None
    return str(verdict), str((ev or {}).get("specialization_reason") or "")


def diagnostics_of(metrics_or_eval: dict | Evaluation | None) -> dict | None:
    """The diagnostics dict of an evaluation or of a saved model's metrics.json, if there is one."""
    if not metrics_or_eval:
        return None
    found = metrics_or_eval.get("diagnostics")
    if found is None and isinstance(metrics_or_eval.get("test"), dict):
        found = metrics_or_eval["test"].get("diagnostics")
    return found if isinstance(found, dict) and found else None


def diagnostic_subset(key: str, diagnostics: dict) -> str:
    """The subset and n a diagnostic rests on, written under its value (every number names its subset)."""
    if key.startswith("router_probe"):
        n = diagnostics.get("router_probe_pairs") or 0
        p = diagnostics.get("router_probe_p")
        chance = f" · p {p:.3f}" if isinstance(p, (int, float)) else ""
        return f"CV on {n:,} training pairs{chance}"
    if key == "oracle_routing_accuracy":
        pooled = diagnostics.get("pooled_head_accuracy")
        vs = f" · one head {pooled:.3f}" if isinstance(pooled, (int, float)) else ""
        return f"{diagnostics.get('oracle_pairs') or 0:,} test pairs{vs}"
    if key == "discovery_efficiency":
        ci = diagnostics.get("discovery_efficiency_ci")
        return (
            f"95% {ci[0]:.2f}-{ci[1]:.2f}"
            if isinstance(ci, list) and len(ci) == 2
            else "routing NMI / probe NMI"
        )
    return ""


# Diagnostics that only a model's training run can compute (they need its training pairs), by the key
# that says whether they were: a live evaluation without those pairs leaves them to the saved metrics.json.
SAVED_DIAGNOSTICS = {
    "router_probe_nmi": (
        "router_probe_nmi",
        "router_probe_accuracy",
        "router_probe_p",
        "router_probe_pairs",
        "folds",
    ),
    "oracle_routing_accuracy": (
        "oracle_routing_accuracy",
        "pooled_head_accuracy",
        "oracle_gain",
        "oracle_gain_se",
        "oracle_gain_p",
        "oracle_pairs",
    ),
    "discovery_efficiency": ("discovery_efficiency", "discovery_efficiency_ci"),
}


def scope_diagnostics(
    live: dict | Evaluation | None, metrics: dict | None, on_test_split: bool
) -> dict | None:
    """The diagnostics to show beside an evaluation: the live ones, and -- when the evaluation is on the
    model's own held-out test split, the scope its metrics.json was written for -- the saved values of
    those the live evaluation could not compute (the router probe and oracle need the training pairs)."""
    now = dict(diagnostics_of(live) or {})
    saved = diagnostics_of(metrics) or {}
    if on_test_split and saved:
        for lead, keys in SAVED_DIAGNOSTICS.items():
            if now.get(lead) is None and saved.get(lead) is not None:
                now.update({k: saved[k] for k in keys if k in saved})
                reasons = dict(now.get("reasons") or {})
                reasons.pop(lead, None)
                now["reasons"] = reasons
        for k, v in saved.items():
            now.setdefault(k, v)
    return {k: v for k, v in now.items() if v is not None} or None


def training_story(metrics: dict | None) -> list[str]:
    """How training found the experts, in plain sentences, from a saved model's metrics.json: what the
    router reads and why, what discovery decided and on what evidence, how the experts started, and which
    checkpoint was kept. Nothing is claimed that was not tested. Empty for kinds without discovery (or
    metrics from older versions)."""
    if not metrics:
        return []
    disc = metrics.get("discovery") or {}
    lines: list[str] = []
    losses = disc.get("validation_loss") or {}
    best: dict[str, float] = {}  # each router input's best validation loss over its penalties
    if disc.get("router_input"):
        line = f"The router reads {disc['router_input']}"
        for key, value in losses.items():
            name = str(key).split(" l2=")[0]
            if isinstance(value, (int, float)):
                best[name] = min(best.get(name, float("inf")), float(value))
        if len(best) > 1:
            line += (
                ", chosen on validation likelihood (validation BT loss of the context model: "
                + ", ".join(f"{k} {v:.3f}" for k, v in sorted(best.items(), key=lambda kv: kv[1]))
                + ")"
            )
        elif disc.get("router_input_reason"):
            line += f" ({disc['router_input_reason']})"
        lines.append(line + ".")
    free = disc.get("context_free_loss")
    if disc.get("decision") == "single head" or disc.get("warm_start") == "global":
        reason = (
            disc.get("decision_reason")
            or disc.get("clusters_rejected")
            or (
                "the prompt did not predict the preference on validation pairs beyond what every prompt shares"
                if disc.get("context_helps") is False
                else "no routed start was kept"
            )
        )
        lines.append(
            f"Every expert is the single-head model, because {reason}: this sparse model is the `single` "
            "baseline and claims no specialization."
        )
        return lines
    if disc.get("warm_start") == "clusters":
        sizes = [n for n in disc.get("cluster_sizes") or [] if n]
        line = (
            "The experts started from "
            + f"{disc.get('clusters', len(sizes))} groups of preference codes"
            + (f" (training pairs per group: {', '.join(str(n) for n in sizes)})" if sizes else "")
        )
        if disc.get("head_anchor"):
            line += f", each head shrunk toward the {disc['head_anchor']} (penalty {disc.get('head_l2')})"
        lines.append(line + ".")
        if disc.get("decision_reason"):
            lines.append(f"The routed start was kept: {disc['decision_reason']}.")
        elif losses and isinstance(free, (int, float)) and best:  # (metrics from before the test existed)
            lines.append(
                f"The prompt predicted the preference on validation pairs (validation loss {min(best.values()):.3f} "
                f"vs {free:.3f} context-free)."
            )
        has_validation = any(k.startswith("val_") for k in (metrics.get("history") or [{}])[0])
        if disc.get("kept_warm_start") or metrics.get("best_epoch") == 0:
            lines.append(
                "The kept checkpoint is the warm start (epoch 0)"
                + (f": {disc['kept_warm_start']}." if disc.get("kept_warm_start") else ".")
            )
        elif metrics.get("best_epoch") is not None:
            lines.append(
                f"The kept checkpoint is epoch {metrics['best_epoch']} of {metrics.get('epochs_run', '?')}, "
                + (
                    "the lowest validation loss of the run, beyond the bar for the epochs compared."
                    if has_validation
                    else "the lowest training loss of the run (there were no validation pairs)."
                )
            )
    return lines


# ----------------------------------------------------------------------------- subsets


@dataclass
class Scope:
    """A named subset of the pairs of a data file."""

    key: str  # test | validation | train | unsplit | unseen | all
    label: str  # "held-out test split"
    index: np.ndarray

    @property
    def n(self) -> int:
        return len(self.index)

    def describe(self) -> str:
        """'held-out test split, 349 pairs'."""
        return f"{self.label}, {self.n} pairs"


@dataclass
class DataRelation:
    """How a data file relates to a model's training data."""

    kind: str  # training | partial | foreign | unsplit | unknown
    trained_on: str | None
    scopes: list[Scope]
    message: str = ""  # a plain sentence for the page; "" when the headline is the held-out test split
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def headline(self) -> Scope:
        return self.scopes[0]

    def scope(self, key: str) -> Scope:
        return next((s for s in self.scopes if s.key == key), self.headline)

    @property
    def warning(self) -> str:
        """Something the reader must know before quoting a number ('' if nothing)."""
        notes = [self.message] if self.message else []
        if self.headline.key == "test" and self.headline.n < TOO_FEW_PAIRS:
            notes.append(
                f"The test split has only {self.headline.n} pairs: its accuracy can be off by "
                f"{1 / (2 * max(self.headline.n, 1) ** 0.5):.2f} or more either way."
            )
        return " ".join(notes)


def relate(
    model_dir: str | Path, features: PairFeatures, same_file: bool | None = None, data_name: str = "this data"
) -> DataRelation:
    """Which pairs of `features` the model trained on, and the subsets a number can honestly be on.

    `same_file`: whether the file is the one recorded in the model's metrics.json (None: unknown); used
    only when the model has no saved split."""
    n = len(features)
    everything = np.arange(n)
    source = modeldir.trained_on(model_dir)
    source_name = Path(source).name if source and source != "controlled" else (source or "unrecorded data")
    splits = modeldir.read_split_ids(model_dir, strict=False)
    if splits is None:
        if same_file:
            return DataRelation(
                "unsplit",
                source,
                [Scope("all", "all pairs (training pairs included)", everything)],
                "This model saved no train/test split, so these numbers include the pairs it was "
                "trained on and overstate how it does on new data.",
            )
        return DataRelation(
            "unknown",
            source,
            [Scope("all", "all pairs", everything)],
            f"This model saved no train/test split; it was trained on {source_name}. Numbers on "
            f"{data_name} may include pairs it was trained on.",
        )
    member = {name: set(ids) for name, ids in splits.items()}
    ids = features.ids
    where = {
        name: np.array([i for i, pid in enumerate(ids) if pid in s], dtype=np.int64)
        for name, s in member.items()
    }
    seen = set().union(*member.values()) if member else set()
    outside = np.array([i for i, pid in enumerate(ids) if pid not in seen], dtype=np.int64)
    counts = {name: len(idx) for name, idx in where.items()} | {"outside": len(outside), "all": n}
    train_like = counts.get("train", 0) + counts.get("validation", 0)
    if counts.get("test", 0):
        scopes = [Scope("test", "held-out test split", where["test"])]
        if counts.get("validation", 0):
            scopes.append(Scope("validation", "validation split (chose the checkpoint)", where["validation"]))
        if counts.get("train", 0):
            scopes.append(Scope("train", "training split (seen in training)", where["train"]))
        if len(outside):
            scopes.append(Scope("unsplit", "pairs outside the splits (e.g. held-out users)", outside))
        scopes.append(Scope("all", "all pairs (training pairs included)", everything))
        return DataRelation("training", source, scopes, "", counts)
    if train_like:
        scopes = ([Scope("unseen", "pairs the model never trained on", outside)] if len(outside) else []) + [
            Scope("all", "all pairs (training pairs included)", everything)
        ]
        msg = (
            f"{train_like} of these {n} pairs were used to train this model (trained on {source_name}) and none "
            f"is from its test split; "
            + (
                f"the headline numbers are on the {len(outside)} pairs it never saw."
                if len(outside)
                else "every number here includes training pairs."
            )
        )
        return DataRelation("partial", source, scopes, msg, counts)
    msg = (
        f"This is not the data the model was trained on ({source_name}): all {n} pairs of {data_name} are new "
        f"to it. These numbers measure transfer to other data, not its held-out test accuracy."
    )
    return DataRelation(
        "foreign", source, [Scope("all", "all pairs (data the model never saw)", everything)], msg, counts
    )


# ----------------------------------------------------------------------------- slices and notes


def restrict(rel: DataRelation, index: np.ndarray, name: str) -> DataRelation:
    """The same subsets, each narrowed to the rows `index` (a saved slice), and named so: every number
    on them says it is on the slice ("held-out test split ∩ slice step-prompts")."""
    keep = np.asarray(index, dtype=np.int64)
    scopes = [
        Scope(s.key, f"{s.label} ∩ slice {name}", np.intersect1d(s.index, keep).astype(np.int64))
        for s in rel.scopes
    ]
    return DataRelation(rel.kind, rel.trained_on, scopes, rel.message, rel.counts)


def never_trained(rel: DataRelation) -> np.ndarray | None:
    """Rows of the file the model neither trained on nor chose its checkpoint with (its test split and
    the pairs outside its splits; every pair of a file it never saw); None when that cannot be told (no
    saved split)."""
    if rel.kind in ("unsplit", "unknown"):
        return None
    everything = rel.scope("all").index
    if rel.kind == "foreign":
        return everything
    if rel.kind == "partial":
        return next((s.index for s in rel.scopes if s.key == "unseen"), np.zeros(0, dtype=np.int64))
    used = [s.index for s in rel.scopes if s.key in ("train", "validation")]
    return np.setdiff1d(everything, np.concatenate(used) if used else np.zeros(0, dtype=np.int64))


def below_chance_note(accuracy: float | None, n: int) -> str:
    """Why an accuracy under 0.5 is there ('' when it is not under 0.5): within the noise of a coin flip
    on n pairs (two standard errors), or a real preference for the rejected responses."""
    if accuracy is None or accuracy != accuracy or n <= 0 or accuracy >= 0.5:
        return ""
    band = 2 * (0.25 / n) ** 0.5
    if 0.5 - accuracy <= band:
        return (
            f"below 0.5 by less than the noise of a coin flip on {n} pairs (±{band:.3f}): the model does "
            "no better than chance here"
        )
    return (
        f"below chance by more than the noise on {n} pairs (±{band:.3f}): on these pairs the model "
        "systematically prefers the responses people rejected"
    )


def subset_note(scope: Scope, ev: dict | Evaluation) -> str:
    """What a row of the 'every subset' table means, and why a number on it is low: what the subset is
    for, then any below-chance accuracy and a routing NMI of 0 explained."""
    purpose = {
        "validation": "chose the checkpoint, so slightly optimistic",
        "train": "seen in training: how closely the model fits, not how it generalizes",
        "unsplit": "kept out of training and of the test split (e.g. the labels of held-out users, whose "
        "tastes differ from the training pairs; Personalize adapts a profile to them)",
        "all": "mixes training pairs in",
    }.get(scope.key, "")
    notes = [purpose] if purpose else []
    acc_note = below_chance_note(ev.get("accuracy"), scope.n)
    if acc_note:
        notes.append(acc_note)
    groups = ev.get("per_group") or {}
    if ev.get("routing_nmi") == 0 and scope.n:
        if len(groups) == 1:
            notes.append(f"routing NMI is 0 because every pair here is in one group ({next(iter(groups))})")
        elif len(groups) > 1:
            notes.append("routing NMI is 0: the top expert does not follow these pairs' groups")
    return "; ".join(notes)
